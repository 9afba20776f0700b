// Cache-blocked fp32 GEMM with a 6x16 register micro-kernel: an AVX2+FMA
// version chosen at run time and a portable one the compiler vectorises.
// B is packed per (K block, N block) into 16-wide strips so the micro-kernel
// streams it contiguously; A rows are read in place (6 short streams).
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "edgerun/kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ER_X86 1
#endif

namespace edgerun {
namespace kernels {

namespace {

constexpr int64_t kMR = 6;    // micro-tile rows
constexpr int64_t kNR = 16;   // micro-tile cols (two AVX registers)
constexpr int64_t kKC = 256;  // K block: a packed B strip stays in L1
constexpr int64_t kNC = 128;  // N block per task: packed B block stays in L2
constexpr int64_t kMC = 96;   // M rows per task

using MicroKernel = void (*)(int64_t kc, const float* A, int64_t lda, int64_t mr, const float* Bp,
                             float* C, int64_t ldc, int64_t nr, bool acc);

// Writes the accumulated tile to C: directly when full, else the valid part only.
inline void store_tile(const float* tile, float* C, int64_t ldc, int64_t mr, int64_t nr, bool acc) {
  for (int64_t r = 0; r < mr; ++r)
    for (int64_t j = 0; j < nr; ++j)
      C[r * ldc + j] = acc ? C[r * ldc + j] + tile[r * kNR + j] : tile[r * kNR + j];
}

void ukr_portable(int64_t kc, const float* A, int64_t lda, int64_t mr, const float* Bp, float* C,
                  int64_t ldc, int64_t nr, bool acc) {
  float t[kMR * kNR] = {0};
  const float* a[kMR];
  for (int64_t r = 0; r < kMR; ++r) a[r] = A + (r < mr ? r : 0) * lda;
  for (int64_t k = 0; k < kc; ++k) {
    const float* b = Bp + k * kNR;
    for (int64_t r = 0; r < kMR; ++r) {
      float av = a[r][k];
      for (int64_t j = 0; j < kNR; ++j) t[r * kNR + j] += av * b[j];
    }
  }
  store_tile(t, C, ldc, mr, nr, acc);
}

#ifdef ER_X86
__attribute__((target("avx2,fma"))) void ukr_avx2(int64_t kc, const float* A, int64_t lda,
                                                  int64_t mr, const float* Bp, float* C,
                                                  int64_t ldc, int64_t nr, bool acc) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  const float* a0 = A;
  const float* a1 = A + (mr > 1 ? 1 : 0) * lda;
  const float* a2 = A + (mr > 2 ? 2 : 0) * lda;
  const float* a3 = A + (mr > 3 ? 3 : 0) * lda;
  const float* a4 = A + (mr > 4 ? 4 : 0) * lda;
  const float* a5 = A + (mr > 5 ? 5 : 0) * lda;
  for (int64_t k = 0; k < kc; ++k) {
    __m256 b0 = _mm256_loadu_ps(Bp), b1 = _mm256_loadu_ps(Bp + 8);
    Bp += kNR;
    __m256 a = _mm256_broadcast_ss(a0 + k);
    c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01);
    a = _mm256_broadcast_ss(a1 + k);
    c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11);
    a = _mm256_broadcast_ss(a2 + k);
    c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21);
    a = _mm256_broadcast_ss(a3 + k);
    c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31);
    a = _mm256_broadcast_ss(a4 + k);
    c40 = _mm256_fmadd_ps(a, b0, c40); c41 = _mm256_fmadd_ps(a, b1, c41);
    a = _mm256_broadcast_ss(a5 + k);
    c50 = _mm256_fmadd_ps(a, b0, c50); c51 = _mm256_fmadd_ps(a, b1, c51);
  }
  __m256 acc_regs[kMR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  if (mr == kMR && nr == kNR) {
    for (int64_t r = 0; r < kMR; ++r) {
      float* c = C + r * ldc;
      __m256 v0 = acc_regs[r][0], v1 = acc_regs[r][1];
      if (acc) {
        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(c));
        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(c + 8));
      }
      _mm256_storeu_ps(c, v0);
      _mm256_storeu_ps(c + 8, v1);
    }
    return;
  }
  alignas(32) float t[kMR * kNR];
  for (int64_t r = 0; r < kMR; ++r) {
    _mm256_store_ps(t + r * kNR, acc_regs[r][0]);
    _mm256_store_ps(t + r * kNR + 8, acc_regs[r][1]);
  }
  store_tile(t, C, ldc, mr, nr, acc);
}
#endif

