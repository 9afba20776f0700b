// Depthwise convolution (group == cin == cout), NCHW planes.
//
// AVX2 path (stride 1 or 2): each channel plane is first copied into a
// zero-bordered scratch buffer, so every output pixel is "interior" (the border
// is zeroed once per call and each plane writes only its interior); each
// output row is then swept in blocks of 4 x 8 outputs held in registers over
// all taps, two output rows at a time (bias in, activation out, one store per
// output vector; a row tail as 4 + 2 + 1 floats). 3x3 and 5x5 are unrolled at compile time.
// For stride 2 the padded rows are stored de-interleaved (even | odd columns),
// so every tap loads 8 consecutive floats. Where AVX-512F runs, 3x3 and 5x5
// planes go to the 16-wide kernel of kernels_dwconv_avx512.cpp instead (same
// padded buffer, same sums).
// Portable path: row sweeps over the interior (vectorisable for stride 1) and
// a bounds-checked scalar loop for the edge columns; also the cross-check.
#include <algorithm>

#include "dwconv.h"
#include "edgerun/kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ER_X86 1
#endif

namespace edgerun {
namespace kernels {

namespace {

// Interior columns [*a, *b): every tap j reads x[ox*sw - pl + j*dw] inside [0, w),

void interior(const ConvParams& p, int64_t extra, int64_t* a, int64_t* b) {
  // ox*sw - pl >= 0  and  ox*sw - pl + (kw-1)*dw + extra < w
  const int64_t lo = p.pl;
  *a = std::min((lo + p.sw - 1) / p.sw, p.ow);
  const int64_t lim = p.w - 1 - (p.kw - 1) * p.dw - extra + p.pl;  // ox*sw <= lim
  *b = lim < 0 ? 0 : std::min(lim / p.sw + 1, p.ow);
  *b = std::max(*b, *a);
}

// One output pixel with bounds checks (edges and tails).
inline float dw_pixel(const ConvParams& p, const float* xc, const float* wc, float b, int64_t oy,
                      int64_t ox) {
  float s = b;
  for (int64_t i = 0; i < p.kh; ++i) {
    const int64_t iy = oy * p.sh - p.pt + i * p.dh;
    if (iy < 0 || iy >= p.h) continue;
    for (int64_t j = 0; j < p.kw; ++j) {
      const int64_t ix = ox * p.sw - p.pl + j * p.dw;
      if (ix >= 0 && ix < p.w) s += wc[i * p.kw + j] * xc[iy * p.w + ix];
    }
  }
  return apply_act(s, p.act, p.lo, p.hi);
}

// Portable interior: o[ox] for ox in [a, b) as row sweeps (vectorisable for stride 1).
void dw_row_portable(const ConvParams& p, const float* xc, const float* wc, float bias,
                     int64_t oy, int64_t a, int64_t b, float* o) {
  for (int64_t ox = a; ox < b; ++ox) o[ox] = bias;
  for (int64_t i = 0; i < p.kh; ++i) {
    const int64_t iy = oy * p.sh - p.pt + i * p.dh;
    if (iy < 0 || iy >= p.h) continue;
    for (int64_t j = 0; j < p.kw; ++j) {
      const float wv = wc[i * p.kw + j];
      const float* xr = xc + iy * p.w - p.pl + j * p.dw;
      if (p.sw == 1) {
        for (int64_t ox = a; ox < b; ++ox) o[ox] += wv * xr[ox];
      } else {
        for (int64_t ox = a; ox < b; ++ox) o[ox] += wv * xr[ox * p.sw];
      }
    }
  }
  if (p.act != Act::kNone)
    for (int64_t ox = a; ox < b; ++ox) o[ox] = apply_act(o[ox], p.act, p.lo, p.hi);
}

#ifdef ER_X86
// The vector paths first copy the channel plane into a zero-bordered buffer
// (scratch, see dw::Padded), wide enough that every output column, rounded up
// to 16, reads only inside it: no edge cases remain (row tails are stored as
// 4 + 2 + 1 floats, store_head). The AVX2 kernel zeroes the border once per call
// and copies each plane's interior (zero_plane, copy_interior*); pad_plane, which
// writes every padded row, is left for the layouts those do not cover.
// For stride 2 each padded row is stored de-interleaved, even columns in
// its first half and odd ones in its second, so every tap reads consecutive
// floats (shuffling once per input instead of once per tap).
using dw::Padded;

size_t padded_floats(const Padded& d) { return size_t(d.ph * d.pw + 16); }

// 8 columns of a zero-bordered input row from input column ix: xr[ix + t] where
// 0 <= ix + t < w, else 0. An edge block loads the nearest 8 in-row columns, moves
// them into place (vpermps) and zeroes the lanes outside the row, so padding a row is
// a run of register stores: per-row memset + memcpy cost more than the convolution on
// planes of 14-28 columns, and masked loads (vmaskmovps) are microcoded on AMD Zen
// (65 % of the pad time on 14-column rows); rows under 8 columns still use one (a
// scalar copy through the stack measured 13 % slower on 7x7 planes).
__attribute__((target("avx2,fma"))) inline __m256 cols8(const float* xr, int64_t ix, int64_t w) {
  if (ix >= 0 && ix + 8 <= w) return _mm256_loadu_ps(xr + ix);
  if (ix >= w || ix + 8 <= 0) return _mm256_setzero_ps();
  const __m256i idx = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                       _mm256_set1_epi32(int32_t(ix)));
  const __m256i in = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), idx),
                                         _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(w)), idx));
  if (w < 8) return _mm256_maskload_ps(xr + ix, in);  // masked-off lanes never fault
  // base: the in-row window holding every in-row lane; lane t takes column ix + t - base.
  const int64_t base = std::min(std::max<int64_t>(ix, 0), w - 8);
  const __m256i from = _mm256_sub_epi32(idx, _mm256_set1_epi32(int32_t(base)));
  const __m256 v = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xr + base), from);
  return _mm256_and_ps(v, _mm256_castsi256_ps(in));
}

