// Fused inverted-residual chains: 1x1 Conv (expand) -> depthwise Conv -> 1x1 Conv
// (project), the body of MobileNet-v2 / EfficientNet blocks.
//
// Run one layer at a time, the expanded tensor between them (e.g. 96 x 112 x 112
// floats, 4.8 MB) goes out of the cache and back twice, and those layers are bound
// by that traffic, not by arithmetic. A fused chain instead runs by strips of the
// depthwise output rows: the expand conv computes just the input rows the strip
// needs (a few halo rows are computed twice), the depthwise conv reads them, and
// the project conv writes the strip's rows of the chain's output; the two inner
// strips (a share of fused_ per thread, sized to the strip budget) stay in L2.
// Every output value is computed by the same kernel with the same operation order
// as unfused (per-pixel GEMM columns, per-plane depthwise rows), so the outputs do
// not change; the inner tensors get no arena bytes.
//
// EDGERUN_NO_FUSE=1 turns fusion off (cross-checks, A/B timing);
// EDGERUN_FUSE_KB sets the strip budget (default 1024 KiB: half the L2 of the
// x86 cores measured here). On this machine the gain is speed on the largest
// chains and, above all, memory: the inner tensors get no arena bytes.
#include <algorithm>
#include <cstdlib>

#include "edgerun/engine.h"
#include "env.h"

