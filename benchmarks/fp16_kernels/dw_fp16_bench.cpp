// fp32 vs fp16 (AVX512-FP16) depthwise and small-K 1x1 kernels on EfficientNet-Lite0's
// shapes: a standalone micro-benchmark for benchmarks/explore_fp16_front.py's speed half.
// Not part of the package build; build and run with benchmarks/fp16_kernels/build.sh.
//
// The fp32 depthwise kernels copy the structure of cpp/src/kernels_dwconv_avx512.cpp
// (stride 1: the zero-bordered plane copy, then blocks of 4 output rows x up to 4 vectors
// that walk the input rows; stride 1 with rows of <= 16 outputs: direct_rows on the input
// plane, 8 rows per block; stride 2: s2_plane, taps split from three masked loads by
// permutes). The fp16 kernels are the same code with 32 fp16 lanes per vector instead of 16
// floats (a 14-wide stride-1 plane puts two channels in one vector, as the engine's
// pair_plane does for <= 8 columns). Each fp16 kernel runs in two variants:
//   h16: activations stored as fp16 between layers (fp16 in, fp16 out);
//   cvt: activations stay fp32 between layers, converted to fp16 on load (in the plane copy,
//        or at each direct load) and back to fp32 on store.
// The 1x1 kernel (K = 16-32, the expands of blocks.1-3 and blocks.0's project) is a plain
// register-tiled product (8 output channels x 2 vectors of pixels, one FMA per k), the same
// in fp32 and fp16: it is not the engine's packed GEMM, only the fp16 / fp32 ratio is used.
//
// Timing: one thread; every sample is one whole layer (all channels), run once untimed just
// before (warm caches); variants alternate within each round (rotating order); medians over
// the rounds.
// Checks: fp16 results against fp32 (relative error), h16 == cvt bit for bit, and the
// vector fp16 FMAs against a scalar emulation that rounds float FMAs to fp16 (the emulation
// explore_fp16_front.py uses), counting the outputs that differ.
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

// ---------------------------------------------------------------------------------------
// fp32: the engine's kernels (kernels_dwconv_avx512.cpp), ReLU6 only
// ---------------------------------------------------------------------------------------
namespace f32 {

struct Padded { int64_t ph, pw; };
Padded padded_dims(const Shape& p) {
  const int64_t owp = (p.ow + 15) / 16 * 16;
  const int64_t cols = owp - 1 + p.k;
  return {p.oh - 1 + p.k, (cols + 15) / 16 * 16};
}

__attribute__((target("avx512f"))) void pad_plane(const Shape& p, const Padded& d, const float* xc, float* buf) {
  const int64_t nv = d.pw / 16;
  for (int64_t r = 0; r < d.ph; ++r) {
    const int64_t iy = r - p.pt;
    float* o = buf + r * d.pw;
    if (iy < 0 || iy >= p.h) {
      for (int64_t i = 0; i < d.pw; i += 16) _mm512_storeu_ps(o + i, _mm512_setzero_ps());
      continue;
    }
    const float* xr = xc + iy * p.w - p.pl;
    for (int64_t k = 0; k < nv; ++k)
      _mm512_storeu_ps(o + k * 16, _mm512_maskz_loadu_ps(lanes(p.pl - k * 16, p.w + p.pl - k * 16), xr + k * 16));
  }
}

template <int K, int NR, int NV>
__attribute__((target("avx512f"))) inline void block(const Shape& p, const float* row0, const Padded& d,
                                                     const float* wc, float bias, int64_t ox, float* o,
                                                     int64_t valid) {
  __m512 acc[NR][NV];
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_set1_ps(bias);
  const float* xb = row0 + ox;
#pragma GCC unroll 16
  for (int q = 0; q < NR - 1 + K; ++q) {
    const float* xr = xb + q * d.pw;
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j) {
      __m512 xv[NV];
      for (int v = 0; v < NV; ++v) xv[v] = _mm512_loadu_ps(xr + j + v * 16);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) {
        const int i = q - r;
        if (i < 0 || i >= K) continue;
        const __m512 wv = _mm512_set1_ps(wc[i * K + j]);
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(wv, xv[v], acc[r][v]);
      }
    }
  }
  const __m512 lo = _mm512_set1_ps(kLo), hi = _mm512_set1_ps(kHi);
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v)
      _mm512_mask_storeu_ps(o + r * p.ow + ox + v * 16, lanes(0, valid - 16 * v),
                            _mm512_min_ps(_mm512_max_ps(acc[r][v], lo), hi));
}

template <int K, int NR>
__attribute__((target("avx512f"))) inline void rows(const Shape& p, const float* row0, const Padded& d,
                                                    const float* wc, float bias, float* o) {
  int64_t ox = 0;
  for (; ox + 64 <= p.ow; ox += 64) block<K, NR, 4>(p, row0, d, wc, bias, ox, o, 64);
  const int64_t rest = p.ow - ox;
  if (rest > 48) block<K, NR, 4>(p, row0, d, wc, bias, ox, o, rest);
  else if (rest > 32) block<K, NR, 3>(p, row0, d, wc, bias, ox, o, rest);
  else if (rest > 16) block<K, NR, 2>(p, row0, d, wc, bias, ox, o, rest);
  else if (rest > 0) block<K, NR, 1>(p, row0, d, wc, bias, ox, o, rest);
}

