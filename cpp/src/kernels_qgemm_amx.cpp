// AMX int8 tiles for the int8 Conv (Intel Sapphire Rapids and later): the same
// exact int32 sums as every other path, 16 x 16 x 64 at a time.
//
// The packed formats already are AMX's: TDPBSUD multiplies signed bytes of its
// first source (weight rows: 16 rows x 64 bytes of k, row stride kp) by unsigned
// bytes of its second (a 16-pixel activation strip: 16 k-quads x [16 pixels][4],
// the panel layout of qgemm_ukr.h, row stride 64) into 16 rows x 16 pixels of
// int32. A block is up to 32 rows x 32 pixels (four accumulator tiles, two
// weight tiles, two strip tiles: all eight tile registers). The epilogue reads
// the stored int32 tiles and applies the AVX-512 one's operations in the same
// order, so the outputs are bit-identical to every other path.
//
// Tiles take k in whole 64-byte rows: the engine pads weight rows to kp = a
// multiple of 64 when this path is on (s8_row_bytes); the packed strips then
// hold kp / 4 quads, those past K zero. Rows past the block's mr are read from a
// zero-padded copy (never past the weights: amx_tiles makes it once per call), and are
// not stored.
// Linux asks the kernel for the tile state once (arch_prctl); without it, or
// with EDGERUN_NO_AMX=1, the AVX-512 VNNI path runs instead.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "env.h"
#include "qgemm_epi512.h"
#include "qgemm_ukr.h"

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define ER_AMX_OK 1
#endif

namespace edgerun {
namespace kernels {
namespace qgemm {

#ifdef ER_AMX_OK

#define ER_AMX __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl")))

namespace {

constexpr long kArchReqXcompPerm = 0x1023;  // arch_prctl: request an XSAVE feature
constexpr long kXfeatureXtiledata = 18;

struct TileConfig {  // LDTILECFG's 64-byte operand, palette 1
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

bool cpu_has_amx_int8() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return (d & (1u << 24)) != 0 && (d & (1u << 25)) != 0;  // AMX-TILE, AMX-INT8
}

ER_AMX inline __mmask16 strip_mask(int64_t w) {
  return w >= kQNR ? __mmask16(0xFFFF) : __mmask16((1u << w) - 1u);
}

}  // namespace

bool has_amx() {
  static const bool ok = !env_flag("EDGERUN_NO_AMX") && has_avx512_vnni() &&
                         cpu_has_amx_int8() &&
                         syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  return ok;
}

ER_AMX void amx_begin() {
  alignas(64) TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  // GCC's _tile_loadconfig tells the compiler it reads 8 bytes, which let it drop
  // the stores of the rest (tiles 8-15 then held stack garbage: a fault). A memory
  // clobber keeps all 64 bytes written.
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

ER_AMX void amx_end() { _tile_release(); }

ER_AMX void amx_block(const int8_t* W, int64_t kp, int64_t mr, const uint8_t* B,
                      int64_t bstride, int ns, const BlockEpi& e, float* y, int64_t ldy,
                      int64_t nw) {
  const int8_t* a0 = W;
  const int8_t* a1 = W + 16 * kp;
  const bool two_m = mr > 16, two_n = ns > 1;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t c = 0; c < kp / 64; ++c) {
    _tile_loadd(4, a0 + c * 64, kp);
    _tile_loadd(6, B + c * 1024, 64);
    _tile_dpbsud(0, 4, 6);
    if (two_n) {
      _tile_loadd(7, B + bstride + c * 1024, 64);
      _tile_dpbsud(1, 4, 7);
    }
    if (two_m) {
      _tile_loadd(5, a1 + c * 64, kp);
      _tile_dpbsud(2, 5, 6);
      if (two_n) _tile_dpbsud(3, 5, 7);
    }
  }
  alignas(64) int32_t acc[4][16 * 16];
  _tile_stored(0, acc[0], 64);
  if (two_n) _tile_stored(1, acc[1], 64);
  if (two_m) _tile_stored(2, acc[2], 64);
  if (two_m && two_n) _tile_stored(3, acc[3], 64);
  // Epilogue: act(ws * (xs[n] * float(t) + mn[n] * float(R)) + b), as qgemm_avx512's.
  for (int64_t r = 0; r < mr; ++r) {
    const __m512 wsv = _mm512_set1_ps(e.ws[r]);
    const __m512 rv = _mm512_set1_ps(float(e.wsum[r]));
    const __m512 bv = _mm512_set1_ps(e.bias ? e.bias[r] : 0.f);
    for (int s = 0; s < ns; ++s) {
      const __m512i t = _mm512_load_si512(acc[(r / 16) * 2 + s] + (r % 16) * 16);
      const __m512 v = epilogue16(t, e.xs + s * kQNR, e.mn + s * kQNR, wsv, rv, bv, e.act, e.lo, e.hi);
      _mm512_mask_storeu_ps(y + r * ldy + s * kQNR, strip_mask(nw - s * kQNR), v);
    }
  }
}

#else  // not x86-64 Linux

bool has_amx() { return false; }
void amx_begin() {}
void amx_end() {}
void amx_block(const int8_t*, int64_t, int64_t, const uint8_t*, int64_t, int, const BlockEpi&,
               float*, int64_t, int64_t) {}

#endif

}  // namespace qgemm

int64_t s8_row_bytes(int64_t k) {
  const int64_t align = qgemm::has_amx() ? 64 : 4;
  return (k + align - 1) / align * align;
}

}  // namespace kernels
}  // namespace edgerun
