// AVX-512 VNNI int8 Conv path: a fused quantize + pack of the activation panel
// and an 8-row x (16..48)-pixel vpdpbusd micro-kernel whose 24 accumulators stay
// in registers over the k loop (saved once per tile for the epilogue).
//
// Same packed format as the generic path (qgemm_ukr.h): one zmm holds one
// k-quad of a 16-pixel strip, so a strip's k-quad is a single aligned-size load.
// vpdpbusd (not the saturating vpdpbusds) sums u8 x s8 products exactly into
// int32 for the full u8 range, like every other path; the activation scheme and
// the epilogue formula are described in kernels_qgemm.cpp. The epilogue uses
// explicitly rounded mul/add
// intrinsics so the compiler cannot contract them into an FMA (which would round
// differently from the portable epilogue).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "env.h"
#include "qgemm_epi512.h"
#include "qgemm_ukr.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ER_X86 1
#endif
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags the `__m512 __Y = __Y;` idiom inside its own _mm512_undefined_*
// helpers (used by every unmasked AVX-512 intrinsic) as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace edgerun {
namespace kernels {
namespace qgemm {

#ifdef ER_X86

#define ER_Q512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

namespace {

constexpr int kMR = 8;   // weight rows per tile
constexpr int kNS = 3;   // strips (16 pixels each) per full tile
constexpr int kRN = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

ER_Q512 inline __mmask16 strip_mask(int64_t w) {
  return w >= kQNR ? __mmask16(0xFFFF) : __mmask16((1u << w) - 1u);
}

// u of 16 pixels of one row, rounded to nearest even, before the clamp:
// 0 <= v <= 255 (+ rounding) for finite inputs.
ER_Q512 inline __m512i quant16(const float* r, __mmask16 msk, __m512 mn, __m512 iv) {
  const __m512 v = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(msk, r), mn), iv);
  return _mm512_cvt_roundps_epi32(v, kRN);
}

// NC strips from pixel n0: min and max over the K rows (in registers), the scales,
// then the packed k-quads while the chunk's rows are still in L1/L2. Rows are read
// NC * 64 contiguous bytes at a time with rows 4 ahead prefetched: going strip by
// strip (one cache line per row and page) measured ~30% slower on activations
// just written by the previous layer.
constexpr int kChunk = 8;

template <int NC>
ER_Q512 void quantize_chunk(const float* x, int64_t ldx, int64_t K, int64_t kp, int64_t N,
                            int64_t n0, float* xs, float* inv, float* mnp, uint8_t* out) {
  __m512 mn[NC], mx[NC];
  __mmask16 msk[NC], bad[NC];
#pragma GCC unroll 8
  for (int c = 0; c < NC; ++c) {
    mn[c] = _mm512_set1_ps(INFINITY);  // masked-off pixels load 0: a zero range
    mx[c] = _mm512_set1_ps(-INFINITY);
    msk[c] = strip_mask(N - n0 - c * kQNR);
    bad[c] = 0;
  }
  for (int64_t k = 0; k < K; ++k) {
    const float* r = x + k * ldx + n0;
    const float* pf = r + 4 * ldx;
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) {
      _mm_prefetch(reinterpret_cast<const char*>(pf + c * kQNR), _MM_HINT_T0);
      // min / max (a, b) = a < b ? a : b / a > b ? a : b: the generic path's exactly.
      const __m512 v = _mm512_maskz_loadu_ps(msk[c], r + c * kQNR);
      mn[c] = _mm512_min_ps(v, mn[c]);
      mx[c] = _mm512_max_ps(v, mx[c]);
      bad[c] = bad[c] | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    }
  }
  // A pixel holding a NaN: mn = NaN (min / max skip NaNs), so its outputs are NaN, as
  // the generic path's quantize_pack makes them.
#pragma GCC unroll 8
  for (int c = 0; c < NC; ++c) mn[c] = _mm512_mask_mov_ps(mn[c], bad[c], _mm512_set1_ps(NAN));
  // d = mx - mn; inv = 255 / max(d, kQMinRange); xs = d / 255: the generic path's
  // operations exactly (max (d, m) = d > m ? d : m, as there).
  const __m512 q = _mm512_set1_ps(kQMax), dmin = _mm512_set1_ps(kQMinRange);
  __m512 iv[NC];
#pragma GCC unroll 8
  for (int c = 0; c < NC; ++c) {
    const __m512 d = _mm512_sub_ps(mx[c], mn[c]);
    iv[c] = _mm512_div_ps(q, _mm512_max_ps(d, dmin));
    _mm512_storeu_ps(inv + n0 + c * kQNR, iv[c]);
    _mm512_storeu_ps(xs + n0 + c * kQNR, _mm512_div_ps(d, q));
    _mm512_storeu_ps(mnp + n0 + c * kQNR, mn[c]);
  }
  // Four rows' u (int32) become one k-quad word per pixel: packus to int16, then to
  // u8 (both saturate: the clamp to [0, 255], and a NaN's INT_MIN becomes 0 as the
  // generic clamp makes it), giving per 128-bit lane the 4 x 4 bytes row by row;
  // a byte shuffle in the lane turns them pixel by pixel (4 ops for the 4 rows,
  // where clamp, shift and or took 16).
  const __m512i quad_order = _mm512_broadcast_i32x4(
      _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
  for (int64_t k4 = 0; k4 < kp; k4 += 4) {
    const int nrows = int(std::min<int64_t>(4, K - k4));  // rows k >= K: u = 0
    uint8_t* o = out + (n0 / kQNR) * kp * kQNR + k4 * kQNR;
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) {
      const float* r = x + k4 * ldx + n0 + c * kQNR;
      __m512i u[4];
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j)
        u[j] = j < nrows ? quant16(r + j * ldx, msk[c], mn[c], iv[c]) : _mm512_setzero_si512();
      const __m512i w = _mm512_packus_epi16(_mm512_packus_epi32(u[0], u[1]),
                                            _mm512_packus_epi32(u[2], u[3]));
      _mm512_storeu_si512(o + c * kp * kQNR, _mm512_shuffle_epi8(w, quad_order));
    }
  }
}

