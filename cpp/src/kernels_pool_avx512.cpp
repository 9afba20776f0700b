// MaxPool with 3-wide stride-2 windows (ResNet's 3x3 stride-2 stem pool, GoogLeNet's ceil-mode
// ones), AVX-512F: the row maxima of 16 outputs at a time from three masked loads and permutes.
//
// The separable scalar kernel (kernels_pool.cpp) ran its column loop at stride 2 one float at a
// time, and its 16-column rows were mostly loop overhead: ResNet-18's pool 58 µs at 64x64
// (onnxruntime's NCHWc pool 7.5-9), 528 at 224x224 (193). Same steps here: each input row's
// maximum over the window's columns in tap order, then each output row the maximum of its
// window's rows in order, every step std::max(m, v) (= _mm512_max_ps(v, m): m kept on ties and
// NaN), from -FLT_MAX. A column outside the row reads -FLT_MAX instead of being skipped, which
// changes no value: the running maximum starts at -FLT_MAX and never goes below it. Same bits.
#include <cfloat>
#include <vector>

#include "edgerun/kernels.h"
#include "edgerun/parallel.h"
#include "gemm_ukr.h"
#include "vec512.h"

namespace edgerun {
namespace kernels {

#if defined(__x86_64__)
namespace {

// t[ox] for ox in [0, ow): the max of row xr (w columns) over columns 2 ox - pl + {0, 1, 2}.
__attribute__((target("avx512f"))) void row_max3_s2(const float* xr, int64_t w, int64_t ow,
                                                    int64_t pl, float* t) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512i next1 = _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);
  const __m512 low = _mm512_set1_ps(-FLT_MAX);
  for (int64_t ox = 0; ox < ow; ox += 16) {
    const int64_t b = 2 * ox - pl;
    __m512 l[3];
    for (int q = 0; q < 3; ++q)
      l[q] = _mm512_mask_loadu_ps(low, lanes(-(b + 16 * q), w - (b + 16 * q)), xr + b + 16 * q);
    const __m512 t0 = _mm512_permutex2var_ps(l[0], even, l[1]);  // columns b + 2 i
    const __m512 t1 = _mm512_permutex2var_ps(l[0], odd, l[1]);   // b + 2 i + 1
    const __m512 t2 = _mm512_permutex2var_ps(t0, next1, l[2]);   // b + 2 i + 2
    __m512 m = _mm512_max_ps(t0, low);
    m = _mm512_max_ps(t1, m);
    m = _mm512_max_ps(t2, m);
    _mm512_mask_storeu_ps(t + ox, lanes(0, ow - ox), m);
  }
}

__attribute__((target("avx512f"))) void plane(const PoolParams& p, const float* xc, float* yc,
                                              float* rows) {
  for (int64_t iy = 0; iy < p.h; ++iy) row_max3_s2(xc + iy * p.w, p.w, p.ow, p.pl, rows + iy * p.ow);
  const __m512 low = _mm512_set1_ps(-FLT_MAX);
  for (int64_t oy = 0; oy < p.oh; ++oy) {
    float* yr = yc + oy * p.ow;
    for (int64_t ox = 0; ox < p.ow; ox += 16) {
      const __mmask16 keep = lanes(0, p.ow - ox);
      __m512 m = low;
      for (int64_t i = 0; i < p.kh; ++i) {
        const int64_t iy = oy * p.sh - p.pt + i * p.dh;
        if (iy < 0 || iy >= p.h) continue;
        m = _mm512_max_ps(_mm512_maskz_loadu_ps(keep, rows + iy * p.ow + ox), m);
      }
      _mm512_mask_storeu_ps(yr + ox, keep, m);
    }
  }
}

}  // namespace

bool max_pool_s2_avx512(const PoolParams& p, int64_t planes, const float* x, float* y, int threads) {
  if (!(p.kw == 3 && p.sw == 2 && p.dw == 1 && gemm::has_avx512())) return false;
  parallel_for(threads, planes, [&](int64_t pc) {
    thread_local std::vector<float> rows;
    if (rows.size() < size_t(p.h * p.ow)) rows.resize(size_t(p.h * p.ow));
    plane(p, x + pc * p.h * p.w, y + pc * p.oh * p.ow, rows.data());
  });
  return true;
}
#else
bool max_pool_s2_avx512(const PoolParams&, int64_t, const float*, float*, int) { return false; }
#endif

}  // namespace kernels
}  // namespace edgerun
