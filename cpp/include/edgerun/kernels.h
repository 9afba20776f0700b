// edgerun/kernels.h: fp32 kernels of the native engine.
//
// Kernels never allocate: any scratch memory is passed in, sized at load time
// by the matching *_scratch_floats function. Layout is NCHW, row-major.
// `threads` == 1 runs on the calling thread only; more share the work out over the
// engine's worker pool (edgerun/parallel.h).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "edgerun/graph.h"
#include "edgerun/parallel.h"

namespace edgerun {
namespace kernels {

// ============================================================================
// CPU features
// ============================================================================
bool        force_portable(); // EDGERUN_FORCE_PORTABLE set (read once)
bool        has_avx2_fma();   // checked once, at run time (false when forced portable)
// The scalar activation every kernel's edge/portable path applies (SIMD paths mirror it).
// Written with the x86 maxps / minps semantics (a > b ? a : b, a < b ? a : b) that the
// vector epilogues use, NaN included: a NaN becomes 0 (Relu) or lo (Clip) everywhere.
// std::min(std::max(v, lo), hi) kept a NaN, so a tile's scalar edge and its vector body
// disagreed, and fused chains (other strip widths, other edges) differed from unfused.
inline float apply_act(float v, Act act, float lo, float hi) {
  if (act == Act::kRelu) return v > 0.f ? v : 0.f;
  if (act == Act::kClip) {
    const float t = v > lo ? v : lo;
    return t < hi ? t : hi;
  }
  return v;
}
// "avx2-fma" or "portable". EDGERUN_FORCE_PORTABLE=1 in the environment (read
// once, at the first kernel call) forces the portable path, for cross-checks.
const char* gemm_path();

// ============================================================================
// GEMM: C[M,N] (+)= A[M,K] * B[K,N], row-major with leading dims
// ============================================================================
// Optional fused epilogue: C = act(C + row_bias[m] + col_bias[n]) (either bias may be null),
// then, with a residual, C = res_act(C + res[m * ldr + n]) (a residual Add and the Relu after
// it fused into the producing conv: the unfused Add's and Relu's operations, in their order).
struct GemmEpilogue {
  const float* row_bias;
  const float* col_bias;
  Act          act;
  float        lo, hi;  // clip bounds when act == kClip
  const float* res = nullptr;  // residual, laid out like C with leading dim ldr; null: none
  int64_t      ldr = 0;
  Act          res_act = Act::kNone;  // kNone or kRelu (applied after the residual)
};
// A residual added in a conv's epilogue: NCHW like the conv's output, then act.
struct Residual {
  const float* x;
  Act          act;  // kNone or kRelu
};
size_t sgemm_scratch_floats(int threads);
void   sgemm(int64_t M, int64_t N, int64_t K,
             const float* A, int64_t lda,
             const float* B, int64_t ldb,
             float* C, int64_t ldc,
             float* scratch, int threads, const GemmEpilogue* ep = nullptr);
// A constant B (a Gemm's weights) packed once, at load, into the micro-kernel's strips: per
// strip of w columns (w = 32 on AVX-512, else 16), [K][w] floats, columns past N zero.
// sgemm_pb reads them instead of B (M > 2: the row-at-a-time path reads B in place). Same
// bits as sgemm. sgemm_pack_b_floats: the packed size, 0 where EDGERUN_NO_PACK_B=1 (read once).
size_t sgemm_pack_b_floats(int64_t K, int64_t N);
void   sgemm_pack_b(int64_t K, int64_t N, const float* B, int64_t ldb, float* packed);
void   sgemm_pb(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* bpacked,
                float* C, int64_t ldc, float* scratch, int threads, const GemmEpilogue* ep = nullptr);

// ============================================================================
// Convolution (2-D, grouped, dilated, asymmetric pads) with fused bias + act
// ============================================================================
struct ConvParams {
  int64_t cin, h, w;         // input plane
  int64_t cout, oh, ow;      // output plane
  int64_t kh, kw, sh, sw, dh, dw;
  int64_t pt, pl;            // top / left pads (bottom / right follow from oh, ow)
  int64_t group;
  Act     act;
  float   lo, hi;            // clip bounds when act == kClip
};
size_t conv2d_scratch_floats(const ConvParams& p, int threads);
// col[(c*kh + i)*kw + j][oh*ow] for channels [0, cin_g) of one image/group.
// A 1x1 stride-1 unpadded conv reads its input as the GEMM panel directly (no im2col).
inline bool is_pointwise(const ConvParams& p) {
  return p.kh == 1 && p.kw == 1 && p.sh == 1 && p.sw == 1 && p.pt == 0 && p.pl == 0 &&
         p.oh == p.h && p.ow == p.w;
}
void   im2col_f32(const ConvParams& p, int64_t cin_g, const float* x, float* col, int threads);
// 1x1 convs on small planes (kernels_pointwise_small.cpp, AVX-512F): output channels on
// the vector lanes, weights packed at load, so 7x7 planes use every lane. Same bits as
// conv2d's GEMM path. pointwise_small_n: worth it for p here (EDGERUN_NO_SMALL_N=1: never).
bool   pointwise_small_n(const ConvParams& p);
size_t pointwise_small_pack_floats(const ConvParams& p);
void   pointwise_small_pack(const ConvParams& p, const float* w, float* packed);
void   pointwise_small(const ConvParams& p, int64_t batch, const float* x, const float* packed,
                       const float* bias, float* y, int threads, const Residual* res = nullptr);
// wpack: the weights packed once by conv2d_pack_weights (then w is not read), or nullptr.
// res: a residual added in the GEMM epilogue (not on the depthwise path), or nullptr.
void   conv2d(const ConvParams& p, int64_t batch, const float* x, const float* w,
              const float* bias, float* y, float* scratch, int threads,
              const float* wpack = nullptr, const Residual* res = nullptr);
// The GEMM's A operand (the weights) packed once, at load, into the micro-kernel's [kc][8]
// panels per K block and 8-row tile, so conv2d's GEMM reads them as one contiguous stream
// (gemm_ukr.h pack_a). Same bits. conv2d_pack_floats: the packed size in floats, 0 where conv2d would not use it
// (depthwise, cout / group <= 2, no AVX-512 kernel, EDGERUN_NO_PACK_A=1 read once).
size_t conv2d_pack_floats(const ConvParams& p);
void   conv2d_pack_weights(const ConvParams& p, const float* w, float* packed);
// Implicit GEMM (kernels_conv_implicit_avx512.cpp): conv2d's im2col convs pack the GEMM's B
// strips straight from the input, no column matrix, where conv_implicit(p) (AVX-512 kernel,
// EDGERUN_NO_IMPLICIT_CONV=1 read once per process: never). Same bits as im2col + GEMM.
bool   conv_implicit(const ConvParams& p);
void   conv2d_implicit(const ConvParams& p, const float* xg, const float* w, const GemmEpilogue& ep,
                       float* y, float* scratch, int threads, const float* wpack = nullptr);
// 3x3 stride-2 convs with cin * 9 <= 64 and cout a multiple of 16 (image stems), AVX-512F:
// read straight from the input, no im2col (kernels_conv_s2_avx512.cpp), where conv_s2_direct(p)
// (EDGERUN_NO_DIRECT_CONV=1: never; the engine asks once, at load); conv2d never takes this
// path. Same bits as the im2col + GEMM path.
bool   conv_s2_direct(const ConvParams& p);
size_t conv_s2_scratch_floats(const ConvParams& p);
void   conv_s2_small(const ConvParams& p, int64_t batch, const float* x, const float* w,
                     const float* bias, float* y, float* scratch, int threads);
// Depthwise (group == cin == cout): direct, vectorised for stride 1/2 (kernels_dwconv.cpp).
// The vector path pads each plane into scratch; scratch == nullptr forces the scalar path.
size_t depthwise_scratch_floats(const ConvParams& p, int threads);
void   depthwise_conv(const ConvParams& p, int64_t batch, const float* x, const float* w,
                      const float* bias, float* y, float* scratch, int threads);

// ============================================================================
// Elementwise
// ============================================================================
// Broadcast shapes: both operands padded to `rank` dims; stride 0 = broadcast.
struct Broadcast {
  int32_t rank;
  int64_t out[kErgMaxDims];
  int64_t sa[kErgMaxDims];
  int64_t sb[kErgMaxDims];
};
// Returns false when the shapes do not broadcast to `out`.
bool make_broadcast(const int64_t* a, int32_t ra, const int64_t* b, int32_t rb, const int64_t* out,
                    int32_t ro, Broadcast* bc);
void binary(OpCode op, const Broadcast& bc, const float* a, const float* b, float* y, int threads);
// Relu, Clip(p0, p1), Sigmoid, HardSigmoid(alpha p0, beta p1), HardSwish, Silu,
// LeakyRelu(alpha p0), Gelu(p0: 0 = erf, 1 = tanh approximation), Tanh, Elu(alpha p0),
// Softplus, Mish.
void unary(OpCode op, int64_t n, const float* x, float* y, float p0, float p1, int threads);
// Layer normalization of each of `rows` rows of n: (x - mean) / sqrt(var + eps) * scale + bias
// (bias may be null).
void layer_norm(int64_t rows, int64_t n, const float* x, const float* scale, const float* bias, float eps,
                float* y, int threads);
// y = x * scale[c] + shift[c] over [outer, C, inner].
void channel_affine(int64_t outer, int64_t C, int64_t inner, const float* x, const float* scale,
                    const float* shift, float* y, int threads);

// ============================================================================
// Pooling, reduction, data movement
// ============================================================================
struct PoolParams {
  int64_t h, w, oh, ow;
  int64_t kh, kw, sh, sw, dh, dw, pt, pl, pb, pr;
  bool    count_include_pad;
};
void max_pool(const PoolParams& p, int64_t planes, const float* x, float* y, int threads);
// max_pool for 3-wide stride-2 windows on AVX-512 (kernels_pool_avx512.cpp), same bits; false:
// not taken (other windows, no AVX-512), nothing written.
bool max_pool_s2_avx512(const PoolParams& p, int64_t planes, const float* x, float* y, int threads);
void avg_pool(const PoolParams& p, int64_t planes, const float* x, float* y, int threads);
void global_avg_pool(int64_t planes, int64_t hw, const float* x, float* y, int threads);
// y[i0, .., ir-1] = x[sum_d i_d * strides[d]] over the output dims (Transpose, Slice).
void strided_copy(int32_t rank, const int64_t* dims, const int64_t* strides, const float* x, float* y,
                  int threads);
// Softmax along the middle dim of [outer, n, inner].
void softmax(int64_t outer, int64_t n, int64_t inner, const float* x, float* y, int threads);
// Bilinear resize of each [h, w] plane to [oh, ow]. mode: 0 half_pixel, 1 pytorch_half_pixel,
// 2 align_corners, 3 asymmetric (ONNX coordinate_transformation_mode); sh, sw the scales.
void resize_linear(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, int mode, float sh, float sw,
                   const float* x, float* y, int threads);
// Nearest-neighbour upsampling by integer factors: y[i][j] = x[i / sh][j / sw] per plane.
void upsample_nearest(int64_t planes, int64_t h, int64_t w, int64_t sh, int64_t sw, const float* x,
                      float* y, int threads);
// Mean over the axes set in `mask` (bit d = axis d) of a rank-`rank` tensor.
void reduce_mean(int32_t rank, const int64_t* dims, uint32_t mask, const float* x, float* y);
// Concatenate n parts, each [outer, inner_i], into y [outer, sum inner_i].
void concat(int64_t outer, int32_t n, const float* const* xs, const int64_t* inner, float* y);
// Constant pad: y has dims out = in + begin + end (end implied).
void pad_constant(int32_t rank, const int64_t* in, const int64_t* begin, const int64_t* out,
                  const float* x, float* y, float value);

// ============================================================================
// Quantized weights (kernels_quant.cpp, kernels_qgemm.cpp)
// ============================================================================
// A quantized weight seen as [rows, k] (Conv: rows = cout, k = cin/g*kh*kw;
// Gemm: rows = N, k = K, i.e. stored transposed).
struct QuantWeight {
  DType          dtype;      // kInt8 or kInt4
  int64_t        rows, k;
  int64_t        group;      // int4 group size along k
  int64_t        row_bytes;  // bytes of one stored row
  const uint8_t* data;
  const float*   scales;     // [rows] (int8) or [rows, ceil(k/group)] (int4)
};
// out[(r - r0) * k + j] = w[r, j] for rows [r0, r1), or out[j * (r1 - r0) + r - r0]
// when `transpose` (the [K, N] layout sgemm takes for Gemm's B).
void dequantize_rows(const QuantWeight& w, int64_t r0, int64_t r1, float* out, bool transpose);

// u8 x s8 GEMM for Conv: y[m, n] = ws[m] * (xs[n] * t[m, n] + mn[n] * wsum[m]) + bias,
// t[m, n] = sum_k w[m, k] * u[k, n] (exact int32), with the activations quantized
// per output pixel n (dynamic, asymmetric 8 bits: u = round((x - mn[n]) / xs[n]) in
// [0, 255], mn[n] the pixel's min, xs[n] = (max - min) / 255) and bias + activation
// fused into the epilogue (kernels_qgemm.cpp has the exact operation order).
struct S8Weights {
  const int8_t*  w;      // [m, kp], rows zero padded to kp = s8_row_bytes(k)
  int64_t        m, k, kp;
  const float*   scale;  // [m]
  const int32_t* wsum;   // [m]: sum over k of w (R: multiplies the pixel minimum)
};
// "amx", "avx512-vnni", "avx-vnni", "avx2", "neon" or "portable". EDGERUN_NO_AMX=1
// skips the first, EDGERUN_NO_AVX512=1 the first two, EDGERUN_NO_VNNI=1 every VNNI
// path; all give bit-identical outputs.
const char* qgemm_path();
// Bytes per int8 GEMM weight row for K values: K rounded up to 4, or to 64 where the
// AMX path runs (its tiles take k in 64-byte rows). Rows are zero padded.
int64_t s8_row_bytes(int64_t k);
// int8 Conv with K below this runs the fp32 kernels on weights dequantized once at
// load (the fp32 copy is small: < 160 bytes per row). Measured on EfficientNet-Lite0
// (AVX-512 VNNI path): K = 40 runs 1.5-2x faster in int8, but K = 16..32 only 1.0-1.2x
// (those layers are 112x112 / 56x56, bound by writing their fp32 outputs), while
// quantizing their activations, the stem's (K = 27) above all, costs accuracy
// (front-half relative L2 error 0.119 -> 0.127 with every K >= 8 in int8).
constexpr int64_t kS8MinK = 40;
size_t conv2d_s8_scratch_floats(const ConvParams& p, int threads);
// A 1x1 int8 conv over n pixels: y[m * ldy + j] for input channel rows x + c * ldx
// (a window of a plane, e.g. a row strip); scratch as conv2d_s8 for a plane of n.
void   pointwise_s8_window(const S8Weights& w, const float* x, int64_t ldx, int64_t n,
                           const float* bias, Act act, float lo, float hi, float* y, int64_t ldy,
                           float* scratch, int threads);
void   conv2d_s8(const ConvParams& p, int64_t batch, const float* x, const S8Weights& w,
                 const float* bias, float* y, float* scratch, int threads);

}  // namespace kernels
}  // namespace edgerun