ER_Q512 void quantize_strips(const float* x, int64_t ldx, int64_t K, int64_t kp, int64_t N,
                             int64_t s0, int64_t s1, float* xs, float* inv, float* mn,
                             uint8_t* out) {
  int64_t s = s0;
  for (; s + kChunk <= s1; s += kChunk)
    quantize_chunk<kChunk>(x, ldx, K, kp, N, s * kQNR, xs, inv, mn, out);
  for (; s < s1; ++s) quantize_chunk<1>(x, ldx, K, kp, N, s * kQNR, xs, inv, mn, out);
}

// One accumulator row of a tile (strips [0, NS)) through the epilogue into y row r.
template <int NS>
ER_Q512 inline void store_row(const BlockEpi& e, int r, const __m512i* t, float* y, int64_t ldy,
                              int64_t nw) {
  const __m512 wsv = _mm512_set1_ps(e.ws[r]);
  const __m512 rv = _mm512_set1_ps(float(e.wsum[r]));
  const __m512 bv = _mm512_set1_ps(e.bias ? e.bias[r] : 0.f);
#pragma GCC unroll 3
  for (int s = 0; s < NS; ++s) {
    const __m512 v = epilogue16(t[s], e.xs + s * kQNR, e.mn + s * kQNR, wsv, rv, bv, e.act, e.lo, e.hi);
    _mm512_mask_storeu_ps(y + r * ldy + s * kQNR, strip_mask(nw - s * kQNR), v);
  }
}

