// Implicit-GEMM convolution (AVX-512F): the GEMM's B strips are packed straight from the
// input image, block by block, instead of from an im2col column matrix.
//
// im2col + GEMM wrote the whole [cin * kh * kw][oh * ow] column matrix (ResNet-18's 3x3 64 -> 64
// conv on a 16x16 plane: 576 x 256 floats, ~18 % of its time), then the GEMM copied it again into
// 32-wide strips, 128 bytes per memcpy call. Here each strip row is one or two masked vector
// loads from the image: the columns of a strip are output pixels, lane n reads
// x[c][oy * sh - pt + i * dh][ox * sw - pl + j * dw] and lanes whose tap falls in the zero
// border are masked off (read as 0). Stride-1 convs whose output rows are as wide as the input
// read those lanes contiguously (one masked load per 16); others gather. The column matrix is
// gone from the scratch (conv2d_scratch_floats): only the GEMM's per-thread strip block remains.
// The GEMM runs the same tiles and kernel calls on the same values: the same bits as im2col +
// GEMM (tested against EDGERUN_NO_IMPLICIT_CONV=1).
#include <algorithm>

#include "edgerun/kernels.h"
#include "edgerun/status.h"
#include "env.h"
#include "gemm_ukr.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace edgerun {
namespace kernels {

#if defined(__x86_64__)
namespace {

constexpr int64_t kNR = 32;        // the AVX-512 micro-kernel's strip width
constexpr int64_t kMaxTap = 16;    // kh, kw at most (the per-block mask tables)
constexpr int64_t kMaxStrips = 8;  // strips per packed block (GEMM N block 128 / 32 = 4)

struct ConvB {
  const ConvParams* p;
  const float*      x;  // this image's, this group's first input channel
};

// Per packed block: for each strip, each lane's pixel offset oy * sh * w + ox * sw, and which
// lanes each tap row i / tap column j keeps inside the plane.
struct BlockTables {
  alignas(64) int32_t off[kMaxStrips][kNR];
  uint32_t            row_ok[kMaxTap][kMaxStrips];
  uint32_t            col_ok[kMaxTap][kMaxStrips];
};

void block_tables(const ConvParams& p, int64_t n0, int64_t nc, BlockTables* t) {
  const int64_t strips = (nc + kNR - 1) / kNR;
  for (int64_t s = 0; s < strips; ++s) {
    for (int64_t i = 0; i < p.kh; ++i) t->row_ok[i][s] = 0;
    for (int64_t j = 0; j < p.kw; ++j) t->col_ok[j][s] = 0;
    for (int64_t l = 0; l < kNR; ++l) {
      const int64_t n = s * kNR + l;
      if (n >= nc) {  // past the block: the strip's zero padding (all masks off)
        t->off[s][l] = 0;
        continue;
      }
      const int64_t oy = (n0 + n) / p.ow, ox = (n0 + n) % p.ow;
      t->off[s][l] = int32_t(oy * p.sh * p.w + ox * p.sw);
      for (int64_t i = 0; i < p.kh; ++i) {
        const int64_t iy = oy * p.sh - p.pt + i * p.dh;
        if (iy >= 0 && iy < p.h) t->row_ok[i][s] |= 1u << l;
      }
      for (int64_t j = 0; j < p.kw; ++j) {
        const int64_t ix = ox * p.sw - p.pl + j * p.dw;
        if (ix >= 0 && ix < p.w) t->col_ok[j][s] |= 1u << l;
      }
    }
  }
}

// Rows [k0, k0 + kc) x columns [n0, n0 + nc) of the column matrix, as 32-wide strips.
__attribute__((target("avx512f"))) void pack_conv(const void* ctx, int64_t k0, int64_t kc,
                                                  int64_t n0, int64_t nc, float* out) {
  const ConvB& cb = *static_cast<const ConvB*>(ctx);
  const ConvParams& p = *cb.p;
  ER_ASSERT(nc <= kMaxStrips * kNR);  // the GEMM's N blocks are 128 columns at most
  BlockTables t;
  block_tables(p, n0, nc, &t);
  const int64_t strips = (nc + kNR - 1) / kNR, taps = p.kh * p.kw, plane = p.h * p.w;
  // The lanes are consecutive input pixels when the output rows are the input rows, shifted.
  const bool contiguous = p.sh == 1 && p.sw == 1 && p.ow == p.w;
  // Per tap (i, j): its offset from a lane's pixel offset (off[lane] + c * plane + that is the
  // lane's input index) and the lanes it keeps inside the plane, once per strip.
  int64_t tap_off[kMaxTap * kMaxTap];
  uint32_t tap_ok[kMaxTap * kMaxTap];
  for (int64_t s = 0; s < strips; ++s) {
    for (int64_t i = 0; i < p.kh; ++i)
      for (int64_t j = 0; j < p.kw; ++j) {
        tap_off[i * p.kw + j] = (i * p.dh - p.pt) * p.w + (j * p.dw - p.pl);
        tap_ok[i * p.kw + j] = t.row_ok[i][s] & t.col_ok[j][s];
      }
    const __m512i off0 = _mm512_load_si512(t.off[s]), off1 = _mm512_load_si512(t.off[s] + 16);
    const float* xs = cb.x + n0 + s * kNR;  // the contiguous lanes' first pixel
    float* o = out + s * kNR * kc;
    int64_t c = k0 / taps, tp = k0 % taps;
    for (int64_t k = 0; k < kc; ++k, o += kNR) {
      const int64_t tap = c * plane + tap_off[tp];
      const __mmask16 m0 = __mmask16(tap_ok[tp]), m1 = __mmask16(tap_ok[tp] >> 16);
      __m512 v0, v1;
      if (contiguous) {  // lane l reads x[tap + n0 + s * 32 + l]: masked lanes are not read
        v0 = _mm512_maskz_loadu_ps(m0, xs + tap);
        v1 = _mm512_maskz_loadu_ps(m1, xs + tap + 16);
      } else {
        const __m512i tv = _mm512_set1_epi32(int32_t(tap));
        v0 = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m0, _mm512_add_epi32(off0, tv), cb.x, 4);
        v1 = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m1, _mm512_add_epi32(off1, tv), cb.x, 4);
      }
      _mm512_storeu_ps(o, v0);
      _mm512_storeu_ps(o + 16, v1);
      if (++tp == taps) {
        tp = 0;
        ++c;
      }
    }
  }
}

}  // namespace

