// int8 Conv: im2col (unless 1x1 stride 1), dynamic per-pixel quantization of
// the activation panel, a u8 x s8 -> int32 micro-kernel (AVX-VNNI, AVX2, NEON or
// portable), and a fused dequantize + bias + activation epilogue.
//
// Activations, per output pixel n over its K values (im2col zero padding counts
// as real zeros): asymmetric 8 bits. mn = min, mx = max, d = mx - mn,
//   xs = d / 255,  inv = 255 / max(d, kQMinRange),  u = clamp(rne((x - mn) * inv), 0, 255)
// (rne: round to nearest even), so x ~= xs * u + mn. With s8 weights q in
// [-127, 127], the exact int32 t = sum_k q_k u_k and the weight row sum R = sum_k q_k
// give sum_k q_k x_k ~= xs * t + mn * R, and the epilogue computes, in this order,
// each operation rounded to float (never fused into an FMA):
//   y = act(ws * ((xs * float(t)) + (mn * float(R))) + b)
// float(t) rounds when |t| > 2^24 (K > ~520), but t is the same int32 on every
// path, so it rounds the same way; |t| <= 255 * 127 * K fits int32 for K < 66000.
// For signed inputs xs * t and mn * R may largely cancel; each carries a rounding
// error of 2^-24 of itself (<= 2^-24 * |mn| * 127 * K), about sqrt(K) * 3e-5 of the
// activation quantization error: negligible.
// Packed activations: strips of 16 pixels, [k/4][16][4] bytes each (u; rows
// k >= K hold 0 and meet zero weights). u8 x s8 pair sums reach 2 * 255 * 127,
// past int16, so AVX2 without VNNI packs u as int16 pairs instead ([k/2][16][2]
// int16 per strip) and multiplies them with int16-widened weights by madd_epi16
// (exact) rather than the saturating maddubs (kernels_qgemm_avx2.cpp). Every micro-kernel
// computes the same exact int32 sums and applies the same epilogue operations, so
// all paths give bit-identical outputs. Where AVX-512 VNNI is present, conv2d_s8 hands each group
// to kernels_qgemm_avx512.cpp instead (fused quantize + pack, 8 x 48 vpdpbusd
// tiles with the epilogue in registers).
// No a * b + c in this file may become an FMA: the scalar epilogue must round like
// the vector ones on every target (aarch64 compilers contract by default, and then
// the int8 outputs differ from x86 in the last bit; tests/cross checks this).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "edgerun/kernels.h"
#include "env.h"
#include "qgemm_ukr.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ER_X86 1
#endif
#if defined(__ARM_NEON)
#include <arm_neon.h>
#endif