// 16 consecutive inputs a | b -> their 8 even-indexed (*e) and 8 odd-indexed (*q) values.
__attribute__((target("avx2,fma"))) inline void deinterleave16(__m256 a, __m256 b, __m256* e, __m256* q) {
  *e = _mm256_castpd_ps(
      _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))), 0xD8));
  *q = _mm256_castpd_ps(
      _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))), 0xD8));
}

// buf: the padded plane (d.ph rows of d.pw), built from registers: each row's
// columns the AVX2 kernel reads (output columns rounded up to 8, plus the taps)
// as 8-column blocks (cols8). Stride 2 de-interleaves each pair of blocks with
// shuffles (16 inputs -> 8 even + 8 odd). The former row copy (memset + memcpy,
// and for stride 2 a branchy scalar loop wherever a block met a pad or the row
// end) took 80 % of a 3x3 stride-2 conv on 28-column planes.
__attribute__((target("avx2,fma"))) void pad_plane(const ConvParams& p, const Padded& d,
                                                   const float* xc, float* buf) {
  const int64_t ow8 = (p.ow + 7) / 8 * 8;
  const int64_t need = (ow8 - 1) * p.sw + (p.kw - 1) * p.dw + 1;  // padded columns read
  const int64_t n = d.half == 0 ? (need + 7) / 8 * 8 : ((need + 1) / 2 + 7) / 8 * 8;
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t r = 0; r < d.ph; ++r) {
    const int64_t iy = r - p.pt;
    float* o = buf + r * d.pw;
    if (iy < 0 || iy >= p.h) {  // both halves of a stride-2 row (d.half == 0: the same place)
      for (int64_t i = 0; i < n; i += 8) {
        _mm256_storeu_ps(o + i, zero);
        _mm256_storeu_ps(o + d.half + i, zero);
      }
      continue;
    }
    const float* xr = xc + iy * p.w;
    if (d.half == 0) {
      for (int64_t i = 0; i < n; i += 8) _mm256_storeu_ps(o + i, cols8(xr, i - p.pl, p.w));
      continue;
    }
    for (int64_t i = 0; i < n; i += 8) {
      const int64_t ix = 2 * i - p.pl;
      const __m256 a = cols8(xr, ix, p.w), b = cols8(xr, ix + 8, p.w);
      __m256 e, q;
      deinterleave16(a, b, &e, &q);
      _mm256_storeu_ps(o + i, e);
      _mm256_storeu_ps(o + d.half + i, q);
    }
  }
}

// Stride 1: the buffer's zero border is written once per call (zero_plane), and
// each plane then copies only its rows into the interior (copy_interior): whole
// vectors plus one overlapping vector for the row tail, no masks or permutes. On
// 14x14 planes the border-building pad_plane took ~40 % of the layer.
__attribute__((target("avx2,fma"))) void zero_plane(const Padded& d, float* buf) {
  const int64_t n = d.ph * d.pw;  // d.pw is a multiple of 16
  for (int64_t i = 0; i < n; i += 8) _mm256_storeu_ps(buf + i, _mm256_setzero_ps());
}