// Rows [0, mr) x NS strips; W rows at W + r * kp; strip s of B at B + s * bstride.
// The 8 x NS accumulators are named variables (ER_ROWS below) saved to memory once
// after the k loop: with an indexed c[8][3], or with the epilogue reading the live
// registers, GCC 12 stored every accumulator to the stack after each vpdpbusd (both
// needed changing), which ran the tiles at ~35 % of the vpdpbusd peak on Zen 5.
template <int NS>
ER_Q512 void tile(int64_t kq, const int8_t* W, int64_t kp, int64_t mr, const uint8_t* B,
                  int64_t bstride, const BlockEpi& e, float* y, int64_t ldy, int64_t nw) {
  const int8_t* wr[kMR];
#pragma GCC unroll 8
  for (int r = 0; r < kMR; ++r) wr[r] = W + (r < mr ? r : 0) * kp;  // rows past mr: never stored
#define ER_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define ER_ZERO(r) __m512i c##r##0 = _mm512_setzero_si512(), c##r##1 = c##r##0, c##r##2 = c##r##0;
  ER_ROWS(ER_ZERO)
  for (int64_t q = 0; q < kq; ++q) {
    const __m512i b0 = _mm512_loadu_si512(B + q * 64);
    const __m512i b1 = NS > 1 ? _mm512_loadu_si512(B + bstride + q * 64) : b0;
    const __m512i b2 = NS > 2 ? _mm512_loadu_si512(B + 2 * bstride + q * 64) : b0;
#define ER_DOT(r)                                                   \
    {                                                               \
      int32_t v;                                                    \
      std::memcpy(&v, wr[r] + 4 * q, 4);                            \
      const __m512i a = _mm512_set1_epi32(v);                       \
      c##r##0 = _mm512_dpbusd_epi32(c##r##0, b0, a);                \
      if (NS > 1) c##r##1 = _mm512_dpbusd_epi32(c##r##1, b1, a);    \
      if (NS > 2) c##r##2 = _mm512_dpbusd_epi32(c##r##2, b2, a);    \
    }
    ER_ROWS(ER_DOT)
  }
  __m512i acc[kMR][3];
#define ER_SAVE(r) acc[r][0] = c##r##0; acc[r][1] = c##r##1; acc[r][2] = c##r##2;
  ER_ROWS(ER_SAVE)
#undef ER_SAVE
  // Epilogue: act(ws * (xs[n] * float(t) + mn[n] * float(R)) + b), as the generic one.
  for (int r = 0; r < mr; ++r) store_row<NS>(e, r, acc[r], y, ldy, nw);
#undef ER_DOT
#undef ER_ZERO
#undef ER_ROWS
}

// The AVX-512 VNNI path's share of one team's tiles (called by every thread of the
// team): one per (strip group, row block); a thread's row blocks of one group run
// consecutively, so its B strips stay in L1 across them.
void vnni_tiles(const S8Weights& w, int64_t m0, int64_t M, int64_t N, const float* xs,
                const float* mn, const uint8_t* bq, const float* bias, Act act, float lo, float hi,
                float* y, int64_t ldy) {
  const int64_t strips = (N + kQNR - 1) / kQNR, groups = (strips + kNS - 1) / kNS;
  const int64_t mblocks = (M + kMR - 1) / kMR, kq = w.kp / 4, bstride = w.kp * kQNR;
  int64_t i0, i1;
  static_range(groups * mblocks, thread_id(), team_size(), &i0, &i1);
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t g = i / mblocks, m = (i % mblocks) * kMR, mr = std::min<int64_t>(kMR, M - m);
    // Groups as even as possible (13 strips: 2,3,2,3,3 rather than 3,3,3,3,1).
    const int64_t s0 = strips * g / groups, ns = strips * (g + 1) / groups - s0;
    const int64_t n0 = s0 * kQNR, nw = N - n0, row = m0 + m;
    const BlockEpi e{w.scale + row, w.wsum + row, bias ? bias + row : nullptr, xs + n0, mn + n0,
                     act, lo, hi};
    const int8_t* W = w.w + row * w.kp;
    const uint8_t* B = bq + s0 * bstride;
    float* yt = y + m * ldy + n0;
    if (ns == 3) tile<3>(kq, W, w.kp, mr, B, bstride, e, yt, ldy, nw);
    else if (ns == 2) tile<2>(kq, W, w.kp, mr, B, bstride, e, yt, ldy, nw);
    else tile<1>(kq, W, w.kp, mr, B, bstride, e, yt, ldy, nw);
  }
}