namespace edgerun {
namespace kernels {

namespace {

using qgemm::kQNR;
using qgemm::kQMax;
using qgemm::kQMinRange;
using qgemm::kQMR;
using qgemm::q8;

using QKernel = void (*)(int64_t kq, const int8_t* W, int64_t kp, int64_t mr, const uint8_t* B,
                         int32_t* tile);

void qukr_portable(int64_t kq, const int8_t* W, int64_t kp, int64_t mr, const uint8_t* B,
                   int32_t* tile) {
  for (int64_t r = 0; r < kQMR * kQNR; ++r) tile[r] = 0;
  for (int64_t r = 0; r < mr; ++r) {
    const int8_t* w = W + r * kp;
    int32_t* t = tile + r * kQNR;
    for (int64_t q = 0; q < kq; ++q) {
      const uint8_t* b = B + q * kQNR * 4;
      for (int64_t j = 0; j < kQNR; ++j)
        t[j] += int32_t(b[4 * j]) * w[4 * q] + int32_t(b[4 * j + 1]) * w[4 * q + 1] +
                int32_t(b[4 * j + 2]) * w[4 * q + 2] + int32_t(b[4 * j + 3]) * w[4 * q + 3];
    }
  }
}


#ifdef ER_X86
// AVX-VNNI: vpdpbusd does the u8 x s8 4-products + int32 accumulation in one
// instruction, exactly for any u8 x s8 (the non-saturating form; not vpdpbusds),
// so the result is bit-identical to qukr_w16 and the portable path.
__attribute__((target("avx2,avxvnni"))) void qukr_vnni(int64_t kq, const int8_t* W, int64_t kp,
                                                       int64_t mr, const uint8_t* B,
                                                       int32_t* tile) {
  __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00;
  __m256i c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  const int8_t* w0 = W;
  const int8_t* w1 = W + (mr > 1 ? 1 : 0) * kp;
  const int8_t* w2 = W + (mr > 2 ? 2 : 0) * kp;
  const int8_t* w3 = W + (mr > 3 ? 3 : 0) * kp;
  for (int64_t q = 0; q < kq; ++q) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B + 32));
    B += 64;
    int32_t v;
#define ER_QROW(wr, ca, cb)                        \
    std::memcpy(&v, wr + 4 * q, 4);                \
    {                                              \
      const __m256i a = _mm256_set1_epi32(v);      \
      ca = _mm256_dpbusd_avx_epi32(ca, b0, a);     \
      cb = _mm256_dpbusd_avx_epi32(cb, b1, a);     \
    }
    ER_QROW(w0, c00, c01)
    ER_QROW(w1, c10, c11)
    ER_QROW(w2, c20, c21)
    ER_QROW(w3, c30, c31)
#undef ER_QROW
  }
  __m256i* t = reinterpret_cast<__m256i*>(tile);
  _mm256_storeu_si256(t + 0, c00); _mm256_storeu_si256(t + 1, c01);
  _mm256_storeu_si256(t + 2, c10); _mm256_storeu_si256(t + 3, c11);
  _mm256_storeu_si256(t + 4, c20); _mm256_storeu_si256(t + 5, c21);
  _mm256_storeu_si256(t + 6, c30); _mm256_storeu_si256(t + 7, c31);
}

bool has_avx_vnni() {
  static const bool ok = !env_flag("EDGERUN_NO_VNNI") && has_avx2_fma() &&
                         __builtin_cpu_supports("avxvnni");
  return ok;
}
#endif

#if defined(__ARM_NEON) && defined(__aarch64__)
// Widens u (0..255) and w to int16 and multiplies into int32 (vmull_s16): exact
// for the full u8 range. Not compiled on the x86 test machines.
void qukr_neon(int64_t kq, const int8_t* W, int64_t kp, int64_t mr, const uint8_t* B,
               int32_t* tile) {
  for (int64_t r = 0; r < kQMR; ++r) {
    const int8_t* w = W + (r < mr ? r : 0) * kp;
    int32x4_t acc[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
    for (int64_t q = 0; q < kq; ++q) {
      int32_t v;
      std::memcpy(&v, w + 4 * q, 4);
      const int16x8_t a = vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(v)));
      for (int j4 = 0; j4 < 4; ++j4) {  // 4 pixels x 4 k per 16 bytes
        const uint8x16_t b = vld1q_u8(B + q * 64 + j4 * 16);
        const int16x8_t lo = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(b)));
        const int16x8_t hi = vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(b)));
        const int32x4_t p0 = vpaddq_s32(vmull_s16(vget_low_s16(lo), vget_low_s16(a)),
                                        vmull_s16(vget_high_s16(lo), vget_low_s16(a)));
        const int32x4_t p1 = vpaddq_s32(vmull_s16(vget_low_s16(hi), vget_low_s16(a)),
                                        vmull_s16(vget_high_s16(hi), vget_low_s16(a)));
        acc[j4] = vaddq_s32(acc[j4], vpaddq_s32(p0, p1));
      }
    }
    for (int j4 = 0; j4 < 4; ++j4) vst1q_s32(tile + r * kQNR + j4 * 4, acc[j4]);
  }
}
#endif

QKernel pick_qkernel() {
#ifdef ER_X86
  if (has_avx_vnni()) return qukr_vnni;
#endif
#if defined(__ARM_NEON) && defined(__aarch64__)
  if (!force_portable()) return qukr_neon;
#endif
  return qukr_portable;
}

}  // namespace

