// Internal to the AVX-512 and AMX int8 Conv paths: the dequantize + bias +
// activation epilogue on 16 outputs of one weight row, shared so both paths
// round identically (and like the portable one: kernels_qgemm.cpp).
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "edgerun/kernels.h"

namespace edgerun {
namespace kernels {
namespace qgemm {

// act(ws * (xs * float(t) + mn * R) + b) for 16 int32 sums t, each operation
// rounded on its own (explicit rounding mode: the compiler cannot contract an FMA).
__attribute__((target("avx512f"))) inline __m512 epilogue16(__m512i t, const float* xs,
                                                            const float* mn, __m512 ws, __m512 r,
                                                            __m512 b, Act act, float lo, float hi) {
  constexpr int kRN = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m512 f = _mm512_cvtepi32_ps(t);
  const __m512 a = _mm512_mul_round_ps(_mm512_loadu_ps(xs), f, kRN);
  const __m512 m = _mm512_mul_round_ps(_mm512_loadu_ps(mn), r, kRN);
  __m512 v = _mm512_add_round_ps(_mm512_mul_round_ps(ws, _mm512_add_round_ps(a, m, kRN), kRN), b, kRN);
  if (act == Act::kRelu) return _mm512_max_ps(v, _mm512_setzero_ps());
  if (act == Act::kClip) return _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(lo)), _mm512_set1_ps(hi));
  return v;
}

}  // namespace qgemm
}  // namespace kernels
}  // namespace edgerun
#endif
