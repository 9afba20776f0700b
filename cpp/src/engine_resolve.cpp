// Engine::resolve: turns each node of a validated graph into a Step, checking
// that its inputs, attributes and shapes are ones the kernels can run safely.
// A shape that does not add up is kFileCorrupt; a valid ONNX feature the
// kernels lack is kUnsupportedOp (naming op and node).
#include <cmath>

#include "edgerun/engine.h"

namespace edgerun {

namespace {

struct Ctx {
  const Graph& g;
  const NodeInfo& nd;

  const TensorInfo& t(uint32_t id) const { return g.tensors()[id]; }
  const TensorInfo& in(size_t i) const { return t(nd.inputs[i]); }
  const TensorInfo& out(size_t i = 0) const { return t(nd.outputs[i]); }
  bool has(size_t i) const { return i < nd.inputs.size() && nd.inputs[i] != kErgNoTensor; }

  std::string where() const {
    return std::string(op_name(nd.op)) + " node '" + nd.name + "'";
  }
  Status bad(const std::string& why) const {
    return Status(StatusCode::kFileCorrupt, "engine graph file is corrupt: " + where() + ": " + why +
                                                "; re-create it with the exporter");
  }
  Status unsupported(const std::string& why) const {
    return Status(StatusCode::kUnsupportedOp,
                  "the native engine cannot run " + where() + ": " + why +
                      "; run this front half on onnxruntime with --engine ort");
  }
  Status arity(size_t min_in, size_t max_in, size_t n_out) const {
    if (nd.inputs.size() < min_in || nd.inputs.size() > max_in || nd.outputs.size() != n_out)
      return bad("wrong number of inputs or outputs");
    for (size_t i = 0; i < min_in; ++i)
      if (nd.inputs[i] == kErgNoTensor) return bad("a required input is absent");
    return Status::Ok();
  }
  // Same batch-ness of dim 0 between a data input and the output.
  bool same_batch(const TensorInfo& a, const TensorInfo& b) const {
    return a.ndim > 0 && b.ndim > 0 && a.dims[0] == b.dims[0];
  }
};

Status act_from(const Ctx& c, int64_t code, Act* act) {
  if (code < 0 || code > int64_t(Act::kClip)) return c.unsupported("unknown fused activation code");
  *act = Act(code);
  return Status::Ok();
}

// A quantized weight (dtype int8 / int4) needs its scales as input 3 and the
// node's precision slot to agree with the dtype (a mismatch is a damaged file).
Status resolve_quant(const Ctx& c, const TensorInfo& w, int64_t prec_attr, Step* s) {
  const Precision want = w.dtype == DType::kInt8   ? Precision::kInt8
                         : w.dtype == DType::kInt4 ? Precision::kInt4
                                                   : Precision::kFp32;
  if (prec_attr != int64_t(want)) return c.bad("weight dtype and node precision disagree");
  s->prec = want;
  if (want == Precision::kFp32) return Status::Ok();
  if (!c.has(3) || c.in(3).kind != TensorKind::kWeight || c.in(3).dtype != DType::kFloat32 ||
      c.in(3).numel(1) != w.rows() * w.groups())
    return c.bad("quantized weight needs f32 scales [rows, groups] as input 3");
  for (int64_t i = 0; i < c.in(3).numel(1); ++i)
    if (!std::isfinite(c.in(3).data[i]) || c.in(3).data[i] < 0.f)
      return c.bad("quantization scales must be finite and >= 0");
  s->qw = {w.dtype, w.rows(), w.row_k(), int64_t(w.group), w.row_bytes(), w.qdata, c.in(3).data};
  return Status::Ok();
}

// Strides, dilations, pads and pooling kernels above this are corrupt: with dims below 2^31 every
// size computed from them then fits in int64. Unbounded, a dilation of 2^62 overflowed the
// output-size check and a pooling kernel of 2^43 made a run loop 2^43 times per output (fuzzing).
constexpr int64_t kMaxSpatialAttr = int64_t(1) << 16;

bool attr_in(int64_t v, int64_t lo) { return v >= lo && v <= kMaxSpatialAttr; }

// The output size of a window of `k` taps (dilation `d`) sliding with stride `st` over `n` + pads,
// floor and ceil; false when the window does not fit the padded input at all.
bool window_out(int64_t n, int64_t pads, int64_t k, int64_t d, int64_t st, int64_t* lo, int64_t* hi) {
  const int64_t extent = d * (k - 1) + 1;
  if (extent > n + pads) return false;
  *lo = (n + pads - extent) / st + 1;
  *hi = (n + pads - extent + st - 1) / st + 1;
  return true;
}

Status resolve_conv(const Ctx& c, Step* s) {
  ER_RETURN_IF_ERROR(c.arity(2, 4, 1));
  const TensorInfo &x = c.in(0), &w = c.in(1), &y = c.out();
  if (x.ndim != 4 || y.ndim != 4 || w.ndim != 4)
    return c.unsupported("only 2-D convolution on NCHW tensors is supported");
  if (w.kind != TensorKind::kWeight) return c.unsupported("the weight must be a constant");
  if (!c.same_batch(x, y)) return c.bad("input and output batch dims differ");
  const int64_t* a = c.nd.iattr;
  kernels::ConvParams& p = s->conv;
  p = {x.dims[1], x.dims[2], x.dims[3], y.dims[1], y.dims[2], y.dims[3], w.dims[2], w.dims[3],
       a[0], a[1], a[2], a[3], a[4], a[5], a[8], Act::kNone, c.nd.fattr[0], c.nd.fattr[1]};
  ER_RETURN_IF_ERROR(act_from(c, a[9], &p.act));
  if (!attr_in(p.sh, 1) || !attr_in(p.sw, 1) || !attr_in(p.dh, 1) || !attr_in(p.dw, 1) || !attr_in(p.pt, 0) ||
      !attr_in(p.pl, 0) || !attr_in(a[6], 0) || !attr_in(a[7], 0))
    return c.bad("strides/dilations must be in 1..65536 and pads in 0..65536");
  int64_t lo, hi;
  if (!window_out(p.h, p.pt + a[6], p.kh, p.dh, p.sh, &lo, &hi) ||
      !window_out(p.w, p.pl + a[7], p.kw, p.dw, p.sw, &lo, &hi))
    return c.bad("the kernel does not fit the padded input");
  if (p.group < 1 || p.cin % p.group || p.cout % p.group || w.dims[0] != p.cout ||
      w.dims[1] != p.cin / p.group)
    return c.bad("weight shape does not match channels and group");
  if (p.oh != (p.h + p.pt + a[6] - p.dh * (p.kh - 1) - 1) / p.sh + 1 ||
      p.ow != (p.w + p.pl + a[7] - p.dw * (p.kw - 1) - 1) / p.sw + 1)
    return c.bad("output spatial size does not follow from input, kernel, stride and pads");
  if (c.has(2) && (c.in(2).kind != TensorKind::kWeight || c.in(2).numel(1) != p.cout))
    return c.bad("bias must be a constant of cout elements");
  if (c.has(2) && c.in(2).dtype != DType::kFloat32) return c.bad("bias must be f32");
  if (a[11] != 0 && a[11] != 1)
    return c.bad("Conv activation precision (iattr 11) must be 0 (engine's choice) or 1 (fp32)");
  s->act_f32 = a[11] == 1;
  return resolve_quant(c, w, a[10], s);
}

Status resolve_gemm(const Ctx& c, Step* s) {
  ER_RETURN_IF_ERROR(c.arity(2, 4, 1));
  const TensorInfo &a = c.in(0), &b = c.in(1), &y = c.out();
  if (b.kind != TensorKind::kWeight || b.ndim != 2) return c.unsupported("B must be a 2-D constant");
  const bool quant = b.dtype != DType::kFloat32;  // quantized B is stored transposed: [N, K]
  s->k = quant ? b.dims[1] : b.dims[0];
  s->n = quant ? b.dims[0] : b.dims[1];
  if (a.ndim < 1 || y.ndim < 1 || a.dims[a.ndim - 1] != s->k || y.dims[y.ndim - 1] != s->n)
    return c.bad("inner dims of A and B or the output width do not match");
  for (int64_t bt : {1, 2})
    if (a.numel(bt) / s->k * s->n != y.numel(bt)) return c.bad("output rows do not match input rows");
  if (c.has(2) && (c.in(2).kind != TensorKind::kWeight || c.in(2).numel(1) != s->n))
    return c.bad("bias must be a constant of N elements");
  if (c.has(2) && c.in(2).dtype != DType::kFloat32) return c.bad("bias must be f32");
  s->p0 = c.nd.fattr[0];
  s->p1 = c.nd.fattr[1];
  ER_RETURN_IF_ERROR(resolve_quant(c, b, c.nd.iattr[1], s));
  return act_from(c, c.nd.iattr[0], &s->act);
}

Status resolve_binary(const Ctx& c, Step* s) {
  ER_RETURN_IF_ERROR(c.arity(2, 2, 1));
  // A batched input makes a batched output. Checked at batches 1 and 2 only, a [N] + [2] -> [2]
  // passed both and ran past its buffers at batch 3 (found by fuzzing under ASan).
  const bool batched_in = (c.in(0).ndim > 0 && c.in(0).dims[0] == -1) || (c.in(1).ndim > 0 && c.in(1).dims[0] == -1);
  if (batched_in && !(c.out().ndim > 0 && c.out().dims[0] == -1))
    return c.bad("a batched input gives an output without the batch dim");
  for (int64_t bt : {1, 2}) {
    int64_t da[kErgMaxDims], db[kErgMaxDims], dy[kErgMaxDims];
    for (uint32_t d = 0; d < kErgMaxDims; ++d) {
      da[d] = c.in(0).dims[d] == -1 ? bt : c.in(0).dims[d];
      db[d] = c.in(1).dims[d] == -1 ? bt : c.in(1).dims[d];
      dy[d] = c.out().dims[d] == -1 ? bt : c.out().dims[d];
    }
    kernels::Broadcast bc;
    if (!kernels::make_broadcast(da, int32_t(c.in(0).ndim), db, int32_t(c.in(1).ndim), dy,
                                 int32_t(c.out().ndim), &bc))
      return c.bad("input shapes do not broadcast to the output shape");
  }
  return Status::Ok();
}

Status resolve_unary(const Ctx& c, Step* s) {
  ER_RETURN_IF_ERROR(c.arity(1, 1, 1));
  for (int64_t bt : {1, 2})
    if (c.in(0).numel(bt) != c.out().numel(bt)) return c.bad("input and output sizes differ");
  s->p0 = c.nd.fattr[0];
  s->p1 = c.nd.fattr[1];
  return Status::Ok();
}

// Resize / ResizeLinear: one NCHW input, the output differing only in H and W.
Status resize_io(const Ctx& c, const char* what) {
  ER_RETURN_IF_ERROR(c.arity(1, 1, 1));
  const TensorInfo &x = c.in(0), &y = c.out();
  if (x.ndim != 4 || y.ndim != 4) return c.unsupported(std::string("only ") + what + " of NCHW is supported");
  if (!c.same_batch(x, y) || x.dims[1] != y.dims[1]) return c.bad("batch or channels differ");
  return Status::Ok();
}

Status resolve_resize(const Ctx& c, Step* s) {
  ER_RETURN_IF_ERROR(resize_io(c, "nearest upsampling"));
  const TensorInfo &x = c.in(0), &y = c.out();
  const int64_t sh = c.nd.iattr[0], sw = c.nd.iattr[1];
  if (!attr_in(sh, 1) || !attr_in(sw, 1)) return c.bad("scale factors must be in 1..65536");
  int64_t oh = 0, ow = 0;
  if (__builtin_mul_overflow(x.dims[2], sh, &oh) || __builtin_mul_overflow(x.dims[3], sw, &ow) ||
      y.dims[2] != oh || y.dims[3] != ow)
    return c.bad("output size is not the input size times the scale factors");
  s->k = sh;
  s->n = sw;
  return Status::Ok();
}

Status resolve_resize_linear(const Ctx& c, Step* s) {
  ER_RETURN_IF_ERROR(resize_io(c, "bilinear resizing"));
  const TensorInfo &x = c.in(0), &y = c.out();
  if (x.dims[2] < 1 || x.dims[3] < 1 || y.dims[2] < 1 || y.dims[3] < 1) return c.bad("empty planes");
  const int64_t mode = c.nd.iattr[0];
  if (mode < 0 || mode > 3) return c.bad("coordinate mode must be 0..3");
  const float sh = c.nd.fattr[0], sw = c.nd.fattr[1];
  if (!(sh > 0.f && sh < 1e6f && sw > 0.f && sw < 1e6f)) return c.bad("scales must be finite and > 0");
  s->mask = uint32_t(mode);
  s->p0 = sh;
  s->p1 = sw;
  return Status::Ok();
}

// Element strides of a contiguous tensor (dim 0 included: the batch steps by one sample).
void contiguous_strides(const TensorInfo& x, int64_t* st) {
  int64_t acc = 1;
  for (int32_t d = int32_t(x.ndim) - 1; d >= 0; --d) {
    st[d] = acc;
    if (d > 0) acc *= x.dims[d];
  }
}

// Transpose / Slice: one input of the output's rank and batch; its contiguous strides in xs.
Status resolve_copy(const Ctx& c, int64_t* xs) {
  ER_RETURN_IF_ERROR(c.arity(1, 1, 1));
  const TensorInfo &x = c.in(0), &y = c.out();
  if (x.ndim != y.ndim || x.ndim < 1 || !c.same_batch(x, y)) return c.bad("input and output ranks or batch differ");
  contiguous_strides(x, xs);
  return Status::Ok();
}

Status resolve_transpose(const Ctx& c, Step* s) {
  int64_t xs[kErgMaxDims];
  ER_RETURN_IF_ERROR(resolve_copy(c, xs));
  const TensorInfo &x = c.in(0), &y = c.out();
  bool seen[kErgMaxDims] = {};
  for (uint32_t d = 0; d < y.ndim; ++d) {
    const int64_t p = c.nd.iattr[d];
    if (p < 0 || p >= int64_t(x.ndim) || seen[p]) return c.bad("perm is not a permutation of the dims");
    seen[p] = true;
    if ((d == 0) != (p == 0)) return c.unsupported("a transpose that moves the batch dim");
    if (d > 0 && y.dims[d] != x.dims[p]) return c.bad("output dims are not the permuted input dims");
    s->strides[d] = xs[p];
  }
  return Status::Ok();
}

Status resolve_slice(const Ctx& c, Step* s) {
  int64_t xs[kErgMaxDims];
  ER_RETURN_IF_ERROR(resolve_copy(c, xs));
  const TensorInfo &x = c.in(0), &y = c.out();
  s->offset = 0;
  for (uint32_t d = 0; d < y.ndim; ++d) {
    const int64_t start = c.nd.iattr[d], step = c.nd.iattr[kErgMaxDims + d];
    if (d == 0) {
      if (start != 0 || step != 1) return c.unsupported("slicing the batch dim");
      s->strides[0] = xs[0];
      continue;
    }
    // start + (n - 1) * step < dim, without overflow
    int64_t span = 0;
    if (start < 0 || start >= x.dims[d] || step < 1 || y.dims[d] < 1 || y.dims[d] > x.dims[d] ||
        __builtin_mul_overflow(y.dims[d] - 1, step, &span) || span >= x.dims[d] - start)
      return c.bad("the slice does not lie inside the input");
    s->strides[d] = xs[d] * step;
    s->offset += start * xs[d];
  }
  return Status::Ok();
}

// Expand: a constant of one sample ([1, ...], the output's dims past the batch) copied to every
// sample: the strided copy with a batch stride of 0.
Status resolve_expand(const Ctx& c, Step* s) {
  ER_RETURN_IF_ERROR(c.arity(1, 1, 1));
  const TensorInfo &x = c.in(0), &y = c.out();
  if (x.kind != TensorKind::kWeight) return c.unsupported("an Expand of an activation (only of a constant)");
  if (x.dtype != DType::kFloat32) return c.bad("the expanded constant is not float32");
  if (x.ndim != y.ndim || x.ndim < 1 || x.dims[0] != 1) return c.bad("the constant is not one sample of the output");
  for (uint32_t d = 1; d < y.ndim; ++d)
    if (x.dims[d] != y.dims[d]) return c.bad("the constant's dims differ from the output's");
  contiguous_strides(x, s->strides);
  s->strides[0] = 0;
  s->offset = 0;
  return Status::Ok();
}

Status resolve_softmax(const Ctx& c, Step* s) {
  ER_RETURN_IF_ERROR(resolve_unary(c, s));
  const TensorInfo &x = c.in(0), &y = c.out();
  if (x.ndim != y.ndim) return c.bad("input and output ranks differ");
  for (uint32_t d = 1; d < x.ndim; ++d)
    if (x.dims[d] != y.dims[d]) return c.bad("input and output dims differ");
  const int64_t axis = c.nd.iattr[0];
  if (axis < 0 || axis >= int64_t(x.ndim)) return c.bad("axis out of range");
  if (axis == 0) return c.unsupported("softmax along the batch dim");
  s->k = axis;
  return Status::Ok();
}

Status resolve_layer_norm(const Ctx& c, Step* s) {
  ER_RETURN_IF_ERROR(c.arity(2, 3, 1));
  const TensorInfo &x = c.in(0), &y = c.out();
  if (x.ndim != y.ndim || !c.same_batch(x, y)) return c.bad("input and output ranks or batch differ");
  for (uint32_t d = 1; d < x.ndim; ++d)
    if (x.dims[d] != y.dims[d]) return c.bad("input and output dims differ");
  const int64_t axis = c.nd.iattr[0];
  if (axis < 1 || axis >= int64_t(x.ndim)) return c.unsupported("normalizing over the batch dim, or no dims");
  int64_t inner = 1;
  for (uint32_t d = uint32_t(axis); d < x.ndim; ++d) inner *= x.dims[d];
  for (size_t i = 1; i < 3; ++i)
    if (c.has(i) && (c.in(i).kind != TensorKind::kWeight || c.in(i).dtype != DType::kFloat32 ||
                     c.in(i).numel(1) != inner))
      return c.bad("scale and bias must be f32 constants of the normalized size");
  const float eps = c.nd.fattr[0];
  if (!(eps >= 0.f && eps < 1e30f)) return c.bad("epsilon must be a finite number >= 0");
  s->k = inner;
  s->p0 = eps;
  return Status::Ok();
}

Status resolve_matmul(const Ctx& c, Step* s) {
  ER_RETURN_IF_ERROR(c.arity(2, 2, 1));
  const TensorInfo &a = c.in(0), &b = c.in(1), &y = c.out();
  const uint32_t r = y.ndim;
  if (r < 3 || a.ndim != r || b.ndim != r) return c.unsupported("a product of two activations of rank < 3 or of different ranks");
  for (uint32_t d = 0; d + 2 < r; ++d)
    if (a.dims[d] != y.dims[d] || b.dims[d] != y.dims[d]) return c.unsupported("leading dims that differ (broadcast)");
  s->m = a.dims[r - 2];
  s->k = a.dims[r - 1];
  s->n = b.dims[r - 1];
  if (s->m < 1 || s->k < 1 || s->n < 1 || b.dims[r - 2] != s->k || y.dims[r - 2] != s->m || y.dims[r - 1] != s->n)
    return c.bad("the dims of A, B and the output do not make a product");
  return Status::Ok();
}

Status resolve_pool(const Ctx& c, Step* s) {
  ER_RETURN_IF_ERROR(c.arity(1, 1, 1));
  const TensorInfo &x = c.in(0), &y = c.out();
  if (x.ndim != 4 || y.ndim != 4) return c.unsupported("only 2-D pooling on NCHW is supported");
  if (!c.same_batch(x, y) || x.dims[1] != y.dims[1]) return c.bad("batch or channels differ");
  const int64_t* a = c.nd.iattr;
  s->pool = {x.dims[2], x.dims[3], y.dims[2], y.dims[3], a[0], a[1], a[2], a[3], a[4],
             a[5], a[6], a[7], a[8], a[9], a[10] != 0};
  for (int k = 0; k < 10; ++k)
    if (!attr_in(a[k], k < 6 ? 1 : 0)) return c.bad("kernel, strides and dilations must be in 1..65536, pads in 0..65536");
  const kernels::PoolParams& q = s->pool;
  int64_t lo_h, hi_h, lo_w, hi_w;
  if (!window_out(q.h, q.pt + q.pb, q.kh, q.dh, q.sh, &lo_h, &hi_h) ||
      !window_out(q.w, q.pl + q.pr, q.kw, q.dw, q.sw, &lo_w, &hi_w))
    return c.bad("the pooling window does not fit the padded input");
  // ceil mode drops a last window that would start in the end padding (onnxruntime, torch):
  // an output there reads only padding (-FLT_MAX for max pooling)
  if (hi_h > lo_h && (hi_h - 1) * q.sh >= q.h + q.pt) --hi_h;
  if (hi_w > lo_w && (hi_w - 1) * q.sw >= q.w + q.pl) --hi_w;
  if (q.oh < lo_h || q.oh > hi_h || q.ow < lo_w || q.ow > hi_w)  // floor or ceil mode
    return c.bad("output spatial size does not follow from input, kernel, stride and pads");
  return Status::Ok();
}

Status resolve_reduce(const Ctx& c, Step* s, int64_t mask) {
  ER_RETURN_IF_ERROR(c.arity(1, 1, 1));
  const TensorInfo &x = c.in(0), &y = c.out();
  if (mask <= 0 || mask >= (int64_t(1) << x.ndim)) return c.bad("reduced axes out of range");
  if ((mask & 1) && x.dims[0] == -1) return c.unsupported("reducing over the batch dim");
  s->mask = uint32_t(mask);
  int64_t red = 1;
  for (uint32_t d = 0; d < x.ndim; ++d)
    if ((mask >> d) & 1) red *= x.dims[d];
  for (int64_t bt : {1, 2})
    if (x.numel(bt) != y.numel(bt) * red) return c.bad("output size does not match the reduction");
  return Status::Ok();
}

Status resolve_concat(const Ctx& c, Step* s) {
  ER_RETURN_IF_ERROR(c.arity(1, 64, 1));
  const TensorInfo& y = c.out();
  const int64_t axis = c.nd.iattr[0];
  if (axis < 0 || axis >= int64_t(y.ndim)) return c.bad("axis out of range");
  // Axis 0 is the batch, however its dim is written: a file with a fixed first dim there made the
  // copy run with a negative or too large size (found by fuzzing under ASan).
  if (axis == 0) return c.unsupported("concatenation along the batch dim");
  int64_t sum = 0;
  for (size_t i = 0; i < c.nd.inputs.size(); ++i) {
    if (!c.has(i)) return c.bad("an input is absent");
    const TensorInfo& x = c.in(i);
    if (x.ndim != y.ndim) return c.bad("inputs differ in rank from the output");
    for (uint32_t d = 0; d < y.ndim; ++d)
      if (int64_t(d) != axis && x.dims[d] != y.dims[d]) return c.bad("inputs differ off the axis");
    sum += x.dims[axis];
  }
  if (sum != y.dims[axis]) return c.bad("input sizes along the axis do not add up");
  s->k = axis;
  return Status::Ok();
}

Status resolve_affine(const Ctx& c, Step* s) {
  ER_RETURN_IF_ERROR(c.arity(3, 3, 1));
  const TensorInfo &x = c.in(0), &y = c.out();
  if (x.ndim < 2) return c.unsupported("BatchNormalization needs a channel axis");
  for (size_t i : {1, 2})
    if (c.in(i).kind != TensorKind::kWeight || c.in(i).numel(1) != x.dims[1])
      return c.bad("scale/shift must be constants of C elements");
  for (int64_t bt : {1, 2})
    if (x.numel(bt) != y.numel(bt)) return c.bad("input and output sizes differ");
  return Status::Ok();
}

Status resolve_pad(const Ctx& c, Step* s) {
  ER_RETURN_IF_ERROR(c.arity(1, 1, 1));
  const TensorInfo &x = c.in(0), &y = c.out();
  if (x.ndim != y.ndim || x.ndim == 0) return c.bad("input and output ranks differ");
  const int64_t* a = c.nd.iattr;
  for (uint32_t d = 0; d < x.ndim; ++d) {
    if (d == 0 && x.dims[0] == -1) {
      if (a[0] != 0 || a[x.ndim] != 0 || y.dims[0] != -1) return c.unsupported("padding the batch dim");
      continue;
    }
    if (y.dims[d] != x.dims[d] + a[d] + a[x.ndim + d]) return c.bad("output dims do not match pads");
  }
  s->p0 = c.nd.fattr[0];
  return Status::Ok();
}

}  // namespace

Status Engine::resolve() {
  const Graph& g = graph_;
  root_.resize(g.tensors().size());
  for (uint32_t t = 0; t < root_.size(); ++t) root_[t] = t;
  for (uint32_t i = 0; i < g.nodes().size(); ++i) {
    const NodeInfo& nd = g.nodes()[i];
    Ctx c{g, nd};
    Step s{};
    s.op = nd.op;
    s.node = i;
    // Quantized tensors are only ever the weight (input 1) of a Conv or Gemm.
    for (size_t k = 0; k < nd.inputs.size(); ++k) {
      const bool weight_slot = k == 1 && (nd.op == OpCode::kConv || nd.op == OpCode::kGemm);
      if (c.has(k) && c.in(k).dtype != DType::kFloat32 && !weight_slot)
        return c.bad("a quantized tensor is used where only f32 is allowed");
    }
    switch (nd.op) {
      case OpCode::kConv: ER_RETURN_IF_ERROR(resolve_conv(c, &s)); break;
      case OpCode::kGemm: ER_RETURN_IF_ERROR(resolve_gemm(c, &s)); break;
      case OpCode::kAdd: case OpCode::kSub: case OpCode::kMul: case OpCode::kDiv: case OpCode::kPRelu:
        ER_RETURN_IF_ERROR(resolve_binary(c, &s)); break;
      case OpCode::kRelu: case OpCode::kClip: case OpCode::kSigmoid: case OpCode::kHardSigmoid:
      case OpCode::kHardSwish: case OpCode::kSilu: case OpCode::kLeakyRelu: case OpCode::kTanh:
      case OpCode::kElu: case OpCode::kSoftplus: case OpCode::kMish:
        ER_RETURN_IF_ERROR(resolve_unary(c, &s)); break;
      case OpCode::kGelu:
        ER_RETURN_IF_ERROR(resolve_unary(c, &s));
        if (nd.iattr[0] != 0 && nd.iattr[0] != 1) return c.bad("approximate must be 0 (erf) or 1 (tanh)");
        s.p0 = float(nd.iattr[0]);
        break;
      case OpCode::kResize: ER_RETURN_IF_ERROR(resolve_resize(c, &s)); break;
      case OpCode::kResizeLinear: ER_RETURN_IF_ERROR(resolve_resize_linear(c, &s)); break;
      case OpCode::kTranspose: ER_RETURN_IF_ERROR(resolve_transpose(c, &s)); break;
      case OpCode::kSlice: ER_RETURN_IF_ERROR(resolve_slice(c, &s)); break;
      case OpCode::kExpand: ER_RETURN_IF_ERROR(resolve_expand(c, &s)); break;
      case OpCode::kSoftmax: ER_RETURN_IF_ERROR(resolve_softmax(c, &s)); break;
      case OpCode::kLayerNorm: ER_RETURN_IF_ERROR(resolve_layer_norm(c, &s)); break;
      case OpCode::kMatMul: ER_RETURN_IF_ERROR(resolve_matmul(c, &s)); break;
      case OpCode::kMaxPool: case OpCode::kAveragePool:
        ER_RETURN_IF_ERROR(resolve_pool(c, &s)); break;
      case OpCode::kGlobalAveragePool:
        ER_RETURN_IF_ERROR(c.arity(1, 1, 1));
        if (c.in(0).ndim < 3) return c.unsupported("needs N, C and spatial dims");
        ER_RETURN_IF_ERROR(resolve_reduce(c, &s, ((int64_t(1) << c.in(0).ndim) - 1) & ~int64_t(3)));
        break;
      case OpCode::kReduceMean: ER_RETURN_IF_ERROR(resolve_reduce(c, &s, nd.iattr[0])); break;
      case OpCode::kConcat: ER_RETURN_IF_ERROR(resolve_concat(c, &s)); break;
      case OpCode::kReshape:
        ER_RETURN_IF_ERROR(resolve_unary(c, &s));
        root_[nd.outputs[0]] = root_[nd.inputs[0]];  // zero-copy alias
        break;
      case OpCode::kChannelAffine: ER_RETURN_IF_ERROR(resolve_affine(c, &s)); break;
      case OpCode::kPad: ER_RETURN_IF_ERROR(resolve_pad(c, &s)); break;
      default:
        return Status(StatusCode::kUnsupportedOp,
                      "the native engine does not know op code " + std::to_string(uint32_t(nd.op)) +
                          " of node '" + nd.name +
                          "' (file from a newer exporter?); upgrade edgerun or use --engine ort");
    }
    steps_.push_back(s);
  }
  return Status::Ok();
}

}  // namespace edgerun
