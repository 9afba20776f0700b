// Residual Adds fused into the epilogue of the conv that produces one of their inputs.
//
// A residual block ends in Conv -> Add(conv output, skip) (ResNet: -> Relu). Unfused, the
// conv writes its output, the Add reads it and the skip and writes the sum, the Relu reads
// and writes that again: three passes over the activation. Fused, the conv's GEMM epilogue
// adds the skip value after its bias and its own activation, then applies the Relu, and
// writes once (kernels::GemmEpilogue::res, kernels::Residual). The operations and their
// order are the unfused ones (x + skip as the Add computes it, the Relu's max(v, 0)), so
// the outputs are bit-identical to EDGERUN_NO_FUSE_ADD=1 (read when an engine loads).
//
// Fused when: the Add's two inputs and its output have the same shape (no broadcasting);
// one input is the output of an fp32 GEMM conv (im2col, implicit, 1x1, the small-plane 1x1
// kernel, or a fused chain's project conv; not depthwise, not the 3x3 stride-2 stem kernel,
// not the int8 GEMM) that nothing else reads; the other is not that same tensor. A Relu
// right after the Add that is the Add output's only reader is fused too (a Clip is not:
// the elementwise Clip keeps a NaN where the epilogue's clamp gives lo).
//
// The conv (or its chain) runs at the Add's step, where the skip exists (ResNet's
// downsampling conv on the skip path comes after the block's last conv in the graph), and
// writes straight into the buffer of the Add's (or the Relu's) output; the conv's output
// and the Add's output under a fused Relu get no arena bytes. The planner sees the conv's
// inputs read at the Add's step and the written tensor produced there, so the output never
// shares memory with the skip or the conv's input.
#include <algorithm>

#include "edgerun/engine.h"
#include "env.h"

namespace edgerun {

namespace {

bool same_shape(const TensorInfo& a, const TensorInfo& b) {
  if (a.ndim != b.ndim) return false;
  for (uint32_t d = 0; d < a.ndim; ++d)
    if (a.dims[d] != b.dims[d]) return false;
  return true;
}

// The conv step runs a GEMM whose epilogue takes the residual.
bool takes_residual(const Step& s) {
  if (s.op != OpCode::kConv || s.use_s8 || s.s2_direct) return false;
  const kernels::ConvParams& p = s.conv;
  const bool depthwise = p.group == p.cin && p.group == p.cout && p.group > 1;
  return !depthwise;
}

}  // namespace

void Engine::fuse_residual_adds() {
  add_alias_.clear();
  if (env_flag("EDGERUN_NO_FUSE_ADD")) return;
  const auto& T = graph_.tensors();
  std::vector<int32_t> readers(T.size(), 0), producer(T.size(), -1);
  for (const NodeInfo& nd : graph_.nodes())
    for (uint32_t id : nd.inputs)
      if (id != kErgNoTensor) ++readers[root_[id]];
  for (uint32_t id : graph_.outputs()) readers[root_[id]] += 2;  // graph outputs stay whole
  for (size_t i = 0; i < steps_.size(); ++i)
    for (uint32_t id : graph_.nodes()[steps_[i].node].outputs) producer[id] = int32_t(i);
  // A tensor only the next step reads, written by its own step (no alias, not an output).
  const auto inner = [&](uint32_t t) { return root_[t] == t && readers[t] == 1 && !fused_inner_[t]; };
  for (size_t j = 0; j < steps_.size(); ++j) {
    Step& add = steps_[j];
    if (add.op != OpCode::kAdd || add.run_at >= 0) continue;
    const NodeInfo& an = graph_.nodes()[add.node];
    const uint32_t out = an.outputs[0];
    if (root_[out] != out || !same_shape(T[an.inputs[0]], T[out]) || !same_shape(T[an.inputs[1]], T[out]))
      continue;
    for (int side = 0; side < 2; ++side) {
      const uint32_t y = an.inputs[side], skip = an.inputs[1 - side];
      if (!inner(y) || root_[skip] == y || producer[y] < 0) continue;
      const size_t i = size_t(producer[y]);
      Step& conv = steps_[i];
      // The conv itself, or the project conv of a fused chain (its head two steps before).
      const bool chained = conv.fuse == 2 && i >= 2 && steps_[i - 2].fuse == 1;
      if ((conv.fuse != 0 && !chained) || !takes_residual(conv)) continue;
      const size_t head = chained ? i - 2 : i;
      uint32_t target = out;
      if (j + 1 < steps_.size()) {  // Add -> Relu: the Relu too
        Step& r = steps_[j + 1];
        const NodeInfo& rn = graph_.nodes()[r.node];
        if (r.op == OpCode::kRelu && r.fuse == 0 && rn.inputs[0] == out && inner(out) &&
            root_[rn.outputs[0]] == rn.outputs[0]) {
          target = rn.outputs[0];
          conv.res_act = Act::kRelu;
          r.run_at = int32_t(j);
          fused_inner_[out] = 1;
          add_alias_.emplace_back(out, target);
        }
      }
      conv.res = skip;
      steps_[head].run_at = int32_t(j);
      add.runs = int32_t(head);
      fused_inner_[y] = 1;
      add_alias_.emplace_back(y, target);
      break;
    }
  }
}

size_t Engine::fused_adds() const {
  return size_t(std::count_if(steps_.begin(), steps_.end(), [](const Step& s) { return s.runs >= 0; }));
}

}  // namespace edgerun
