// Internal to the int8 Conv (kernels_qgemm*.cpp): the packed activation panel
// format shared by every path, and the AVX-512 VNNI entry points.
#pragma once

#include <algorithm>
#include <cstdint>

#include "edgerun/kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

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
constexpr int64_t kQMR = 4;        // weight rows per micro-tile (kernels_qgemm*.cpp, not AVX-512)

// u of one activation: v = (x - mn) * inv is in [0, 255 (1 + 2^-23)]; rounded to
// nearest even (adding 1.5 * 2^23 does it), the clamp guards the ends. A NaN v (a NaN
// pixel, whose mn is NaN, or inf * 0) gives 0, as the vector paths' integer clamps do:
// the ordered compares send it there (std::max / std::min kept it, and int32_t(NaN) is
// undefined: on x86 it gave INT_MIN, whose top bit landed in the next k's byte).
inline int32_t q8(float v) {
  const float magic = 12582912.f;
  v = (v + magic) - magic;
  v = v > 0.f ? v : 0.f;
  v = v < kQMax ? v : kQMax;
  return int32_t(v);
}

#if defined(__x86_64__) || defined(__i386__)
// q8 of 8 pixels, x[0..8) with their mn / inv: cvtps rounds to nearest even (the
// default mode, as q8's add assumes); the clamp is done on the integers.
__attribute__((target("avx2"))) inline __m256i quant8_avx2(const float* x, __m256 mn, __m256 inv) {
  const __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x), mn), inv);
  return _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(v), _mm256_setzero_si256()),
                          _mm256_set1_epi32(int(kQMax)));
}
#endif

// One k-quad of a 16-pixel strip in the u8 layout (kernels_qgemm.cpp): word j holds
// u(k4 + q, j) in byte q; rows k >= K and pixels j >= w are 0.
void pack_quad_portable(const float* x, int64_t ldx, int64_t K, int64_t k4, int64_t n0, int64_t w,
                        const float* inv, const float* mn, uint32_t* o);

// One tile row of int32 sums t to o[0, nw): the dequantize + bias + activation
// epilogue (kernels_qgemm.cpp; vector when nw == 16).
void store_row(const int32_t* t, const float* xs, const float* mn, float ws, float rsum, float b,
               Act act, float lo, float hi, float* o, int64_t nw);

// AVX2 without VNNI (kernels_qgemm_avx2.cpp, x86 only): the int16-pair panel
// (a k-quad as 2 x 16 words, word j of pair h = u(k4 + 2h, j) | u(k4 + 2h + 1, j) << 16)
// and the GEMM of weight rows [m0, m0 + M) over it, epilogue included.
void pack_quad_w16_avx2(const float* x, int64_t ldx, int64_t K, int64_t k4, int64_t n0, int64_t w,
                        const float* inv, const float* mn, uint32_t* o);
void qgemm_group_w16(const S8Weights& w, int64_t m0, int64_t M, int64_t N, const uint8_t* Bq,
                     const float* xs, const float* mn, const float* bias, Act act, float lo,
                     float hi, float* y, int64_t ldy, int threads);

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
