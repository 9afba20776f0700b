// fp32 vs fp16 (AVX512-FP16) depthwise and small-K 1x1 kernels on EfficientNet-Lite0's
// shapes: a standalone micro-benchmark for benchmarks/explore_fp16_front.py's speed half.
// Not part of the package build; build and run with benchmarks/fp16_kernels/build.sh.
//
// The fp32 depthwise kernels copy the structure of cpp/src/kernels_dwconv_avx512.cpp
// (stride 1: the zero-bordered plane copy, then blocks of 4 output rows x up to 4 vectors
// that walk the input rows; stride 1 with rows of <= 16 outputs: direct_rows on the input
// plane, 8 rows per block; stride 2: s2_plane, taps split from three masked loads by
// permutes). The fp16 kernels are the same code with 32 fp16 lanes per vector instead of 16
// floats (a 14-wide stride-1 plane puts two channels in one vector, as the engine's
// pair_plane does for <= 8 columns). Each fp16 kernel runs in two variants:
//   h16: activations stored as fp16 between layers (fp16 in, fp16 out);
//   cvt: activations stay fp32 between layers, converted to fp16 on load (in the plane copy,
//        or at each direct load) and back to fp32 on store.
// The 1x1 kernel (K = 16-32, the expands of blocks.1-3 and blocks.0's project) is a plain
// register-tiled product (8 output channels x 2 vectors of pixels, one FMA per k), the same
// in fp32 and fp16: it is not the engine's packed GEMM, only the fp16 / fp32 ratio is used.
//
// Timing: one thread; every sample is one whole layer (all channels), run once untimed just
// before (warm caches); variants alternate within each round (rotating order); medians over
// the rounds.
// Checks: fp16 results against fp32 (relative error), h16 == cvt bit for bit, and the
// vector fp16 FMAs against a scalar emulation that rounds float FMAs to fp16 (the emulation
// explore_fp16_front.py uses), counting the outputs that differ.

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench_common.h"
#include "dw_f16.h"
#include "dw_f32.h"

