// Internal to the fp32 GEMM (kernels_gemm*.cpp): the micro-kernel interface.
#pragma once

#include <cstdint>

#include "edgerun/kernels.h"

namespace edgerun {
namespace kernels {
namespace gemm {

// The epilogue of one micro-tile (last K block only): bias for its rows / columns
// (already offset to the tile) and the activation.
// With a residual (res, already offset to the tile, row r at res + r * ldr): then + res and res_act.
struct TileEpi {
  const float* rb;
  const float* cb;
  Act          act;
  float        lo, hi;
  const float* res = nullptr;
  int64_t      ldr = 0;
  Act          res_act = Act::kNone;
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
  MicroKernel fn_pa;   // the same kernel on a packed A panel (pack_a layout); nullptr: none
};

// B supplied block by block by its producer instead of read from a [K][N] matrix (an
// implicit-GEMM conv packs straight from the input image): fn writes rows [k0, k0 + kc)
// x columns [n0, n0 + nc) of B as ceil(nc / w) strips of [kc][w] floats, strip t at
// out + t * w * kc, the columns past nc zero (w = strip_width()).
struct BPacker {
  void (*fn)(const void* ctx, int64_t k0, int64_t kc, int64_t n0, int64_t nc, float* out);
  const void* ctx;
};
// sgemm with B from packer: the same tiles, blocks, kernel calls and sums as sgemm on that B.
// ap: A packed by pack_a (then A / lda are not read), or nullptr.
void sgemm_packed_b(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                    const BPacker& packer, float* C, int64_t ldc, float* scratch, int threads,
                    const GemmEpilogue* ep, const float* ap = nullptr);

// A packed once (constant weights, at load): K block by K block (block k0 at out + k0 * Mp,
// Mp = M rounded up to mr), each block's row tiles in turn (tile m at + m * kc), each tile
// [kc][mr] floats, rows past M zero: a K block of A is one contiguous run, and the kernel reads
// one stream instead of mr rows at stride lda; same products in the same order. (Tile by tile
// with all of K per tile instead: the ViT patch-embedding conv 1.07-1.12x, ResNet-18 ~1.00x its
// time unpacked; this layout 1.03x and 0.97-0.98x.)
bool    packed_a_ok();                    // the chosen kernel has a packed-A form
size_t  pack_a_floats(int64_t M, int64_t K);
void    pack_a(int64_t M, int64_t K, const float* A, int64_t lda, float* out);
// sgemm on A packed by pack_a (M > 2: the row-at-a-time path reads A in place).
void    sgemm_pa(int64_t M, int64_t N, int64_t K, const float* ap, const float* B, int64_t ldb,
                 float* C, int64_t ldc, float* scratch, int threads, const GemmEpilogue* ep);
int64_t strip_width();  // the chosen micro-kernel's strip width (32 AVX-512, else 16)

// AVX-512F 8x32 kernel (kernels_gemm_avx512.cpp); fn == nullptr where not built.
Ukr avx512_kernel();
bool has_avx512();  // CPU has AVX-512F, not forced portable, EDGERUN_NO_AVX512 unset

}  // namespace gemm
}  // namespace kernels
}  // namespace edgerun
