// Elementwise kernels: numpy-broadcast binary ops (dims coalesced so a
// per-channel or squeeze-excite operand becomes a 2-D loop) and activations.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "edgerun/kernels.h"
#include "env.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define ER_ELEM_AVX512 1
#endif

namespace edgerun {
namespace kernels {

namespace {

// body(i0, i1) over [0, n) in chunks of 4096, the chunks shared out over the threads.
template <typename Body>
void for_chunks(int64_t n, int threads, Body body) {
  constexpr int64_t kChunk = 4096;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  parallel_for(threads, chunks, [&](int64_t c) { body(c * kChunk, std::min(n, (c + 1) * kChunk)); });
}

template <typename F>
void binary_loop(const Broadcast& bc, const float* a, const float* b, float* y, int threads, F f) {
  const int32_t R = bc.rank;
  const int64_t inner = bc.out[R - 1], ia = bc.sa[R - 1], ib = bc.sb[R - 1];
  int64_t outer = 1;
  for (int32_t d = 0; d < R - 1; ++d) outer *= bc.out[d];
  if (R == 1 && ia == 1 && ib == 1) {  // same shapes (a residual Add): share out chunks
    for_chunks(inner, threads, [&](int64_t i0, int64_t i1) {
      for (int64_t k = i0; k < i1; ++k) y[k] = f(a[k], b[k]);
    });
    return;
  }
  parallel_for(threads, outer, [&](int64_t o) {
    int64_t oa = 0, ob = 0, rest = o;
    for (int32_t d = R - 2; d >= 0; --d) {
      const int64_t i = rest % bc.out[d];
      rest /= bc.out[d];
      oa += i * bc.sa[d];
      ob += i * bc.sb[d];
    }
    const float* pa = a + oa;
    const float* pb = b + ob;
    float* py = y + o * inner;
    if (ia == 1 && ib == 1) {
      for (int64_t k = 0; k < inner; ++k) py[k] = f(pa[k], pb[k]);
    } else if (ia == 1) {
      const float vb = pb[0];
      for (int64_t k = 0; k < inner; ++k) py[k] = f(pa[k], vb);
    } else if (ib == 1) {
      const float va = pa[0];
      for (int64_t k = 0; k < inner; ++k) py[k] = f(va, pb[k]);
    } else {
      const float v = f(pa[0], pb[0]);
      for (int64_t k = 0; k < inner; ++k) py[k] = v;
    }
  });
}

template <typename F>
inline __attribute__((always_inline)) void map(int64_t n, const float* x, float* y, F f) {
  for (int64_t i = 0; i < n; ++i) y[i] = f(x[i]);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ER_ELEM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ER_ELEM_CLONES
#endif

// exp for the activations: Cephes' expf (reduction to [-ln2/2, ln2/2], degree-6 polynomial, ~1 ulp
// on [-87, 88]; clamped outside), branch-free so the loops vectorize (with -fno-trapping-math, set
// for this file in CMakeLists.txt): std::exp is a scalar libm call, and Sigmoid / SiLU / Tanh / GELU
// ran 2-14 ns per element through it (Relu: 0.16).
inline float vexp(float x) {
  // Clamped so that NaN maps to -87 too (a NaN reached the int conversion below: undefined behaviour,
  // found by fuzzing under UBSan); a NaN input still gives NaN (last line).
  const float xc = x > -87.f ? (x < 88.f ? x : 88.f) : -87.f;
  const float fn = (xc * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round to nearest (+- 1.5 * 2^23)
  const int32_t n = static_cast<int32_t>(fn);
  const float r = (xc - fn * 0.693359375f) + fn * 2.12194440e-4f;  // x - n ln2, ln2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const int32_t bits = (n + 127) << 23;  // 2^n: n in [-126, 127] after the clamp
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  // Outside the clamp: +inf above (so 1 / (1 + exp(-v)) is 0 for v below -88, not 6e-39, and SiLU's
  // v * sigmoid(v) is -0 there, not -0.6 at v = -1e38), 0 below; NaN stays NaN.
  const float e = x > 88.f ? std::numeric_limits<float>::infinity() : (x < -87.f ? 0.f : p * scale);
  return x == x ? e : x;
}

// log for x > 0 (Cephes' logf: x = m 2^e with m in [sqrt(1/2), sqrt(2)), degree-8 polynomial in
// m - 1, ~1 ulp), with bit operations in place of frexp so the loops vectorize.
inline float vlog(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  int32_t e = ((bits >> 23) & 0xff) - 126;  // x = m 2^e, m in [0.5, 1)
  bits = (bits & 0x007fffff) | 0x3f000000;
  float m;
  std::memcpy(&m, &bits, sizeof m);
  const bool lo = m < 0.707106781186547524f;
  e = lo ? e - 1 : e;
  m = lo ? m + m - 1.f : m - 1.f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = static_cast<float>(e);
  y = y - 2.12194440e-4f * fe - 0.5f * z;
  return m + y + 0.693359375f * fe;
}

inline float sigmoid(float v) { return 1.f / (1.f + vexp(-v)); }
// exp(v) - 1, with its series below |v| = 1/32 (exp(v) - 1 cancels: ELU(-1e-30) came out 0).
inline float vexpm1(float v) {
  const float series = v * (1.f + v * (0.5f + v * (1.f / 6.f + v * (1.f / 24.f + v * (1.f / 120.f)))));
  const float full = vexp(v) - 1.f;
  return std::fabs(v) < 0.03125f ? series : full;
}
// tanh: 1 - 2 / (exp(2v) + 1), and its odd series below |v| = 1/16, where that form cancels
// (tanh(1e-8) came out 0).
inline float vtanh(float v) {
  const float v2 = v * v;
  const float series = v * (1.f + v2 * (-1.f / 3.f + v2 * (2.f / 15.f + v2 * (-17.f / 315.f))));
  const float full = 1.f - 2.f / (vexp(2.f * v) + 1.f);
  return std::fabs(v) < 0.0625f ? series : full;
}
// erf, Abramowitz & Stegun 7.1.26: absolute error <= 1.5e-7.
inline float verf(float x) {
  const float a = std::fabs(x);
  const float t = 1.f / (1.f + 0.3275911f * a);
  const float poly = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f) * t;
  return std::copysign(1.f - poly * vexp(-a * a), x);
}
// log(1 + exp(v)) without overflow: max(v, 0) + log1p(e), e = exp(-|v|) in (0, 1]. log1p as
// log(u) * e / (u - 1), u = 1 + e rounded (Goldberg's correction of that rounding: softplus(-7)
// was 5e-5 off relative), and below e = 1/1024 the series e - e^2 / 2 (softplus(-20) came out 0).
inline float softplus(float v) {
  const float e = vexp(-std::fabs(v));
  const float u = 1.f + e;
  const float d = std::max(u - 1.f, 1e-30f);
  const float l = e < 0.0009765625f ? e * (1.f - 0.5f * e) : vlog(u) * (e / d);
  return std::max(v, 0.f) + l;
}

}  // namespace

bool make_broadcast(const int64_t* a, int32_t ra, const int64_t* b, int32_t rb, const int64_t* out,
                    int32_t ro, Broadcast* bc) {
  if (ro < 1 || ra > ro || rb > ro || ro > int32_t(kErgMaxDims)) return false;
  int64_t da[kErgMaxDims], db[kErgMaxDims], sa[kErgMaxDims], sb[kErgMaxDims];
  for (int32_t d = 0; d < ro; ++d) {
    da[d] = d < ro - ra ? 1 : a[d - (ro - ra)];
    db[d] = d < ro - rb ? 1 : b[d - (ro - rb)];
  }
  int64_t ca = 1, cb = 1;
  for (int32_t d = ro - 1; d >= 0; --d) {
    if ((da[d] != out[d] && da[d] != 1) || (db[d] != out[d] && db[d] != 1)) return false;
    sa[d] = da[d] == 1 && out[d] != 1 ? 0 : ca;
    sb[d] = db[d] == 1 && out[d] != 1 ? 0 : cb;
    ca *= da[d];
    cb *= db[d];
  }
  // Coalesce: merge dim d into the running inner dim when both operands agree.
  int32_t r = 0;
  for (int32_t d = 0; d < ro; ++d) {
    if (out[d] == 1 && ro > 1) continue;  // size-1 dims carry no data
    if (r > 0) {
      const int32_t p = r - 1;
      bool a_ok = (bc->sa[p] == 0 && sa[d] == 0) || (sa[d] != 0 && bc->sa[p] == sa[d] * out[d]);
      bool b_ok = (bc->sb[p] == 0 && sb[d] == 0) || (sb[d] != 0 && bc->sb[p] == sb[d] * out[d]);
      if (a_ok && b_ok) {
        bc->out[p] *= out[d];
        bc->sa[p] = sa[d];
        bc->sb[p] = sb[d];
        continue;
      }
    }
    bc->out[r] = out[d];
    bc->sa[r] = sa[d];
    bc->sb[r] = sb[d];
    ++r;
  }
  if (r == 0) {  // every dim is 1: a single element
    bc->out[0] = 1;
    bc->sa[0] = bc->sb[0] = 1;
    r = 1;
  }
  // The inner loop assumes stride 0 or 1 on the last dim.
  if (bc->out[r - 1] == 1) bc->sa[r - 1] = bc->sb[r - 1] = 1;
  bc->rank = r;
  return true;
}

void binary(OpCode op, const Broadcast& bc, const float* a, const float* b, float* y, int threads) {
  switch (op) {
    case OpCode::kAdd: return binary_loop(bc, a, b, y, threads, [](float u, float v) { return u + v; });
    case OpCode::kSub: return binary_loop(bc, a, b, y, threads, [](float u, float v) { return u - v; });
    case OpCode::kMul: return binary_loop(bc, a, b, y, threads, [](float u, float v) { return u * v; });
    case OpCode::kDiv: return binary_loop(bc, a, b, y, threads, [](float u, float v) { return u / v; });
    case OpCode::kPRelu:
      return binary_loop(bc, a, b, y, threads, [](float u, float v) { return u >= 0.f ? u : u * v; });
    default: ER_ASSERT(false && "binary: not a binary op");
  }
}

// One thread's share of an activation: plain loops the compiler vectorizes; on x86 (GCC) cloned
// for AVX-512 and AVX2, picked at load by the CPU (the rest of the core builds for the baseline).
ER_ELEM_CLONES void unary_span(OpCode op, int64_t n, const float* x, float* y, float p0, float p1) {
  switch (op) {
    case OpCode::kRelu:
      return map(n, x, y, [](float v) { return v > 0.f ? v : 0.f; });
    case OpCode::kClip:
      return map(n, x, y, [=](float v) { return std::min(std::max(v, p0), p1); });
    case OpCode::kSigmoid: return map(n, x, y, [](float v) { return sigmoid(v); });
    case OpCode::kHardSigmoid:
      return map(n, x, y, [=](float v) { return std::min(std::max(p0 * v + p1, 0.f), 1.f); });
    case OpCode::kHardSwish:
      return map(n, x, y, [](float v) {
        return v * std::min(std::max(v * (1.f / 6.f) + 0.5f, 0.f), 1.f);
      });
    case OpCode::kSilu: return map(n, x, y, [](float v) { return v * sigmoid(v); });
    case OpCode::kLeakyRelu:  // branch-free: a select on the sign ran 4 ns per element, unvectorized
      return map(n, x, y, [=](float v) { return std::max(v, 0.f) + p0 * std::min(v, 0.f); });
    case OpCode::kTanh: return map(n, x, y, [](float v) { return vtanh(v); });
    case OpCode::kElu:
      return map(n, x, y, [=](float v) { return v > 0.f ? v : p0 * vexpm1(std::min(v, 0.f)); });
    case OpCode::kSoftplus: return map(n, x, y, [](float v) { return softplus(v); });
    case OpCode::kMish:
      return map(n, x, y, [](float v) { return v * vtanh(softplus(v)); });
    case OpCode::kGelu:
      if (p0 != 0.f)  // tanh approximation (ONNX Gelu approximate="tanh")
        return map(n, x, y, [](float v) {
          constexpr float k = 0.7978845608028654f;  // sqrt(2 / pi)
          return 0.5f * v * (1.f + vtanh(k * (v + 0.044715f * v * v * v)));
        });
      return map(n, x, y, [](float v) { return 0.5f * v * (1.f + verf(v * 0.7071067811865476f)); });
    default: ER_ASSERT(false && "unary: not a unary op");
  }
}

// Softmax of one contiguous row (attention's scores over the keys), cloned like the activations: the
// maximum and the sum kept in kSoftmaxLanes lanes so both loops vectorize (one serial chain each ran
// 663 us for 6 x 197 rows of 197, onnxruntime 106 us), the lanes combined in a fixed order: the same
// bits at any thread count. The maximum is exact in any order; the sum is of the same terms, in lanes.
constexpr int kSoftmaxLanes = 16;

ER_ELEM_CLONES void softmax_row(int64_t n, const float* x, float* y) {
  float m[kSoftmaxLanes], s[kSoftmaxLanes], tail[kSoftmaxLanes], e[kSoftmaxLanes];
  const int64_t body = n - n % kSoftmaxLanes;
  // the last n % 16 values padded with -inf (no effect on the maximum; exp gives +0 to the sum): one
  // more vector step instead of a scalar exp per value (197 keys: 5 of them, a third of the row's time)
  for (int j = 0; j < kSoftmaxLanes; ++j) {
    tail[j] = body + j < n ? x[body + j] : -std::numeric_limits<float>::infinity();
    m[j] = tail[j];
    s[j] = 0.f;
  }
  for (int64_t k = 0; k < body; k += kSoftmaxLanes)
    for (int j = 0; j < kSoftmaxLanes; ++j) m[j] = std::max(m[j], x[k + j]);
  float mx = -FLT_MAX;
  for (int j = 0; j < kSoftmaxLanes; ++j) mx = std::max(mx, m[j]);
  for (int64_t k = 0; k < body; k += kSoftmaxLanes)
    for (int j = 0; j < kSoftmaxLanes; ++j) {
      const float v = vexp(x[k + j] - mx);
      y[k + j] = v;
      s[j] += v;
    }
  for (int j = 0; j < kSoftmaxLanes; ++j) {
    e[j] = vexp(tail[j] - mx);
    s[j] += e[j];
  }
  for (int64_t k = body; k < n; ++k) y[k] = e[k - body];
  float sum = 0.f;
  for (int j = 0; j < kSoftmaxLanes; ++j) sum += s[j];
  const float inv = 1.f / sum;
  for (int64_t k = 0; k < n; ++k) y[k] *= inv;
}

// Softmax over the middle dim of [outer, n, inner] with inner >= 8 (class scores per pixel, NCHW):
// a block of up to kSoftmaxBlock columns at a time, each pass over the n rows contiguous along the
// block, so it vectorizes across columns. Per column the same operations in the same order as one
// column at a time (max, exp, a sum over k in order, a scale): the same bits.
constexpr int64_t kSoftmaxBlock = 256;

ER_ELEM_CLONES void softmax_columns(int64_t n, int64_t inner, int64_t b, const float* xo, float* yo) {
  float m[kSoftmaxBlock], sum[kSoftmaxBlock];
  for (int64_t j = 0; j < b; ++j) m[j] = -FLT_MAX;
  for (int64_t k = 0; k < n; ++k)
    for (int64_t j = 0; j < b; ++j) m[j] = std::max(m[j], xo[k * inner + j]);
  for (int64_t j = 0; j < b; ++j) sum[j] = 0.f;
  for (int64_t k = 0; k < n; ++k)
    for (int64_t j = 0; j < b; ++j) {
      const float e = vexp(xo[k * inner + j] - m[j]);
      yo[k * inner + j] = e;
      sum[j] += e;
    }
  for (int64_t j = 0; j < b; ++j) sum[j] = 1.f / sum[j];
  for (int64_t k = 0; k < n; ++k)
    for (int64_t j = 0; j < b; ++j) yo[k * inner + j] *= sum[j];
}

#ifdef ER_ELEM_AVX512
// vexp on 16 lanes, its operations one for one (mul and add, no FMA: -ffp-contract=off as the clones):
// the same bits as vexp.
__attribute__((target("avx512f"))) inline __m512 vexp16(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.f), hi = _mm512_set1_ps(88.f);
  const __m512 xc = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, lo, _CMP_GT_OQ), lo,
                                         _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, hi, _CMP_LT_OQ), hi, x));
  const __m512 magic = _mm512_set1_ps(12582912.f);
  const __m512 fn = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)), magic), magic);
  const __m512i n = _mm512_cvttps_epi32(fn);
  const __m512 r = _mm512_add_ps(_mm512_sub_ps(xc, _mm512_mul_ps(fn, _mm512_set1_ps(0.693359375f))),
                                 _mm512_mul_ps(fn, _mm512_set1_ps(2.12194440e-4f)));
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r), _mm512_set1_ps(1.f));
  const __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n, _mm512_set1_epi32(127)), 23));
  __m512 e = _mm512_mul_ps(p, scale);
  e = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), e, _mm512_setzero_ps());
  e = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ), e,
                           _mm512_set1_ps(std::numeric_limits<float>::infinity()));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_EQ_OQ), x, e);  // NaN stays NaN
}