// One k-quad of a strip: word j = u(k4, j) | u(k4+1, j) << 8 | ... (little-endian
// bytes [16][4]); rows k >= K and pixels past N are 0 (u: qgemm::q8). Written so
// it vectorises.
void qgemm::pack_quad_portable(const float* x, int64_t ldx, int64_t K, int64_t k4, int64_t n0,
                               int64_t w, const float* inv, const float* mn, uint32_t* o) {
  const float* r[4];
  for (int q = 0; q < 4; ++q) r[q] = k4 + q < K ? x + (k4 + q) * ldx + n0 : nullptr;
  for (int64_t j = 0; j < kQNR; ++j) {
    uint32_t word = 0;
    for (int q = 0; q < 4; ++q) {
      const float v = (r[q] != nullptr && j < w) ? (r[q][j] - mn[j]) * inv[j] : 0.f;
      word |= uint32_t(q8(v)) << (8 * q);
    }
    o[j] = word;
  }
}

namespace {

using qgemm::pack_quad_portable;

#ifdef ER_X86
__attribute__((target("avx2"))) void pack_quad_avx2(const float* x, int64_t ldx, int64_t K,
                                                    int64_t k4, int64_t n0, int64_t w,
                                                    const float* inv, const float* mn,
                                                    uint32_t* o) {
  if (w < kQNR || k4 + 4 > K) {
    pack_quad_portable(x, ldx, K, k4, n0, w, inv, mn, o);
    return;
  }
  for (int h = 0; h < 2; ++h) {
    const __m256 iv = _mm256_loadu_ps(inv + 8 * h), mv = _mm256_loadu_ps(mn + 8 * h);
    __m256i word = _mm256_setzero_si256();
    for (int q = 0; q < 4; ++q)
      word = _mm256_or_si256(
          word, _mm256_slli_epi32(qgemm::quant8_avx2(x + (k4 + q) * ldx + n0 + 8 * h, mv, iv), 8 * q));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 8 * h), word);
  }
}
#endif

using PackQuad = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, const float*,
                          const float*, uint32_t*);

// The AVX2 path without VNNI: int16-pair panel, kernels_qgemm_avx2.cpp.
bool use_w16() {
#ifdef ER_X86
  static const bool ok = has_avx2_fma() && !has_avx_vnni();
  return ok;
#else
  return false;
#endif
}

// Bytes per packed k of one strip: 16 u8, or 16 int16 on the w16 path.
int64_t panel_bytes_per_k() { return use_w16() ? 2 * kQNR : kQNR; }

PackQuad pick_pack() {
#ifdef ER_X86
  if (use_w16()) return qgemm::pack_quad_w16_avx2;
  if (has_avx2_fma()) return pack_quad_avx2;
#endif
  return pack_quad_portable;
}

// o[j] = act(ws * (xs[j] * float(t[j]) + mn[j] * rsum) + b), rsum = float(R): one
// shared (scalar-ISA) copy for every micro-kernel, so all paths round identically
// (no FMA: the baseline x86 target has none; on ARM every path uses this copy).
// Branch-free inner loops vectorise.
void epilogue(const int32_t* t, const float* xs, const float* mn, float ws, float rsum, float b,
              Act act, float lo, float hi, float* o, int64_t nw) {
  float v[kQNR];
  for (int64_t j = 0; j < kQNR; ++j) v[j] = ws * (xs[j] * float(t[j]) + mn[j] * rsum) + b;
  if (act == Act::kRelu) {
    for (int64_t j = 0; j < kQNR; ++j) v[j] = v[j] > 0.f ? v[j] : 0.f;
  } else if (act == Act::kClip) {
    // maxps / minps semantics (a > b ? a : b, a < b ? a : b), as the vector epilogues:
    // a NaN becomes lo there, and std::max / std::min kept it NaN in tail strips only.
    for (int64_t j = 0; j < kQNR; ++j) {
      const float t = v[j] > lo ? v[j] : lo;
      v[j] = t < hi ? t : hi;
    }
  }
  for (int64_t j = 0; j < nw; ++j) o[j] = v[j];
}

