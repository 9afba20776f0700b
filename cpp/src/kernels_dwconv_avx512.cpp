// Depthwise convolution, AVX-512 plane kernel (see dwconv.h).
//
// Like the AVX2 kernel it sweeps the zero-bordered plane in blocks of NR output
// rows x NV vectors (here 16 floats) held in registers, but it walks the INPUT
// rows: each input vector is loaded once and fed to every output row of the
// block whose taps use it. With 4 output rows of a 3x3 stride-1 conv that is 6
// row loads per tap column instead of 12, and the loads, not the FMAs, bound
// this kernel. For every output the taps are still summed in (row, column)
// order with one FMA each, so results equal the AVX2 kernel's bit for bit.
// Which planes take which route (avx512_plane): stride 1 with rows of <= 16 outputs
// and stride 2 (3x3 / 5x5, no dilation) read the input plane directly (direct_plane,
// s2_plane); wider stride-1 planes go through the zero-bordered copy (plane).
#include "dwconv.h"

#include "gemm_ukr.h"
#include "vec512.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

namespace edgerun {
namespace kernels {
namespace dw {

namespace {

// NR output rows x NV vectors of 16 outputs from column ox; columns >= ox + valid
// are computed (the padded buffer covers them) but not stored. S: stride, K: taps.
template <int S, int K, int NR, int NV>
__attribute__((target("avx512f"))) inline void block(const ConvParams& p, const float* row0,
                                                     const Padded& d, const float* wc, float bias,
                                                     int64_t ox, float* o, int64_t valid) {
  __m512 acc[NR][NV];
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_set1_ps(bias);
  const float* xb = row0 + ox;  // stride 2: ox indexes the de-interleaved halves
#pragma GCC unroll 16
  for (int q = 0; q < (NR - 1) * S + K; ++q) {  // input rows of the block
    const float* xr = xb + q * d.pw;
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j) {
      const int64_t c = j * p.dw;
      const float* xj = S == 1 ? xr + c : xr + (c & 1) * d.half + (c >> 1);
      __m512 xv[NV];
      for (int v = 0; v < NV; ++v) xv[v] = _mm512_loadu_ps(xj + v * 16);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) {
        const int i = q - r * S;  // the tap row of output row r that reads input row q
        if (i < 0 || i >= K) continue;
        const __m512 wv = _mm512_set1_ps(wc[i * K + j]);
        for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(wv, xv[v], acc[r][v]);
      }
    }
  }
  const __m512 lo = _mm512_set1_ps(p.lo), hi = _mm512_set1_ps(p.hi);
  for (int r = 0; r < NR; ++r) {
    float* orow = o + r * p.ow + ox;
    for (int v = 0; v < NV; ++v) {
      const int64_t n = valid - 16 * v;
      const __mmask16 m = n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u);
      _mm512_mask_storeu_ps(orow + v * 16, m, act16(acc[r][v], p.act, lo, hi));
    }
  }
}

// NR output rows: full 64-wide blocks, then one block of ceil(rest / 16) vectors.
template <int S, int K, int NR>
__attribute__((target("avx512f"))) inline void rows(const ConvParams& p, const float* row0,
                                                    const Padded& d, const float* wc, float bias,
                                                    float* o) {
  int64_t ox = 0;
  for (; ox + 64 <= p.ow; ox += 64) block<S, K, NR, 4>(p, row0, d, wc, bias, ox, o, 64);
  const int64_t rest = p.ow - ox;
  if (rest > 48) block<S, K, NR, 4>(p, row0, d, wc, bias, ox, o, rest);
  else if (rest > 32) block<S, K, NR, 3>(p, row0, d, wc, bias, ox, o, rest);
  else if (rest > 16) block<S, K, NR, 2>(p, row0, d, wc, bias, ox, o, rest);
  else if (rest > 0) block<S, K, NR, 1>(p, row0, d, wc, bias, ox, o, rest);
}

constexpr int kRows = 4;  // output rows per block: 16 accumulators at NV = 4

// Stride-1 planes whose rows fit one vector (ow <= 16: the 14x14 and 7x7 planes
// of EfficientNet-Lite0): read straight from the input plane, no zero-bordered
// copy. Each input row is loaded once per tap column with the lanes outside the
// row masked off (they read as 0, where the copy held its zero border; rows
// outside the plane are a zero vector), so every output sums the same taps with
// the same FMAs in the same order as the padded kernels: bit-identical. Blocks
// of 8 output rows (then one of the remaining 1-7) keep 8 FMA chains in flight.
// The copy was ~1/3 of these planes' time (perf, 480 x 14 x 14, 3x3).
constexpr int kNarrowRows = 8;

template <int K, int NR>
__attribute__((target("avx512f"))) inline void direct_rows(const ConvParams& p, const float* xc,
                                                           const float* wc, float bias,
                                                           int64_t oy0, const __mmask16* cols,
                                                           float* o) {
  __m512 acc[NR];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) acc[r] = _mm512_set1_ps(bias);
#pragma GCC unroll 16
  for (int q = 0; q < NR - 1 + K; ++q) {  // input row oy0 - pt + q
    const int64_t iy = oy0 - p.pt + q;
    const bool inside = iy >= 0 && iy < p.h;
    const float* xr = xc + iy * p.w - p.pl;  // output column ox, tap j reads xr[ox + j * dw]
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j) {
      const __m512 xv = inside ? _mm512_maskz_loadu_ps(cols[j], xr + j * p.dw) : _mm512_setzero_ps();
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) {
        const int i = q - r;  // the tap row of output row r that reads input row q
        if (i < 0 || i >= K) continue;
        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(wc[i * K + j]), xv, acc[r]);
      }
    }
  }
  const __m512 lo = _mm512_set1_ps(p.lo), hi = _mm512_set1_ps(p.hi);
  const __mmask16 m = lanes(0, p.ow);
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) _mm512_mask_storeu_ps(o + r * p.ow, m, act16(acc[r], p.act, lo, hi));
}