// softmax_row in zmm registers, the same operations in the same order (the lanes are its 16 lanes,
// the tail the same -inf padded vector): the same bits. GCC kept softmax_row's 16 maximum lanes in
// scalar registers (16 vmaxss per 16 values) and the 16 sums on the stack (a store and a reload per
// vector step): a 6 x 197 x 197 Softmax ran ~2.5x onnxruntime's time.
__attribute__((target("avx512f"))) void softmax_row_avx512(int64_t n, const float* x, float* y) {
  const int64_t body = n - n % kSoftmaxLanes;
  const __mmask16 tm = __mmask16((1u << (n - body)) - 1u);
  const __m512 tail = _mm512_mask_loadu_ps(_mm512_set1_ps(-std::numeric_limits<float>::infinity()), tm, x + body);
  __m512 m = tail;
  for (int64_t k = 0; k < body; k += kSoftmaxLanes) m = _mm512_max_ps(_mm512_loadu_ps(x + k), m);  // std::max(m, x)
  alignas(64) float lanes[kSoftmaxLanes];
  _mm512_store_ps(lanes, m);
  float mx = -FLT_MAX;
  for (int j = 0; j < kSoftmaxLanes; ++j) mx = std::max(mx, lanes[j]);
  const __m512 vmx = _mm512_set1_ps(mx);
  __m512 s = _mm512_setzero_ps();
  for (int64_t k = 0; k < body; k += kSoftmaxLanes) {
    const __m512 v = vexp16(_mm512_sub_ps(_mm512_loadu_ps(x + k), vmx));
    _mm512_storeu_ps(y + k, v);
    s = _mm512_add_ps(s, v);
  }
  const __m512 e = vexp16(_mm512_sub_ps(tail, vmx));
  s = _mm512_add_ps(s, e);
  _mm512_mask_storeu_ps(y + body, tm, e);
  _mm512_store_ps(lanes, s);
  float sum = 0.f;
  for (int j = 0; j < kSoftmaxLanes; ++j) sum += lanes[j];
  const __m512 inv = _mm512_set1_ps(1.f / sum);
  for (int64_t k = 0; k < body; k += kSoftmaxLanes) _mm512_storeu_ps(y + k, _mm512_mul_ps(_mm512_loadu_ps(y + k), inv));
  _mm512_mask_storeu_ps(y + body, tm, _mm512_mul_ps(_mm512_maskz_loadu_ps(tm, y + body), inv));
}