#ifdef ER_X86
// The same epilogue on 16 outputs in two AVX registers: identical operations in
// the same order (convert, xs * t, mn * R, add, ws *, + b, clamp; no FMA
// contraction: the target has no "fma"), so it rounds bit-identically to the
// scalar one.
__attribute__((target("avx2"))) void epilogue_avx2(const int32_t* t, const float* xs,
                                                   const float* mn, float ws, float rsum, float b,
                                                   Act act, float lo, float hi, float* o) {
  const __m256 wsv = _mm256_set1_ps(ws), rv = _mm256_set1_ps(rsum), bv = _mm256_set1_ps(b);
  for (int h = 0; h < 2; ++h) {
    const __m256 f =
        _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + 8 * h)));
    const __m256 a = _mm256_mul_ps(_mm256_loadu_ps(xs + 8 * h), f);
    const __m256 c = _mm256_mul_ps(_mm256_loadu_ps(mn + 8 * h), rv);
    __m256 v = _mm256_add_ps(_mm256_mul_ps(wsv, _mm256_add_ps(a, c)), bv);
    if (act == Act::kRelu) {
      v = _mm256_max_ps(v, _mm256_setzero_ps());
    } else if (act == Act::kClip) {
      v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(lo)), _mm256_set1_ps(hi));
    }
    _mm256_storeu_ps(o + 8 * h, v);
  }
}
#endif

