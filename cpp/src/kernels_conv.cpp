// Convolution: 1x1/stride-1 as a plain GEMM on the input, depthwise as a
// direct loop with contiguous inner rows, everything else im2col + GEMM per
// group (implicit GEMM where conv_implicit: B packed from the input, no im2col). Bias and the fused activation are applied in the GEMM epilogue.
#include <algorithm>
#include <cstring>

#include "edgerun/kernels.h"
#include "edgerun/status.h"
#include "env.h"
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
  *o0 = lo <= 0 ? 0 : s == 1 ? lo : (lo + s - 1) / s;
  *o1 = hi <= 0 ? 0 : s == 1 ? hi : (hi + s - 1) / s;
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

// The tap after (c, i, j) in column-matrix row order: j fastest, then i, then c.
inline void next_tap(const ConvParams& p, int64_t* c, int64_t* i, int64_t* j) {
  if (++*j < p.kw) return;
  *j = 0;
  if (++*i < p.kh) return;
  *i = 0;
  ++*c;
}

// Rows [r0, r1) of the column matrix (row r = channel c, tap i, j). The row's (c, i, j)
// steps along with r: three 64-bit divisions per row were most of the digits CNN's
// im2col time (perf), whose rows are 8 floats.
void im2col_rows(const ConvParams& p, int64_t r0, int64_t r1, const float* x, float* col,
                 GatherS2 gather_s2) {
  const int64_t plane = p.oh * p.ow;
  int64_t c = r0 / (p.kh * p.kw), i = (r0 / p.kw) % p.kh, j = r0 % p.kw;
  for (int64_t r = r0; r < r1; ++r, next_tap(p, &c, &i, &j)) {
    const float* xc = x + c * p.h * p.w;
    float* out = col + r * plane;
    int64_t ow0, ow1;
    valid_range(p.w, p.ow, p.sw, p.pl, j * p.dw, &ow0, &ow1);
    if (p.sw == 1 && p.sh == 1 && p.ow == p.w) {
      // "Same"-width stride-1 rows: the valid output rows are one shifted block of the
      // input plane. One copy, then the 0-2 wrapped columns of each row zeroed (instead
      // of a copy call per output row).
      int64_t oy0, oy1;
      valid_range(p.h, p.oh, 1, p.pt, i * p.dh, &oy0, &oy1);
      if (oy0 > 0) std::memset(out, 0, sizeof(float) * size_t(oy0 * p.ow));  // calls cost: skip empty ones
      if (oy1 < p.oh) std::memset(out + oy1 * p.ow, 0, sizeof(float) * size_t((p.oh - oy1) * p.ow));
      if (oy1 > oy0) {
        // out[oy][ox] = x[oy - pt + i*dh][ox - pl + j*dw] for ox in [ow0, ow1): from the
        // first valid element of row oy0 to the last of row oy1 - 1, all inside the plane.
        const int64_t first = oy0 * p.ow + ow0, last = (oy1 - 1) * p.ow + ow1;
        const float* src = xc + (oy0 - p.pt + i * p.dh) * p.w - oy0 * p.w + (j * p.dw - p.pl);
        if (last > first) std::memcpy(out + first, src + first, sizeof(float) * size_t(last - first));
        for (int64_t oy = oy0; oy < oy1; ++oy) {
          float* o = out + oy * p.ow;
          for (int64_t ox = 0; ox < ow0; ++ox) o[ox] = 0.f;
          for (int64_t ox = ow1; ox < p.ow; ++ox) o[ox] = 0.f;
        }
      }
      continue;
    }
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

}  // namespace

void im2col_f32(const ConvParams& p, int64_t cin_g, const float* x, float* col, int threads) {
  const int64_t rows = cin_g * p.kh * p.kw;
  static const GatherS2 gather_s2 = pick_gather_s2();
  // Under ~64K floats the copy takes a few µs, less than a parallel region costs: the digits
  // CNN's 2-thread front was slower than its 1-thread one with every im2col split.
  if (threads <= 1 || rows < 2 || rows * p.oh * p.ow < (int64_t(1) << 16)) {
    im2col_rows(p, 0, rows, x, col, gather_s2);
    return;
  }
  parallel_for(threads, threads, [&](int64_t t) {
    im2col_rows(p, rows * t / threads, rows * (t + 1) / threads, x, col, gather_s2);
  });
}

size_t conv2d_scratch_floats(const ConvParams& p, int threads) {
  if (is_depthwise(p)) return depthwise_scratch_floats(p, threads);
  const bool no_col = is_pointwise(p) || conv_implicit(p);
  size_t col = no_col ? 0 : size_t((p.cin / p.group) * p.kh * p.kw * p.oh * p.ow);
  return col + sgemm_scratch_floats(threads);
}

size_t conv2d_pack_floats(const ConvParams& p) {
  static const bool off = env_flag("EDGERUN_NO_PACK_A");
  const int64_t cout_g = p.cout / p.group, kdim = (p.cin / p.group) * p.kh * p.kw;
  if (off || (is_depthwise(p) && p.kh * p.kw > 0) || cout_g <= 2 || kdim <= 0 || !gemm::packed_a_ok())
    return 0;
  return size_t(p.group) * gemm::pack_a_floats(cout_g, kdim);
}

void conv2d_pack_weights(const ConvParams& p, const float* w, float* packed) {
  const int64_t cout_g = p.cout / p.group, kdim = (p.cin / p.group) * p.kh * p.kw;
  const size_t per = gemm::pack_a_floats(cout_g, kdim);
  for (int64_t g = 0; g < p.group; ++g)
    gemm::pack_a(cout_g, kdim, w + g * cout_g * kdim, kdim, packed + size_t(g) * per);
}

void conv2d(const ConvParams& p, int64_t batch, const float* x, const float* w, const float* bias,
            float* y, float* scratch, int threads, const float* wpack, const Residual* res) {
  if (is_depthwise(p) && p.kh * p.kw > 0) {
    ER_ASSERT(res == nullptr);  // the engine fuses residual Adds into GEMM convs only
    depthwise_conv(p, batch, x, w, bias, y, scratch, threads);
    return;
  }
  const int64_t cin_g = p.cin / p.group, cout_g = p.cout / p.group;
  const int64_t kdim = cin_g * p.kh * p.kw, plane = p.oh * p.ow;
  const bool pw = is_pointwise(p);
  const bool implicit = !pw && conv_implicit(p);
  float* col = scratch;
  float* pack = pw || implicit ? scratch : scratch + kdim * plane;
  for (int64_t n = 0; n < batch; ++n) {
    const float* xn = x + n * p.cin * p.h * p.w;
    float* yn = y + n * p.cout * plane;
    for (int64_t g = 0; g < p.group; ++g) {
      const float* xg = xn + g * cin_g * p.h * p.w;
      GemmEpilogue ep{bias ? bias + g * cout_g : nullptr, nullptr, p.act, p.lo, p.hi};
      if (res != nullptr) {  // laid out like y: this group's rows of this image
        ep.res = res->x + n * p.cout * plane + g * cout_g * plane;
        ep.ldr = plane;
        ep.res_act = res->act;
      }
      const float* wp = wpack ? wpack + size_t(g) * gemm::pack_a_floats(cout_g, kdim) : nullptr;
      if (implicit) {
        conv2d_implicit(p, xg, w + g * cout_g * kdim, ep, yn + g * cout_g * plane, pack, threads, wp);
        continue;
      }
      const float* B = xg;
      if (!pw) {
        im2col_f32(p, cin_g, xg, col, threads);
        B = col;
      }
      if (wp != nullptr)
        gemm::sgemm_pa(cout_g, plane, kdim, wp, B, plane, yn + g * cout_g * plane, plane, pack,
                       threads, &ep);
      else
        sgemm(cout_g, plane, kdim, w + g * cout_g * kdim, kdim, B, plane, yn + g * cout_g * plane,
              plane, pack, threads, &ep);
    }
  }
}

}  // namespace kernels
}  // namespace edgerun