// On where the GEMM runs AVX-512 (EDGERUN_NO_AVX512=1, EDGERUN_FORCE_PORTABLE=1 turn it off), and
// EDGERUN_NO_SOFTMAX_AVX512=1 (read once per process) keeps the cloned loop: the bits check.
bool softmax_avx512() {
  static const bool ok = std::strcmp(gemm_path(), "avx512") == 0 && !env_flag("EDGERUN_NO_SOFTMAX_AVX512");
  return ok;
}
#endif

void softmax(int64_t outer, int64_t n, int64_t inner, const float* x, float* y, int threads) {
  if (inner >= 8) {  // fewer columns than a vector: one column at a time (below) is as fast
    const int64_t blocks = (inner + kSoftmaxBlock - 1) / kSoftmaxBlock;
    parallel_for(threads, outer * blocks, [&](int64_t t) {
      const int64_t o = t / blocks, i0 = (t % blocks) * kSoftmaxBlock;
      softmax_columns(n, inner, std::min(kSoftmaxBlock, inner - i0), x + o * n * inner + i0,
                      y + o * n * inner + i0);
    });
    return;
  }
  parallel_for(threads, outer, [&](int64_t o) {
    const float* xo = x + o * n * inner;
    float* yo = y + o * n * inner;
#ifdef ER_ELEM_AVX512
    if (inner == 1 && softmax_avx512()) return softmax_row_avx512(n, xo, yo);
#endif
    if (inner == 1) return softmax_row(n, xo, yo);  // a contiguous row (attention)
    for (int64_t i = 0; i < inner; ++i) {
      float m = -FLT_MAX;
      for (int64_t k = 0; k < n; ++k) m = std::max(m, xo[k * inner + i]);
      for (int64_t k = 0; k < n; ++k) yo[k * inner + i] = vexp(xo[k * inner + i] - m);
      float sum = 0.f;
      for (int64_t k = 0; k < n; ++k) sum += yo[k * inner + i];
      const float inv = 1.f / sum;
      for (int64_t k = 0; k < n; ++k) yo[k * inner + i] *= inv;
    }
  });
}