template <int K>
__attribute__((target("avx512f"))) void direct_plane(const ConvParams& p, const Padded&,
                                                     const float* xc, const float* wc,
                                                     float bias, float* yc, const float* next) {
  if (next != nullptr)  // the next plane is small: prefetch it all up front
    for (int64_t l = 0; l < (p.h * p.w * int64_t(sizeof(float)) + 63) / 64; ++l)
      _mm_prefetch(reinterpret_cast<const char*>(next) + l * 64, _MM_HINT_T1);
  __mmask16 cols[K];
  for (int j = 0; j < K; ++j) cols[j] = lanes(p.pl - j * p.dw, p.w + p.pl - j * p.dw);
  int64_t oy = 0;
  for (; oy + kNarrowRows <= p.oh; oy += kNarrowRows)
    direct_rows<K, kNarrowRows>(p, xc, wc, bias, oy, cols, yc + oy * p.ow);
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

// Planes of <= 8 output columns (EfficientNet-Lite0's 7x7): one plane row fills 7 of a
// vector's 16 lanes, so two channels share each vector, channel c in lanes 0-7 and
// c + 1 in lanes 8-15 (half the FMAs of direct_rows for the same outputs). Loads and
// taps are direct_rows' (a masked 8-lane load per channel, rows outside the plane
// zero); each lane sums its own channel's taps in the same order: bit-identical.
template <int K, int NR>
__attribute__((target("avx512f,avx512vl"))) inline void pair_rows(
    const ConvParams& p, const float* x0, const float* x1, const __m512* wv, __m512 bias,
    int64_t oy0, const __mmask8* cols, float* o0, float* o1) {
  __m512 acc[NR];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) acc[r] = bias;
#pragma GCC unroll 16
  for (int q = 0; q < NR - 1 + K; ++q) {  // input row oy0 - pt + q
    const int64_t iy = oy0 - p.pt + q;
    const bool inside = iy >= 0 && iy < p.h;
    const float* r0 = x0 + iy * p.w - p.pl;  // output column ox, tap j reads r[ox + j * dw]
    const float* r1 = x1 + iy * p.w - p.pl;
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j) {
      __m512 xv = _mm512_setzero_ps();
      if (inside) {
        const __m256d lo = _mm256_castps_pd(_mm256_maskz_loadu_ps(cols[j], r0 + j * p.dw));
        const __m256d hi = _mm256_castps_pd(_mm256_maskz_loadu_ps(cols[j], r1 + j * p.dw));
        xv = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(lo), hi, 1));
      }
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) {
        const int i = q - r;  // the tap row of output row r that reads input row q
        if (i < 0 || i >= K) continue;
        acc[r] = _mm512_fmadd_ps(wv[i * K + j], xv, acc[r]);
      }
    }
  }
  const __m512 lo = _mm512_set1_ps(p.lo), hi = _mm512_set1_ps(p.hi);
  const __mmask8 m = __mmask8((1u << p.ow) - 1u);
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
    const __m512 v = act16(acc[r], p.act, lo, hi);
    _mm256_mask_storeu_ps(o0 + r * p.ow, m, _mm512_castps512_ps256(v));
    _mm256_mask_storeu_ps(o1 + r * p.ow, m, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  }
}