template <int K>
__attribute__((target("avx512f"))) void plane(const Shape& p, const Padded& d, const float* buf, const float* wc,
                                              float bias, float* yc) {
  int64_t oy = 0;
  for (; oy + 4 <= p.oh; oy += 4) rows<K, 4>(p, buf + oy * d.pw, d, wc, bias, yc + oy * p.ow);
  const float* rest = buf + oy * d.pw;
  float* o = yc + oy * p.ow;
  switch (p.oh - oy) {
    case 3: rows<K, 3>(p, rest, d, wc, bias, o); break;
    case 2: rows<K, 2>(p, rest, d, wc, bias, o); break;
    case 1: rows<K, 1>(p, rest, d, wc, bias, o); break;
    default: break;
  }
}

template <int K, int NR>
__attribute__((target("avx512f"))) inline void direct_rows(const Shape& p, const float* xc, const float* wc,
                                                           float bias, int64_t oy0, const __mmask16* cols, float* o) {
  __m512 acc[NR];
  for (int r = 0; r < NR; ++r) acc[r] = _mm512_set1_ps(bias);
#pragma GCC unroll 16
  for (int q = 0; q < NR - 1 + K; ++q) {
    const int64_t iy = oy0 - p.pt + q;
    const bool inside = iy >= 0 && iy < p.h;
    const float* xr = xc + iy * p.w - p.pl;
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j) {
      const __m512 xv = inside ? _mm512_maskz_loadu_ps(cols[j], xr + j) : _mm512_setzero_ps();
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) {
        const int i = q - r;
        if (i < 0 || i >= K) continue;
        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(wc[i * K + j]), xv, acc[r]);
      }
    }
  }
  const __m512 lo = _mm512_set1_ps(kLo), hi = _mm512_set1_ps(kHi);
  const __mmask16 m = lanes(0, p.ow);
  for (int r = 0; r < NR; ++r) _mm512_mask_storeu_ps(o + r * p.ow, m, _mm512_min_ps(_mm512_max_ps(acc[r], lo), hi));
}

template <int K>
__attribute__((target("avx512f"))) void direct_plane(const Shape& p, const float* xc, const float* wc, float bias,
                                                     float* yc) {
  __mmask16 cols[K];
  for (int j = 0; j < K; ++j) cols[j] = lanes(p.pl - j, p.w + p.pl - j);
  int64_t oy = 0;
  for (; oy + 8 <= p.oh; oy += 8) direct_rows<K, 8>(p, xc, wc, bias, oy, cols, yc + oy * p.ow);
  float* o = yc + oy * p.ow;
  switch (p.oh - oy) {
    case 7: direct_rows<K, 7>(p, xc, wc, bias, oy, cols, o); break;
    case 6: direct_rows<K, 6>(p, xc, wc, bias, oy, cols, o); break;
    case 5: direct_rows<K, 5>(p, xc, wc, bias, oy, cols, o); break;
    case 4: direct_rows<K, 4>(p, xc, wc, bias, oy, cols, o); break;
    case 3: direct_rows<K, 3>(p, xc, wc, bias, oy, cols, o); break;
    case 2: direct_rows<K, 2>(p, xc, wc, bias, oy, cols, o); break;
    case 1: direct_rows<K, 1>(p, xc, wc, bias, oy, cols, o); break;
    default: break;
  }
}

template <int K>
__attribute__((target("avx512f"))) inline void taps(const float* xr, int64_t b, const __mmask16* m, __m512* tap) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512i next1 = _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);
  __m512 l[3];
  for (int t = 0; t < 3; ++t) l[t] = xr != nullptr ? _mm512_maskz_loadu_ps(m[t], xr + b + 16 * t) : _mm512_setzero_ps();
  const __m512 e = _mm512_permutex2var_ps(l[0], even, l[1]);
  const __m512 od = _mm512_permutex2var_ps(l[0], odd, l[1]);
  tap[0] = e;
  tap[1] = od;
  tap[2] = _mm512_permutex2var_ps(e, next1, l[2]);
  if (K == 5) {
    const __m512i next1_odd = _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17);
    const __m512i next2 = _mm512_setr_epi32(2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18);
    tap[3] = _mm512_permutex2var_ps(od, next1_odd, l[2]);
    tap[4] = _mm512_permutex2var_ps(e, next2, l[2]);
  }
}