namespace edgerun {

namespace {

bool is_depthwise(const kernels::ConvParams& p) {
  return p.group == p.cin && p.group == p.cout && p.group > 1;
}

bool fusable_pointwise(const Step& s) {
  return s.op == OpCode::kConv && s.conv.group == 1 && kernels::is_pointwise(s.conv);
}

// A quantized 1x1 Conv run in fp32 on weights dequantized per run (int4, or int8 with
// fp32 activations): a fused chain dequantizes it once per run, before its strips.
bool per_run_dequant(const Step& s) {
  return s.prec != Precision::kFp32 && !s.use_s8 && s.wdeq == nullptr;
}

size_t deq_size(const Step& s) { return per_run_dequant(s) ? size_t(s.qw.rows * s.qw.k) : 0; }

// Fuse only chains whose inner tensors are at least this many strip budgets. Measured
// on EfficientNet-Lite0 (x86, 1 thread, 1 MiB budget): blocks.1 (96 x 112 x 112 ->
// 96 x 56 x 56, 6 MB) runs 14 % faster fused, blocks.2 (3.6 MB) 8 %, but blocks.3
// (2.3 MB) and blocks.4 (1.5 MB) 10 % slower; smaller budgets were slower everywhere.
constexpr size_t kMinInnerBudgets = 3;

size_t strip_budget_floats() {
  constexpr long kDefaultKb = 1024;
  const long v = env_count("EDGERUN_FUSE_KB", kDefaultKb);  // 0: the default, as before
  return size_t(v > 0 ? v : kDefaultKb) * 1024 / sizeof(float);
}

// Input rows the depthwise conv reads for output rows [y0, y1): [*r0, *r1) of [0, h).
void strip_rows_in(const kernels::ConvParams& d, int64_t y0, int64_t y1, int64_t* r0, int64_t* r1) {
  const int64_t lo = y0 * d.sh - d.pt, hi = (y1 - 1) * d.sh - d.pt + (d.kh - 1) * d.dh + 1;
  *r0 = std::min(std::max<int64_t>(lo, 0), d.h);
  *r1 = std::max(std::min(hi, d.h), *r0);
}

// Most input rows the depthwise conv reads for `rows` output rows (worst case over strips).
int64_t strip_in_rows(const kernels::ConvParams& d, int64_t rows) {
  return std::min((rows - 1) * d.sh + (d.kh - 1) * d.dh + 1, d.h);
}

// Floats of the two strip buffers for `rows` depthwise output rows (worst case over strips).
size_t strip_floats(const kernels::ConvParams& d, int64_t rows) {
  return size_t(d.cin * (strip_in_rows(d, rows) * d.w + rows * d.ow));
}

}  // namespace

void Engine::fuse_chains() {
  fused_inner_.assign(graph_.tensors().size(), 0);
  if (env_flag("EDGERUN_NO_FUSE")) return;
  // Readers per tensor root: an inner tensor must feed only the next step of the chain.
  std::vector<int32_t> readers(graph_.tensors().size(), 0);
  for (const NodeInfo& nd : graph_.nodes())
    for (uint32_t id : nd.inputs)
      if (id != kErgNoTensor) ++readers[root_[id]];
  for (uint32_t id : graph_.outputs()) readers[root_[id]] += 2;  // graph outputs stay whole
  auto inner = [&](const Step& s) {
    const uint32_t t = graph_.nodes()[s.node].outputs[0];
    return root_[t] == t && readers[t] == 1 ? int64_t(t) : int64_t(-1);
  };
  const size_t budget = strip_budget_floats();
  for (size_t i = 0; i + 2 < steps_.size(); ++i) {
    Step &a = steps_[i], &d = steps_[i + 1], &c = steps_[i + 2];
    if (a.fuse || !fusable_pointwise(a) || !fusable_pointwise(c)) continue;
    if (d.op != OpCode::kConv || !is_depthwise(d.conv) || d.prec == Precision::kInt4) continue;
    const int64_t e = inner(a), f = inner(d);
    const NodeInfo &dn = graph_.nodes()[d.node], &cn = graph_.nodes()[c.node];
    if (e < 0 || f < 0 || root_[dn.inputs[0]] != uint32_t(e) || root_[cn.inputs[0]] != uint32_t(f))
      continue;
    int64_t rows = 1;
    while (rows < d.conv.oh && strip_floats(d.conv, rows + 1) <= budget) ++rows;
    // Strips pay per-call costs (weight packing, short GEMM rows, halo rows computed
    // twice) that only pay off when the inner tensors are far beyond the budget.
    if (strip_floats(d.conv, d.conv.oh) < kMinInnerBudgets * budget) continue;
    // Strips are the threads' tasks: round their count up to a multiple of the threads
    // (56 rows in strips of 8 were 7 tasks, 4 + 3 on two threads; 8 strips of 7 share
    // evenly). Smaller strips still fit the budget; the strip size changes no output bit.
    const int64_t per_img = (d.conv.oh + rows - 1) / rows;
    if (threads_ > 1 && per_img % threads_ != 0) {
      const int64_t want = (per_img + threads_ - 1) / threads_ * threads_;
      rows = (d.conv.oh + want - 1) / want;
    }
    a.fuse = 1;
    a.strip_rows = rows;
    deq_floats_ = std::max(deq_floats_, deq_size(a) + deq_size(c));  // both at once
    d.fuse = c.fuse = 2;
    fused_inner_[size_t(e)] = fused_inner_[size_t(f)] = 1;
  }
}

size_t Engine::fused_chains() const {
  return size_t(std::count_if(steps_.begin(), steps_.end(), [](const Step& s) { return s.fuse == 1; }));
}

// fused_ holds one share per worker thread: its two strip buffers, then the scratch
// its kernels need when run on one thread. Strips are shared out among the threads
// (each runs its strips' three kernels alone): splitting every small strip kernel
// across the team instead measured 1.99 ms vs 1.82 ms unfused on EfficientNet blocks.3
// at 2 threads (strips shared out: 1.70 ms).
void Engine::plan_fused_buffers() {
  size_t strip = 0, scr = 0;
  for (size_t i = 0; i < steps_.size(); ++i) {
    if (steps_[i].fuse != 1) continue;
    const kernels::ConvParams& d = steps_[i + 1].conv;
    const int64_t rows = steps_[i].strip_rows;
    strip = std::max(strip, strip_floats(d, rows));
    kernels::ConvParams a = steps_[i].conv, dd = d, c = steps_[i + 2].conv;
    a.h = a.oh = strip_in_rows(d, rows);
    dd.h = a.h;
    dd.oh = c.h = c.oh = rows;
    for (const auto& [p, s8] : {std::pair{a, steps_[i].use_s8}, std::pair{c, steps_[i + 2].use_s8}})
      scr = std::max(scr, s8 ? kernels::conv2d_s8_scratch_floats(p, 1)
                             : kernels::conv2d_scratch_floats(p, 1));
    scr = std::max(scr, kernels::depthwise_scratch_floats(dd, 1));
  }
  const auto align = [](size_t n) { return (n + 15) / 16 * 16; };  // 64-byte shares
  fused_strip_ = align(strip);
  fused_share_ = strip == 0 ? 0 : fused_strip_ + align(scr);
}

const float* Engine::input(const Step& s, size_t i) const {
  const NodeInfo& nd = graph_.nodes()[s.node];
  return i < nd.inputs.size() && nd.inputs[i] != kErgNoTensor ? ptr_[nd.inputs[i]] : nullptr;
}

void Engine::run_pointwise(const Step& s, const float* x, int64_t ldx, int64_t n, float* y,
                           int64_t ldy, float* scratch, int threads, const float* wdeq,
                           const float* res) {
  const kernels::ConvParams& p = s.conv;
  if (s.use_s8) {
    kernels::pointwise_s8_window(s.s8, x, ldx, n, input(s, 2), p.act, p.lo, p.hi, y, ldy,
                                 scratch, threads);
    return;
  }
  const kernels::GemmEpilogue ep{input(s, 2), nullptr, p.act, p.lo, p.hi, res, ldy, s.res_act};
  const float* w = wdeq != nullptr ? wdeq : s.wdeq != nullptr ? s.wdeq : input(s, 1);
  kernels::sgemm(p.cout, n, p.cin, w, p.cin, x, ldx, y, ldy, scratch, threads, &ep);
}

void Engine::run_fused(size_t head, int32_t batch) {
  const Step &a = steps_[head], &d = steps_[head + 1], &c = steps_[head + 2];
  const kernels::ConvParams &pa = a.conv, &pd = d.conv, &pc = c.conv;
  const NodeInfo& an = graph_.nodes()[a.node];
  const int64_t n_img = graph_.tensors()[an.inputs[0]].dims[0] == -1 ? batch : graph_.tensors()[an.inputs[0]].dims[0];
  const float* x = input(a, 0);
  float* y = const_cast<float*>(ptr_[graph_.nodes()[c.node].outputs[0]]);  // arena memory
  const float* res = c.res != kErgNoTensor ? ptr_[c.res] : nullptr;  // a fused residual Add's skip
  const float* wd = d.wdeq != nullptr ? d.wdeq : input(d, 1);
  const float* bd = input(d, 2);
  const int64_t in_plane = pa.h * pa.w, out_plane = pc.oh * pc.ow;
  const int64_t per_img = (pd.oh + a.strip_rows - 1) / a.strip_rows, tasks = n_img * per_img;
  float* const wa = per_run_dequant(a) ? deq_.get() : nullptr;
  float* const wc = per_run_dequant(c) ? deq_.get() + deq_size(a) : nullptr;
  if (wa != nullptr) kernels::dequantize_rows(a.qw, 0, a.qw.rows, wa, false);
  if (wc != nullptr) kernels::dequantize_rows(c.qw, 0, c.qw.rows, wc, false);
  kernels::parallel_for(threads_, tasks, [&](int64_t t) {
    const int64_t n = t / per_img, y0 = (t % per_img) * a.strip_rows;
    const int64_t y1 = std::min(y0 + a.strip_rows, pd.oh);
    const float* xn = x + n * pa.cin * in_plane;
    float* yn = y + n * pc.cout * out_plane;
    int64_t r0, r1;
    strip_rows_in(pd, y0, y1, &r0, &r1);
    const int64_t in_px = (r1 - r0) * pd.w, out_px = (y1 - y0) * pd.ow;
    float* e = fused_.get() + fused_share_ * size_t(kernels::thread_id());  // [cexp, r1 - r0, w]
    float* f = e + pd.cin * in_px;                                          // [cexp, y1 - y0, ow]
    float* scratch = e + fused_strip_;
    if (in_px > 0) run_pointwise(a, xn + r0 * pa.w, in_plane, in_px, e, in_px, scratch, 1, wa);
    kernels::ConvParams ps = pd;  // the depthwise conv over the strip
    ps.h = r1 - r0;
    ps.oh = y1 - y0;
    ps.pt = pd.pt + r0 - y0 * pd.sh;  // output row y reads strip row y * sh - pt' + i * dh
    kernels::depthwise_conv(ps, 1, e, wd, bd, f, scratch, 1);
    const float* rn = res != nullptr ? res + n * pc.cout * out_plane + y0 * pc.ow : nullptr;
    run_pointwise(c, f, out_px, out_px, yn + y0 * pc.ow, out_plane, scratch, 1, wc, rn);
  });
}

}  // namespace edgerun
