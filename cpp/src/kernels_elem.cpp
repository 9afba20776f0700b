// Elementwise kernels: numpy-broadcast binary ops (dims coalesced so a
// per-channel or squeeze-excite operand becomes a 2-D loop) and activations.
#include <algorithm>
#include <cmath>

#include "edgerun/kernels.h"

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
void unary_loop(int64_t n, const float* x, float* y, int threads, F f) {
  for_chunks(n, threads, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) y[i] = f(x[i]);
  });
}

inline float sigmoid(float v) { return 1.f / (1.f + std::exp(-v)); }
// log(1 + exp(v)) without overflow: v + log1p(exp(-v)) for v > 0.
inline float softplus(float v) { return v > 0.f ? v + std::log1p(std::exp(-v)) : std::log1p(std::exp(v)); }

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

void unary(OpCode op, int64_t n, const float* x, float* y, float p0, float p1, int threads) {
  switch (op) {
    case OpCode::kRelu:
      return unary_loop(n, x, y, threads, [](float v) { return v > 0.f ? v : 0.f; });
    case OpCode::kClip:
      return unary_loop(n, x, y, threads, [=](float v) { return std::min(std::max(v, p0), p1); });
    case OpCode::kSigmoid: return unary_loop(n, x, y, threads, [](float v) { return sigmoid(v); });
    case OpCode::kHardSigmoid:
      return unary_loop(n, x, y, threads,
                        [=](float v) { return std::min(std::max(p0 * v + p1, 0.f), 1.f); });
    case OpCode::kHardSwish:
      return unary_loop(n, x, y, threads, [](float v) {
        return v * std::min(std::max(v * (1.f / 6.f) + 0.5f, 0.f), 1.f);
      });
    case OpCode::kSilu: return unary_loop(n, x, y, threads, [](float v) { return v * sigmoid(v); });
    case OpCode::kLeakyRelu:
      return unary_loop(n, x, y, threads, [=](float v) { return v >= 0.f ? v : p0 * v; });
    case OpCode::kTanh: return unary_loop(n, x, y, threads, [](float v) { return std::tanh(v); });
    case OpCode::kElu:
      return unary_loop(n, x, y, threads, [=](float v) { return v > 0.f ? v : p0 * std::expm1(v); });
    case OpCode::kSoftplus: return unary_loop(n, x, y, threads, [](float v) { return softplus(v); });
    case OpCode::kMish:
      return unary_loop(n, x, y, threads, [](float v) { return v * std::tanh(softplus(v)); });
    case OpCode::kGelu:
      if (p0 != 0.f)  // tanh approximation (ONNX Gelu approximate="tanh")
        return unary_loop(n, x, y, threads, [](float v) {
          constexpr float k = 0.7978845608028654f;  // sqrt(2 / pi)
          return 0.5f * v * (1.f + std::tanh(k * (v + 0.044715f * v * v * v)));
        });
      return unary_loop(n, x, y, threads,
                        [](float v) { return 0.5f * v * (1.f + std::erf(v * 0.7071067811865476f)); });
    default: ER_ASSERT(false && "unary: not a unary op");
  }
}

void layer_norm(int64_t rows, int64_t n, const float* x, const float* scale, const float* bias, float eps,
                float* y, int threads) {
  parallel_for(threads, rows, [&](int64_t r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    double sum = 0.0;
    for (int64_t k = 0; k < n; ++k) sum += xr[k];
    const float mean = float(sum / double(n));
    double var = 0.0;
    for (int64_t k = 0; k < n; ++k) var += double(xr[k] - mean) * double(xr[k] - mean);
    const float inv = float(1.0 / std::sqrt(var / double(n) + double(eps)));
    for (int64_t k = 0; k < n; ++k) yr[k] = (xr[k] - mean) * inv * scale[k] + (bias != nullptr ? bias[k] : 0.f);
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