template <int K, int NR, int NV>
__attribute__((target("avx512f"))) inline void s2_block(const Shape& p, const float* xc, const float* wc, float bias,
                                                        int64_t oy0, int64_t ox, float* o, int64_t valid) {
  __mmask16 m[NV][3];
  for (int v = 0; v < NV; ++v)
    for (int t = 0; t < 3; ++t) {
      const int64_t b = 2 * (ox + 16 * v) - p.pl + 16 * t;
      m[v][t] = lanes(-b, p.w - b);
    }
  __m512 acc[NR][NV];
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_set1_ps(bias);
#pragma GCC unroll 16
  for (int q = 0; q < (NR - 1) * 2 + K; ++q) {
    const int64_t iy = 2 * oy0 - p.pt + q;
    const float* xr = iy >= 0 && iy < p.h ? xc + iy * p.w : nullptr;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      __m512 tap[K];
      taps<K>(xr, 2 * (ox + 16 * v) - p.pl, m[v], tap);
#pragma GCC unroll 8
      for (int j = 0; j < K; ++j)
#pragma GCC unroll 4
        for (int r = 0; r < NR; ++r) {
          const int i = q - 2 * r;
          if (i < 0 || i >= K) continue;
          acc[r][v] = _mm512_fmadd_ps(_mm512_set1_ps(wc[i * K + j]), tap[j], acc[r][v]);
        }
    }
  }
  const __m512 lo = _mm512_set1_ps(kLo), hi = _mm512_set1_ps(kHi);
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v)
      _mm512_mask_storeu_ps(o + r * p.ow + ox + 16 * v, lanes(0, valid - 16 * v),
                            _mm512_min_ps(_mm512_max_ps(acc[r][v], lo), hi));
}

template <int K, int NR>
__attribute__((target("avx512f"))) inline void s2_rows(const Shape& p, const float* xc, const float* wc, float bias,
                                                       int64_t oy0, float* o) {
  int64_t ox = 0;
  for (; ox + 32 <= p.ow; ox += 32) s2_block<K, NR, 2>(p, xc, wc, bias, oy0, ox, o, 32);
  const int64_t rest = p.ow - ox;
  if (rest > 16) s2_block<K, NR, 2>(p, xc, wc, bias, oy0, ox, o, rest);
  else if (rest > 0) s2_block<K, NR, 1>(p, xc, wc, bias, oy0, ox, o, rest);
}

template <int K>
__attribute__((target("avx512f"))) void s2_plane(const Shape& p, const float* xc, const float* wc, float bias,
                                                 float* yc) {
  int64_t oy = 0;
  for (; oy + 4 <= p.oh; oy += 4) s2_rows<K, 4>(p, xc, wc, bias, oy, yc + oy * p.ow);
  float* o = yc + oy * p.ow;
  switch (p.oh - oy) {
    case 3: s2_rows<K, 3>(p, xc, wc, bias, oy, o); break;
    case 2: s2_rows<K, 2>(p, xc, wc, bias, oy, o); break;
    case 1: s2_rows<K, 1>(p, xc, wc, bias, oy, o); break;
    default: break;
  }
}

}  // namespace f32

// ---------------------------------------------------------------------------------------
// fp16: the same kernels, 32 lanes per vector; TI / TO: the activations' type in memory
// ---------------------------------------------------------------------------------------
namespace f16 {

#define ER_FP16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512fp16")))

struct Padded { int64_t ph, pw; };
Padded padded_dims(const Shape& p) {
  const int64_t owp = (p.ow + 31) / 32 * 32;
  const int64_t cols = owp - 1 + p.k;
  return {p.oh - 1 + p.k, (cols + 31) / 32 * 32};  // rows of 64 bytes, as the fp32 copy
}

// The zero-bordered fp16 plane (a float input is converted here: convert on load).
template <typename TI>
ER_FP16 void pad_plane(const Shape& p, const Padded& d, const TI* xc, half* buf) {
  const int64_t nv = d.pw / 32;
  for (int64_t r = 0; r < d.ph; ++r) {
    const int64_t iy = r - p.pt;
    half* o = buf + r * d.pw;
    if (iy < 0 || iy >= p.h) {
      for (int64_t i = 0; i < d.pw; i += 32) _mm512_storeu_ph(o + i, _mm512_setzero_ph());
      continue;
    }
    const TI* xr = xc + iy * p.w - p.pl;
    for (int64_t k = 0; k < nv; ++k)
      _mm512_storeu_ph(o + k * 32, load32(xr + k * 32, lanes32(p.pl - k * 32, p.w + p.pl - k * 32)));
  }
}

template <int K, int NR, int NV, typename TO>
ER_FP16 inline void block(const Shape& p, const half* row0, const Padded& d, const half* wc, half bias, int64_t ox,
                          TO* o, int64_t valid) {
  __m512h acc[NR][NV];
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_set1_ph(bias);
  const half* xb = row0 + ox;
#pragma GCC unroll 16
  for (int q = 0; q < NR - 1 + K; ++q) {
    const half* xr = xb + q * d.pw;
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j) {
      __m512h xv[NV];
      for (int v = 0; v < NV; ++v) xv[v] = _mm512_loadu_ph(xr + j + v * 32);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) {
        const int i = q - r;
        if (i < 0 || i >= K) continue;
        const __m512h wv = _mm512_set1_ph(wc[i * K + j]);
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ph(wv, xv[v], acc[r][v]);
      }
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) store32(o + r * p.ow + ox + v * 32, lanes32(0, valid - 32 * v), relu6h(acc[r][v]));
}

