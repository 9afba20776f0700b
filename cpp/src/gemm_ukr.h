// Internal to the fp32 GEMM (kernels_gemm*.cpp): the micro-kernel interface.
#pragma once

#include <cstdint>

#include "edgerun/kernels.h"

namespace edgerun {
namespace kernels {
namespace gemm {

// The epilogue of one micro-tile (last K block only): bias for its rows / columns
// (already offset to the tile) and the activation.
struct TileEpi {
  const float* rb;
  const float* cb;
  Act          act;
  float        lo, hi;
};

// C[mr, nr] (+)= A[mr, kc] * B[kc, nr]. Bp: the B strip, row k at Bp + k * ldbp
// (the kernel's width when packed, ldb when read in place); mr / nr may be short.
using MicroKernel = void (*)(int64_t kc, const float* A, int64_t lda, int64_t mr, const float* Bp,
                             int64_t ldbp, float* C, int64_t ldc, int64_t nr, bool acc,
                             const TileEpi* ep);

struct Ukr {
  MicroKernel fn;
  int64_t     mr, nr;  // full tile shape
  const char* name;
};

// AVX-512F 8x32 kernel (kernels_gemm_avx512.cpp); fn == nullptr where not built.
Ukr avx512_kernel();
bool has_avx512();  // CPU has AVX-512F, not forced portable, EDGERUN_NO_AVX512 unset

}  // namespace gemm
}  // namespace kernels
}  // namespace edgerun