MicroKernel pick_kernel() {
#ifdef ER_X86
  if (has_avx2_fma()) return ukr_avx2;
#endif
  return ukr_portable;
}

// Packs B[k0:k0+kc, n0:n0+nc] into ceil(nc/16) strips of [kc][16], zero padded.
void pack_b(const float* B, int64_t ldb, int64_t kc, int64_t nc, float* out) {
  for (int64_t s = 0; s < nc; s += kNR) {
    int64_t w = std::min(kNR, nc - s);
    float* o = out + s * kc;
    for (int64_t k = 0; k < kc; ++k) {
      const float* b = B + k * ldb + s;
      float* d = o + k * kNR;
      if (w == kNR) {
        std::memcpy(d, b, sizeof(float) * kNR);
      } else {
        for (int64_t j = 0; j < w; ++j) d[j] = b[j];
        for (int64_t j = w; j < kNR; ++j) d[j] = 0.f;
      }
    }
  }
}

// One task: rows [m0, m1) x cols [n0, n1) of C, all of K.
void gemm_tile(MicroKernel ukr, int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K,
               const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
               float* pack) {
  const int64_t nc = n1 - n0;
  for (int64_t k0 = 0; k0 < K; k0 += kKC) {
    const int64_t kc = std::min(kKC, K - k0);
    pack_b(B + k0 * ldb + n0, ldb, kc, nc, pack);
    for (int64_t m = m0; m < m1; m += kMR) {
      const int64_t mr = std::min(kMR, m1 - m);
      for (int64_t s = 0; s < nc; s += kNR)
        ukr(kc, A + m * lda + k0, lda, mr, pack + s * kc, C + m * ldc + n0 + s, ldc,
            std::min(kNR, nc - s), k0 > 0);
    }
  }
}

}  // namespace

bool force_portable() {
  static const bool on = [] {
    const char* v = std::getenv("EDGERUN_FORCE_PORTABLE");
    return v != nullptr && v[0] != '\0' && v[0] != '0';
  }();
  return on;
}

bool has_avx2_fma() {
#ifdef ER_X86
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         !force_portable();
  return ok;
#else
  return false;
#endif
}

const char* gemm_path() { return has_avx2_fma() ? "avx2-fma" : "portable"; }

size_t sgemm_scratch_floats(int threads) {
  return size_t(std::max(threads, 1)) * size_t(kKC * ((kNC + kNR - 1) / kNR) * kNR);
}

void sgemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
           int64_t ldb, float* C, int64_t ldc, float* scratch, int threads) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t m = 0; m < M; ++m) std::memset(C + m * ldc, 0, sizeof(float) * N);
    return;
  }
  static const MicroKernel ukr = pick_kernel();
  const int64_t mt = (M + kMC - 1) / kMC, nt = (N + kNC - 1) / kNC, tasks = mt * nt;
  const size_t per_thread = sgemm_scratch_floats(1);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t mi = t / nt, ni = t % nt;
    float* pack = scratch + per_thread * size_t(thread_id());
    gemm_tile(ukr, mi * kMC, std::min(M, (mi + 1) * kMC), ni * kNC, std::min(N, (ni + 1) * kNC),
              K, A, lda, B, ldb, C, ldc, pack);
  }
}

}  // namespace kernels
}  // namespace edgerun