#ifdef ER_X86
// Column minima / maxima of X[k, n] (k < K) for the whole 8-column blocks, in
// registers down each block; the same (a < b ? a : b) selections as the scalar
// loop (minps / maxps), so the same values; a column holding a NaN gets mn = NaN.
// Returns the columns done.
__attribute__((target("avx2"))) int64_t minmax_avx2(const float* x, int64_t ldx, int64_t K,
                                                    int64_t N, float* mn, float* mx) {
  const int64_t n8 = N / 8 * 8;
  int64_t n = 0;
  const __m256 nan = _mm256_set1_ps(NAN);
  for (; n + 32 <= n8; n += 32) {
    __m256 a[4], b[4], z[4];
    for (int i = 0; i < 4; ++i) {
      a[i] = _mm256_loadu_ps(mn + n + 8 * i);
      b[i] = _mm256_loadu_ps(mx + n + 8 * i);
      z[i] = _mm256_setzero_ps();
    }
    for (int64_t k = 0; k < K; ++k) {
      const float* r = x + k * ldx + n;
      for (int i = 0; i < 4; ++i) {
        const __m256 v = _mm256_loadu_ps(r + 8 * i);
        a[i] = _mm256_min_ps(v, a[i]);
        b[i] = _mm256_max_ps(v, b[i]);
        z[i] = _mm256_or_ps(z[i], _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      }
    }
    for (int i = 0; i < 4; ++i) {
      _mm256_storeu_ps(mn + n + 8 * i, _mm256_blendv_ps(a[i], nan, z[i]));
      _mm256_storeu_ps(mx + n + 8 * i, b[i]);
    }
  }
  for (; n < n8; n += 8) {
    __m256 a = _mm256_loadu_ps(mn + n), b = _mm256_loadu_ps(mx + n), z = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; ++k) {
      const __m256 v = _mm256_loadu_ps(x + k * ldx + n);
      a = _mm256_min_ps(v, a);
      b = _mm256_max_ps(v, b);
      z = _mm256_or_ps(z, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    _mm256_storeu_ps(mn + n, _mm256_blendv_ps(a, nan, z));
    _mm256_storeu_ps(mx + n, b);
  }
  return n8;
}
#endif

// Per-pixel xs / inv / mn of X[k, n] (n < N, row stride ldx; pixels past N get a
// zero range) and the packed u8 panel. min / max are written as the x86 minps /
// maxps semantics (a < b ? a : b), as the AVX-512 path computes them. A pixel
// holding a NaN gets mn = NaN (so xs = NaN, u = 0 and every output of it NaN, as an
// fp32 Conv gives; min / max alone skip NaNs, and the pixel came out finite garbage).
void quantize_pack(const float* x, int64_t ldx, int64_t K, int64_t kp, int64_t N, float* xs,
                   float* inv, float* mn, uint8_t* out, int threads) {
  const int64_t strips = (N + kQNR - 1) / kQNR, np = strips * kQNR;
  float* mx = xs;  // the max, until the scales replace it
  float* has_nan = inv;  // 0 / 1 per pixel, until the inverse scales replace it
  for (int64_t n = 0; n < np; ++n) {
    mn[n] = n < N ? INFINITY : 0.f;
    mx[n] = n < N ? -INFINITY : 0.f;
    has_nan[n] = 0.f;
  }
  int64_t n_done = 0;
#ifdef ER_X86
  static const bool avx2 = has_avx2_fma();
  if (avx2) n_done = minmax_avx2(x, ldx, K, N, mn, mx);
#endif
  for (int64_t k = 0; k < K; ++k) {
    const float* r = x + k * ldx;
    for (int64_t n = n_done; n < N; ++n) {
      mn[n] = r[n] < mn[n] ? r[n] : mn[n];
      mx[n] = r[n] > mx[n] ? r[n] : mx[n];
      has_nan[n] = r[n] != r[n] ? 1.f : has_nan[n];
    }
  }
  for (int64_t n = n_done; n < N; ++n) mn[n] = has_nan[n] != 0.f ? NAN : mn[n];
  for (int64_t n = 0; n < np; ++n) {
    const float d = mx[n] - mn[n];
    inv[n] = kQMax / (d > kQMinRange ? d : kQMinRange);
    xs[n] = d / kQMax;
  }
  static const PackQuad pack_quad = pick_pack();
  const int64_t bpk = panel_bytes_per_k();  // a k-quad is 4 * bpk bytes = bpk words
  parallel_for(threads, strips, [&](int64_t s) {
    const int64_t n0 = s * kQNR;
    uint32_t* o = reinterpret_cast<uint32_t*>(out + s * kp * bpk);
    for (int64_t k4 = 0; k4 < kp; k4 += 4)
      pack_quad(x, ldx, K, k4, n0, std::min(kQNR, N - n0), inv + n0, mn + n0,
                o + (k4 / 4) * bpk);
  });
}

}  // namespace

// One tile row's epilogue (vector when the strip is whole); shared with the AVX2
// int16 path (kernels_qgemm_avx2.cpp).
void qgemm::store_row(const int32_t* t, const float* xs, const float* mn, float ws, float rsum,
                      float b, Act act, float lo, float hi, float* o, int64_t nw) {
#ifdef ER_X86
  static const bool vec_epi = has_avx2_fma();
  if (vec_epi && nw == kQNR) {
    epilogue_avx2(t, xs, mn, ws, rsum, b, act, lo, hi, o);
    return;
  }
#endif
  epilogue(t, xs, mn, ws, rsum, b, act, lo, hi, o, nw);
}

namespace {


// y[m, n] for rows [0, M) of one group: the int8 GEMM over the packed panel.
void qgemm_group(const S8Weights& w, int64_t m0, int64_t M, int64_t N, const uint8_t* Bq,
                 const float* xs, const float* mn, const float* bias, Act act, float lo, float hi,
                 float* y, int64_t ldy, int threads) {
#ifdef ER_X86
  if (use_w16()) {
    qgemm::qgemm_group_w16(w, m0, M, N, Bq, xs, mn, bias, act, lo, hi, y, ldy, threads);
    return;
  }
#endif
  static const QKernel ukr = pick_qkernel();
  const int64_t strips = (N + kQNR - 1) / kQNR, kq = w.kp / 4;
  parallel_for(threads, strips, [&](int64_t s) {
    alignas(32) int32_t tile[kQMR * kQNR];
    const int64_t n0 = s * kQNR, nw = std::min(kQNR, N - n0);
    const uint8_t* B = Bq + s * w.kp * kQNR;
    for (int64_t m = 0; m < M; m += kQMR) {
      const int64_t mr = std::min(kQMR, M - m);
      ukr(kq, w.w + (m0 + m) * w.kp, w.kp, mr, B, tile);
      for (int64_t r = 0; r < mr; ++r) {
        const int64_t row = m0 + m + r;
        qgemm::store_row(tile + r * kQNR, xs + n0, mn + n0, w.scale[row], float(w.wsum[row]),
                  bias ? bias[row] : 0.f, act, lo, hi, y + (m + r) * ldy + n0, nw);
      }
    }
  });
}

}  // namespace

const char* qgemm_path() {
#ifdef ER_X86
  if (qgemm::has_amx()) return "amx";
  if (qgemm::has_avx512_vnni()) return "avx512-vnni";
  if (has_avx_vnni()) return "avx-vnni";
  if (has_avx2_fma()) return "avx2";
#endif
#if defined(__ARM_NEON) && defined(__aarch64__)
  if (!force_portable()) return "neon";
#endif
  return "portable";
}

size_t conv2d_s8_scratch_floats(const ConvParams& p, int threads) {
  const int64_t k = (p.cin / p.group) * p.kh * p.kw, kp = s8_row_bytes(k);
  const int64_t np = (p.oh * p.ow + kQNR - 1) / kQNR * kQNR;
  const size_t col = is_pointwise(p) ? 0 : size_t(k * p.oh * p.ow);
  return col + size_t(3 * np) + size_t(2 * kp * np + 3) / 4 + 16;  // panel: int16 on w16
}

void conv2d_s8(const ConvParams& p, int64_t batch, const float* x, const S8Weights& w,
               const float* bias, float* y, float* scratch, int threads) {
  const int64_t cin_g = p.cin / p.group, cout_g = p.cout / p.group, plane = p.oh * p.ow;
  const int64_t np = (plane + kQNR - 1) / kQNR * kQNR;
  const bool pw = is_pointwise(p);
  static const bool avx512 = qgemm::has_avx512_vnni();
  float* col = scratch;
  float* xs = scratch + (pw ? 0 : w.k * plane);
  float* inv = xs + np;
  float* mn = inv + np;
  uint8_t* bq = reinterpret_cast<uint8_t*>(mn + np);
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
      float* yg = yn + g * cout_g * plane;
      if (avx512) {
        qgemm::qconv_group_avx512(B, plane, w, g * cout_g, cout_g, plane, xs, inv, mn, bq, bias,
                                  p.act, p.lo, p.hi, yg, plane, threads);
        continue;
      }
      quantize_pack(B, plane, w.k, w.kp, plane, xs, inv, mn, bq, threads);
      qgemm_group(w, g * cout_g, cout_g, plane, bq, xs, mn, bias, p.act, p.lo, p.hi, yg, plane, threads);
    }
  }
}

void pointwise_s8_window(const S8Weights& w, const float* x, int64_t ldx, int64_t n,
                         const float* bias, Act act, float lo, float hi, float* y, int64_t ldy,
                         float* scratch, int threads) {
  static const bool avx512 = qgemm::has_avx512_vnni();
  const int64_t np = (n + kQNR - 1) / kQNR * kQNR;
  float* xs = scratch;
  float* inv = xs + np;
  float* mn = inv + np;
  uint8_t* bq = reinterpret_cast<uint8_t*>(mn + np);
  if (avx512) {
    qgemm::qconv_group_avx512(x, ldx, w, 0, w.m, n, xs, inv, mn, bq, bias, act, lo, hi, y, ldy, threads);
    return;
  }
  quantize_pack(x, ldx, w.k, w.kp, n, xs, inv, mn, bq, threads);
  qgemm_group(w, 0, w.m, n, bq, xs, mn, bias, act, lo, hi, y, ldy, threads);
}

}  // namespace kernels
}  // namespace edgerun