namespace {

// ---------------------------------------------------------------------------------------
// whole layers
// ---------------------------------------------------------------------------------------
struct Layer {
  Shape p;
  avec<float> x, w, b, y;   // fp32
  avec<half> xh, wh, bh, yh;  // fp16
  avec<float> yc;           // cvt output (fp32)
  avec<float> buf;          // fp32 padded plane
  avec<half> bufh;          // fp16 padded plane
};

template <int K>
void dw_f32_k(Layer& L) {
  const Shape& p = L.p;
  const f32::Padded d = f32::padded_dims(p);
  for (int64_t c = 0; c < p.c; ++c) {
    const float* xc = L.x.data() + c * p.h * p.w;
    float* yc = L.y.data() + c * p.oh * p.ow;
    const float* wc = L.w.data() + c * K * K;
    if (p.s == 2) f32::s2_plane<K>(p, xc, wc, L.b[c], yc);
    else if (p.ow <= 16) f32::direct_plane<K>(p, xc, wc, L.b[c], yc);
    else {
      f32::pad_plane(p, d, xc, L.buf.data());
      f32::plane<K>(p, d, L.buf.data(), wc, L.b[c], yc);
    }
  }
}

template <int K, typename TI, typename TO>
void dw_f16_k(Layer& L, const TI* x, TO* y) {
  const Shape& p = L.p;
  const f16::Padded d = f16::padded_dims(p);
  const int64_t in = p.h * p.w, out = p.oh * p.ow;
  if (p.s == 1 && p.ow <= 16) {
    for (int64_t c = 0; c + 1 < p.c; c += 2)
      f16::pair_plane<K>(p, x + c * in, x + (c + 1) * in, L.wh.data() + c * K * K, L.wh.data() + (c + 1) * K * K,
                         L.bh[c], L.bh[c + 1], y + c * out, y + (c + 1) * out);
    return;  // the shapes here have an even channel count
  }
  for (int64_t c = 0; c < p.c; ++c) {
    const half* wc = L.wh.data() + c * K * K;
    if (p.s == 2) {
      f16::s2_plane<K>(p, x + c * in, wc, L.bh[c], y + c * out);
    } else {
      f16::pad_plane(p, d, x + c * in, L.bufh.data());
      f16::plane<K>(p, d, L.bufh.data(), wc, L.bh[c], y + c * out);
    }
  }
}

void dw_f32(Layer& L) { L.p.k == 3 ? dw_f32_k<3>(L) : dw_f32_k<5>(L); }
void dw_h16(Layer& L) {
  L.p.k == 3 ? dw_f16_k<3>(L, L.xh.data(), L.yh.data()) : dw_f16_k<5>(L, L.xh.data(), L.yh.data());
}
void dw_cvt(Layer& L) {
  L.p.k == 3 ? dw_f16_k<3>(L, L.x.data(), L.yc.data()) : dw_f16_k<5>(L, L.x.data(), L.yc.data());
}

// Scalar fp16 emulation of one output (explore_fp16_front.py's): float FMA rounded to fp16.
half dw_emulated(const Layer& L, int64_t c, int64_t oy, int64_t ox) {
  const Shape& p = L.p;
  half acc = L.bh[c];
  for (int i = 0; i < p.k; ++i)
    for (int j = 0; j < p.k; ++j) {
      const int64_t iy = oy * p.s - p.pt + i, ix = ox * p.s - p.pl + j;
      const half xv = iy >= 0 && iy < p.h && ix >= 0 && ix < p.w ? L.xh[(c * p.h + iy) * p.w + ix] : half(0);
      acc = half(std::fmaf(float(L.wh[c * p.k * p.k + i * p.k + j]), float(xv), float(acc)));
    }
  return std::min(std::max(acc, half(kLo)), half(kHi));
}

// ---------------------------------------------------------------------------------------
// 1x1, small K: y[n][p] = relu6(sum_k w[n][k] x[k][p] + b[n]); tiles of 8 channels x 2 vectors
// ---------------------------------------------------------------------------------------
struct Pw {
  std::string name;
  int64_t k, n, hw;
  avec<float> x, w, b, y, yc;
  avec<half> xh, wh, bh, yh;
};

__attribute__((target("avx512f"))) void pw_f32(Pw& L) {
  const int64_t P = L.hw * L.hw;
  for (int64_t n0 = 0; n0 < L.n; n0 += 8)
    for (int64_t p0 = 0; p0 < P; p0 += 32) {
      const __mmask16 m0 = lanes(0, P - p0), m1 = lanes(0, P - p0 - 16);
      __m512 acc[8][2];
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
      for (int64_t k = 0; k < L.k; ++k) {
        const float* xk = L.x.data() + k * P + p0;
        const __m512 x0 = _mm512_maskz_loadu_ps(m0, xk), x1 = _mm512_maskz_loadu_ps(m1, xk + 16);
#pragma GCC unroll 8
        for (int r = 0; r < 8; ++r) {
          const __m512 wv = _mm512_set1_ps(L.w[(n0 + r) * L.k + k]);
          acc[r][0] = _mm512_fmadd_ps(wv, x0, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ps(wv, x1, acc[r][1]);
        }
      }
      const __m512 lo = _mm512_set1_ps(kLo), hi = _mm512_set1_ps(kHi);
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r) {
        const __m512 bv = _mm512_set1_ps(L.b[n0 + r]);
        float* yr = L.y.data() + (n0 + r) * P + p0;
        _mm512_mask_storeu_ps(yr, m0, _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(acc[r][0], bv), lo), hi));
        _mm512_mask_storeu_ps(yr + 16, m1, _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(acc[r][1], bv), lo), hi));
      }
    }
}