#ifdef ER_ELEM_AVX512
// exp(x) for x <= 0 (GELU's exp(-u^2)) with vexp's reduction and polynomial, in fused multiply-adds and
// scalef for 2^n: ~13 instructions to vexp16's ~30 (not vexp's bits; x below -87 gives exp(-87)).
__attribute__((target("avx512f"))) inline __m512 vexp16_nonpos_fma(__m512 x) {
  const __m512 xc = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
  const __m512 fn = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(fn, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fmadd_ps(fn, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, fn);
}

// Exact GELU, 0.5 v (1 + erf(v / sqrt 2)), with verf's Abramowitz & Stegun formula (absolute error
// <= 1.5e-7) in zmm registers and fused multiply-adds: its 1 / (1 + p |u|) as a reciprocal estimate
// and one Newton step, |u| capped at 16 there (erf is 1 beyond; the Newton step gave NaN at inf), the
// exp above. 197 x 1536 (a ViT-S/16 MLP): 315 -> 195 us. Not the cloned loop's bits: both within
// 4e-7 |v| + 2 ulp of float64 GELU (tests/runtime/test_gelu_avx512.py).
__attribute__((target("avx512f"))) void gelu_erf_avx512(int64_t n, const float* x, float* y) {
  const __m512i sign = _mm512_set1_epi32(int32_t(0x80000000u));
  const __m512 one = _mm512_set1_ps(1.f);
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 m = n - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - k)) - 1u);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + k);
    const __m512 u = _mm512_mul_ps(v, _mm512_set1_ps(0.7071067811865476f));
    const __m512 a = _mm512_castsi512_ps(_mm512_andnot_epi32(sign, _mm512_castps_si512(u)));
    const __m512 d = _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), _mm512_min_ps(a, _mm512_set1_ps(16.f)), one);
    __m512 t = _mm512_rcp14_ps(d);
    t = _mm512_mul_ps(t, _mm512_fnmadd_ps(d, t, _mm512_set1_ps(2.f)));
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.061405429f), t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    p = _mm512_mul_ps(p, t);
    const __m512 e = vexp16_nonpos_fma(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), a), a));
    const __m512 erf_abs = _mm512_fnmadd_ps(p, e, one);
    const __m512 erf = _mm512_castsi512_ps(_mm512_or_epi32(_mm512_castps_si512(erf_abs),
                                                            _mm512_and_epi32(sign, _mm512_castps_si512(u))));
    _mm512_mask_storeu_ps(y + k, m, _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(one, erf)));
  }
}

