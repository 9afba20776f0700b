// edgerun/wire.h: wire frame v1, what crosses the network between device and
// server. The layout, the versioning rule and the error codes are documented in
// WIRE.md beside this header; tests/golden/wire/ holds the golden frames that
// this encoder and the Python decoder (edgerun/wire.py) must both keep passing.
//
// No allocation: encode_into writes into a caller-owned buffer and decode
// returns views into the caller's bytes, so the device can frame a request per
// inference without touching the heap (a Status message aside, on error only).
#pragma once

#include <cstddef>
#include <cstdint>

#include "edgerun/crc32.h"
#include "edgerun/status.h"

namespace edgerun {
namespace wire {

// ============================================================================
// Format constants (never renumber; only add, see WIRE.md)
// ============================================================================
inline constexpr uint8_t  kMagic[4]        = {'E', 'R', 'W', 'F'};
inline constexpr uint16_t kVersion         = 1;
inline constexpr size_t   kHeaderSize      = 44;
inline constexpr size_t   kCrcSize         = 4;
inline constexpr size_t   kMinFrameSize    = kHeaderSize + kCrcSize;
inline constexpr size_t   kRecordHeadSize  = 8;   // codec, dtype, ndim, reserved, params_len
inline constexpr uint32_t kMaxTensors      = 16;
inline constexpr uint32_t kMaxDims         = 8;
inline constexpr size_t   kBundleHashSize  = 16;
inline constexpr int      kMaxMetaDepth    = 32;  // nesting limit of the meta JSON

enum class Kind : uint8_t { kRequest = 1, kReply = 2, kError = 3 };
enum class DType : uint8_t { kFloat32 = 1, kFloat16 = 2, kInt8 = 3, kUInt8 = 4, kInt32 = 5, kInt64 = 6 };
// Codec ids: 0 raw; 1 tsq (edgerun/codec.h: payload and params are the codec's own bytes).
enum class Codec : uint8_t { kRaw = 0, kTsq = 1 };

// Short aliases for the frame-group status codes used by the decoder.
inline constexpr StatusCode kUnsupportedCodec = StatusCode::kFrameUnsupportedCodec;
inline constexpr StatusCode kWrongBundle      = StatusCode::kFrameWrongBundle;

// ============================================================================
// Frame parts
// ============================================================================
struct FrameHeader {
  uint8_t  kind = 0;          // a Kind value
  uint8_t  flags = 0;         // reserved, must be 0 in v1
  uint64_t request_id = 0;
  uint32_t seq = 0;           // sequence number / token position
  uint8_t  bundle_hash[kBundleHashSize] = {};  // first 16 bytes of the bundle's sha256
};

// One tensor record. Encoding reads from params/payload; decoding points them
// into the frame buffer (valid as long as that buffer is).
struct TensorView {
  uint8_t        codec = 0;   // a Codec value
  uint8_t        dtype = 0;   // a DType value
  uint8_t        ndim = 0;
  uint32_t       dims[kMaxDims] = {};
  const uint8_t* params = nullptr;
  uint32_t       params_len = 0;
  const uint8_t* payload = nullptr;  // raw: C-order little-endian values
  uint64_t       payload_len = 0;
};

struct DecodedFrame {
  uint16_t       version = 0;
  FrameHeader    header;
  const uint8_t* meta = nullptr;  // UTF-8 JSON object, meta_len bytes (0 = none)
  uint32_t       meta_len = 0;
  uint32_t       n_tensors = 0;
  TensorView     tensors[kMaxTensors];
};

// ============================================================================
// Helpers
// ============================================================================

// Bytes per element of a dtype code; 0 for a code this version does not know.
size_t dtype_size(uint8_t dtype);

// The short error name a status code stands for ("bad_checksum", ...), the
// same strings edgerun.wire.FrameError.code carries; "internal" otherwise.
const char* code_name(StatusCode code);

// True when data[0, n) is valid UTF-8 holding one JSON object (nesting at
// most kMaxMetaDepth).
bool is_json_object(const uint8_t* data, size_t n);

// ============================================================================
// Encode
// ============================================================================

// Exact size of the frame encode_into writes for this meta and these tensors.
size_t encoded_size(uint32_t meta_len, const TensorView* tensors, uint32_t n_tensors);

// Encodes one frame into out[0, out_cap) and sets *written to its size. Checks
// the header, the meta (a JSON object), each tensor (known dtype and codec,
// payload_len == prod(dims) * itemsize for raw) and the capacity first, so it
// never writes a frame that decode() would reject.
Status encode_into(const FrameHeader& header, const uint8_t* meta, uint32_t meta_len,
                   const TensorView* tensors, uint32_t n_tensors,
                   uint8_t* out, size_t out_cap, size_t* written);

// ============================================================================
// Decode
// ============================================================================

// Validates every field of buf[0, len) before use (order and codes in WIRE.md)
// and returns views into buf. Frames longer than max_bytes are refused before
// anything else is read.
Result<DecodedFrame> decode(const uint8_t* buf, size_t len, size_t max_bytes);

// kWrongBundle unless the frame is for the bundle whose hash this side serves.
Status check_bundle(const DecodedFrame& frame, const uint8_t expected[kBundleHashSize]);

}  // namespace wire
}  // namespace edgerun