template <int K>
__attribute__((target("avx512f,avx512vl"))) void pair_plane(const ConvParams& p, const float* x0,
                                                            const float* x1, const float* w0,
                                                            const float* w1, float b0, float b1,
                                                            float* y0, float* y1) {
  __m512 wv[K * K];
  for (int t = 0; t < K * K; ++t)
    wv[t] = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(_mm256_set1_ps(w0[t]))),
                                                _mm256_castps_pd(_mm256_set1_ps(w1[t])), 1));
  const __m512 bias = _mm512_castpd_ps(_mm512_insertf64x4(
      _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_set1_ps(b0))), _mm256_castps_pd(_mm256_set1_ps(b1)), 1));
  __mmask8 cols[K];
  for (int j = 0; j < K; ++j) cols[j] = __mmask8(lanes(p.pl - j * p.dw, p.w + p.pl - j * p.dw) & 0xFF);
  int64_t oy = 0;
  for (; oy + kNarrowRows <= p.oh; oy += kNarrowRows)
    pair_rows<K, kNarrowRows>(p, x0, x1, wv, bias, oy, cols, y0 + oy * p.ow, y1 + oy * p.ow);
  float* o0 = y0 + oy * p.ow;
  float* o1 = y1 + oy * p.ow;
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

// Stride-2 planes read straight from the input plane too: no de-interleaved padded
// copy (that copy took ~45 % of a 144x56x56 5x5 stride-2 layer). For 16 outputs from
// column ox, tap j reads x[b + 2i + j], b = 2 ox - pl, i < 16: three masked loads
// (columns b .. b + 47; lanes outside the row read as 0, as the copy's border held),
// split into even / odd columns by permutes, and taps 2..4 shifted in by one or two
// lanes (valignd). Rows outside the plane are a zero vector. Every output sums the
// same taps with the same FMAs in the same (row, column) order as the padded kernel:
// bit-identical.
template <int K, int NR, int NV>
__attribute__((target("avx512f"))) inline void s2_block(const ConvParams& p, const float* xc,
                                                        const float* wc, float bias, int64_t oy0,
                                                        int64_t ox, float* o, int64_t valid) {
  __mmask16 m[NV][3];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) s2::masks(2 * (ox + 16 * v) - p.pl, p.w, m[v]);
  __m512 acc[NR][NV];
#pragma GCC unroll 4
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_set1_ps(bias);
#pragma GCC unroll 16
  for (int q = 0; q < (NR - 1) * 2 + K; ++q) {  // input row 2 oy0 - pt + q
    const int64_t iy = 2 * oy0 - p.pt + q;
    const float* xr = iy >= 0 && iy < p.h ? xc + iy * p.w : nullptr;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      __m512 tap[K];
      s2::taps<K>(xr, 2 * (ox + 16 * v) - p.pl, m[v], tap);
#pragma GCC unroll 8
      for (int j = 0; j < K; ++j)
#pragma GCC unroll 4
        for (int r = 0; r < NR; ++r) {
          const int i = q - 2 * r;  // the tap row of output row r that reads input row q
          if (i < 0 || i >= K) continue;
          acc[r][v] = _mm512_fmadd_ps(_mm512_set1_ps(wc[i * K + j]), tap[j], acc[r][v]);
        }
    }
  }
  const __m512 lo = _mm512_set1_ps(p.lo), hi = _mm512_set1_ps(p.hi);