// EDGERUN_NO_GELU_AVX512=1 (read once per process): the cloned loop (the A/B switch).
bool gelu_avx512() {
  static const bool ok = std::strcmp(gemm_path(), "avx512") == 0 && !env_flag("EDGERUN_NO_GELU_AVX512");
  return ok;
}
#endif

void unary(OpCode op, int64_t n, const float* x, float* y, float p0, float p1, int threads) {
#ifdef ER_ELEM_AVX512
  if (op == OpCode::kGelu && p0 == 0.f && gelu_avx512())
    return for_chunks(n, threads, [&](int64_t i0, int64_t i1) { gelu_erf_avx512(i1 - i0, x + i0, y + i0); });
#endif
  for_chunks(n, threads, [&](int64_t i0, int64_t i1) { unary_span(op, i1 - i0, x + i0, y + i0, p0, p1); });
}

#ifdef ER_ELEM_AVX512
// One row of layer_norm in zmm registers: the sums still in double, in 16 lanes (two 8-double
// accumulators, a masked tail) instead of four chains that GCC left scalar (a ViT-S/16 LayerNorm,
// 197 rows of 384, ran ~1.2x onnxruntime's time); the normalisation the same float operations.
// Other sums' order: not the bits of the loop below (within 1e-6 of it; tests/runtime/test_layernorm_rows.py).
// The upper 8 floats of v (AVX-512F only: extractf32x8 is AVX-512DQ).
__attribute__((target("avx512f"))) inline __m256 hi8(__m512 v) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

