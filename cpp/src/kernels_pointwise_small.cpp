// 1x1 convolutions on small planes, AVX-512F: the GEMM with the roles of rows and
// columns swapped.
//
// The fp32 GEMM puts output channels on rows and pixels on 32-wide column strips, so
// a 7x7 plane (49 pixels) runs 64 lanes for 49 outputs: the late EfficientNet-Lite0
// layers ran at ~76 % lane use. Here the 16-wide lanes run over output channels (32 per
// panel) and a tile takes up to 7 pixels, so 49 = 7 x 7 pixels use every lane. The
// weights are packed once at load into K x 32 panels (Engine::prepare_pointwise_small);
// a tile broadcasts one input value per pixel and tap, and transposes its results in
// registers into the channel-major output (store_transposed).
//
// Every output sums the same products in the same order as the GEMM micro-kernel: one
// FMA per tap in K order within K blocks of 256, each block's sum added to the earlier
// blocks', then + channel bias, + 0 (no column bias) and the activation. So a layer
// gives the same bits on either path (tested against EDGERUN_NO_SMALL_N=1).
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "edgerun/kernels.h"
#include "env.h"
#include "gemm_ukr.h"
#include "vec512.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define ER_X86_64 1
#endif

namespace edgerun {
namespace kernels {

namespace {

constexpr int64_t kPanel = 32;  // output channels per packed panel (two zmm)
constexpr int64_t kTile = 7;    // pixels per tile: 28 accumulators + 2 panel loads + 1 broadcast
constexpr int64_t kKBlock = 256;  // the GEMM's K block (kKC): same partial sums
constexpr int64_t kAhead = 24;    // k rows a panel's first tile prefetches ahead of its reads

// Lanes the fp32 GEMM computes for n pixels (32-wide strips, a tail of <= 16 in one zmm)
// and the lanes of this kernel (tiles of up to 7 pixels, one lane per output).
int64_t gemm_lanes(int64_t n) {
  const int64_t r = n % 32;
  return n / 32 * 32 + (r == 0 ? 0 : r <= 16 ? 16 : 32);
}

#ifdef ER_X86_64
// v[i] holds channels 0..15 of pixel i (i < 8; pixels >= npix are padding): writes
// y[c * plane + i] for c < nch, i < npix. An 8 x 16 transpose in registers (unpack,
// shuffle, then one permute per channel pair so a zmm holds two channels' 8 pixels) and
// two masked stores per pair: the 16-lane scatters it replaces cost ~17 cycles each on
// Zen 5, 10-15 % of a K = 192..320 layer.
__attribute__((target("avx512f"))) inline void store_transposed(const __m512 v[8], int npix,
                                                               int64_t nch, float* y,
                                                               int64_t plane) {
  __m512 t[8], u[8];
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) {  // per 128-bit lane L: rows 2r, 2r+1 of channels 4L..4L+3
    t[2 * r] = _mm512_unpacklo_ps(v[2 * r], v[2 * r + 1]);
    t[2 * r + 1] = _mm512_unpackhi_ps(v[2 * r], v[2 * r + 1]);
  }
#pragma GCC unroll 2
  for (int g = 0; g < 2; ++g) {  // u[4g + k], lane L: rows 4g..4g+3 of channel 4L + k
    const __m512 *a = t + 4 * g;
    u[4 * g + 0] = _mm512_shuffle_ps(a[0], a[2], 0x44);
    u[4 * g + 1] = _mm512_shuffle_ps(a[0], a[2], 0xEE);
    u[4 * g + 2] = _mm512_shuffle_ps(a[1], a[3], 0x44);
    u[4 * g + 3] = _mm512_shuffle_ps(a[1], a[3], 0xEE);
  }
  // Lanes 0-7: channel 4L + k (L = 0 or 2), lanes 8-15: channel 4(L + 1) + k; each half
  // takes lane L's 4 floats from u[k] (rows 0-3) then u[4 + k] (rows 4-7).
  const __m512i lo_pair = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i hi_pair = _mm512_add_epi32(lo_pair, _mm512_set1_epi32(8));
  const __mmask16 first = __mmask16((1u << npix) - 1u), second = __mmask16(first << 8);
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
#pragma GCC unroll 2
    for (int pr = 0; pr < 2; ++pr) {
      const __m512 w = _mm512_permutex2var_ps(u[k], pr ? hi_pair : lo_pair, u[4 + k]);
      const int64_t ca = 4 * (2 * pr) + k, cb = ca + 4;
      if (ca < nch) _mm512_mask_storeu_ps(y + ca * plane, first, w);
      if (cb < nch) _mm512_mask_storeu_ps(y + cb * plane - 8, second, w);
    }
  }
}

template <int PR>
__attribute__((target("avx512f"))) void tile(const ConvParams& p, int64_t K, const float* panel,
                                             const float* x, int64_t plane, int64_t p0, float* y,
                                             int64_t m0, const float* bias, const float* pf) {
  __m512 tot[PR][2], blk[PR][2];
  for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {
    const int64_t k1 = std::min(K, k0 + kKBlock);
#pragma GCC unroll 8
    for (int i = 0; i < PR; ++i) blk[i][0] = blk[i][1] = _mm512_setzero_ps();
    for (int64_t k = k0; k < k1; ++k) {
      const __m512 a0 = _mm512_loadu_ps(panel + k * kPanel), a1 = _mm512_loadu_ps(panel + k * kPanel + 16);
      const float* xk = x + k * plane + p0;
      if (pf != nullptr) {  // a panel's first tile: see run_panel
        _mm_prefetch(reinterpret_cast<const char*>(panel + (k + kAhead) * kPanel), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(panel + (k + kAhead) * kPanel + 16), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(pf + k * kPanel), _MM_HINT_T1);
        _mm_prefetch(reinterpret_cast<const char*>(pf + k * kPanel + 16), _MM_HINT_T1);
      }
#pragma GCC unroll 8
      for (int i = 0; i < PR; ++i) {
        const __m512 b = _mm512_set1_ps(xk[i]);
        blk[i][0] = _mm512_fmadd_ps(a0, b, blk[i][0]);
        blk[i][1] = _mm512_fmadd_ps(a1, b, blk[i][1]);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < PR; ++i) {
      tot[i][0] = k0 == 0 ? blk[i][0] : _mm512_add_ps(blk[i][0], tot[i][0]);
      tot[i][1] = k0 == 0 ? blk[i][1] : _mm512_add_ps(blk[i][1], tot[i][1]);
    }
  }
  const int64_t rows = std::min<int64_t>(kPanel, p.cout - m0);
  const __mmask16 m0k = rows >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << rows) - 1u);
  const __mmask16 m1k = rows >= 32 ? __mmask16(0xFFFF) : rows > 16 ? __mmask16((1u << (rows - 16)) - 1u) : 0;
  const __m512 rb0 = bias ? _mm512_maskz_loadu_ps(m0k, bias + m0) : _mm512_setzero_ps();
  const __m512 rb1 = bias ? _mm512_maskz_loadu_ps(m1k, bias + m0 + 16) : _mm512_setzero_ps();
  const __m512 zero = _mm512_setzero_ps(), lo = _mm512_set1_ps(p.lo), hi = _mm512_set1_ps(p.hi);
  float* y0 = y + m0 * plane + p0;
  for (int h = 0; h < 2; ++h) {
    __m512 v[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      if (i >= PR) {
        v[i] = zero;
        continue;
      }
      // The GEMM epilogue's order: + row (channel) bias, + column bias (none: 0), activation.
      v[i] = act16(_mm512_add_ps(_mm512_add_ps(tot[i][h], h ? rb1 : rb0), zero), p.act, lo, hi);
    }
    store_transposed(v, PR, std::min<int64_t>(16, rows - 16 * h), y0 + h * 16 * plane, plane);
  }
}

