// int8 Conv on AVX2 without VNNI (x86 only; kernels_qgemm.cpp picks it): the same
// per-pixel u8 activations, exact int32 sums and epilogue as every other path, so
// the outputs are bit-identical to them.
//
// maddubs would saturate (a u8 x s8 pair sum reaches 64770), so this path works on
// int16: the activation panel is packed as int16 pairs (per strip [k/2][16 px][2])
// and the weight rows are widened to int16 once per block of strips (widen_s8), so
// one madd_epi16 of a broadcast weight pair forms 8 pixels' exact int32 pair sums,
// added straight into the accumulators: no unpack and no horizontal add in the loop.
// The u8 layout needed 2 unpacks per strip and a hadd per weight row and k-quad
// (14.5 -> 16 GMAC/s on a Zen 1 core, where madd_epi16 runs on one pipe).
#if defined(__x86_64__) || defined(__i386__)
#include <algorithm>
#include <cstring>

#include "qgemm_ukr.h"

namespace edgerun {
namespace kernels {
namespace qgemm {

namespace {

constexpr int64_t kW16Chunk = 2048;  // k per widened weight chunk (4 x 4 KiB on the stack)
constexpr int64_t kW16Strips = 8;    // strips per block: the block's panel stays in L2

// kp2 = k pairs, W = 4 rows of int16 at stride ldw, B = [kp2][16] int32 words; the
// sums are added to tile (4 x 16 int32), so k chunks accumulate exactly.
__attribute__((target("avx2"))) void qukr_w16(int64_t kp2, const int16_t* W, int64_t ldw,
                                              const uint32_t* B, int32_t* tile) {
  __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00;
  __m256i c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  const int16_t* w0 = W;
  const int16_t* w1 = W + ldw;
  const int16_t* w2 = W + 2 * ldw;
  const int16_t* w3 = W + 3 * ldw;
  for (int64_t p = 0; p < kp2; ++p) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B + 8));
    B += kQNR;
    int32_t v;
#define ER_QROW(wr, ca, cb)                                          \
    std::memcpy(&v, wr + 2 * p, 4);                                  \
    {                                                                \
      const __m256i a = _mm256_set1_epi32(v);                        \
      ca = _mm256_add_epi32(ca, _mm256_madd_epi16(b0, a));           \
      cb = _mm256_add_epi32(cb, _mm256_madd_epi16(b1, a));           \
    }
    ER_QROW(w0, c00, c01)
    ER_QROW(w1, c10, c11)
    ER_QROW(w2, c20, c21)
    ER_QROW(w3, c30, c31)
#undef ER_QROW
  }
  __m256i* t = reinterpret_cast<__m256i*>(tile);
  const __m256i c[8] = {c00, c01, c10, c11, c20, c21, c30, c31};
  for (int i = 0; i < 8; ++i)
    _mm256_storeu_si256(t + i, _mm256_add_epi32(_mm256_loadu_si256(t + i), c[i]));
}

// Strip tails and the last quad when K % 4 != 0: the u8 quad's bytes spread into
// the two int16 pairs.
void pack_quad_w16_portable(const float* x, int64_t ldx, int64_t K, int64_t k4, int64_t n0,
                            int64_t w, const float* inv, const float* mn, uint32_t* o) {
  uint32_t b[kQNR];
  pack_quad_portable(x, ldx, K, k4, n0, w, inv, mn, b);
  for (int64_t j = 0; j < kQNR; ++j) {
    o[j] = (b[j] & 0xffu) | ((b[j] >> 8) & 0xffu) << 16;
    o[kQNR + j] = ((b[j] >> 16) & 0xffu) | (b[j] >> 24) << 16;
  }
}

__attribute__((target("avx2"))) void widen_s8(const int8_t* src, int64_t n, int16_t* d) {
  int64_t k = 0;
  for (; k + 16 <= n; k += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + k),
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k))));
  for (; k < n; ++k) d[k] = src[k];
}

}  // namespace

__attribute__((target("avx2"))) void pack_quad_w16_avx2(const float* x, int64_t ldx, int64_t K,
                                                        int64_t k4, int64_t n0, int64_t w,
                                                        const float* inv, const float* mn,
                                                        uint32_t* o) {
  if (w < kQNR || k4 + 4 > K) {
    pack_quad_w16_portable(x, ldx, K, k4, n0, w, inv, mn, o);
    return;
  }
  for (int h = 0; h < 2; ++h) {
    const __m256 iv = _mm256_loadu_ps(inv + 8 * h), mv = _mm256_loadu_ps(mn + 8 * h);
    __m256i u[4];
    for (int q = 0; q < 4; ++q) u[q] = quant8_avx2(x + (k4 + q) * ldx + n0 + 8 * h, mv, iv);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 8 * h),
                        _mm256_or_si256(u[0], _mm256_slli_epi32(u[1], 16)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + kQNR + 8 * h),
                        _mm256_or_si256(u[2], _mm256_slli_epi32(u[3], 16)));
  }
}

// Each thread takes blocks of up to kW16Strips strips; per 4-row tile and k chunk,
// the weight rows are widened to int16 once and run over every strip of the block
// (int32 sums accumulate across chunks: exact).
void qgemm_group_w16(const S8Weights& w, int64_t m0, int64_t M, int64_t N, const uint8_t* Bq,
                     const float* xs, const float* mn, const float* bias, Act act, float lo,
                     float hi, float* y, int64_t ldy, int threads) {
  const int64_t strips = (N + kQNR - 1) / kQNR;
  const int64_t per = std::min(kW16Strips, (strips + threads - 1) / threads);
  const int64_t blocks = (strips + per - 1) / per;
  parallel_for(threads, blocks, [&](int64_t blk) {
    alignas(32) int16_t wt[kQMR * kW16Chunk];
    alignas(32) int32_t tiles[kW16Strips][kQMR * kQNR];
    const int64_t s0 = blk * per, ns = std::min(per, strips - s0);
    for (int64_t m = 0; m < M; m += kQMR) {
      const int64_t mr = std::min(kQMR, M - m);
      std::memset(tiles, 0, sizeof(tiles));
      for (int64_t kc = 0; kc < w.kp; kc += kW16Chunk) {
        const int64_t kn = std::min(kW16Chunk, w.kp - kc);  // a multiple of 4
        for (int64_t r = 0; r < kQMR; ++r) {
          int16_t* d = wt + r * kW16Chunk;
          if (r >= mr) {
            std::memset(d, 0, size_t(kn) * sizeof(int16_t));
            continue;
          }
          widen_s8(w.w + (m0 + m + r) * w.kp + kc, kn, d);
        }
        for (int64_t i = 0; i < ns; ++i) {
          const uint32_t* B = reinterpret_cast<const uint32_t*>(Bq + (s0 + i) * w.kp * 2 * kQNR) +
                              (kc / 2) * kQNR;
          qukr_w16(kn / 2, wt, kW16Chunk, B, tiles[i]);
        }
      }
      for (int64_t i = 0; i < ns; ++i) {
        const int64_t n0 = (s0 + i) * kQNR, nw = std::min(kQNR, N - n0);
        for (int64_t r = 0; r < mr; ++r) {
          const int64_t row = m0 + m + r;
          store_row(tiles[i] + r * kQNR, xs + n0, mn + n0, w.scale[row], float(w.wsum[row]),
                    bias ? bias[row] : 0.f, act, lo, hi, y + (m + r) * ldy + n0, nw);
        }
      }
    }
  });
}

}  // namespace qgemm
}  // namespace kernels
}  // namespace edgerun
#endif