__attribute__((target("avx512f"))) void layer_norm_row_avx512(int64_t n, const float* xr, const float* scale,
                                                             const float* bias, float eps, float* yr) {
  const int64_t body = n - n % 16;
  const __mmask16 tm = __mmask16((1u << (n - body)) - 1u);
  __m512d s0 = _mm512_setzero_pd(), s1 = s0;
  for (int64_t k = 0; k < body; k += 16) {
    const __m512 v = _mm512_loadu_ps(xr + k);
    s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(hi8(v)));
  }
  const __m512 tail = _mm512_maskz_loadu_ps(tm, xr + body);
  s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(tail)));
  s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(hi8(tail)));
  const float mean = float(_mm512_reduce_add_pd(_mm512_add_pd(s0, s1)) / double(n));
  const __m512 vm = _mm512_set1_ps(mean);
  __m512d v0 = _mm512_setzero_pd(), v1 = v0;
  for (int64_t k = 0; k <= body; k += 16) {
    const __m512 d = k < body ? _mm512_sub_ps(_mm512_loadu_ps(xr + k), vm)
                              : _mm512_maskz_sub_ps(tm, _mm512_maskz_loadu_ps(tm, xr + k), vm);
    const __m512d d0 = _mm512_cvtps_pd(_mm512_castps512_ps256(d)), d1 = _mm512_cvtps_pd(hi8(d));
    v0 = _mm512_add_pd(v0, _mm512_mul_pd(d0, d0));
    v1 = _mm512_add_pd(v1, _mm512_mul_pd(d1, d1));
  }
  const float inv = float(1.0 / std::sqrt(_mm512_reduce_add_pd(_mm512_add_pd(v0, v1)) / double(n) + double(eps)));
  const __m512 vi = _mm512_set1_ps(inv);
  for (int64_t k = 0; k <= body; k += 16) {
    const __mmask16 m = k < body ? __mmask16(0xFFFF) : tm;
    __m512 o = _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, xr + k), vm), vi),
                             _mm512_maskz_loadu_ps(m, scale + k));
    if (bias != nullptr) o = _mm512_add_ps(o, _mm512_maskz_loadu_ps(m, bias + k));
    _mm512_mask_storeu_ps(yr + k, m, o);
  }
}

