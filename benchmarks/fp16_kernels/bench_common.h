// Shared by the fp32 / fp16 kernel micro-benchmark (dw_fp16_bench.cpp): aligned buffers, layer
// shapes and padding, lane masks, fp16 loads and stores, ReLU6.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace {

using half = _Float16;

// 64-byte aligned vectors, as the engine's arena and padded planes (rows on cache lines).
template <typename T>
struct Aligned {
  using value_type = T;
  Aligned() = default;
  template <typename U>
  Aligned(const Aligned<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64)); }
  void deallocate(T* p, size_t) { std::free(p); }
  template <typename U>
  bool operator==(const Aligned<U>&) const { return true; }
  template <typename U>
  bool operator!=(const Aligned<U>&) const { return false; }
};
template <typename T>
using avec = std::vector<T, Aligned<T>>;

struct Shape {
  std::string name;
  int64_t c, h, w;
  int k, s;
  int64_t pt, pl, pb, pr, oh, ow;
};

// TF-style "same" padding, as EfficientNet-Lite0's graph has it (stride 2: less on top / left).
Shape make_shape(const std::string& name, int64_t c, int64_t hw, int k, int s) {
  Shape p{name, c, hw, hw, k, s, 0, 0, 0, 0, 0, 0};
  const int64_t total = s == 1 ? k - 1 : std::max<int64_t>((hw / 2 - 1) * 2 + k - hw, 0);
  p.pt = p.pl = total / 2;
  p.pb = p.pr = total - total / 2;
  p.oh = (hw + total - k) / s + 1;
  p.ow = p.oh;
  return p;
}

constexpr float kLo = 0.f, kHi = 6.f;  // ReLU6, as every depthwise of the model

// ---------------------------------------------------------------------------------------
// lanes, loads and stores
// ---------------------------------------------------------------------------------------
inline __mmask16 lanes(int64_t lo, int64_t hi) {
  lo = lo < 0 ? 0 : lo;
  hi = hi > 16 ? 16 : hi;
  return hi <= lo ? __mmask16(0) : __mmask16(((1u << hi) - 1u) & ~((1u << lo) - 1u));
}
inline __mmask32 lanes32(int64_t lo, int64_t hi) {
  lo = lo < 0 ? 0 : lo;
  hi = hi > 32 ? 32 : hi;
  return hi <= lo ? __mmask32(0) : __mmask32(((uint64_t(1) << hi) - 1u) & ~((uint64_t(1) << lo) - 1u));
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512fp16"))) inline __m512h join(__m256h lo, __m256h hi) {
  return _mm512_castsi512_ph(_mm512_inserti64x4(_mm512_zextsi256_si512(_mm256_castph_si256(lo)),
                                                _mm256_castph_si256(hi), 1));
}
// 32 fp16 lanes from p[0..31] (lanes off in m read as 0); from floats: converted.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512fp16"))) inline __m512h load32(const half* p, __mmask32 m) {
  return _mm512_castsi512_ph(_mm512_maskz_loadu_epi16(m, p));
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512fp16"))) inline __m512h load32(const float* p, __mmask32 m) {
  const __m256h lo = _mm512_cvtxps_ph(_mm512_maskz_loadu_ps(__mmask16(m), p));
  const __m256h hi = _mm512_cvtxps_ph(_mm512_maskz_loadu_ps(__mmask16(m >> 16), p + 16));
  return join(lo, hi);
}
// 16 fp16 lanes (a 256-bit half) from p[0..15].
__attribute__((target("avx512f,avx512bw,avx512vl,avx512fp16"))) inline __m256h load16(const half* p, __mmask16 m) {
  return _mm256_castsi256_ph(_mm256_maskz_loadu_epi16(m, p));
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512fp16"))) inline __m256h load16(const float* p, __mmask16 m) {
  return _mm512_cvtxps_ph(_mm512_maskz_loadu_ps(m, p));
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512fp16"))) inline void store32(half* p, __mmask32 m, __m512h v) {
  _mm512_mask_storeu_epi16(p, m, _mm512_castph_si512(v));
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512fp16"))) inline void store32(float* p, __mmask32 m, __m512h v) {
  const __m512i i = _mm512_castph_si512(v);
  _mm512_mask_storeu_ps(p, __mmask16(m), _mm512_cvtxph_ps(_mm256_castsi256_ph(_mm512_castsi512_si256(i))));
  _mm512_mask_storeu_ps(p + 16, __mmask16(m >> 16), _mm512_cvtxph_ps(_mm256_castsi256_ph(_mm512_extracti64x4_epi64(i, 1))));
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512fp16"))) inline void store16(half* p, __mmask16 m, __m256h v) {
  _mm256_mask_storeu_epi16(p, m, _mm256_castph_si256(v));
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512fp16"))) inline void store16(float* p, __mmask16 m, __m256h v) {
  _mm512_mask_storeu_ps(p, m, _mm512_cvtxph_ps(v));
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512fp16"))) inline __m512h relu6h(__m512h v) {
  return _mm512_min_ph(_mm512_max_ph(v, _mm512_setzero_ph()), _mm512_set1_ph(half(kHi)));
}

}  // namespace