template <int K, int NR, typename TO>
ER_FP16 inline void rows(const Shape& p, const half* row0, const Padded& d, const half* wc, half bias, TO* o) {
  int64_t ox = 0;
  for (; ox + 128 <= p.ow; ox += 128) block<K, NR, 4>(p, row0, d, wc, bias, ox, o, 128);
  const int64_t rest = p.ow - ox;
  if (rest > 96) block<K, NR, 4>(p, row0, d, wc, bias, ox, o, rest);
  else if (rest > 64) block<K, NR, 3>(p, row0, d, wc, bias, ox, o, rest);
  else if (rest > 32) block<K, NR, 2>(p, row0, d, wc, bias, ox, o, rest);
  else if (rest > 0) block<K, NR, 1>(p, row0, d, wc, bias, ox, o, rest);
}

template <int K, typename TO>
ER_FP16 void plane(const Shape& p, const Padded& d, const half* buf, const half* wc, half bias, TO* yc) {
  int64_t oy = 0;
  for (; oy + 4 <= p.oh; oy += 4) rows<K, 4>(p, buf + oy * d.pw, d, wc, bias, yc + oy * p.ow);
  const half* rest = buf + oy * d.pw;
  TO* o = yc + oy * p.ow;
  switch (p.oh - oy) {
    case 3: rows<K, 3>(p, rest, d, wc, bias, o); break;
    case 2: rows<K, 2>(p, rest, d, wc, bias, o); break;
    case 1: rows<K, 1>(p, rest, d, wc, bias, o); break;
    default: break;
  }
}

// Rows of <= 16 outputs: channel c in lanes 0-15, c + 1 in lanes 16-31 (the engine's
// pair_plane idea; the fp32 kernel, direct_rows, runs one channel per 16-lane vector).
template <int K, int NR, typename TI, typename TO>
ER_FP16 inline void pair_rows(const Shape& p, const TI* x0, const TI* x1, const __m512h* wv, __m512h bias,
                              int64_t oy0, const __mmask16* cols, TO* o0, TO* o1) {
  __m512h acc[NR];
  for (int r = 0; r < NR; ++r) acc[r] = bias;
#pragma GCC unroll 16
  for (int q = 0; q < NR - 1 + K; ++q) {
    const int64_t iy = oy0 - p.pt + q;
    const bool inside = iy >= 0 && iy < p.h;
    const TI* r0 = x0 + iy * p.w - p.pl;
    const TI* r1 = x1 + iy * p.w - p.pl;
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j) {
      const __m512h xv = inside ? join(load16(r0 + j, cols[j]), load16(r1 + j, cols[j])) : _mm512_setzero_ph();
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) {
        const int i = q - r;
        if (i < 0 || i >= K) continue;
        acc[r] = _mm512_fmadd_ph(wv[i * K + j], xv, acc[r]);
      }
    }
  }
  const __mmask16 m = lanes(0, p.ow);
  for (int r = 0; r < NR; ++r) {
    const __m512i v = _mm512_castph_si512(relu6h(acc[r]));
    store16(o0 + r * p.ow, m, _mm256_castsi256_ph(_mm512_castsi512_si256(v)));
    store16(o1 + r * p.ow, m, _mm256_castsi256_ph(_mm512_extracti64x4_epi64(v, 1)));
  }
}

template <int K, typename TI, typename TO>
ER_FP16 void pair_plane(const Shape& p, const TI* x0, const TI* x1, const half* w0, const half* w1, half b0,
                        half b1, TO* y0, TO* y1) {
  __m512h wv[K * K];
  for (int t = 0; t < K * K; ++t) wv[t] = join(_mm256_set1_ph(w0[t]), _mm256_set1_ph(w1[t]));
  const __m512h bias = join(_mm256_set1_ph(b0), _mm256_set1_ph(b1));
  __mmask16 cols[K];
  for (int j = 0; j < K; ++j) cols[j] = lanes(p.pl - j, p.w + p.pl - j);
  int64_t oy = 0;
  for (; oy + 8 <= p.oh; oy += 8) pair_rows<K, 8>(p, x0, x1, wv, bias, oy, cols, y0 + oy * p.ow, y1 + oy * p.ow);
  TO* o0 = y0 + oy * p.ow;
  TO* o1 = y1 + oy * p.ow;
  switch (p.oh - oy) {
    case 7: pair_rows<K, 7>(p, x0, x1, wv, bias, oy, cols, o0, o1); break;
    case 6: pair_rows<K, 6>(p, x0, x1, wv, bias, oy, cols, o0, o1); break;
    case 5: pair_rows<K, 5>(p, x0, x1, wv, bias, oy, cols, o0, o1); break;
    case 4: pair_rows<K, 4>(p, x0, x1, wv, bias, oy, cols, o0, o1); break;
    case 3: pair_rows<K, 3>(p, x0, x1, wv, bias, oy, cols, o0, o1); break;
    case 2: pair_rows<K, 2>(p, x0, x1, wv, bias, oy, cols, o0, o1); break;
    case 1: pair_rows<K, 1>(p, x0, x1, wv, bias, oy, cols, o0, o1); break;
    default: break;
  }
}