// EDGERUN_NO_LAYERNORM_AVX512=1 (read once per process): the loop below (the A/B switch).
bool layer_norm_avx512() {
  static const bool ok = std::strcmp(gemm_path(), "avx512") == 0 && !env_flag("EDGERUN_NO_LAYERNORM_AVX512");
  return ok;
}
#endif

void layer_norm(int64_t rows, int64_t n, const float* x, const float* scale, const float* bias, float eps,
                float* y, int threads) {
  parallel_for(threads, rows, [&](int64_t r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
#ifdef ER_ELEM_AVX512
    if (layer_norm_avx512()) return layer_norm_row_avx512(n, xr, scale, bias, eps, yr);
#endif
    double s[4] = {0, 0, 0, 0};  // four chains: one serial double sum ran ~1.3 ns per element
    int64_t k = 0;
    for (; k + 4 <= n; k += 4)
      for (int j = 0; j < 4; ++j) s[j] += xr[k + j];
    for (; k < n; ++k) s[0] += xr[k];
    const float mean = float((s[0] + s[1] + s[2] + s[3]) / double(n));
    double v[4] = {0, 0, 0, 0};
    for (k = 0; k + 4 <= n; k += 4)
      for (int j = 0; j < 4; ++j) v[j] += double(xr[k + j] - mean) * double(xr[k + j] - mean);
    for (; k < n; ++k) v[0] += double(xr[k] - mean) * double(xr[k] - mean);
    const float inv = float(1.0 / std::sqrt((v[0] + v[1] + v[2] + v[3]) / double(n) + double(eps)));
    if (bias != nullptr)
      for (k = 0; k < n; ++k) yr[k] = (xr[k] - mean) * inv * scale[k] + bias[k];
    else
      for (k = 0; k < n; ++k) yr[k] = (xr[k] - mean) * inv * scale[k];
  });
}

void channel_affine(int64_t outer, int64_t C, int64_t inner, const float* x, const float* scale,
                    const float* shift, float* y, int threads) {
  parallel_for(threads, outer * C, [&](int64_t oc) {
    const float s = scale[oc % C], t = shift[oc % C];
    const float* xi = x + oc * inner;
    float* yi = y + oc * inner;
    for (int64_t k = 0; k < inner; ++k) yi[k] = xi[k] * s + t;
  });
}

}  // namespace kernels
}  // namespace edgerun