// The AMX path's share of one team's tiles (called by every thread of the team):
// blocks of 32 rows x 2 strips, a thread's row blocks of one strip pair consecutive.
void amx_tiles(const S8Weights& w, int64_t m0, int64_t M, int64_t N, const float* xs,
               const float* mn, const uint8_t* bq, const float* bias, Act act, float lo, float hi,
               float* y, int64_t ldy) {
  constexpr int64_t kAmxM = 32, kAmxS = 2;
  const int64_t strips = (N + kQNR - 1) / kQNR, pairs = (strips + kAmxS - 1) / kAmxS;
  const int64_t mblocks = (M + kAmxM - 1) / kAmxM, bstride = w.kp * kQNR;
  // A last row block that is not whole 16-row tiles would read past the weights: its
  // rows go once per call (per thread) into a zero-padded copy.
  const int64_t tail_m = (mblocks - 1) * kAmxM, tail_rows = M - tail_m;
  thread_local std::vector<int8_t> tail;
  bool tail_ready = false;
  amx_begin();
  int64_t i0, i1;
  static_range(pairs * mblocks, thread_id(), team_size(), &i0, &i1);
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t s0 = (i / mblocks) * kAmxS, m = (i % mblocks) * kAmxM, row = m0 + m;
    const int64_t n0 = s0 * kQNR;
    const BlockEpi e{w.scale + row, w.wsum + row, bias ? bias + row : nullptr, xs + n0, mn + n0,
                   act, lo, hi};
    const int8_t* W = w.w + row * w.kp;
    if (m == tail_m && tail_rows % 16 != 0) {
      if (!tail_ready) {
        tail.assign(size_t(kAmxM * w.kp), 0);
        std::memcpy(tail.data(), W, size_t(tail_rows * w.kp));
        tail_ready = true;
      }
      W = tail.data();
    }
    amx_block(W, w.kp, std::min(kAmxM, M - m), bq + s0 * bstride, bstride,
              int(std::min(kAmxS, strips - s0)), e, y + m * ldy + n0, ldy, N - n0);
  }
  amx_end();
}

}  // namespace

bool has_avx512_vnni() {
  static const bool ok = !env_flag("EDGERUN_NO_AVX512") && !env_flag("EDGERUN_NO_VNNI") &&
                         has_avx2_fma() && __builtin_cpu_supports("avx512f") &&
                         __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") &&
                         __builtin_cpu_supports("avx512vnni");
  return ok;
}

void qconv_group_avx512(const float* x, int64_t ldx, const S8Weights& w, int64_t m0, int64_t M,
                        int64_t N, float* xs, float* inv, float* mn, uint8_t* bq,
                        const float* bias, Act act, float lo, float hi, float* y, int64_t ldy,
                        int threads) {
  const int64_t strips = (N + kQNR - 1) / kQNR;
  const bool amx = has_amx() && w.kp % 64 == 0;
  // Two regions: every strip is quantized before any tile reads it (participants never
  // wait for each other inside a region, parallel.h).
  const int nt = threads > 1 && strips > 1 ? threads : 1;
  parallel_team(nt, [&](int t, int k) {
    quantize_strips(x, ldx, w.k, w.kp, N, strips * t / k, strips * (t + 1) / k, xs, inv, mn, bq);
  });
  parallel_team(nt, [&](int, int) {
    if (amx) amx_tiles(w, m0, M, N, xs, mn, bq, bias, act, lo, hi, y, ldy);
    else vnni_tiles(w, m0, M, N, xs, mn, bq, bias, act, lo, hi, y, ldy);
  });
}

#else  // not x86

bool has_avx512_vnni() { return false; }
void qconv_group_avx512(const float*, int64_t, const S8Weights&, int64_t, int64_t, int64_t, float*,
                        float*, float*, uint8_t*, const float*, Act, float, float, float*, int64_t,
                        int) {}

#endif

}  // namespace qgemm
}  // namespace kernels
}  // namespace edgerun