// A panel (K x 32 floats: 147 KB at K = 1152) is read once per tile. In a whole model its
// weights come from DRAM on every run (EfficientNet-Lite0 streams ~18 MB of weights through
// L3), so the first tile prefetches its own panel kAhead rows ahead and the next panel
// into L2 (next: the panel after this one, or this one for the last). Measured on Zen 5,
// 1 thread, caches evicted before each call: K = 192 -> 1152 on 7x7 125 -> 100 us,
// 1152 -> 192 114 -> 95, 672 -> 192 74 -> 63; hot (back to back) ~1 % slower.
// res (laid out like y) / res_relu: a fused residual Add (+ Relu), applied to the panel's output
// rows once all its tiles are written (6-32 KB, still in L1): y = y + res, then Relu; the
// unfused Add's and Relu's operations in their order. In the tiles, on the transposed
// registers, it would need the residual transposed too.
__attribute__((target("avx512f"))) void run_panel(const ConvParams& p, const float* panel,
                                                  const float* x, float* y, int64_t m0,
                                                  const float* bias, const float* next,
                                                  const float* res, bool res_relu) {
  const int64_t plane = p.oh * p.ow, K = p.cin;
  int64_t p0 = 0;
  for (; p0 + kTile <= plane; p0 += kTile)
    tile<kTile>(p, K, panel, x, plane, p0, y, m0, bias, p0 == 0 ? next : nullptr);
  switch (plane - p0) {
    case 6: tile<6>(p, K, panel, x, plane, p0, y, m0, bias, nullptr); break;
    case 5: tile<5>(p, K, panel, x, plane, p0, y, m0, bias, nullptr); break;
    case 4: tile<4>(p, K, panel, x, plane, p0, y, m0, bias, nullptr); break;
    case 3: tile<3>(p, K, panel, x, plane, p0, y, m0, bias, nullptr); break;
    case 2: tile<2>(p, K, panel, x, plane, p0, y, m0, bias, nullptr); break;
    case 1: tile<1>(p, K, panel, x, plane, p0, y, m0, bias, nullptr); break;
    default: break;
  }
  if (res == nullptr) return;
  const int64_t n = std::min<int64_t>(kPanel, p.cout - m0) * plane;  // the panel's rows: contiguous
  float* yp = y + m0 * plane;
  const float* rp = res + m0 * plane;
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1u);
    __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, yp + i), _mm512_maskz_loadu_ps(m, rp + i));
    if (res_relu) v = _mm512_max_ps(v, zero);
    _mm512_mask_storeu_ps(yp + i, m, v);
  }
}
#endif

}  // namespace

