// Engine::prepare_quant: per quantized step, choose the int8 GEMM (int8,
// non-depthwise Conv with K >= kS8MinK, unless the file asks for fp32
// activations), a one-time fp32 copy (depthwise or small-K Conv: tiny) or per-run
// dequantization (Gemm, int4, int8 with fp32 activations), and build what the int8 GEMM
// needs once at load: weight row sums, and rows re-padded to s8_row_bytes(k)
// (a multiple of 4, of 64 on the AMX path) when k is not (otherwise the rows are
// used in place from the mmap).
#include <algorithm>
#include <cstdlib>

#include "edgerun/engine.h"

namespace edgerun {

void Engine::prepare_quant() {
  deq_floats_ = 0;
  for (Step& s : steps_) {
    if (s.prec == Precision::kFp32) continue;
    const kernels::QuantWeight& q = s.qw;
    const bool depthwise = s.op == OpCode::kConv && s.conv.group == s.conv.cin &&
                           s.conv.group == s.conv.cout && s.conv.group > 1;
    const bool conv8 = s.op == OpCode::kConv && s.prec == Precision::kInt8;
    s.use_s8 = conv8 && !depthwise && q.k >= kernels::kS8MinK && !s.act_f32;
    if (depthwise || (conv8 && q.k < kernels::kS8MinK)) {
      // A depthwise filter is a few floats per channel (C * kh * kw), a small-K int8
      // Conv a few per row: dequantize once here rather than on every run.
      owned_f32_.emplace_back(size_t(q.rows * q.k));
      kernels::dequantize_rows(q, 0, q.rows, owned_f32_.back().data(), false);
      s.wdeq = owned_f32_.back().data();
      continue;
    }
    if (!s.use_s8) {
      deq_floats_ = std::max(deq_floats_, size_t(q.rows * q.k));
      continue;
    }
    const int64_t kp = kernels::s8_row_bytes(q.k);
    const int8_t* rows = reinterpret_cast<const int8_t*>(q.data);
    if (kp != q.k) {
      owned_s8_.emplace_back(size_t(q.rows * kp), int8_t(0));
      int8_t* d = owned_s8_.back().data();
      for (int64_t r = 0; r < q.rows; ++r)
        std::copy(rows + r * q.k, rows + (r + 1) * q.k, d + r * kp);
      rows = d;
    }
    owned_sum_.emplace_back(size_t(q.rows), 0);
    int32_t* sum = owned_sum_.back().data();
    for (int64_t r = 0; r < q.rows; ++r)
      for (int64_t j = 0; j < q.k; ++j) sum[r] += rows[r * kp + j];
    s.s8 = {rows, q.rows, q.k, kp, q.scales, sum};
  }
}

}  // namespace edgerun