__attribute__((target("avx2,fma"))) void copy_interior(const ConvParams& p, const Padded& d,
                                                       const float* xc, float* buf) {
  const int64_t w = p.w;
  for (int64_t iy = 0; iy < p.h; ++iy) {
    const float* xr = xc + iy * w;
    float* o = buf + (iy + p.pt) * d.pw + p.pl;
    if (w >= 8) {
      int64_t k = 0;
      for (; k + 8 <= w; k += 8) _mm256_storeu_ps(o + k, _mm256_loadu_ps(xr + k));
      if (k < w) _mm256_storeu_ps(o + w - 8, _mm256_loadu_ps(xr + w - 8));
    } else if (w >= 4) {
      _mm_storeu_ps(o, _mm_loadu_ps(xr));
      _mm_storeu_ps(o + w - 4, _mm_loadu_ps(xr + w - 4));
    } else {
      for (int64_t k = 0; k < w; ++k) o[k] = xr[k];
    }
  }
}

// Stride 2: the same, each block of 16 input columns de-interleaved into the even
// and odd halves (which half the block's even inputs land in follows the parity
// of their padded column). The last block may run past the row: cols8 gives zeros
// there, which is what that padding holds. Needs room for whole blocks:
// s2_interior_fits, else pad_plane.
bool s2_interior_fits(const ConvParams& p, const Padded& d) {
  const int64_t last = p.pl + (p.w + 15) / 16 * 16 - 16;  // padded column of the last block
  return (last + 1) / 2 + 8 <= d.half;
}

__attribute__((target("avx2,fma"))) void copy_interior_s2(const ConvParams& p, const Padded& d,
                                                          const float* xc, float* buf) {
  const int64_t w = p.w, rows = std::min(p.h, d.ph - p.pt);
  for (int64_t iy = 0; iy < rows; ++iy) {
    const float* xr = xc + iy * w;
    float* o = buf + (iy + p.pt) * d.pw;
    for (int64_t ix = 0; ix < w; ix += 16) {
      const __m256 a = cols8(xr, ix, w), b = cols8(xr, ix + 8, w);
      __m256 e, q;
      deinterleave16(a, b, &e, &q);
      const int64_t pc = ix + p.pl;  // padded column of input column ix
      if (pc % 2 == 0) {
        _mm256_storeu_ps(o + pc / 2, e);
        _mm256_storeu_ps(o + d.half + pc / 2, q);
      } else {
        _mm256_storeu_ps(o + d.half + pc / 2, e);
        _mm256_storeu_ps(o + pc / 2 + 1, q);
      }
    }
  }
}

__attribute__((target("avx2,fma"))) inline __m256 act8(__m256 r, Act act, __m256 lo, __m256 hi) {
  if (act == Act::kRelu) return _mm256_max_ps(r, _mm256_setzero_ps());
  if (act == Act::kClip) return _mm256_min_ps(_mm256_max_ps(r, lo), hi);
  return r;
}

// The first n (1..7) lanes of y to o, as 4 + 2 + 1 float stores: a masked store
// (vmaskmovps) is microcoded on AMD Zen and took ~20 % of a 14x14 plane's time.
__attribute__((target("avx2,fma"))) inline void store_head(float* o, __m256 y, int64_t n) {
  __m128 part = _mm256_castps256_ps128(y);
  if (n >= 4) {
    _mm_storeu_ps(o, part);
    part = _mm256_extractf128_ps(y, 1);
    o += 4;
    n -= 4;
  }
  if (n >= 2) {
    _mm_storel_pi(reinterpret_cast<__m64*>(o), part);
    part = _mm_movehl_ps(part, part);
    o += 2;
    n -= 2;
  }
  if (n >= 1) _mm_store_ss(o, part);
}