// tap[j] lane i = xr[b + 2 i + j]: three masked 32-lane loads (columns b .. b + 95), split
// into even / odd columns and shifted by two-source word permutes (as f32::taps).
template <int K, typename TI>
ER_FP16 inline void taps(const TI* xr, int64_t b, const __mmask32* m, __m512h* tap) {
  const __m512i even = _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32, 30, 28, 26,
                                        24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i one = _mm512_set1_epi16(1);
  const __m512i odd = _mm512_add_epi16(even, one);
  const __m512i idx = _mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13,
                                       12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i next1 = _mm512_add_epi16(idx, one);  // 1 .. 31, then 32: lane 0 of the third load
  __m512i l[3];
  for (int t = 0; t < 3; ++t)
    l[t] = xr != nullptr ? _mm512_castph_si512(load32(xr + b + 32 * t, m[t])) : _mm512_setzero_si512();
  const __m512i e = _mm512_permutex2var_epi16(l[0], even, l[1]);
  const __m512i od = _mm512_permutex2var_epi16(l[0], odd, l[1]);
  tap[0] = _mm512_castsi512_ph(e);
  tap[1] = _mm512_castsi512_ph(od);
  tap[2] = _mm512_castsi512_ph(_mm512_permutex2var_epi16(e, next1, l[2]));
  if (K == 5) {
    const __m512i next1_odd = _mm512_mask_set1_epi16(next1, __mmask32(1u) << 31, 33);
    const __m512i next2 = _mm512_mask_set1_epi16(_mm512_add_epi16(next1, one), __mmask32(1u) << 31, 34);
    tap[3] = _mm512_castsi512_ph(_mm512_permutex2var_epi16(od, next1_odd, l[2]));
    tap[4] = _mm512_castsi512_ph(_mm512_permutex2var_epi16(e, next2, l[2]));
  }
}

template <int K, int NR, int NV, typename TI, typename TO>
ER_FP16 inline void s2_block(const Shape& p, const TI* xc, const half* wc, half bias, int64_t oy0, int64_t ox, TO* o,
                             int64_t valid) {
  __mmask32 m[NV][3];
  for (int v = 0; v < NV; ++v)
    for (int t = 0; t < 3; ++t) {
      const int64_t b = 2 * (ox + 32 * v) - p.pl + 32 * t;
      m[v][t] = lanes32(-b, p.w - b);
    }
  __m512h acc[NR][NV];
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_set1_ph(bias);
#pragma GCC unroll 16
  for (int q = 0; q < (NR - 1) * 2 + K; ++q) {
    const int64_t iy = 2 * oy0 - p.pt + q;
    const TI* xr = iy >= 0 && iy < p.h ? xc + iy * p.w : nullptr;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      __m512h tap[K];
      taps<K>(xr, 2 * (ox + 32 * v) - p.pl, m[v], tap);
#pragma GCC unroll 8
      for (int j = 0; j < K; ++j)
#pragma GCC unroll 4
        for (int r = 0; r < NR; ++r) {
          const int i = q - 2 * r;
          if (i < 0 || i >= K) continue;
          acc[r][v] = _mm512_fmadd_ph(_mm512_set1_ph(wc[i * K + j]), tap[j], acc[r][v]);
        }
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v)
      store32(o + r * p.ow + ox + 32 * v, lanes32(0, valid - 32 * v), relu6h(acc[r][v]));
}

template <int K, int NR, typename TI, typename TO>
ER_FP16 inline void s2_rows(const Shape& p, const TI* xc, const half* wc, half bias, int64_t oy0, TO* o) {
  int64_t ox = 0;
  for (; ox + 64 <= p.ow; ox += 64) s2_block<K, NR, 2>(p, xc, wc, bias, oy0, ox, o, 64);
  const int64_t rest = p.ow - ox;
  if (rest > 32) s2_block<K, NR, 2>(p, xc, wc, bias, oy0, ox, o, rest);
  else if (rest > 0) s2_block<K, NR, 1>(p, xc, wc, bias, oy0, ox, o, rest);
}

template <int K, typename TI, typename TO>
ER_FP16 void s2_plane(const Shape& p, const TI* xc, const half* wc, half bias, TO* yc) {
  int64_t oy = 0;
  for (; oy + 4 <= p.oh; oy += 4) s2_rows<K, 4>(p, xc, wc, bias, oy, yc + oy * p.ow);
  TO* o = yc + oy * p.ow;
  switch (p.oh - oy) {
    case 3: s2_rows<K, 3>(p, xc, wc, bias, oy, o); break;
    case 2: s2_rows<K, 2>(p, xc, wc, bias, oy, o); break;
    case 1: s2_rows<K, 1>(p, xc, wc, bias, oy, o); break;
    default: break;
  }
}

}  // namespace f16

// ---------------------------------------------------------------------------------------
// whole layers
// ---------------------------------------------------------------------------------------
struct Layer {
  Shape p;
  avec<float> x, w, b, y;   // fp32
  avec<half> xh, wh, bh, yh;  // fp16
  avec<float> yc;           // cvt output (fp32)
  avec<float> buf;          // fp32 padded plane
  avec<half> bufh;          // fp16 padded plane
};

