// Internal to the int8 Conv (kernels_qgemm*.cpp): the packed activation panel
// format shared by every path, and the AVX-512 VNNI entry points.
#pragma once

#include <cstdint>

#include "edgerun/kernels.h"

namespace edgerun {
namespace kernels {
namespace qgemm {

constexpr int64_t kQNR = 16;       // pixels per packed strip
constexpr float   kQMax = 63.f;    // 7-bit activations: u8 x s8 pair sums never saturate
constexpr int32_t kQOffset = 64;   // u = round(x / xs) + 64 in [1, 127]

// AVX-512F/BW + VNNI present, not forced portable, neither EDGERUN_NO_AVX512 nor
// EDGERUN_NO_VNNI set (kernels_qgemm_avx512.cpp; false where not built).
bool has_avx512_vnni();

// One group of an int8 Conv: quantize X[k, n] (k < w.k, n < N, row stride ldx) per
// pixel into xs / inv (padded to whole 16-pixel strips) and the packed panel bq (the
// generic quantize_pack's bytes and scales), then y[m, n] for weight rows
// [m0, m0 + M) with the dequantize + bias + activation epilogue fused on the
// accumulator registers (the generic epilogue's operations in the same order, so
// the outputs are bit-identical to every other path).
void qconv_group_avx512(const float* x, int64_t ldx, const S8Weights& w, int64_t m0, int64_t M,
                        int64_t N, float* xs, float* inv, uint8_t* bq, const float* bias, Act act,
                        float lo, float hi, float* y, int threads);

}  // namespace qgemm
}  // namespace kernels
}  // namespace edgerun
