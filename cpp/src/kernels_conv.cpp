// Convolution: 1x1/stride-1 as a plain GEMM on the input, depthwise as a
// direct loop with contiguous inner rows, everything else im2col + GEMM per
// group. Bias and the fused activation are applied in the GEMM epilogue.
#include <algorithm>
#include <cstring>

#include "edgerun/kernels.h"
#include "gemm_ukr.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ER_X86 1
#endif

namespace edgerun {
namespace kernels {

namespace {

bool is_depthwise(const ConvParams& p) { return p.group == p.cin && p.group == p.cout && p.group > 1; }

// Valid output range [o0, o1) where in = o*s - pad + k*d lies inside [0, n).
inline void valid_range(int64_t n, int64_t on, int64_t s, int64_t pad, int64_t kofs, int64_t* o0,
                        int64_t* o1) {
  // in >= 0  <=>  o >= (pad - kofs) / s (ceil);  in < n  <=>  o < (n + pad - kofs) / s (ceil)
  int64_t lo = pad - kofs, hi = n + pad - kofs;
  *o0 = lo <= 0 ? 0 : (lo + s - 1) / s;
  *o1 = hi <= 0 ? 0 : (hi + s - 1) / s;
  *o0 = std::min(*o0, on);
  *o1 = std::max(std::min(*o1, on), *o0);
}

// o[ox] = xr[2 * ox] for ox in [o0, o1): a stride-2 row gather (the stem of most
// vision models). The vector paths stop where the next load would read past
// xr[2 * (o1 - 1)] and finish in scalar: no read outside the row's valid inputs.
void gather_s2_scalar(const float* xr, float* o, int64_t o0, int64_t o1) {
  for (int64_t ox = o0; ox < o1; ++ox) o[ox] = xr[ox * 2];
}

#ifdef ER_X86
__attribute__((target("avx512f"))) void gather_s2_avx512(const float* xr, float* o, int64_t o0,
                                                         int64_t o1) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  int64_t ox = o0;
  for (; ox + 16 < o1; ox += 16) {  // reads xr[2 ox .. 2 ox + 31] <= xr[2 (o1 - 1) - 1]
    const __m512 a = _mm512_loadu_ps(xr + 2 * ox), b = _mm512_loadu_ps(xr + 2 * ox + 16);
    _mm512_storeu_ps(o + ox, _mm512_permutex2var_ps(a, even, b));
  }
  gather_s2_scalar(xr, o, ox, o1);
}

__attribute__((target("avx2"))) void gather_s2_avx2(const float* xr, float* o, int64_t o0,
                                                    int64_t o1) {
  int64_t ox = o0;
  for (; ox + 8 < o1; ox += 8) {  // reads xr[2 ox .. 2 ox + 15] <= xr[2 (o1 - 1) - 1]
    const __m256 a = _mm256_loadu_ps(xr + 2 * ox), b = _mm256_loadu_ps(xr + 2 * ox + 8);
    const __m256 ev = _mm256_shuffle_ps(a, b, 0x88);  // a0 a2 b0 b2 | a4 a6 b4 b6
    _mm256_storeu_ps(o + ox, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev), 0xD8)));
  }
  gather_s2_scalar(xr, o, ox, o1);
}
#endif

using GatherS2 = void (*)(const float*, float*, int64_t, int64_t);

GatherS2 pick_gather_s2() {
#ifdef ER_X86
  if (gemm::has_avx512()) return gather_s2_avx512;
  if (has_avx2_fma()) return gather_s2_avx2;
#endif
  return gather_s2_scalar;
}

}  // namespace

void im2col_f32(const ConvParams& p, int64_t cin_g, const float* x, float* col, int threads) {
  const int64_t rows = cin_g * p.kh * p.kw, plane = p.oh * p.ow;
  static const GatherS2 gather_s2 = pick_gather_s2();
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t c = r / (p.kh * p.kw), i = (r / p.kw) % p.kh, j = r % p.kw;
    const float* xc = x + c * p.h * p.w;
    float* out = col + r * plane;
    int64_t ow0, ow1;
    valid_range(p.w, p.ow, p.sw, p.pl, j * p.dw, &ow0, &ow1);
    for (int64_t oy = 0; oy < p.oh; ++oy) {
      float* o = out + oy * p.ow;
      const int64_t iy = oy * p.sh - p.pt + i * p.dh;
      if (iy < 0 || iy >= p.h) {
        std::memset(o, 0, sizeof(float) * p.ow);
        continue;
      }
      const float* xr = xc + iy * p.w - p.pl + j * p.dw;
      for (int64_t ox = 0; ox < ow0; ++ox) o[ox] = 0.f;
      if (p.sw == 1) {
        std::memcpy(o + ow0, xr + ow0, sizeof(float) * (ow1 - ow0));
      } else if (p.sw == 2) {
        gather_s2(xr, o, ow0, ow1);
      } else {
        for (int64_t ox = ow0; ox < ow1; ++ox) o[ox] = xr[ox * p.sw];
      }
      for (int64_t ox = ow1; ox < p.ow; ++ox) o[ox] = 0.f;
    }
  }
}

size_t conv2d_scratch_floats(const ConvParams& p, int threads) {
  if (is_depthwise(p)) return depthwise_scratch_floats(p, threads);
  size_t col = is_pointwise(p) ? 0 : size_t((p.cin / p.group) * p.kh * p.kw * p.oh * p.ow);
  return col + sgemm_scratch_floats(threads);
}

void conv2d(const ConvParams& p, int64_t batch, const float* x, const float* w, const float* bias,
            float* y, float* scratch, int threads) {
  if (is_depthwise(p) && p.kh * p.kw > 0) {
    depthwise_conv(p, batch, x, w, bias, y, scratch, threads);
    return;
  }
  const int64_t cin_g = p.cin / p.group, cout_g = p.cout / p.group;
  const int64_t kdim = cin_g * p.kh * p.kw, plane = p.oh * p.ow;
  const bool pw = is_pointwise(p);
  float* col = scratch;
  float* pack = pw ? scratch : scratch + kdim * plane;
  for (int64_t n = 0; n < batch; ++n) {
    const float* xn = x + n * p.cin * p.h * p.w;
    float* yn = y + n * p.cout * plane;
    for (int64_t g = 0; g < p.group; ++g) {
      const float* xg = xn + g * cin_g * p.h * p.w;
      const float* B = xg;
      if (!pw) {
        im2col_f32(p, cin_g, xg, col, threads);
        B = col;
      }
      const GemmEpilogue ep{bias ? bias + g * cout_g : nullptr, nullptr, p.act, p.lo, p.hi};
      sgemm(cout_g, plane, kdim, w + g * cout_g * kdim, kdim, B, plane, yn + g * cout_g * plane,
            plane, pack, threads, &ep);
    }
  }
}

}  // namespace kernels
}  // namespace edgerun