// NR output rows x NV vectors of 8 outputs from column ox: NR * NV independent
// accumulator chains (8 hide the FMA latency). K > 0 fixes kh == kw == K at compile
// time (fully unrolled taps); K == 0 reads them from p. Columns >= ox + valid are
// computed (the padded buffer covers them) but not stored.
template <int S, int K, int NR, int NV>
__attribute__((target("avx2,fma"))) inline void dw_block(const ConvParams& p, const float* row0,
                                                         const Padded& d, const float* wc, float bias,
                                                         int64_t ox, float* o, int64_t valid) {
  const int64_t kh = K ? K : p.kh, kw = K ? K : p.kw;
  const int64_t pw = d.pw, rstep = p.sh * pw;  // next output row in the padded buffer
  __m256 acc[NR][NV];
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_set1_ps(bias);
  const float* xb = row0 + ox;  // stride 2: ox indexes the de-interleaved halves
  for (int64_t i = 0; i < kh; ++i) {
    const float* xr = xb + i * p.dh * pw;
    for (int64_t j = 0; j < kw; ++j) {
      const __m256 wv = _mm256_broadcast_ss(wc + i * kw + j);
      const int64_t c = j * p.dw;
      const float* xj = S == 1 ? xr + c : xr + (c & 1) * d.half + (c >> 1);
      for (int r = 0; r < NR; ++r)
        for (int v = 0; v < NV; ++v)
          acc[r][v] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xj + r * rstep + v * 8), acc[r][v]);
    }
  }
  const __m256 lo = _mm256_set1_ps(p.lo), hi = _mm256_set1_ps(p.hi);
  for (int r = 0; r < NR; ++r) {
    float* orow = o + r * p.ow + ox;
    for (int v = 0; v < NV; ++v) {
      const __m256 y = act8(acc[r][v], p.act, lo, hi);
      if (valid >= 8 * (v + 1)) _mm256_storeu_ps(orow + v * 8, y);
      else store_head(orow + v * 8, y, valid - 8 * v);  // row tail
    }
  }
}

// NR output rows starting at row0 / o: full 32-wide blocks, then one block of
// ceil(rest / 8) vectors for the row tail.
template <int S, int K, int NR>
__attribute__((target("avx2,fma"))) inline void dw_rows(const ConvParams& p, const float* row0,
                                                        const Padded& d, const float* wc, float bias,
                                                        float* o) {
  int64_t ox = 0;
  for (; ox + 32 <= p.ow; ox += 32) dw_block<S, K, NR, 4>(p, row0, d, wc, bias, ox, o, 32);
  const int64_t rest = p.ow - ox;
  if (rest > 24) dw_block<S, K, NR, 4>(p, row0, d, wc, bias, ox, o, rest);
  else if (rest > 16) dw_block<S, K, NR, 3>(p, row0, d, wc, bias, ox, o, rest);
  else if (rest > 8) dw_block<S, K, NR, 2>(p, row0, d, wc, bias, ox, o, rest);
  else if (rest > 0) dw_block<S, K, NR, 1>(p, row0, d, wc, bias, ox, o, rest);
}

template <int S, int K>
__attribute__((target("avx2,fma"))) void dw_plane(const ConvParams& p, const Padded& d,
                                                  const float* buf, const float* wc, float bias,
                                                  float* yc, const float* next) {
  const int64_t lines = (p.h * p.w * int64_t(sizeof(float)) + 63) / 64;
  const int64_t per = (lines + (p.oh + 1) / 2 - 1) / ((p.oh + 1) / 2);  // lines per row pair
  const char* pf = reinterpret_cast<const char*>(next);
  int64_t done = 0;
  int64_t oy = 0;
  for (; oy + 2 <= p.oh; oy += 2) {
    for (int64_t l = 0; pf != nullptr && l < per && done < lines; ++l, ++done)
      _mm_prefetch(pf + done * 64, _MM_HINT_T1);
    dw_rows<S, K, 2>(p, buf + oy * p.sh * d.pw, d, wc, bias, yc + oy * p.ow);
  }
  if (oy < p.oh) dw_rows<S, K, 1>(p, buf + oy * p.sh * d.pw, d, wc, bias, yc + oy * p.ow);
}

dw::PlaneFn pick_plane(const ConvParams& p) {
  const int k = p.kh == p.kw && (p.kh == 3 || p.kh == 5) ? int(p.kh) : 0;
  if (p.sw == 1) return k == 3 ? dw_plane<1, 3> : k == 5 ? dw_plane<1, 5> : dw_plane<1, 0>;
  return k == 3 ? dw_plane<2, 3> : k == 5 ? dw_plane<2, 5> : dw_plane<2, 0>;
}
#endif

}  // namespace

namespace dw {
Padded padded_dims(const ConvParams& p) {
  const int64_t owp = (p.ow + 15) / 16 * 16;  // 16: the AVX-512 kernel's vector
  const int64_t cols = (owp - 1) * p.sw + (p.kw - 1) * p.dw + 1;  // padded columns read
  const int64_t ph = (p.oh - 1) * p.sh + (p.kh - 1) * p.dh + 1;
  // Rows (and the odd half of a stride-2 row) start on 64-byte boundaries: the pad
  // copy's stores never split a cache line.
  if (p.sw == 1) return {ph, (cols + 15) / 16 * 16, 0};
  const int64_t half = ((cols + 1) / 2 + 15) / 16 * 16;
  return {ph, 2 * half, half};
}
}  // namespace dw

