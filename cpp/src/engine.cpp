// Engine: load (validate, resolve, plan, allocate once) and run (no allocation).
#include "edgerun/engine.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>
#include <unistd.h>

#include "edgerun/planner.h"

namespace edgerun {

namespace {

FloatBuffer alloc_floats(size_t n) {
  void* p = nullptr;
  if (posix_memalign(&p, 64, std::max<size_t>(n, 16) * sizeof(float)) != 0) return FloatBuffer();
  return FloatBuffer(static_cast<float*>(p));
}

void dims_at(const TensorInfo& t, int64_t batch, int64_t* out) {
  for (uint32_t d = 0; d < t.ndim; ++d) out[d] = t.dims[d] == -1 ? batch : t.dims[d];
}

std::string shape_str(const int64_t* d, uint32_t n) {
  std::string s = "(";
  for (uint32_t i = 0; i < n; ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + (n == 1 ? ",)" : ")");
}

}  // namespace

void AlignedFree::operator()(float* p) const { std::free(p); }

Result<std::unique_ptr<Engine>> Engine::load(const std::string& path, int32_t max_batch,
                                             int32_t threads) {
  if (max_batch < 1 || max_batch > 65536)
    return Status(StatusCode::kInvalidArgument,
                  "max_batch must be in 1..65536, got " + std::to_string(max_batch));
  if (threads < 1 || threads > 256)
    return Status(StatusCode::kInvalidArgument,
                  "threads must be in 1..256, got " + std::to_string(threads));
  std::unique_ptr<Engine> e(new Engine());
  ER_ASSIGN_OR_RETURN(e->graph_, Graph::open(path));
  e->max_batch_ = max_batch;
  e->threads_ = threads;
  ER_RETURN_IF_ERROR(e->resolve());
  e->prepare_quant();
  e->fuse_chains();
  e->pick_conv_kernels();
  e->fuse_residual_adds();
  ER_RETURN_IF_ERROR(e->plan_and_allocate());
  return e;
}

namespace {
// A weight the engine packed a copy of is not read again: its pages of the file are handed back
// (the mapping is a private, read-only file mapping, so a later read would fault them in from the
// file), and the packed copy replaces it instead of doubling that layer's weight memory.
void release_pages(const float* w, uint64_t bytes) {
  const long page = sysconf(_SC_PAGESIZE);
  const uintptr_t a = reinterpret_cast<uintptr_t>(w), b = a + bytes;
  const uintptr_t lo = (a + page - 1) / page * page, hi = b / page * page;
  if (page > 0 && hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}
}  // namespace

// The fp32 conv kernels other than im2col + GEMM, chosen once here: the knobs that turn them off
// are read when the engine loads (EDGERUN_NO_DIRECT_CONV was read on every run: set after a load,
// a stem conv took im2col + GEMM on a scratch sized for the direct kernel and wrote past it).
// - 3x3 stride-2 stems read their input directly (kernels::conv_s2_small).
// - 1x1 convs where the GEMM tile would waste lanes (7x7 planes): their weights are packed once
//   for kernels::pointwise_small. Fused chains keep the GEMM (their strips are other widths).
// - Other fp32 convs that run the GEMM (im2col, implicit, 1x1): their weights are packed once
//   into the micro-kernel's [K][8] panels (kernels::conv2d_pack_weights, Step::wpack).
// Each gives the same bits as im2col + GEMM.
// Also fp32 Gemm steps with constant weights and 3..kPackBMaxRows rows at batch 1 (a small
// ViT's tokens): B packed once into the GEMM's strips (kernels::sgemm_pack_b, Step::bpack),
// same bits as sgemm. With few rows the per-call packing is a large share of the GEMM
// (ab_builds on MatMul + Add graphs, K x N = 384 x 1536, 1536 x 384, 192 x 768: 8 rows
// 0.82-0.94x, 17 rows 0.82-0.96x the time); with many it is not, and reading the prepacked
// strips from memory was slower (197 rows: 0.96-1.06x; ViT-S/16's 197-token Linears 1.08-1.12x).
constexpr int64_t kPackBMaxRows = 32;

void Engine::pick_conv_kernels() {
  for (Step& s : steps_) {
    if (s.op == OpCode::kGemm && s.prec == Precision::kFp32) {
      const NodeInfo& nd = graph_.nodes()[s.node];
      const TensorInfo& bt = graph_.tensors()[nd.inputs[1]];
      const size_t floats = kernels::sgemm_pack_b_floats(s.k, s.n);
      const int64_t rows = graph_.tensors()[nd.inputs[0]].numel(1) / s.k;  // at batch 1
      if (bt.kind != TensorKind::kWeight || bt.data == nullptr || floats == 0 || rows <= 2 ||
          rows > kPackBMaxRows)
        continue;
      owned_f32_.emplace_back(floats);
      kernels::sgemm_pack_b(s.k, s.n, bt.data, s.n, owned_f32_.back().data());
      s.bpack = owned_f32_.back().data();
      release_pages(bt.data, bt.data_bytes);
      continue;
    }
    if (s.op == OpCode::kConv && !s.use_s8 && s.fuse == 0) s.s2_direct = kernels::conv_s2_direct(s.conv);
    if (s.op != OpCode::kConv || s.prec != Precision::kFp32 || s.fuse != 0 || s.s2_direct) continue;
    const bool small = kernels::pointwise_small_n(s.conv);
    const size_t gemm_floats = small ? 0 : kernels::conv2d_pack_floats(s.conv);
    if (!small && gemm_floats == 0) continue;
    const TensorInfo& wt = graph_.tensors()[graph_.nodes()[s.node].inputs[1]];
    const float* w = wt.data;
    if (w == nullptr) continue;  // weights computed at run time: not packable
    if (small) {
      owned_f32_.emplace_back(kernels::pointwise_small_pack_floats(s.conv));
      kernels::pointwise_small_pack(s.conv, w, owned_f32_.back().data());
      s.wsmall = owned_f32_.back().data();
    } else {
      owned_f32_.emplace_back(gemm_floats);
      kernels::conv2d_pack_weights(s.conv, w, owned_f32_.back().data());
      s.wpack = owned_f32_.back().data();
    }
    release_pages(w, wt.data_bytes);
  }
}

Status Engine::plan_and_allocate() {
  const auto& T = graph_.tensors();
  const int32_t n_nodes = int32_t(steps_.size());
  // Liveness per root buffer: produced by its first writer, read until its last
  // reader through any alias; graph outputs live to the end.
  std::vector<int32_t> first(T.size(), -1), last(T.size(), -1);
  // A fused chain runs as one step: all its buffers live over the head's slot. A conv (or
  // chain) with a fused residual Add, and a Relu fused with it, run at the Add's slot.
  int32_t slot = 0;
  for (int32_t i = 0; i < n_nodes; ++i) {
    const NodeInfo& nd = graph_.nodes()[steps_[i].node];
    if (steps_[i].fuse != 2) slot = steps_[i].run_at >= 0 ? steps_[i].run_at : i;
    for (uint32_t id : nd.outputs)
      if (root_[id] == id) first[id] = last[id] = slot;
    for (uint32_t id : nd.inputs)
      if (id != kErgNoTensor) last[root_[id]] = std::max(last[root_[id]], slot);
  }
  for (uint32_t id : graph_.outputs()) last[root_[id]] = n_nodes;
  std::vector<BufferUse> uses;
  std::vector<uint32_t> owner;
  for (uint32_t t = 0; t < T.size(); ++t) {
    if (T[t].kind != TensorKind::kActivation || root_[t] != t || first[t] < 0 || fused_inner_[t]) continue;
    uses.push_back({uint64_t(T[t].numel(max_batch_)) * sizeof(float), first[t], last[t]});
    owner.push_back(t);
  }
  MemoryPlan plan = plan_memory(uses, 64);
  arena_bytes_ = plan.arena_bytes;
  naive_bytes_ = plan.naive_bytes;
  arena_ = alloc_floats(arena_bytes_ / sizeof(float));
  // Scratch: the largest need of any step (steps run one at a time).
  scratch_floats_ = 16;
  size_t max_concat = 1;
  for (const Step& s : steps_) {
    if (s.op == OpCode::kConv)
      scratch_floats_ = std::max(scratch_floats_, s.use_s8      ? kernels::conv2d_s8_scratch_floats(s.conv, threads_)
                                                  : s.s2_direct ? kernels::conv_s2_scratch_floats(s.conv)
                                                                : kernels::conv2d_scratch_floats(s.conv, threads_));
    if (s.op == OpCode::kGemm || s.op == OpCode::kMatMul)
      scratch_floats_ = std::max(scratch_floats_, kernels::sgemm_scratch_floats(threads_));
    if (s.op == OpCode::kConcat)
      max_concat = std::max(max_concat, graph_.nodes()[s.node].inputs.size());
  }
  plan_fused_buffers();
  scratch_ = alloc_floats(scratch_floats_);
  deq_ = alloc_floats(deq_floats_);
  fused_ = alloc_floats(fused_floats());
  if (!arena_ || !scratch_ || !deq_ || !fused_)
    return Status(StatusCode::kOutOfMemory,
                  "cannot allocate the " + std::to_string(arena_bytes_) +
                      "-byte activation arena; lower max_batch");
  concat_srcs_.assign(max_concat, nullptr);
  concat_inner_.assign(max_concat, 0);
  ptr_.assign(T.size(), nullptr);
  for (uint32_t t = 0; t < T.size(); ++t)
    if (T[t].kind == TensorKind::kWeight) ptr_[t] = T[t].data;  // nullptr when quantized
  for (size_t i = 0; i < owner.size(); ++i)
    ptr_[owner[i]] = arena_.get() + plan.offsets[i] / sizeof(float);
  for (uint32_t t = 0; t < T.size(); ++t) ptr_[t] = ptr_[root_[t]];
  for (const auto& [t, to] : add_alias_) ptr_[t] = ptr_[to];  // fused Adds write the final tensor
  return Status::Ok();
}

std::vector<int64_t> Engine::output_shape(size_t i, int32_t batch) const {
  const TensorInfo& t = output_info(i);
  std::vector<int64_t> d(t.ndim);
  dims_at(t, batch, d.data());
  return d;
}

Status Engine::run(const InputView* inputs, size_t n_inputs, int32_t batch) {
  if (batch < 1 || batch > max_batch_)
    return Status(StatusCode::kBatchTooLarge,
                  "batch " + std::to_string(batch) + " is outside 1..max_batch (" +
                      std::to_string(max_batch_) + "); split the batch or load with a larger max_batch");
  if (n_inputs != graph_.inputs().size())
    return Status(StatusCode::kInvalidArgument,
                  "expected " + std::to_string(graph_.inputs().size()) + " inputs, got " +
                      std::to_string(n_inputs));
  for (size_t i = 0; i < n_inputs; ++i) {
    const TensorInfo& t = input_info(i);
    int64_t want[kErgMaxDims];
    dims_at(t, batch, want);
    bool ok = inputs[i].data != nullptr && inputs[i].ndim == t.ndim;
    for (uint32_t d = 0; ok && d < t.ndim; ++d) ok = inputs[i].dims[d] == want[d];
    if (!ok)
      return Status(StatusCode::kShapeMismatch,
                    "input '" + t.name + "' must have shape " + shape_str(want, t.ndim) + ", got " +
                        shape_str(inputs[i].dims, inputs[i].ndim) + "; resize or reshape it");
    ptr_[graph_.inputs()[i]] = inputs[i].data;
  }
  // Aliases of inputs follow the caller's buffers (set per run, no allocation).
  for (uint32_t t = 0; t < ptr_.size(); ++t)
    if (root_[t] != t && graph_.tensors()[root_[t]].kind == TensorKind::kInput) ptr_[t] = ptr_[root_[t]];
  for (size_t k = 0; k < steps_.size(); ++k) {
    // run by its chain's head, or at a fused residual Add's step
    if (steps_[k].fuse == 2 || steps_[k].run_at >= 0) continue;
    const size_t i = steps_[k].runs >= 0 ? size_t(steps_[k].runs) : k;  // an Add runs its conv
    const auto t0 = profiling_ ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point();
    if (steps_[i].fuse == 1) run_fused(i, batch);
    else ER_RETURN_IF_ERROR(run_step(steps_[i], batch));
    if (!profiling_) continue;
    step_ns_[i] += uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                std::chrono::steady_clock::now() - t0).count());
  }
  if (profiling_) ++profiled_runs_;
  return Status::Ok();
}

void Engine::set_profiling(bool on) {
  profiling_ = on;
  step_ns_.assign(on ? steps_.size() : 0, 0);
  profiled_runs_ = 0;
}

const char* Engine::step_kernel(size_t i) const {
  const Step& s = steps_[i];
  if (s.fuse == 1) return "fused-1x1-dw-1x1";  // its time covers the two steps after it
  if (s.fuse == 2) return "(fused)";
  if (s.runs >= 0 || (s.run_at >= 0 && s.op != OpCode::kConv)) return "(fused)";  // into a conv's epilogue
  if (s.op == OpCode::kConv) {
    if (s.use_s8) return "conv-s8";
    if (s.act_f32 && s.prec == Precision::kInt8) return "conv-w8";  // fp32 on int8 weights
    if (s.wsmall != nullptr) return "conv-1x1-small";  // kernels::pointwise_small
    const kernels::ConvParams& p = s.conv;
    if (p.group == p.cin && p.group == p.cout && p.group > 1) return "conv-dw";
    if (s.s2_direct) return "conv-3x3s2-direct";  // kernels::conv_s2_small
    if (kernels::is_pointwise(p)) return "conv-1x1";
    return kernels::conv_implicit(p) ? "conv-implicit" : "conv";  // B packed from the input: no im2col
  }
  return op_name(s.op);
}

Status Engine::run_step(const Step& s, int32_t batch) {
  const NodeInfo& nd = graph_.nodes()[s.node];
  const auto& T = graph_.tensors();
  auto in = [&](size_t i) { return i < nd.inputs.size() && nd.inputs[i] != kErgNoTensor ? ptr_[nd.inputs[i]] : nullptr; };
  float* y = const_cast<float*>(ptr_[nd.outputs[0]]);  // arena memory: ours to write
  const TensorInfo& xt = T[nd.inputs[0]];
  const TensorInfo& yt = T[nd.outputs[0]];
  const int th = threads_;
  switch (s.op) {
    case OpCode::kConv: {
      const int64_t n = xt.dims[0] == -1 ? batch : xt.dims[0];
      if (s.use_s8) {
        kernels::conv2d_s8(s.conv, n, in(0), s.s8, in(2), y, scratch_.get(), th);
        break;
      }
      const kernels::Residual res{s.res != kErgNoTensor ? ptr_[s.res] : nullptr, s.res_act};
      const kernels::Residual* rp = res.x != nullptr ? &res : nullptr;  // a fused residual Add
      if (s.wsmall != nullptr) {
        kernels::pointwise_small(s.conv, n, in(0), s.wsmall, in(2), y, th, rp);
        break;
      }
      const float* w = in(1);
      if (s.wdeq != nullptr) {
        w = s.wdeq;
      } else if (s.prec != Precision::kFp32) {
        kernels::dequantize_rows(s.qw, 0, s.qw.rows, deq_.get(), false);
        w = deq_.get();
      }
      if (s.s2_direct) kernels::conv_s2_small(s.conv, n, in(0), w, in(2), y, scratch_.get(), th);
      else kernels::conv2d(s.conv, n, in(0), w, in(2), y, scratch_.get(), th, s.wpack, rp);
      break;
    }
    case OpCode::kGemm: {
      const int64_t rows = xt.numel(batch) / s.k;
      const float* b = in(1);
      if (s.prec != Precision::kFp32) {  // stored [N, K]: dequantize into sgemm's [K, N]
        kernels::dequantize_rows(s.qw, 0, s.qw.rows, deq_.get(), true);
        b = deq_.get();
      }
      const kernels::GemmEpilogue ep{nullptr, in(2), s.act, s.p0, s.p1};
      if (s.bpack != nullptr) kernels::sgemm_pb(rows, s.n, s.k, in(0), s.k, s.bpack, y, s.n, scratch_.get(), th, &ep);
      else kernels::sgemm(rows, s.n, s.k, in(0), s.k, b, s.n, y, s.n, scratch_.get(), th, &ep);
      break;
    }
    case OpCode::kAdd: case OpCode::kSub: case OpCode::kMul: case OpCode::kDiv: case OpCode::kPRelu: {
      int64_t da[kErgMaxDims], db[kErgMaxDims], dy[kErgMaxDims];
      const TensorInfo& bt = T[nd.inputs[1]];
      dims_at(xt, batch, da);
      dims_at(bt, batch, db);
      dims_at(yt, batch, dy);
      kernels::Broadcast bc;
      ER_ASSERT(kernels::make_broadcast(da, int32_t(xt.ndim), db, int32_t(bt.ndim), dy, int32_t(yt.ndim), &bc));
      kernels::binary(s.op, bc, in(0), in(1), y, th);
      break;
    }
    case OpCode::kRelu: case OpCode::kClip: case OpCode::kSigmoid: case OpCode::kHardSigmoid:
    case OpCode::kHardSwish: case OpCode::kSilu: case OpCode::kLeakyRelu: case OpCode::kGelu:
    case OpCode::kTanh: case OpCode::kElu: case OpCode::kSoftplus: case OpCode::kMish:
      kernels::unary(s.op, xt.numel(batch), in(0), y, s.p0, s.p1, th);
      break;
    case OpCode::kMaxPool: case OpCode::kAveragePool: {
      const int64_t planes = xt.numel(batch) / (s.pool.h * s.pool.w);
      if (s.op == OpCode::kMaxPool) kernels::max_pool(s.pool, planes, in(0), y, th);
      else kernels::avg_pool(s.pool, planes, in(0), y, th);
      break;
    }
    case OpCode::kGlobalAveragePool:
    case OpCode::kReduceMean: {
      int64_t dx[kErgMaxDims];
      dims_at(xt, batch, dx);
      if (s.mask == ((1u << xt.ndim) - 1u) - 3u && xt.ndim >= 3) {  // all spatial axes
        kernels::global_avg_pool(dx[0] * dx[1], xt.numel(batch) / (dx[0] * dx[1]), in(0), y, th);
      } else {
        kernels::reduce_mean(int32_t(xt.ndim), dx, s.mask, in(0), y);
      }
      break;
    }
    case OpCode::kConcat: {
      int64_t dy[kErgMaxDims];
      dims_at(yt, batch, dy);
      int64_t outer = 1, after = 1;
      for (int64_t d = 0; d < s.k; ++d) outer *= dy[d];
      for (uint32_t d = uint32_t(s.k) + 1; d < yt.ndim; ++d) after *= dy[d];
      for (size_t i = 0; i < nd.inputs.size(); ++i) {
        concat_srcs_[i] = in(i);
        concat_inner_[i] = T[nd.inputs[i]].dims[s.k] * after;
      }
      kernels::concat(outer, int32_t(nd.inputs.size()), concat_srcs_.data(), concat_inner_.data(), y);
      break;
    }
    case OpCode::kReshape:
      break;  // zero-copy alias, resolved at load
    case OpCode::kChannelAffine: {
      const int64_t n = xt.dims[0] == -1 ? batch : xt.dims[0], C = xt.dims[1];
      kernels::channel_affine(n, C, xt.numel(batch) / (n * C), in(0), in(1), in(2), y, th);
      break;
    }
    case OpCode::kLayerNorm:
      kernels::layer_norm(xt.numel(batch) / s.k, s.k, in(0), in(1), in(2), s.p0, y, th);
      break;
    case OpCode::kMatMul: {
      const float* b = in(1);
      const int64_t count = xt.numel(batch) / (s.m * s.k);
      for (int64_t i = 0; i < count; ++i)
        kernels::sgemm(s.m, s.n, s.k, in(0) + i * s.m * s.k, s.k, b + i * s.k * s.n, s.n, y + i * s.m * s.n, s.n,
                       scratch_.get(), th);
      break;
    }
    case OpCode::kTranspose: case OpCode::kSlice: case OpCode::kExpand: {
      int64_t dy[kErgMaxDims];
      dims_at(yt, batch, dy);
      kernels::strided_copy(int32_t(yt.ndim), dy, s.strides, in(0) + s.offset, y, th);
      break;
    }
    case OpCode::kSoftmax: {
      int64_t dx[kErgMaxDims], outer = 1, inner = 1;
      dims_at(xt, batch, dx);
      for (int64_t d = 0; d < s.k; ++d) outer *= dx[d];
      for (uint32_t d = uint32_t(s.k) + 1; d < xt.ndim; ++d) inner *= dx[d];
      kernels::softmax(outer, dx[s.k], inner, in(0), y, th);
      break;
    }
    case OpCode::kResizeLinear: {
      int64_t dx[kErgMaxDims], dy[kErgMaxDims];
      dims_at(xt, batch, dx);
      dims_at(yt, batch, dy);
      kernels::resize_linear(dx[0] * dx[1], dx[2], dx[3], dy[2], dy[3], int(s.mask), s.p0, s.p1, in(0), y, th);
      break;
    }
    case OpCode::kResize: {
      int64_t dx[kErgMaxDims];
      dims_at(xt, batch, dx);
      kernels::upsample_nearest(dx[0] * dx[1], dx[2], dx[3], s.k, s.n, in(0), y, th);
      break;
    }
    case OpCode::kPad: {
      int64_t dx[kErgMaxDims], dy[kErgMaxDims];
      dims_at(xt, batch, dx);
      dims_at(yt, batch, dy);
      kernels::pad_constant(int32_t(xt.ndim), dx, nd.iattr, dy, in(0), y, s.p0);
      break;
    }
  }
  return Status::Ok();
}

}  // namespace edgerun