bool pointwise_small_n(const ConvParams& p) {
  if (env_flag("EDGERUN_NO_SMALL_N")) return false;
  if (!gemm::has_avx512() || !is_pointwise(p) || p.group != 1 || p.cout < kPanel) return false;
  const int64_t n = p.oh * p.ow;
  const int64_t lanes = (n + kTile - 1) / kTile * kTile;
  // Worth it where the GEMM wastes over 10 % of its lanes (49 pixels: 64 lanes vs 49) on
  // planes small enough that the K x n input stays in L2 across the panels.
  return n <= 256 && 10 * gemm_lanes(n) > 11 * lanes;
}

size_t pointwise_small_pack_floats(const ConvParams& p) {
  return size_t((p.cout + kPanel - 1) / kPanel * kPanel * p.cin);
}

void pointwise_small_pack(const ConvParams& p, const float* w, float* packed) {
  const int64_t K = p.cin, panels = (p.cout + kPanel - 1) / kPanel;
  for (int64_t g = 0; g < panels; ++g)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < kPanel; ++j) {
        const int64_t m = g * kPanel + j;
        packed[(g * K + k) * kPanel + j] = m < p.cout ? w[m * K + k] : 0.f;
      }
}

void pointwise_small(const ConvParams& p, int64_t batch, const float* x, const float* packed,
                     const float* bias, float* y, int threads, const Residual* res) {
#ifdef ER_X86_64
  const int64_t panels = (p.cout + kPanel - 1) / kPanel, plane = p.oh * p.ow;
  const int64_t tasks = batch * panels;
  parallel_for(threads, tasks, [&](int64_t t) {
    const int64_t n = t / panels, g = t % panels;
    run_panel(p, packed + g * p.cin * kPanel, x + n * p.cin * plane, y + n * p.cout * plane,
              g * kPanel, bias, packed + (g + 1 < panels ? g + 1 : g) * p.cin * kPanel,
              res != nullptr ? res->x + n * p.cout * plane : nullptr, res != nullptr && res->act == Act::kRelu);
  });
#endif
}

}  // namespace kernels
}  // namespace edgerun