size_t depthwise_scratch_floats(const ConvParams& p, int threads) {
#ifdef ER_X86
  const Padded d = dw::padded_dims(p);
  return size_t(std::max(threads, 1)) * padded_floats(d);
#else
  return 0;
#endif
}

void depthwise_conv(const ConvParams& p, int64_t batch, const float* x, const float* w,
                    const float* bias, float* y, float* scratch, int threads) {
  const int64_t planes = batch * p.cout;
#ifdef ER_X86
  if (has_avx2_fma() && (p.sw == 1 || p.sw == 2) && scratch != nullptr) {
    const Padded d = dw::padded_dims(p);
    const dw::PlaneFn fast = dw::avx512_plane(p);
    const dw::PlaneFn plane = fast != nullptr ? fast : pick_plane(p);
    const bool direct = dw::avx512_direct(p);  // reads the input plane: no padded copy
    const dw::PairFn pair = dw::avx512_pair(p);
    if (pair != nullptr) {  // two channels per vector on planes of <= 8 columns
      const int64_t pairs = (planes + 1) / 2;
      parallel_for(threads, pairs, [&](int64_t i) {
        const int64_t pc = 2 * i, c0 = pc % p.cout;
        const float* x0 = x + pc * p.h * p.w;
        float* y0 = y + pc * p.oh * p.ow;
        const float* w0 = w + c0 * p.kh * p.kw;
        const float b0 = bias ? bias[c0] : 0.f;
        if (pc + 1 == planes) {  // an odd last plane
          plane(p, d, x0, w0, b0, y0, nullptr);
          return;
        }
        const int64_t c1 = (pc + 1) % p.cout;
        pair(p, x0, x0 + p.h * p.w, w0, w + c1 * p.kh * p.kw, b0, bias ? bias[c1] : 0.f, y0,
             y0 + p.oh * p.ow);
      });
      return;
    }
    const size_t per = padded_floats(d);
    // The AVX2 kernel: border zeroed once per thread, interior copied per plane.
    const bool interior_only = !direct && fast == nullptr && p.sh == p.sw &&
                               (p.sw == 1 || s2_interior_fits(p, d));
    parallel_team(threads, [&](int t, int nt) {
      float* buf = scratch + per * size_t(t);
      if (interior_only) zero_plane(d, buf);
      int64_t pc0, pc1;
      static_range(planes, t, nt, &pc0, &pc1);
      for (int64_t pc = pc0; pc < pc1; ++pc) {
        const int64_t c = pc % p.cout;
        const float* xc = x + pc * p.h * p.w;
        const float* next = pc + 1 < planes ? xc + p.h * p.w : nullptr;
        if (interior_only) {
          if (p.sw == 1) copy_interior(p, d, xc, buf);
          else copy_interior_s2(p, d, xc, buf);
        } else if (!direct && fast != nullptr) {
          dw::pad_plane_avx512(p, d, xc, buf);
        } else if (!direct) {
          pad_plane(p, d, xc, buf);
        }
        // `next` is prefetched while this plane computes: the copy above is
        // otherwise a memory-latency-bound pass with nothing to overlap.
        plane(p, d, direct ? xc : buf, w + c * p.kh * p.kw, bias ? bias[c] : 0.f, y + pc * p.oh * p.ow,
              next);
      }
    });
    return;
  }
#endif
  int64_t a, b;
  interior(p, 0, &a, &b);
  parallel_for(threads, planes, [&](int64_t pc) {
    const int64_t c = pc % p.cout;
    const float* xc = x + pc * p.h * p.w;
    const float* wc = w + c * p.kh * p.kw;
    float* yc = y + pc * p.oh * p.ow;
    const float bv = bias ? bias[c] : 0.f;
    for (int64_t oy = 0; oy < p.oh; ++oy) {
      float* o = yc + oy * p.ow;
      for (int64_t ox = 0; ox < a; ++ox) o[ox] = dw_pixel(p, xc, wc, bv, oy, ox);
      dw_row_portable(p, xc, wc, bv, oy, a, b, o);
      for (int64_t ox = b; ox < p.ow; ++ox) o[ox] = dw_pixel(p, xc, wc, bv, oy, ox);
    }
  });
}

}  // namespace kernels
}  // namespace edgerun