template <int K>
void dw_f32_k(Layer& L) {
  const Shape& p = L.p;
  const f32::Padded d = f32::padded_dims(p);
  for (int64_t c = 0; c < p.c; ++c) {
    const float* xc = L.x.data() + c * p.h * p.w;
    float* yc = L.y.data() + c * p.oh * p.ow;
    const float* wc = L.w.data() + c * K * K;
    if (p.s == 2) f32::s2_plane<K>(p, xc, wc, L.b[c], yc);
    else if (p.ow <= 16) f32::direct_plane<K>(p, xc, wc, L.b[c], yc);
    else {
      f32::pad_plane(p, d, xc, L.buf.data());
      f32::plane<K>(p, d, L.buf.data(), wc, L.b[c], yc);
    }
  }
}

template <int K, typename TI, typename TO>
void dw_f16_k(Layer& L, const TI* x, TO* y) {
  const Shape& p = L.p;
  const f16::Padded d = f16::padded_dims(p);
  const int64_t in = p.h * p.w, out = p.oh * p.ow;
  if (p.s == 1 && p.ow <= 16) {
    for (int64_t c = 0; c + 1 < p.c; c += 2)
      f16::pair_plane<K>(p, x + c * in, x + (c + 1) * in, L.wh.data() + c * K * K, L.wh.data() + (c + 1) * K * K,
                         L.bh[c], L.bh[c + 1], y + c * out, y + (c + 1) * out);
    return;  // the shapes here have an even channel count
  }
  for (int64_t c = 0; c < p.c; ++c) {
    const half* wc = L.wh.data() + c * K * K;
    if (p.s == 2) {
      f16::s2_plane<K>(p, x + c * in, wc, L.bh[c], y + c * out);
    } else {
      f16::pad_plane(p, d, x + c * in, L.bufh.data());
      f16::plane<K>(p, d, L.bufh.data(), wc, L.bh[c], y + c * out);
    }
  }
}

void dw_f32(Layer& L) { L.p.k == 3 ? dw_f32_k<3>(L) : dw_f32_k<5>(L); }
void dw_h16(Layer& L) {
  L.p.k == 3 ? dw_f16_k<3>(L, L.xh.data(), L.yh.data()) : dw_f16_k<5>(L, L.xh.data(), L.yh.data());
}
void dw_cvt(Layer& L) {
  L.p.k == 3 ? dw_f16_k<3>(L, L.x.data(), L.yc.data()) : dw_f16_k<5>(L, L.x.data(), L.yc.data());
}

// Scalar fp16 emulation of one output (explore_fp16_front.py's): float FMA rounded to fp16.
half dw_emulated(const Layer& L, int64_t c, int64_t oy, int64_t ox) {
  const Shape& p = L.p;
  half acc = L.bh[c];
  for (int i = 0; i < p.k; ++i)
    for (int j = 0; j < p.k; ++j) {
      const int64_t iy = oy * p.s - p.pt + i, ix = ox * p.s - p.pl + j;
      const half xv = iy >= 0 && iy < p.h && ix >= 0 && ix < p.w ? L.xh[(c * p.h + iy) * p.w + ix] : half(0);
      acc = half(std::fmaf(float(L.wh[c * p.k * p.k + i * p.k + j]), float(xv), float(acc)));
    }
  return std::min(std::max(acc, half(kLo)), half(kHi));
}

// ---------------------------------------------------------------------------------------
// 1x1, small K: y[n][p] = relu6(sum_k w[n][k] x[k][p] + b[n]); tiles of 8 channels x 2 vectors
// ---------------------------------------------------------------------------------------
struct Pw {
  std::string name;
  int64_t k, n, hw;
  avec<float> x, w, b, y, yc;
  avec<half> xh, wh, bh, yh;
};

__attribute__((target("avx512f"))) void pw_f32(Pw& L) {
  const int64_t P = L.hw * L.hw;
  for (int64_t n0 = 0; n0 < L.n; n0 += 8)
    for (int64_t p0 = 0; p0 < P; p0 += 32) {
      const __mmask16 m0 = lanes(0, P - p0), m1 = lanes(0, P - p0 - 16);
      __m512 acc[8][2];
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
      for (int64_t k = 0; k < L.k; ++k) {
        const float* xk = L.x.data() + k * P + p0;
        const __m512 x0 = _mm512_maskz_loadu_ps(m0, xk), x1 = _mm512_maskz_loadu_ps(m1, xk + 16);
#pragma GCC unroll 8
        for (int r = 0; r < 8; ++r) {
          const __m512 wv = _mm512_set1_ps(L.w[(n0 + r) * L.k + k]);
          acc[r][0] = _mm512_fmadd_ps(wv, x0, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ps(wv, x1, acc[r][1]);
        }
      }
      const __m512 lo = _mm512_set1_ps(kLo), hi = _mm512_set1_ps(kHi);
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r) {
        const __m512 bv = _mm512_set1_ps(L.b[n0 + r]);
        float* yr = L.y.data() + (n0 + r) * P + p0;
        _mm512_mask_storeu_ps(yr, m0, _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(acc[r][0], bv), lo), hi));
        _mm512_mask_storeu_ps(yr + 16, m1, _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(acc[r][1], bv), lo), hi));
      }
    }
}

