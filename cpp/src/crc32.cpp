// CRC-32, zlib-compatible (see crc32.h). Every frame is checksummed on the
// device and on the server, so it has a fast path:
//
// * x86-64 with PCLMULQDQ: carry-less multiplication folds 64 bytes per step
//   (Gopal, Ozturk et al., "Fast CRC Computation for Generic Polynomials Using
//   PCLMULQDQ Instruction", Intel 2009): 62.8 KB in ~4 us where the tables take
//   25 (zlib's own crc32, 9), measured through edgerun._core.crc32 on Zen 5.
// * aarch64 Linux with the CRC32 extension (HWCAP_CRC32; optional in ARMv8.0, on
//   the Cortex-A53 / A72 of Raspberry Pi 3 / 4 boards):
//   the crc32x instruction, 8 bytes per step.
// * elsewhere, and for the tail under 16 bytes: "slicing-by-8", eight 256-entry
//   tables folding 8 input bytes per step; portable C++.
// EDGERUN_FORCE_PORTABLE selects the tables everywhere.
#include "edgerun/crc32.h"

#include <array>

#include "edgerun/kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#elif defined(__aarch64__) && defined(__linux__)
#include <arm_acle.h>
#include <sys/auxv.h>

#include <cstring>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#define ER_ARM_CRC 1
#endif

namespace edgerun {
namespace {

using Tables = std::array<std::array<uint32_t, 256>, 8>;

constexpr Tables make_tables() {
  Tables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (0xEDB88320u ^ (c >> 1)) : (c >> 1);
    t[0][i] = c;
  }
  // t[k][i]: the crc of byte i followed by k zero bytes.
  for (int k = 1; k < 8; ++k)
    for (uint32_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFFu];
  return t;
}

constexpr Tables kT = make_tables();

// Byte-wise little-endian load: no alignment or host-order assumption
// (compilers turn it into one load on little-endian targets).
inline uint32_t load_le32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

#if defined(__x86_64__)
#define ER_CLMUL __attribute__((target("pclmul,sse4.1")))

// x * k: the two 64 x 33-bit carry-less products of a 128-bit lane, xored (one fold).
ER_CLMUL inline __m128i fold(__m128i x, __m128i k) {
  return _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11));
}

ER_CLMUL inline __m128i load16(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}

// The running (complemented) value after data[0, n), n >= 64 and a multiple of 16.
// Constants for the reflected polynomial 0x1DB710641: x^(k) mod P for the fold
// distances (512 + 32 / 512 - 32 bits: k1 / k2; 128 +- 32: k3 / k4; 64: k5),
// then P' and mu = floor(x^64 / P') for the Barrett reduction to 32 bits.
ER_CLMUL uint32_t crc32_clmul(const uint8_t* p, size_t n, uint32_t c) {
  const __m128i k1k2 = _mm_set_epi64x(0x1c6e41596, 0x154442bd4);
  const __m128i k3k4 = _mm_set_epi64x(0x0ccaa009e, 0x1751997d0);
  const __m128i k5 = _mm_set_epi64x(0, 0x163cd6124);
  const __m128i poly_mu = _mm_set_epi64x(0x1f7011641, 0x1db710641);
  const __m128i low32 = _mm_setr_epi32(-1, 0, -1, 0);
  __m128i x0 = _mm_xor_si128(load16(p), _mm_cvtsi32_si128(static_cast<int>(c)));
  __m128i x1 = load16(p + 16), x2 = load16(p + 32), x3 = load16(p + 48);
  for (p += 64, n -= 64; n >= 64; p += 64, n -= 64) {  // four independent lanes
    x0 = _mm_xor_si128(fold(x0, k1k2), load16(p));
    x1 = _mm_xor_si128(fold(x1, k1k2), load16(p + 16));
    x2 = _mm_xor_si128(fold(x2, k1k2), load16(p + 32));
    x3 = _mm_xor_si128(fold(x3, k1k2), load16(p + 48));
  }
  x0 = _mm_xor_si128(fold(x0, k3k4), x1);  // four lanes into one
  x0 = _mm_xor_si128(fold(x0, k3k4), x2);
  x0 = _mm_xor_si128(fold(x0, k3k4), x3);
  for (; n >= 16; p += 16, n -= 16) x0 = _mm_xor_si128(fold(x0, k3k4), load16(p));
  // 128 -> 64 bits, then 64 -> 32 + 32.
  __m128i t = _mm_clmulepi64_si128(x0, k3k4, 0x10);
  x0 = _mm_xor_si128(_mm_srli_si128(x0, 8), t);
  t = _mm_srli_si128(x0, 4);
  x0 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x0, low32), k5, 0x00), t);
  // Barrett: r = x0 xor ((((x0 mod x^32) * mu) mod x^32) * P').
  t = _mm_clmulepi64_si128(_mm_and_si128(x0, low32), poly_mu, 0x10);
  t = _mm_clmulepi64_si128(_mm_and_si128(t, low32), poly_mu, 0x00);
  return static_cast<uint32_t>(_mm_extract_epi32(_mm_xor_si128(x0, t), 1));
}

bool has_clmul() {
  static const bool ok = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1") &&
                         !kernels::force_portable();
  return ok;
}
#elif defined(ER_ARM_CRC)
// The running (complemented) value after data[0, n): crc32x / crc32b update it as zlib does.
__attribute__((target("+crc"))) uint32_t crc32_arm(const uint8_t* p, size_t n, uint32_t c) {
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);  // little-endian, as the instruction reads it
    c = __crc32d(c, v);
  }
  for (; n > 0; ++p, --n) c = __crc32b(c, *p);
  return c;
}

bool has_arm_crc() {
  static const bool ok = (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0 && !kernels::force_portable();
  return ok;
}
#endif

}  // namespace

uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc) {
  // zlib convention: the running value is stored complemented.
  uint32_t c = crc ^ 0xFFFFFFFFu;
#if defined(__x86_64__)
  if (n >= 64 && has_clmul()) {
    const size_t m = n & ~size_t(15);
    c = crc32_clmul(data, m, c);
    data += m;
    n -= m;
  }
#elif defined(ER_ARM_CRC)
  if (has_arm_crc()) return crc32_arm(data, n, c) ^ 0xFFFFFFFFu;
#endif
  while (n >= 8) {
    const uint32_t lo = load_le32(data) ^ c;
    const uint32_t hi = load_le32(data + 4);
    c = kT[7][lo & 0xFFu] ^ kT[6][(lo >> 8) & 0xFFu] ^ kT[5][(lo >> 16) & 0xFFu] ^ kT[4][lo >> 24] ^
        kT[3][hi & 0xFFu] ^ kT[2][(hi >> 8) & 0xFFu] ^ kT[1][(hi >> 16) & 0xFFu] ^ kT[0][hi >> 24];
    data += 8;
    n -= 8;
  }
  while (n-- > 0) c = kT[0][(c ^ *data++) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

const char* crc32_path() {
#if defined(__x86_64__)
  if (has_clmul()) return "pclmul";
#elif defined(ER_ARM_CRC)
  if (has_arm_crc()) return "arm-crc";
#endif
  return "table";
}

}  // namespace edgerun
