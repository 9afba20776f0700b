// Internal to the AVX-512 direct convolution kernels (kernels_dwconv_avx512.cpp,
// kernels_conv_s2_avx512.cpp, kernels_pointwise_small.cpp): lane masks, the activation on a
// vector, and the tap vectors of 16 stride-2 outputs read straight from an input row.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <cstdint>

#include "edgerun/kernels.h"

namespace edgerun {
namespace kernels {

// Lanes [lo, hi) of a 16-lane mask (clamped to 0..16).
inline __mmask16 lanes(int64_t lo, int64_t hi) {
  lo = lo < 0 ? 0 : lo;
  hi = hi > 16 ? 16 : hi;
  return hi <= lo ? __mmask16(0) : __mmask16(((1u << hi) - 1u) & ~((1u << lo) - 1u));
}

// The activation of the GEMM / depthwise epilogues on 16 values.
__attribute__((target("avx512f"))) inline __m512 act16(__m512 r, Act act, __m512 lo, __m512 hi) {
  if (act == Act::kRelu) return _mm512_max_ps(r, _mm512_setzero_ps());
  if (act == Act::kClip) return _mm512_min_ps(_mm512_max_ps(r, lo), hi);
  return r;
}

namespace s2 {

// Load masks for input columns b .. b + 47 of a row of w columns (three 16-lane loads):
// lanes outside [0, w) are off and read as 0, as a zero border would.
inline void masks(int64_t b, int64_t w, __mmask16* m) {
  for (int t = 0; t < 3; ++t) m[t] = lanes(-(b + 16 * t), w - (b + 16 * t));
}

// tap[j] lane i = xr[b + 2 i + j] (j < K, K = 3 or 5; xr == nullptr: a row outside the
// plane, all zeros): three masked loads, split into even / odd columns by permutes, and the
// taps 2..4 are those shifted by one or two lanes, their last lanes from the third load: one
// two-source permute each. (They were valignd of the split and of a permute of the third
// load: 4 / 7 shuffles per call for K = 3 / 5, now 3 / 5. The shuffles share port 5 with
// the FMAs on Intel cores, where they bound the stride-2 depthwise kernel.)
template <int K>
__attribute__((target("avx512f"))) inline void taps(const float* xr, int64_t b, const __mmask16* m,
                                                   __m512* tap) {
  static_assert(K == 3 || K == 5, "3 or 5 taps");
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  // Lanes 1..15 of the first source, then lane 16 - 16 = 0 of the second (the third load).
  const __m512i next1 = _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);
  __m512 l[3];
  for (int t = 0; t < 3; ++t)
    l[t] = xr != nullptr ? _mm512_maskz_loadu_ps(m[t], xr + b + 16 * t) : _mm512_setzero_ps();
  const __m512 e = _mm512_permutex2var_ps(l[0], even, l[1]);   // columns b, b + 2, .. b + 30
  const __m512 od = _mm512_permutex2var_ps(l[0], odd, l[1]);   // b + 1, .. b + 31
  tap[0] = e;
  tap[1] = od;
  tap[2] = _mm512_permutex2var_ps(e, next1, l[2]);  // b + 2, .. b + 30, then b + 32
  if (K == 5) {
    const __m512i next1_odd = _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17);
    const __m512i next2 = _mm512_setr_epi32(2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18);
    tap[3] = _mm512_permutex2var_ps(od, next1_odd, l[2]);  // b + 3, .. b + 31, then b + 33
    tap[4] = _mm512_permutex2var_ps(e, next2, l[2]);       // b + 4, .. b + 30, b + 32, b + 34
  }
}

}  // namespace s2
}  // namespace kernels
}  // namespace edgerun
#endif