template <typename TI, typename TO>
ER_FP16 void pw_f16(Pw& L, const TI* x, TO* y) {
  const int64_t P = L.hw * L.hw;
  for (int64_t n0 = 0; n0 < L.n; n0 += 8)
    for (int64_t p0 = 0; p0 < P; p0 += 64) {
      const __mmask32 m0 = lanes32(0, P - p0), m1 = lanes32(0, P - p0 - 32);
      __m512h acc[8][2];
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ph();
      for (int64_t k = 0; k < L.k; ++k) {
        const TI* xk = x + k * P + p0;
        const __m512h x0 = load32(xk, m0), x1 = load32(xk + 32, m1);
#pragma GCC unroll 8
        for (int r = 0; r < 8; ++r) {
          const __m512h wv = _mm512_set1_ph(L.wh[(n0 + r) * L.k + k]);
          acc[r][0] = _mm512_fmadd_ph(wv, x0, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ph(wv, x1, acc[r][1]);
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r) {
        const __m512h bv = _mm512_set1_ph(L.bh[n0 + r]);
        TO* yr = y + (n0 + r) * P + p0;
        store32(yr, m0, relu6h(_mm512_add_ph(acc[r][0], bv)));
        store32(yr + 32, m1, relu6h(_mm512_add_ph(acc[r][1], bv)));
      }
    }
}

// ---------------------------------------------------------------------------------------
// timing
// ---------------------------------------------------------------------------------------
double now_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Runs the variants round by round (order rotated each round), returns each one's median.
template <typename F>
std::vector<double> interleaved(const std::vector<F>& fns, int rounds) {
  std::vector<std::vector<double>> t(fns.size());
  for (int r = -3; r < rounds; ++r)  // 3 warm-up rounds
    for (size_t i = 0; i < fns.size(); ++i) {
      const size_t v = (i + size_t(r + 3)) % fns.size();
      fns[v]();  // untimed: the layer's input and output in cache as far as they fit, as after
                 // the layer before it (the engine's case), not as the other variants left them
      const double t0 = now_us();
      fns[v]();
      const double dt = now_us() - t0;
      if (r >= 0) t[v].push_back(dt);
    }
  std::vector<double> out;
  for (auto& s : t) out.push_back(median(s));
  return out;
}

template <typename T>
void fill(avec<T>& v, size_t n, std::mt19937& g, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  v.resize(n);
  for (auto& e : v) e = T(u(g));
}

avec<half> to_half(const avec<float>& v) {
  avec<half> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = half(v[i]);
  return o;
}

// max |a - b| / max |b|
template <typename A>
double rel_err(const avec<A>& a, const avec<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num = std::max(num, std::fabs(double(a[i]) - double(b[i])));
    den = std::max(den, std::fabs(double(b[i])));
  }
  return den > 0 ? num / den : num;
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 51;
  FILE* js = argc > 2 ? std::fopen(argv[2], "w") : nullptr;
  if (!__builtin_cpu_supports("avx512fp16")) {
    std::fprintf(stderr, "this CPU has no AVX512-FP16\n");
    return 2;
  }
  std::mt19937 g(7);
  const std::vector<Shape> shapes = {
      make_shape("blocks.0 dw 32x112x112 3x3 s1", 32, 112, 3, 1),
      make_shape("blocks.1 dw 96x112x112 3x3 s2", 96, 112, 3, 2),
      make_shape("blocks.2 dw 144x56x56 3x3 s1", 144, 56, 3, 1),
      make_shape("blocks.3 dw 144x56x56 5x5 s2", 144, 56, 5, 2),
      make_shape("blocks.4 dw 240x28x28 5x5 s1", 240, 28, 5, 1),
      make_shape("blocks.5 dw 240x28x28 3x3 s2", 240, 28, 3, 2),
      make_shape("blocks.6-7 dw 480x14x14 3x3 s1", 480, 14, 3, 1),
  };
  if (js) std::fprintf(js, "{\"rounds\": %d, \"threads\": 1, \"depthwise\": [\n", rounds);
  std::printf("%-34s %9s %9s %9s %7s %7s %8s %8s %s\n", "layer (median us, 1 thread)", "f32", "h16", "cvt",
              "f32/h16", "f32/cvt", "rel.err", "h16!=cvt", "!=emul");
  for (size_t si = 0; si < shapes.size(); ++si) {
    Layer L;
    L.p = shapes[si];
    const Shape& p = L.p;
    fill(L.x, p.c * p.h * p.w, g, -1.f, 6.f);
    fill(L.w, p.c * p.k * p.k, g, -0.5f, 0.5f);
    fill(L.b, p.c, g, -0.5f, 0.5f);
    for (auto& v : L.x) v = float(half(v));  // same inputs for both: fp16 values
    for (auto& v : L.w) v = float(half(v));
    for (auto& v : L.b) v = float(half(v));
    L.xh = to_half(L.x), L.wh = to_half(L.w), L.bh = to_half(L.b);
    L.y.assign(p.c * p.oh * p.ow, 0.f), L.yc.assign(L.y.size(), 0.f), L.yh.assign(L.y.size(), half(0));
    const f32::Padded d = f32::padded_dims(p);
    const f16::Padded dh = f16::padded_dims(p);
    L.buf.assign(d.ph * d.pw + 64, 0.f), L.bufh.assign(dh.ph * dh.pw + 64, half(0));
    const std::vector<double> t = interleaved<std::function<void()>>(
        {[&] { dw_f32(L); }, [&] { dw_h16(L); }, [&] { dw_cvt(L); }}, rounds);
    int64_t cvt_diff = 0, emu_diff = 0, emu_n = 0;
    for (size_t i = 0; i < L.y.size(); ++i) cvt_diff += float(L.yh[i]) != L.yc[i];
    for (int64_t c = 0; c < std::min<int64_t>(p.c, 8); ++c)
      for (int64_t oy = 0; oy < p.oh; ++oy)
        for (int64_t ox = 0; ox < p.ow; ++ox, ++emu_n)
          emu_diff += dw_emulated(L, c, oy, ox) != L.yh[(c * p.oh + oy) * p.ow + ox];
    const double err = rel_err(L.yh, L.y);
    std::printf("%-34s %9.1f %9.1f %9.1f %7.2f %7.2f %8.1e %8lld %lld/%lld\n", p.name.c_str(), t[0], t[1], t[2],
                t[0] / t[1], t[0] / t[2], err, (long long)cvt_diff, (long long)emu_diff, (long long)emu_n);
    if (js)
      std::fprintf(js,
                   " {\"layer\": \"%s\", \"key\": \"dw %lld %lld %d %d\", \"f32_us\": %.1f, \"h16_us\": %.1f, "
                   "\"cvt_us\": %.1f, \"f32_over_h16\": %.3f, "
                   "\"f32_over_cvt\": %.3f, \"max_rel_err_h16\": %.2e, \"h16_cvt_differ\": %lld, "
                   "\"emulation_differ\": %lld, \"emulation_checked\": %lld}%s\n",
                   p.name.c_str(), (long long)p.c, (long long)p.h, p.k, p.s, t[0], t[1], t[2], t[0] / t[1], t[0] / t[2], err, (long long)cvt_diff,
                   (long long)emu_diff, (long long)emu_n, si + 1 < shapes.size() ? "," : "");
  }
  const std::vector<Pw> pws = {
      {"blocks.0 project 1x1 32->16 112x112", 32, 16, 112, {}, {}, {}, {}, {}, {}, {}, {}, {}},
      {"blocks.1 expand 1x1 16->96 112x112", 16, 96, 112, {}, {}, {}, {}, {}, {}, {}, {}, {}},
      {"blocks.2/3 expand 1x1 24->144 56x56", 24, 144, 56, {}, {}, {}, {}, {}, {}, {}, {}, {}},
  };
  if (js) std::fprintf(js, "], \"pointwise\": [\n");
  for (size_t li = 0; li < pws.size(); ++li) {
    Pw L = pws[li];
    const int64_t P = L.hw * L.hw;
    fill(L.x, L.k * P, g, -1.f, 6.f);
    fill(L.w, L.n * L.k, g, -0.3f, 0.3f);
    fill(L.b, L.n, g, -0.5f, 0.5f);
    for (auto& v : L.x) v = float(half(v));
    for (auto& v : L.w) v = float(half(v));
    for (auto& v : L.b) v = float(half(v));
    L.xh = to_half(L.x), L.wh = to_half(L.w), L.bh = to_half(L.b);
    L.y.assign(L.n * P, 0.f), L.yc.assign(L.y.size(), 0.f), L.yh.assign(L.y.size(), half(0));
    const std::vector<double> t = interleaved<std::function<void()>>(
        {[&] { pw_f32(L); }, [&] { pw_f16(L, L.xh.data(), L.yh.data()); },
         [&] { pw_f16(L, L.x.data(), L.yc.data()); }},
        rounds);
    int64_t cvt_diff = 0;
    for (size_t i = 0; i < L.y.size(); ++i) cvt_diff += float(L.yh[i]) != L.yc[i];
    const double err = rel_err(L.yh, L.y);
    std::printf("%-34s %9.1f %9.1f %9.1f %7.2f %7.2f %8.1e %8lld\n", L.name.c_str(), t[0], t[1], t[2], t[0] / t[1],
                t[0] / t[2], err, (long long)cvt_diff);
    if (js)
      std::fprintf(js,
                   " {\"layer\": \"%s\", \"key\": \"pw %lld %lld %lld\", \"f32_us\": %.1f, \"h16_us\": %.1f, "
                   "\"cvt_us\": %.1f, \"f32_over_h16\": %.3f, "
                   "\"f32_over_cvt\": %.3f, \"max_rel_err_h16\": %.2e, \"h16_cvt_differ\": %lld}%s\n",
                   L.name.c_str(), (long long)L.k, (long long)L.n, (long long)L.hw, t[0], t[1], t[2], t[0] / t[1], t[0] / t[2], err, (long long)cvt_diff,
                   li + 1 < pws.size() ? "," : "");
  }
  if (js) {
    std::fprintf(js, "]}\n");
    std::fclose(js);
  }
  return 0;
}
