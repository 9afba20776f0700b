// Pooling, reduction and data movement kernels.
#include <algorithm>
#include <cfloat>
#include <cstring>
#include <vector>

#include "edgerun/kernels.h"

namespace edgerun {
namespace kernels {

namespace {

// t[ox] = the max of x's row over output column ox's valid taps (-FLT_MAX where none), one tap at a
// time over the columns whose tap lies inside the row: branch-free loops that vectorize.
// std::max(m, v) keeps m on NaN and on ties, as the per-window loop did: the same bits.
void row_max(const PoolParams& p, const float* xr, float* t) {
  for (int64_t ox = 0; ox < p.ow; ++ox) t[ox] = -FLT_MAX;
  for (int64_t j = 0; j < p.kw; ++j) {
    const int64_t off = j * p.dw - p.pl;  // column ox reads xr[ox * sw + off]
    const int64_t lo = off >= 0 ? 0 : (-off + p.sw - 1) / p.sw;
    const int64_t hi = std::min(p.ow, off >= p.w ? int64_t(0) : (p.w - off + p.sw - 1) / p.sw);
    if (p.sw == 1) {
      for (int64_t ox = lo; ox < hi; ++ox) t[ox] = std::max(t[ox], xr[ox + off]);
    } else {
      for (int64_t ox = lo; ox < hi; ++ox) t[ox] = std::max(t[ox], xr[ox * p.sw + off]);
    }
  }
}

}  // namespace

// Separable: each input row's max over the window's columns once (h x ow), then each output row the
// max of its window's rows. A window's max in row-major tap order equals the max of its rows' maxima
// (the first of equal values kept in both), so the answer is the per-window loop's, bit for bit; that
// loop (two bounds checks per tap, scalar) was 30 % of GoogLeNet's front at 64x64.
void max_pool(const PoolParams& p, int64_t planes, const float* x, float* y, int threads) {
  if (max_pool_s2_avx512(p, planes, x, y, threads)) return;
  parallel_for(threads, planes, [&](int64_t pc) {
    thread_local std::vector<float> rows;
    if (rows.size() < size_t(p.h * p.ow)) rows.resize(size_t(p.h * p.ow));
    const float* xc = x + pc * p.h * p.w;
    float* yc = y + pc * p.oh * p.ow;
    for (int64_t iy = 0; iy < p.h; ++iy) row_max(p, xc + iy * p.w, rows.data() + iy * p.ow);
    for (int64_t oy = 0; oy < p.oh; ++oy) {
      float* yr = yc + oy * p.ow;
      for (int64_t ox = 0; ox < p.ow; ++ox) yr[ox] = -FLT_MAX;
      for (int64_t i = 0; i < p.kh; ++i) {
        const int64_t iy = oy * p.sh - p.pt + i * p.dh;
        if (iy < 0 || iy >= p.h) continue;
        const float* tr = rows.data() + iy * p.ow;
        for (int64_t ox = 0; ox < p.ow; ++ox) yr[ox] = std::max(yr[ox], tr[ox]);
      }
    }
  });
}

void avg_pool(const PoolParams& p, int64_t planes, const float* x, float* y, int threads) {
  parallel_for(threads, planes, [&](int64_t pc) {
    const float* xc = x + pc * p.h * p.w;
    float* yc = y + pc * p.oh * p.ow;
    for (int64_t oy = 0; oy < p.oh; ++oy)
      for (int64_t ox = 0; ox < p.ow; ++ox) {
        float s = 0.f;
        int64_t n = 0, npad = 0;
        for (int64_t i = 0; i < p.kh; ++i) {
          const int64_t iy = oy * p.sh - p.pt + i * p.dh;
          for (int64_t j = 0; j < p.kw; ++j) {
            const int64_t ix = ox * p.sw - p.pl + j * p.dw;
            // With count_include_pad, ONNX counts the explicit pads but not
            // positions past them (ceil_mode windows).
            if (iy >= -p.pt && iy < p.h + p.pb && ix >= -p.pl && ix < p.w + p.pr) ++npad;
            if (iy < 0 || iy >= p.h || ix < 0 || ix >= p.w) continue;
            s += xc[iy * p.w + ix];
            ++n;
          }
        }
        const int64_t d = p.count_include_pad ? npad : n;
        yc[oy * p.ow + ox] = d > 0 ? s / float(d) : 0.f;
      }
  });
}

namespace {

// Sum of a contiguous run in Acc (float or double) on eight lane-parallel partial sums: they
// vectorize without reassociating, where one serial chain of dependent adds is latency-bound
// (global average pooling took 17 us for 8 planes of 64x64 that way).
template <typename Acc>
Acc sum_run(const float* x, int64_t n) {
  Acc acc[8] = {};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int j = 0; j < 8; ++j) acc[j] += Acc(x[k + j]);
  for (int j = 0; k < n; ++k, ++j) acc[j] += Acc(x[k]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

}  // namespace

void global_avg_pool(int64_t planes, int64_t hw, const float* x, float* y, int threads) {
  parallel_for(threads, planes, [&](int64_t pc) { y[pc] = float(sum_run<double>(x + pc * hw, hw) / double(hw)); });
}

void upsample_nearest(int64_t planes, int64_t h, int64_t w, int64_t sh, int64_t sw, const float* x,
                      float* y, int threads) {
  const int64_t ow = w * sw;
  parallel_for(threads, planes * h, [&](int64_t pr) {  // one input row -> sh output rows
    const float* xr = x + pr * w;
    float* y0 = y + pr * sh * ow;
    if (sw == 1) {
      std::memcpy(y0, xr, size_t(w) * sizeof(float));
    } else {
      for (int64_t j = 0; j < w; ++j)
        for (int64_t k = 0; k < sw; ++k) y0[j * sw + k] = xr[j];
    }
    for (int64_t r = 1; r < sh; ++r) std::memcpy(y0 + r * ow, y0, size_t(ow) * sizeof(float));
  });
}

namespace {

// The input coordinate output index o reads (ONNX Resize), clamped to [0, in - 1] as onnxruntime
// does for linear mode: the lower index, the upper one and the upper one's weight.
struct Tap {
  int64_t i0, i1;
  float w1;
};

Tap linear_tap(int64_t o, int64_t in, int64_t out, float scale, int mode) {
  float c;
  switch (mode) {
    case 0: c = (float(o) + 0.5f) / scale - 0.5f; break;
    case 1: c = out > 1 ? (float(o) + 0.5f) / scale - 0.5f : 0.f; break;
    case 2: c = out > 1 ? float(o) * float(in - 1) / float(out - 1) : 0.f; break;
    default: c = float(o) / scale; break;
  }
  c = std::min(std::max(c, 0.f), float(in - 1));
  const int64_t i0 = std::min(static_cast<int64_t>(c), in - 1);
  return {i0, std::min(i0 + 1, in - 1), c - float(i0)};
}

}  // namespace

void resize_linear(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, int mode, float sh, float sw,
                   const float* x, float* y, int threads) {
  // The column taps are the same for every row: computed once per call (the buffer is kept per
  // thread, so after the first call nothing is allocated).
  static thread_local std::vector<Tap> cols;
  if (cols.size() < size_t(ow)) cols.resize(size_t(ow));
  for (int64_t ox = 0; ox < ow; ++ox) cols[size_t(ox)] = linear_tap(ox, w, ow, sw, mode);
  const Tap* tx = cols.data();
  parallel_for(threads, planes * oh, [&](int64_t pr) {
    const int64_t p = pr / oh, oy = pr % oh;
    const Tap ty = linear_tap(oy, h, oh, sh, mode);
    const float* r0 = x + (p * h + ty.i0) * w;
    const float* r1 = x + (p * h + ty.i1) * w;
    float* yr = y + pr * ow;
    for (int64_t ox = 0; ox < ow; ++ox) {
      const Tap& t = tx[ox];
      const float top = r0[t.i0] + (r0[t.i1] - r0[t.i0]) * t.w1;
      const float bot = r1[t.i0] + (r1[t.i1] - r1[t.i0]) * t.w1;
      yr[ox] = top + (bot - top) * ty.w1;
    }
  });
}

void strided_copy(int32_t rank, const int64_t* dims, const int64_t* strides, const float* x, float* y,
                  int threads) {
  int64_t rows = 1;
  for (int32_t d = 0; d + 1 < rank; ++d) rows *= dims[d];
  const int64_t n = dims[rank - 1], step = strides[rank - 1];
  parallel_for(threads, rows, [&](int64_t r) {
    int64_t off = 0, rem = r;
    for (int32_t d = rank - 2; d >= 0; --d) {
      off += (rem % dims[d]) * strides[d];
      rem /= dims[d];
    }
    const float* xs = x + off;
    float* yr = y + r * n;
    if (step == 1) std::memcpy(yr, xs, size_t(n) * sizeof(float));
    else
      for (int64_t k = 0; k < n; ++k) yr[k] = xs[k * step];
  });
}

void reduce_mean(int32_t rank, const int64_t* dims, uint32_t mask, const float* x, float* y) {
  // Output strides over the kept dims; reduced dims contribute nothing.
  int64_t ostride[kErgMaxDims], total = 1, out_n = 1, red = 1;
  for (int32_t d = rank - 1; d >= 0; --d) {
    const bool reduced = (mask >> d) & 1u;
    ostride[d] = reduced ? 0 : out_n;
    if (reduced) red *= dims[d]; else out_n *= dims[d];
    total *= dims[d];
  }
  std::fill(y, y + out_n, 0.f);
  // The last dim is a contiguous run: summed into one output when it is reduced, added to a row
  // of outputs when it is kept; an odometer walks the dims before it.
  const int32_t last = rank - 1;
  const int64_t n = dims[last];
  const bool last_reduced = (mask >> last) & 1u;
  const int64_t runs = n > 0 ? total / n : 0;
  int64_t idx[kErgMaxDims] = {0};
  int64_t o = 0;
  for (int64_t r = 0; r < runs; ++r) {
    const float* xr = x + r * n;
    if (last_reduced) {
      y[o] += sum_run<float>(xr, n);
    } else {
      float* yo = y + o;
      for (int64_t k = 0; k < n; ++k) yo[k] += xr[k];
    }
    for (int32_t d = last - 1; d >= 0; --d) {  // odometer increment
      o += ostride[d];
      if (++idx[d] < dims[d]) break;
      o -= ostride[d] * dims[d];
      idx[d] = 0;
    }
  }
  const float inv = 1.f / float(red);
  for (int64_t k = 0; k < out_n; ++k) y[k] *= inv;
}

void concat(int64_t outer, int32_t n, const float* const* xs, const int64_t* inner, float* y) {
  int64_t row = 0;
  for (int32_t i = 0; i < n; ++i) row += inner[i];
  for (int64_t o = 0; o < outer; ++o) {
    float* dst = y + o * row;
    for (int32_t i = 0; i < n; ++i) {
      std::memcpy(dst, xs[i] + o * inner[i], sizeof(float) * size_t(inner[i]));
      dst += inner[i];
    }
  }
}

void pad_constant(int32_t rank, const int64_t* in, const int64_t* begin, const int64_t* out,
                  const float* x, float* y, float value) {
  int64_t out_n = 1, in_n = 1;
  for (int32_t d = 0; d < rank; ++d) {
    out_n *= out[d];
    in_n *= in[d];
  }
  std::fill(y, y + out_n, value);
  if (in_n == 0) return;
  // Copy input rows (last dim) into place; negative pads crop.
  int64_t ostr[kErgMaxDims], istr[kErgMaxDims];
  ostr[rank - 1] = istr[rank - 1] = 1;
  for (int32_t d = rank - 2; d >= 0; --d) {
    ostr[d] = ostr[d + 1] * out[d + 1];
    istr[d] = istr[d + 1] * in[d + 1];
  }
  const int64_t rows = in_n / in[rank - 1];
  for (int64_t r = 0; r < rows; ++r) {
    int64_t rest = r, ooff = 0, ioff = 0;
    bool inside = true;
    for (int32_t d = rank - 2; d >= 0; --d) {
      const int64_t i = rest % in[d];
      rest /= in[d];
      const int64_t od = i + begin[d];
      if (od < 0 || od >= out[d]) inside = false;
      ooff += od * ostr[d];
      ioff += i * istr[d];
    }
    if (!inside) continue;
    const int64_t L = in[rank - 1], b = begin[rank - 1];
    for (int64_t k = std::max<int64_t>(0, -b); k < L && k + b < out[rank - 1]; ++k)
      y[ooff + k + b] = x[ioff + k];
  }
}

}  // namespace kernels
}  // namespace edgerun
