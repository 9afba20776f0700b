// The fp16 (AVX512-FP16) depthwise kernels of the micro-benchmark: dw_f32.h's kernels on 32 fp16
// lanes. Included by dw_fp16_bench.cpp.
#pragma once

#include "bench_common.h"

namespace {
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
}  // namespace
