// The fp32 depthwise kernels of the micro-benchmark: the engine's (cpp/src/kernels_dwconv_avx512.cpp)
// structure, ReLU6 only. Included by dw_fp16_bench.cpp.
#pragma once

#include "bench_common.h"

namespace {
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
}  // namespace
