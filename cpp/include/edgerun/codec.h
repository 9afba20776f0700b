// edgerun/codec.h: activation codecs for the tensor that crosses the cut.
//
// Codec ids (the frame's tensor record carries one): 0 = none (raw), 1 = tsq
// (threshold splitting + token-wise adaptive bit quantization). Payload and
// params layouts, and how they may change, are in CODEC.md beside this file.
// The Python reference (edgerun/codec.py) writes the same bytes as tsq_encode.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "edgerun/status.h"

namespace edgerun {
namespace codec {

// ============================================================================
// Ids and versions (never renumber; only add)
// ============================================================================
constexpr uint8_t kCodecNone = 0;
constexpr uint8_t kCodecTsq  = 1;
constexpr uint8_t kTsqVersion = 1;

constexpr uint8_t kLayoutPosition = 0;  // token = one spatial position's channel vector
constexpr uint8_t kLayoutChannel  = 1;  // token = one channel's spatial map
constexpr uint8_t kRowRaw         = 15; // row code: the row travels as fp32
constexpr uint32_t kMaxDims       = 8;

// ============================================================================
// Params (the record stored in the bundle and carried by the frame)
// ============================================================================
struct TsqParams {
  float   tau     = 0.0f;   // |x| > tau travels exactly (sparse side stream)
  float   max_err = 0.0f;   // bound on |decoded - x| for dense values
  float   budget  = 0.0f;   // relative MSE max_err was calibrated from (informational)
  uint8_t layout  = kLayoutChannel;
  uint8_t n_bits  = 0;      // allowed widths, ascending, each 1..8
  uint8_t bits[8] = {};
};

// Parses and validates a params record (kFrameMalformed / kVersionUnsupported).
Result<TsqParams> tsq_parse_params(const uint8_t* data, size_t len);

// ============================================================================
// Encode / decode. dims: C-order shape (N, C, *spatial), 1..8 dims.
// ============================================================================
// Encodes x into *out (resized; its capacity is reused across calls). Per-row
// scratch lives in a per-thread buffer reused across calls: after the first call
// for a shape, encoding does not touch the heap (keep *out alive between requests).
// NaN/Inf in x -> kFrameNonFinite, nothing written.
Status tsq_encode(const float* x, const uint32_t* dims, uint32_t ndim, const TsqParams& p,
                  std::vector<uint8_t>* out);

// Decodes payload into out (numel floats). Every length, code and index is
// validated before use: a bad payload -> kFrameTruncated / kFrameMalformed.
Status tsq_decode(const uint8_t* payload, size_t len, const uint32_t* dims, uint32_t ndim,
                  const TsqParams& p, float* out);

}  // namespace codec
}  // namespace edgerun