#pragma GCC unroll 4
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      _mm512_mask_storeu_ps(o + r * p.ow + ox + 16 * v, lanes(0, valid - 16 * v),
                            act16(acc[r][v], p.act, lo, hi));
}

template <int K, int NR>
__attribute__((target("avx512f"))) inline void s2_rows(const ConvParams& p, const float* xc,
                                                       const float* wc, float bias, int64_t oy0,
                                                       float* o) {
  int64_t ox = 0;
  for (; ox + 32 <= p.ow; ox += 32) s2_block<K, NR, 2>(p, xc, wc, bias, oy0, ox, o, 32);
  const int64_t rest = p.ow - ox;
  if (rest > 16) s2_block<K, NR, 2>(p, xc, wc, bias, oy0, ox, o, rest);
  else if (rest > 0) s2_block<K, NR, 1>(p, xc, wc, bias, oy0, ox, o, rest);
}

template <int K>
__attribute__((target("avx512f"))) void s2_plane(const ConvParams& p, const Padded&,
                                                 const float* xc, const float* wc, float bias,
                                                 float* yc, const float* next) {
  if (next != nullptr)  // prefetch the next plane, spread over the row blocks
    for (int64_t l = 0; l < (p.h * p.w * int64_t(sizeof(float)) + 63) / 64; ++l)
      _mm_prefetch(reinterpret_cast<const char*>(next) + l * 64, _MM_HINT_T1);
  int64_t oy = 0;
  for (; oy + kRows <= p.oh; oy += kRows) s2_rows<K, kRows>(p, xc, wc, bias, oy, yc + oy * p.ow);
  float* o = yc + oy * p.ow;
  switch (p.oh - oy) {
    case 3: s2_rows<K, 3>(p, xc, wc, bias, oy, o); break;
    case 2: s2_rows<K, 2>(p, xc, wc, bias, oy, o); break;
    case 1: s2_rows<K, 1>(p, xc, wc, bias, oy, o); break;
    default: break;
  }
}

template <int S, int K>
__attribute__((target("avx512f"))) void plane(const ConvParams& p, const Padded& d,
                                              const float* buf, const float* wc, float bias,
                                              float* yc, const float* next) {
  const int64_t lines = (p.h * p.w * int64_t(sizeof(float)) + 63) / 64;
  const int64_t groups = (p.oh + kRows - 1) / kRows;
  const int64_t per = (lines + groups - 1) / groups;  // cache lines of `next` per row group
  const char* pf = reinterpret_cast<const char*>(next);
  int64_t done = 0, oy = 0;
  for (; oy + kRows <= p.oh; oy += kRows) {
    for (int64_t l = 0; pf != nullptr && l < per && done < lines; ++l, ++done)
      _mm_prefetch(pf + done * 64, _MM_HINT_T1);
    rows<S, K, kRows>(p, buf + oy * S * d.pw, d, wc, bias, yc + oy * p.ow);
  }
  // The last 1-3 rows as one block (not row by row): with one vector per row (planes of
  // <= 16 outputs) a 1-row block is a single FMA chain, bound by the FMA latency.
  for (int64_t l = 0; pf != nullptr && l < per && done < lines; ++l, ++done)
    _mm_prefetch(pf + done * 64, _MM_HINT_T1);
  const float* rest = buf + oy * S * d.pw;
  float* o = yc + oy * p.ow;
  switch (p.oh - oy) {
    case 3: rows<S, K, 3>(p, rest, d, wc, bias, o); break;
    case 2: rows<S, K, 2>(p, rest, d, wc, bias, o); break;
    case 1: rows<S, K, 1>(p, rest, d, wc, bias, o); break;
    default: break;
  }
}

}  // namespace

