// Internal to the int8 Conv (kernels_qgemm*.cpp): the packed activation panel
// format shared by every path, and the AVX-512 VNNI entry points.
#pragma once

#include <cstdint>

#include "edgerun/kernels.h"

namespace edgerun {
namespace kernels {
namespace qgemm {

constexpr int64_t kQNR = 16;       // pixels per packed strip
// Activations: per pixel, asymmetric 8 bits. u = round((x - mn) * inv) in [0, 255]
// with inv = kQMax / max(mx - mn, kQMinRange) and xs = (mx - mn) / kQMax.
constexpr float   kQMax = 255.f;
// A pixel whose values span less than this (mx == mn above all) gets u = 0
// everywhere (its result is mn * R exactly up to float rounding); it also keeps
// inv finite (255 / FLT_MIN would overflow). Mirrored by quant_rounding.py.
constexpr float   kQMinRange = 1e-30f;

// AVX-512F/BW + VNNI present, not forced portable, neither EDGERUN_NO_AVX512 nor
// EDGERUN_NO_VNNI set (kernels_qgemm_avx512.cpp; false where not built).
bool has_avx512_vnni();

// AMX-INT8 tiles (kernels_qgemm_amx.cpp): the CPU has them, Linux granted the tile
// state, has_avx512_vnni() holds and EDGERUN_NO_AMX is unset. Then the engine pads
// weight rows to multiples of 64 bytes (s8_row_bytes) and qconv_group_avx512 runs
// its tiles with AMX.
bool has_amx();
// Per thread, around a run of amx_block calls: load / release the tile config.
void amx_begin();
void amx_end();
// The epilogue inputs of one block of rows x pixels (the AVX-512 VNNI tiles and the
// AMX blocks), all offset to the block's first row / pixel.
struct BlockEpi {
  const float* ws;     // [rows] weight scales
  const int32_t* wsum; // [rows]
  const float* bias;   // [rows] or null
  const float* xs;     // [pixels] activation scales
  const float* mn;     // [pixels] activation minima
  Act act;
  float lo, hi;
};
// Rows [0, mr) (mr <= 32) x ns (1 or 2) 16-pixel strips (strip s at B + s * bstride,
// nw pixels valid from the first): int32 sums by AMX tiles, then the fused epilogue
// into y[r * ldy + n]. kp must be a multiple of 64; W must hold 16 readable rows, 32
// when mr > 16 (rows past mr zero or not: they are never stored).
void amx_block(const int8_t* W, int64_t kp, int64_t mr, const uint8_t* B, int64_t bstride,
               int ns, const BlockEpi& e, float* y, int64_t ldy, int64_t nw);

// One group of an int8 Conv: quantize X[k, n] (k < w.k, n < N, row stride ldx) per
// pixel into xs / inv / mn (padded to whole 16-pixel strips) and the packed panel bq
// (the generic quantize_pack's bytes and scales), then y[m * ldy + n] for weight rows
// [m0, m0 + M) with the dequantize + bias + activation epilogue fused on the
// accumulator registers (the generic epilogue's operations in the same order, so
// the outputs are bit-identical to every other path).
void qconv_group_avx512(const float* x, int64_t ldx, const S8Weights& w, int64_t m0, int64_t M,
                        int64_t N, float* xs, float* inv, float* mn, uint8_t* bq,
                        const float* bias, Act act, float lo, float hi, float* y, int64_t ldy,
                        int threads);

}  // namespace qgemm
}  // namespace kernels
}  // namespace edgerun