template <typename TI, typename TO>
ER_FP16 void pw_f16(Pw& L, const TI* x, TO* y) {
  const int64_t P = L.hw * L.hw;
  for (int64_t n0 = 0; n0 < L.n; n0 += 8)
    for (int64_t p0 = 0; p0 < P; p0 += 64) {
      const __mmask32 m0 = lanes32(0, P - p0), m1 = lanes32(0, P - p0 - 32);
      __m512h acc[8][2];
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ph();
      for (int64_t k = 0; k < L.k; ++k) {
        const TI* xk = x + k * P + p0;
        const __m512h x0 = load32(xk, m0), x1 = load32(xk + 32, m1);
#pragma GCC unroll 8
        for (int r = 0; r < 8; ++r) {
          const __m512h wv = _mm512_set1_ph(L.wh[(n0 + r) * L.k + k]);
          acc[r][0] = _mm512_fmadd_ph(wv, x0, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ph(wv, x1, acc[r][1]);
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r) {
        const __m512h bv = _mm512_set1_ph(L.bh[n0 + r]);
        TO* yr = y + (n0 + r) * P + p0;
        store32(yr, m0, relu6h(_mm512_add_ph(acc[r][0], bv)));
        store32(yr + 32, m1, relu6h(_mm512_add_ph(acc[r][1], bv)));
      }
    }
}

// ---------------------------------------------------------------------------------------
// timing
// ---------------------------------------------------------------------------------------
double now_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Runs the variants round by round (order rotated each round), returns each one's median.
template <typename F>
std::vector<double> interleaved(const std::vector<F>& fns, int rounds) {
  std::vector<std::vector<double>> t(fns.size());
  for (int r = -3; r < rounds; ++r)  // 3 warm-up rounds
    for (size_t i = 0; i < fns.size(); ++i) {
      const size_t v = (i + size_t(r + 3)) % fns.size();
      fns[v]();  // untimed: the layer's input and output in cache as far as they fit, as after
                 // the layer before it (the engine's case), not as the other variants left them
      const double t0 = now_us();
      fns[v]();
      const double dt = now_us() - t0;
      if (r >= 0) t[v].push_back(dt);
    }
  std::vector<double> out;
  for (auto& s : t) out.push_back(median(s));
  return out;
}

template <typename T>
void fill(avec<T>& v, size_t n, std::mt19937& g, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  v.resize(n);
  for (auto& e : v) e = T(u(g));
}

avec<half> to_half(const avec<float>& v) {
  avec<half> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = half(v[i]);
  return o;
}

// max |a - b| / max |b|
template <typename A>
double rel_err(const avec<A>& a, const avec<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num = std::max(num, std::fabs(double(a[i]) - double(b[i])));
    den = std::max(den, std::fabs(double(b[i])));
  }
  return den > 0 ? num / den : num;
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 51;
  FILE* js = argc > 2 ? std::fopen(argv[2], "w") : nullptr;
  if (!__builtin_cpu_supports("avx512fp16")) {
    std::fprintf(stderr, "this CPU has no AVX512-FP16\n");
    return 2;
  }
  std::mt19937 g(7);
  const std::vector<Shape> shapes = {
      make_shape("blocks.0 dw 32x112x112 3x3 s1", 32, 112, 3, 1),
      make_shape("blocks.1 dw 96x112x112 3x3 s2", 96, 112, 3, 2),
      make_shape("blocks.2 dw 144x56x56 3x3 s1", 144, 56, 3, 1),
      make_shape("blocks.3 dw 144x56x56 5x5 s2", 144, 56, 5, 2),
      make_shape("blocks.4 dw 240x28x28 5x5 s1", 240, 28, 5, 1),
      make_shape("blocks.5 dw 240x28x28 3x3 s2", 240, 28, 3, 2),
      make_shape("blocks.6-7 dw 480x14x14 3x3 s1", 480, 14, 3, 1),
  };
  if (js) std::fprintf(js, "{\"rounds\": %d, \"threads\": 1, \"depthwise\": [\n", rounds);
  std::printf("%-34s %9s %9s %9s %7s %7s %8s %8s %s\n", "layer (median us, 1 thread)", "f32", "h16", "cvt",
              "f32/h16", "f32/cvt", "rel.err", "h16!=cvt", "!=emul");
  for (size_t si = 0; si < shapes.size(); ++si) {
    Layer L;
    L.p = shapes[si];
    const Shape& p = L.p;
    fill(L.x, p.c * p.h * p.w, g, -1.f, 6.f);
    fill(L.w, p.c * p.k * p.k, g, -0.5f, 0.5f);
    fill(L.b, p.c, g, -0.5f, 0.5f);
    for (auto& v : L.x) v = float(half(v));  // same inputs for both: fp16 values
    for (auto& v : L.w) v = float(half(v));
    for (auto& v : L.b) v = float(half(v));
    L.xh = to_half(L.x), L.wh = to_half(L.w), L.bh = to_half(L.b);
    L.y.assign(p.c * p.oh * p.ow, 0.f), L.yc.assign(L.y.size(), 0.f), L.yh.assign(L.y.size(), half(0));
    const f32::Padded d = f32::padded_dims(p);
    const f16::Padded dh = f16::padded_dims(p);
    L.buf.assign(d.ph * d.pw + 64, 0.f), L.bufh.assign(dh.ph * dh.pw + 64, half(0));
    const std::vector<double> t = interleaved<std::function<void()>>(
        {[&] { dw_f32(L); }, [&] { dw_h16(L); }, [&] { dw_cvt(L); }}, rounds);
    int64_t cvt_diff = 0, emu_diff = 0, emu_n = 0;
    for (size_t i = 0; i < L.y.size(); ++i) cvt_diff += float(L.yh[i]) != L.yc[i];
    for (int64_t c = 0; c < std::min<int64_t>(p.c, 8); ++c)
      for (int64_t oy = 0; oy < p.oh; ++oy)
        for (int64_t ox = 0; ox < p.ow; ++ox, ++emu_n)
          emu_diff += dw_emulated(L, c, oy, ox) != L.yh[(c * p.oh + oy) * p.ow + ox];
    const double err = rel_err(L.yh, L.y);
    std::printf("%-34s %9.1f %9.1f %9.1f %7.2f %7.2f %8.1e %8lld %lld/%lld\n", p.name.c_str(), t[0], t[1], t[2],
                t[0] / t[1], t[0] / t[2], err, (long long)cvt_diff, (long long)emu_diff, (long long)emu_n);
    if (js)
      std::fprintf(js,
                   " {\"layer\": \"%s\", \"key\": \"dw %lld %lld %d %d\", \"f32_us\": %.1f, \"h16_us\": %.1f, "
                   "\"cvt_us\": %.1f, \"f32_over_h16\": %.3f, "
                   "\"f32_over_cvt\": %.3f, \"max_rel_err_h16\": %.2e, \"h16_cvt_differ\": %lld, "
                   "\"emulation_differ\": %lld, \"emulation_checked\": %lld}%s\n",
                   p.name.c_str(), (long long)p.c, (long long)p.h, p.k, p.s, t[0], t[1], t[2], t[0] / t[1], t[0] / t[2], err, (long long)cvt_diff,
                   (long long)emu_diff, (long long)emu_n, si + 1 < shapes.size() ? "," : "");
  }
  const std::vector<Pw> pws = {
      {"blocks.0 project 1x1 32->16 112x112", 32, 16, 112, {}, {}, {}, {}, {}, {}, {}, {}, {}},
      {"blocks.1 expand 1x1 16->96 112x112", 16, 96, 112, {}, {}, {}, {}, {}, {}, {}, {}, {}},
      {"blocks.2/3 expand 1x1 24->144 56x56", 24, 144, 56, {}, {}, {}, {}, {}, {}, {}, {}, {}},
  };
  if (js) std::fprintf(js, "], \"pointwise\": [\n");
  for (size_t li = 0; li < pws.size(); ++li) {
    Pw L = pws[li];
    const int64_t P = L.hw * L.hw;
    fill(L.x, L.k * P, g, -1.f, 6.f);
    fill(L.w, L.n * L.k, g, -0.3f, 0.3f);
    fill(L.b, L.n, g, -0.5f, 0.5f);
    for (auto& v : L.x) v = float(half(v));
    for (auto& v : L.w) v = float(half(v));
    for (auto& v : L.b) v = float(half(v));
    L.xh = to_half(L.x), L.wh = to_half(L.w), L.bh = to_half(L.b);
    L.y.assign(L.n * P, 0.f), L.yc.assign(L.y.size(), 0.f), L.yh.assign(L.y.size(), half(0));
    const std::vector<double> t = interleaved<std::function<void()>>(
        {[&] { pw_f32(L); }, [&] { pw_f16(L, L.xh.data(), L.yh.data()); },
         [&] { pw_f16(L, L.x.data(), L.yc.data()); }},
        rounds);
    int64_t cvt_diff = 0;
    for (size_t i = 0; i < L.y.size(); ++i) cvt_diff += float(L.yh[i]) != L.yc[i];
    const double err = rel_err(L.yh, L.y);
    std::printf("%-34s %9.1f %9.1f %9.1f %7.2f %7.2f %8.1e %8lld\n", L.name.c_str(), t[0], t[1], t[2], t[0] / t[1],
                t[0] / t[2], err, (long long)cvt_diff);
    if (js)
      std::fprintf(js,
                   " {\"layer\": \"%s\", \"key\": \"pw %lld %lld %lld\", \"f32_us\": %.1f, \"h16_us\": %.1f, "
                   "\"cvt_us\": %.1f, \"f32_over_h16\": %.3f, "
                   "\"f32_over_cvt\": %.3f, \"max_rel_err_h16\": %.2e, \"h16_cvt_differ\": %lld}%s\n",
                   L.name.c_str(), (long long)L.k, (long long)L.n, (long long)L.hw, t[0], t[1], t[2], t[0] / t[1], t[0] / t[2], err, (long long)cvt_diff,
                   li + 1 < pws.size() ? "," : "");
  }
  if (js) {
    std::fprintf(js, "]}\n");
    std::fclose(js);
  }
  return 0;
}
