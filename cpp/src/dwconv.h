// Internal to the depthwise convolution (kernels_dwconv*.cpp): the zero-bordered
// plane buffer that the vector paths read, and the AVX-512 plane kernel.
#pragma once

#include <cstdint>

#include "edgerun/kernels.h"

namespace edgerun {
namespace kernels {
namespace dw {

// One channel plane copied into a zero-bordered buffer: ph rows of pw floats.
// Stride 2 stores each row de-interleaved: even columns first, odd ones from
// column `half` (0 for stride 1). Output columns are rounded up to 16, so a
// vector path reads only inside the buffer (plus 16 floats of slack).
struct Padded {
  int64_t ph, pw;
  int64_t half;
};

Padded padded_dims(const ConvParams& p);

// Computes one output plane yc from the padded plane buf; `next` (may be null)
// is the next input plane, prefetched while this one computes.
using PlaneFn = void (*)(const ConvParams& p, const Padded& d, const float* buf, const float* wc,
                         float bias, float* yc, const float* next);

// The AVX-512 plane kernel for p (3x3 or 5x5, stride 1 or 2 in both axes, no
// row dilation), or nullptr: not that shape, not built, no AVX-512F at run
// time, or EDGERUN_NO_AVX512 set. Bit-identical to the AVX2 kernel (same FMA order).
PlaneFn avx512_plane(const ConvParams& p);

// Two adjacent channel planes at once (x0 -> y0 with w0, b0; x1 -> y1), read from the
// input planes: planes of <= 8 output columns (stride 1, 3x3 / 5x5, no dilation), where
// one plane row fills under half a vector. nullptr: not that shape / no AVX-512VL.
// Bit-identical to avx512_plane's kernel on each plane.
using PairFn = void (*)(const ConvParams& p, const float* x0, const float* x1, const float* w0,
                        const float* w1, float b0, float b1, float* y0, float* y1);
PairFn avx512_pair(const ConvParams& p);

// True when avx512_plane(p) reads the input plane itself (stride 1 with rows of at
// most 16 outputs, or stride 2 in both axes without column dilation): call it with
// the input plane as `buf`, no pad_plane_avx512 first.
bool avx512_direct(const ConvParams& p);

// Fills the padded plane buf from the input plane xc (AVX-512F; use only where
// avx512_plane returned a kernel).
void pad_plane_avx512(const ConvParams& p, const Padded& d, const float* xc, float* buf);

}  // namespace dw
}  // namespace kernels
}  // namespace edgerun