// Padded row = x row shifted right by pl, zeros outside: one masked load per 16
// columns (masked-off lanes read nothing, so the plane's edges need no scalar code).
// The masks depend only on the column, so they are computed once per plane; rows
// are 64-byte aligned (padded_dims), so the stores never split a cache line.
// Stride 2 splits 32 padded columns into 16 even + 16 odd with two permutes.
__attribute__((target("avx512f"))) void pad_plane_avx512(const ConvParams& p, const Padded& d,
                                                         const float* xc, float* buf) {
  constexpr int64_t kMaxVec = 256;  // mask table entries; wider rows compute masks inline
  const int64_t step = d.half == 0 ? 16 : 32;
  const int64_t nv = (d.half == 0 ? d.pw : 2 * d.half) / step;
  const bool table = nv <= kMaxVec;
  __mmask16 m0[kMaxVec], m1[kMaxVec];
  auto mask_at = [&](int64_t a) { return lanes(-a, p.w - a); };  // x columns a .. a + 15
  for (int64_t k = 0; table && k < nv; ++k) {
    m0[k] = mask_at(k * step - p.pl);
    m1[k] = mask_at(k * step - p.pl + 16);
  }
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t r = 0; r < d.ph; ++r) {
    const int64_t iy = r - p.pt;
    float* o = buf + r * d.pw;
    if (iy < 0 || iy >= p.h) {
      for (int64_t i = 0; i < d.pw; i += 16) _mm512_storeu_ps(o + i, _mm512_setzero_ps());
      continue;
    }
    const float* xr = xc + iy * p.w - p.pl;  // padded column c reads xr[c]
    if (d.half == 0) {
      for (int64_t k = 0; k < nv; ++k)
        _mm512_storeu_ps(o + k * 16, _mm512_maskz_loadu_ps(table ? m0[k] : mask_at(k * 16 - p.pl), xr + k * 16));
      continue;
    }
    for (int64_t k = 0; k < nv; ++k) {
      const int64_t c = k * 32;
      const __m512 lo = _mm512_maskz_loadu_ps(table ? m0[k] : mask_at(c - p.pl), xr + c);
      const __m512 hi = _mm512_maskz_loadu_ps(table ? m1[k] : mask_at(c - p.pl + 16), xr + c + 16);
      _mm512_storeu_ps(o + k * 16, _mm512_permutex2var_ps(lo, even, hi));
      _mm512_storeu_ps(o + d.half + k * 16, _mm512_permutex2var_ps(lo, odd, hi));
    }
  }
}

namespace {
// 3x3 or 5x5 taps without row dilation on an AVX-512 machine: the direct kernels' shapes.
bool direct_taps(const ConvParams& p) {
  return gemm::has_avx512() && p.kh == p.kw && (p.kh == 3 || p.kh == 5) && p.dh == 1;
}
bool direct_s2(const ConvParams& p) { return direct_taps(p) && p.dw == 1 && p.sh == 2 && p.sw == 2; }
}  // namespace

bool avx512_direct(const ConvParams& p) {
  return (direct_taps(p) && p.sh == 1 && p.sw == 1 && p.ow <= 16) || direct_s2(p);
}

PairFn avx512_pair(const ConvParams& p) {
  static const bool vl = __builtin_cpu_supports("avx512vl");
  if (!vl || !avx512_direct(p) || p.sh != 1 || p.ow > 8) return nullptr;
  return p.kh == 3 ? pair_plane<3> : pair_plane<5>;
}

PlaneFn avx512_plane(const ConvParams& p) {
  if (direct_s2(p)) return p.kh == 3 ? s2_plane<3> : s2_plane<5>;
  if (avx512_direct(p)) return p.kh == 3 ? direct_plane<3> : direct_plane<5>;
  if (!gemm::has_avx512() || p.kh != p.kw || p.dh != 1 || p.sh != p.sw) return nullptr;
  if (p.sw == 1) return p.kh == 3 ? plane<1, 3> : p.kh == 5 ? plane<1, 5> : nullptr;
  if (p.sw == 2) return p.kh == 3 ? plane<2, 3> : p.kh == 5 ? plane<2, 5> : nullptr;
  return nullptr;
}

}  // namespace dw
}  // namespace kernels
}  // namespace edgerun

#else  // not x86: no AVX-512 kernel

namespace edgerun {
namespace kernels {
namespace dw {
bool avx512_direct(const ConvParams&) { return false; }
PairFn avx512_pair(const ConvParams&) { return nullptr; }
PlaneFn avx512_plane(const ConvParams&) { return nullptr; }
}  // namespace dw
}  // namespace kernels
}  // namespace edgerun

#endif
