// 3x3 stride-2 convolutions with few input channels (image stems: EfficientNet-Lite0's
// 3 -> 32, 224 -> 112), AVX-512F, read straight from the input planes.
//
// The general path gathers an im2col matrix (27 x 12544 floats for that stem, ~25 % of
// its time) and runs the GEMM. Here a block of 16 output pixels x 16 output channels sits
// in 16 accumulators; for each input channel and tap row the three taps of the 16 pixels
// come from s2::taps (vec512.h: three masked loads and permutes), and each tap meets its 16
// weights. Every output sums its K = cin * 9 products in the GEMM's k order ((c, i, j)),
// one FMA each from zero, then + channel bias, + 0 (no column bias) and the activation:
// the GEMM micro-kernel's operations, so the outputs equal the im2col + GEMM path's bit
// for bit (tested against EDGERUN_NO_DIRECT_CONV=1). Scratch: the weights repacked per
// call (cout * K floats) instead of the im2col matrix (K * oh * ow).
#include <algorithm>
#include <cstdlib>

#include "edgerun/kernels.h"
#include "env.h"
#include "gemm_ukr.h"
#include "vec512.h"

namespace edgerun {
namespace kernels {

#if defined(__x86_64__)
namespace {

constexpr int64_t kCh = 16;       // output channels per block (one accumulator each)
constexpr int64_t kMaxTaps = 64;  // K = cin * 9 at most: a stem, not a general conv

// wp: this block's weights packed [k][16 channels] (one base address for all 16
// broadcasts of a tap: with 16 row pointers GCC ran out of registers and reloaded them).
__attribute__((target("avx512f"))) void block(const ConvParams& p, const float* xn, const float* wp,
                                              const float* bias, int64_t oy, int64_t ox,
                                              int64_t m0, float* yn) {
  const int64_t plane = p.oh * p.ow;
  __mmask16 m[3];
  const int64_t b = 2 * ox - p.pl;
  s2::masks(b, p.w, m);
  __m512 acc[kCh];
#pragma GCC unroll 16
  for (int c = 0; c < kCh; ++c) acc[c] = _mm512_setzero_ps();
  for (int64_t ci = 0; ci < p.cin; ++ci) {
    const float* xc = xn + ci * p.h * p.w;
#pragma GCC unroll 3
    for (int i = 0; i < 3; ++i) {
      const int64_t iy = 2 * oy - p.pt + i;
      __m512 tap[3];
      s2::taps<3>(iy >= 0 && iy < p.h ? xc + iy * p.w : nullptr, b, m, tap);
#pragma GCC unroll 3
      for (int j = 0; j < 3; ++j) {
        const float* wk = wp + ((ci * 3 + i) * 3 + j) * kCh;
#pragma GCC unroll 16
        for (int c = 0; c < kCh; ++c) acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(wk[c]), tap[j], acc[c]);
      }
    }
  }
  const int64_t valid = std::min<int64_t>(16, p.ow - ox);
  const __mmask16 st = __mmask16((1u << valid) - 1u);
  const __m512 zero = _mm512_setzero_ps(), lo = _mm512_set1_ps(p.lo), hi = _mm512_set1_ps(p.hi);
  float* o = yn + m0 * plane + oy * p.ow + ox;
#pragma GCC unroll 16
  for (int c = 0; c < kCh; ++c) {
    // The GEMM epilogue's order: + row (channel) bias, + column bias (none: 0), activation.
    const __m512 v = _mm512_add_ps(_mm512_add_ps(acc[c], _mm512_set1_ps(bias ? bias[m0 + c] : 0.f)), zero);
    _mm512_mask_storeu_ps(o + c * plane, st, act16(v, p.act, lo, hi));
  }
}

// Output row oy's lines in every channel plane, prefetched for writing one row ahead: the
// 32 output planes are 32 write streams, too many for the hardware prefetchers.
void prefetch_out_row(const ConvParams& p, const float* yn, int64_t oy) {
  for (int64_t c = 0; c < p.cout; ++c) {
    const char* b = reinterpret_cast<const char*>(yn + (c * p.oh + oy) * p.ow);
    for (int64_t off = 0; off < p.ow * 4; off += 64) __builtin_prefetch(b + off, 1, 3);
  }
}

// The input of a front half is the one tensor no earlier step has brought into cache: when
// the caller's other work has evicted it (a control loop), the stem's taps wait on DRAM one
// line at a time (3 planes, each row read twice per output row: a pattern the hardware
// prefetchers do not follow). So before output row oy, the loop *loads* one float per line
// of the input rows that output row oy + kTouchAhead adds (all rows up to it at oy = 0) into
// a sink. EfficientNet-Lite0's stem, engine step 0, 1 thread, Zen 5, 64 MiB written before
// each run: 259-333 -> 154-166 us (2-16 rows ahead alike), warm 122-127 -> 125-130 us;
// software prefetches of the same lines gave about half that gain.
constexpr int64_t kTouchAhead = 4;

void touch_input_rows(const ConvParams& p, const float* xn, int64_t o) {
  const int64_t iy0 = std::max<int64_t>(2 * o - p.pt + (o > 0 ? 1 : 0), 0);  // row o - 1 read the rest
  const int64_t iy1 = std::min(2 * o - p.pt + 3, p.h);
  float a0 = 0.f, a1 = 0.f;  // two independent chains: the loads overlap
  for (int64_t c = 0; c < p.cin; ++c)
    for (int64_t i = iy0; i < iy1; ++i) {
      const float* r = xn + (c * p.h + i) * p.w;
      int64_t j = 0;
      for (; j + 16 < p.w; j += 32) {
        a0 = std::max(a0, r[j]);
        a1 = std::max(a1, r[j + 16]);
      }
      if (j < p.w) a0 = std::max(a0, r[j]);
    }
  volatile float sink = a0 + a1;  // keeps the loads
  (void)sink;
}

}  // namespace

bool conv_s2_direct(const ConvParams& p) {
  if (!(p.group == 1 && p.kh == 3 && p.kw == 3 && p.sh == 2 && p.sw == 2 && p.dh == 1 &&
        p.dw == 1 && p.cin * 9 <= kMaxTaps && p.cout % kCh == 0 && gemm::has_avx512()))
    return false;
  // Read per call, as EDGERUN_NO_SMALL_N: the engine asks when it loads (Step::s2_direct).
  return !env_flag("EDGERUN_NO_DIRECT_CONV");
}

size_t conv_s2_scratch_floats(const ConvParams& p) { return size_t(p.cout * p.cin * 9); }

void conv_s2_small(const ConvParams& p, int64_t batch, const float* x, const float* w,
                   const float* bias, float* y, float* scratch, int threads) {
  const int64_t K = p.cin * 9, rows = batch * p.oh;
  float* wp = scratch;  // [cout / 16][k][16]: w[m][k] at ((m / 16) * K + k) * 16 + m % 16
  for (int64_t m = 0; m < p.cout; ++m)
    for (int64_t k = 0; k < K; ++k) wp[((m / kCh) * K + k) * kCh + m % kCh] = w[m * K + k];
  parallel_for(threads, rows, [&](int64_t r) {
    const int64_t n = r / p.oh, oy = r % p.oh;
    const float* xn = x + n * p.cin * p.h * p.w;
    float* yn = y + n * p.cout * p.oh * p.ow;
    if (oy + 1 < p.oh) prefetch_out_row(p, yn, oy + 1);
    if (oy == 0)
      for (int64_t o = 0; o <= kTouchAhead && o < p.oh; ++o) touch_input_rows(p, xn, o);
    else if (oy + kTouchAhead < p.oh)
      touch_input_rows(p, xn, oy + kTouchAhead);
    for (int64_t m0 = 0; m0 < p.cout; m0 += kCh)
      for (int64_t ox = 0; ox < p.ow; ox += 16) block(p, xn, wp + m0 * K, bias, oy, ox, m0, yn);
  });
}
#else
bool conv_s2_direct(const ConvParams&) { return false; }
size_t conv_s2_scratch_floats(const ConvParams&) { return 0; }
void conv_s2_small(const ConvParams&, int64_t, const float*, const float*, const float*, float*,
                   float*, int) {}
#endif

}  // namespace kernels
}  // namespace edgerun
