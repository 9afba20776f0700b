// Dequantization of int8 (per row) and int4 (group-wise along k) weights into
// fp32: used for the layers whose fp32 compute is already cheap or that the
// int8 GEMM does not cover (depthwise Conv, Gemm, every int4 layer). The
// stored bytes stay the only persistent copy; this writes into scratch.
#include "edgerun/kernels.h"

namespace edgerun {
namespace kernels {

namespace {

inline float int4_at(const uint8_t* row, int64_t j) {
  const uint8_t b = row[j >> 1];
  return float(int((j & 1) ? (b >> 4) : (b & 0x0F)) - 8);  // stored as q + 8, q in [-7, 7]
}

}  // namespace

void dequantize_rows(const QuantWeight& w, int64_t r0, int64_t r1, float* out, bool transpose) {
  const int64_t nr = r1 - r0, groups = w.dtype == DType::kInt4 ? (w.k + w.group - 1) / w.group : 1;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + r * w.row_bytes;
    const int64_t orow = r - r0;
    if (w.dtype == DType::kInt8) {
      const int8_t* q = reinterpret_cast<const int8_t*>(row);
      const float s = w.scales[r];
      if (transpose) {
        for (int64_t j = 0; j < w.k; ++j) out[j * nr + orow] = s * float(q[j]);
      } else {
        for (int64_t j = 0; j < w.k; ++j) out[orow * w.k + j] = s * float(q[j]);
      }
      continue;
    }
    const float* sc = w.scales + r * groups;
    for (int64_t j = 0; j < w.k; ++j) {
      const float v = sc[j / w.group] * int4_at(row, j);
      if (transpose) out[j * nr + orow] = v;
      else out[orow * w.k + j] = v;
    }
  }
}

}  // namespace kernels
}  // namespace edgerun