bool conv_implicit(const ConvParams& p) {
  // Read once per process: the scratch is sized by the same answer the run takes.
  static const bool off = env_flag("EDGERUN_NO_IMPLICIT_CONV");
  const int64_t cout_g = p.cout / p.group;
  // cout_g <= 2 runs sgemm's row-at-a-time path (other sums): im2col keeps it. Indices are int32.
  return !off && gemm::has_avx512() && gemm::strip_width() == kNR && p.kh <= kMaxTap &&
         p.kw <= kMaxTap && cout_g > 2 && (p.cin / p.group) * p.h * p.w < (int64_t(1) << 31);
}

void conv2d_implicit(const ConvParams& p, const float* xg, const float* w, const GemmEpilogue& ep,
                     float* y, float* scratch, int threads, const float* wpack) {
  const ConvB ctx{&p, xg};
  const int64_t kdim = (p.cin / p.group) * p.kh * p.kw;
  gemm::sgemm_packed_b(p.cout / p.group, p.oh * p.ow, kdim, w, kdim, {pack_conv, &ctx}, y,
                       p.oh * p.ow, scratch, threads, &ep, wpack);
}
#else
bool conv_implicit(const ConvParams&) { return false; }
void conv2d_implicit(const ConvParams&, const float*, const float*, const GemmEpilogue&, float*,
                     float*, int, const float*) {}
#endif

}  // namespace kernels
}  // namespace edgerun
