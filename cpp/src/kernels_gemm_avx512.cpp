// AVX-512F fp32 GEMM micro-kernel: an 8x32 tile in 16 zmm accumulators (twice
// the AVX2 6x16 tile's work per B load, and 8 rows divide most conv widths).
// Short tiles use masked loads/stores; a strip of <= 16 columns runs one zmm per row
// (14x14 planes: 196 = 6 x 32 + 4 cost 7 full strips before, 6.5 now; 1x1 convs on
// them ~111 -> ~118 GFLOP/s). Bias + activation fused as in AVX2.
#include <cstdlib>

#include "env.h"
#include "gemm_ukr.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define ER_X86_64 1
#endif

namespace edgerun {
namespace kernels {
namespace gemm {

#ifdef ER_X86_64
namespace {

constexpr int64_t kMR = 8, kNR = 32;

// The tile's epilogue, one instance per activation (and none): the epilogue's fields read
// once into registers, no per-row tests of the activation. A store through the intrinsics
// may alias anything, so the generic loop reloaded ep->rb and ep->act after every row's
// stores and branched on them (perf: a third of the kernel's samples fell outside its k
// loop on K = 16..32 convs). Same operations in the same order as before: same bits.
// kRes: then + the residual tile (row r at res + r * ldr) and Relu when res_relu (a residual
// Add and its Relu fused: the unfused Add's and Relu's operations, in their order).
template <Act A, bool kEp, bool kRes = false>
__attribute__((target("avx512f"))) inline void store_tile(const __m512 (&c)[kMR][2], int64_t mr,
                                                          float* C, int64_t ldc, __mmask16 m0,
                                                          __mmask16 m1, bool acc,
                                                          const float* rbp, const float* cbp,
                                                          float lo_v, float hi_v,
                                                          const float* res = nullptr, int64_t ldr = 0,
                                                          bool res_relu = false) {
  __m512 cb0 = _mm512_setzero_ps(), cb1 = cb0;
  if (kEp && cbp != nullptr) {
    cb0 = _mm512_maskz_loadu_ps(m0, cbp);
    cb1 = _mm512_maskz_loadu_ps(m1, cbp + 16);
  }
  const __m512 lo = _mm512_set1_ps(lo_v), hi = _mm512_set1_ps(hi_v);
  float rb[kMR];
#pragma GCC unroll 8
  for (int r = 0; r < kMR; ++r) rb[r] = kEp && rbp != nullptr && r < mr ? rbp[r] : 0.f;
#pragma GCC unroll 8
  for (int r = 0; r < kMR; ++r) {
    if (r >= mr) break;
    float* cr = C + r * ldc;
    __m512 v0 = c[r][0], v1 = c[r][1];
    if (acc) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cr));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cr + 16));
    }
    if (kEp) {  // same operation order as the AVX2 / portable epilogue
      const __m512 rv = _mm512_set1_ps(rb[r]);
      v0 = _mm512_add_ps(_mm512_add_ps(v0, rv), cb0);
      v1 = _mm512_add_ps(_mm512_add_ps(v1, rv), cb1);
      if (A == Act::kRelu) {
        v0 = _mm512_max_ps(v0, _mm512_setzero_ps());
        v1 = _mm512_max_ps(v1, _mm512_setzero_ps());
      } else if (A == Act::kClip) {
        v0 = _mm512_min_ps(_mm512_max_ps(v0, lo), hi);
        v1 = _mm512_min_ps(_mm512_max_ps(v1, lo), hi);
      }
      if (kRes) {
        const float* rr = res + r * ldr;
        v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, rr));
        v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, rr + 16));
        if (res_relu) {
          v0 = _mm512_max_ps(v0, _mm512_setzero_ps());
          v1 = _mm512_max_ps(v1, _mm512_setzero_ps());
        }
      }
    }
    _mm512_mask_storeu_ps(cr, m0, v0);
    _mm512_mask_storeu_ps(cr + 16, m1, v1);
  }
}

// kPA: A is a packed panel, row r of k at A[k * 8 + r] (gemm::pack_a; lda unused), one
// contiguous stream instead of 8 rows at stride lda. Same products, same order: same bits.
// R: the rows computed (>= mr). A short last row tile (M = 17: 8 + 8 + 1) computed all 8 rows
// and kept mr: 24 rows of work for 17. Rows past R stay zero and are not stored; each row sums
// its k terms in the same order whatever R is: the same bits.
template <bool kPA, int R>
__attribute__((target("avx512f"))) inline void ukr_body(int64_t kc, const float* A, int64_t lda,
                                                        int64_t mr, const float* Bp, int64_t ldbp,
                                                        float* C, int64_t ldc, int64_t nr, bool acc,
                                                        const TileEpi* ep) {
  __m512 c[kMR][2];
  const float* a[kMR];
#pragma GCC unroll 8
  for (int r = 0; r < kMR; ++r) {
    c[r][0] = _mm512_setzero_ps();
    c[r][1] = _mm512_setzero_ps();
    a[r] = A + (r < mr ? r : 0) * lda;
  }
#define ER_A(r, k) (kPA ? A[(k) * kMR + (r)] : a[r][k])
  if (nr > 16) {
    for (int64_t k = 0; k < kc; ++k) {
      const __m512 b0 = _mm512_loadu_ps(Bp), b1 = _mm512_loadu_ps(Bp + 16);
      Bp += ldbp;
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512 av = _mm512_set1_ps(ER_A(r, k));
        c[r][0] = _mm512_fmadd_ps(av, b0, c[r][0]);
        c[r][1] = _mm512_fmadd_ps(av, b1, c[r][1]);
      }
    }
  } else {  // a strip of <= 16 columns (a plane's tail): half the work, same sums per column
    for (int64_t k = 0; k < kc; ++k) {
      const __m512 b0 = _mm512_loadu_ps(Bp);
      Bp += ldbp;
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) c[r][0] = _mm512_fmadd_ps(_mm512_set1_ps(ER_A(r, k)), b0, c[r][0]);
    }
  }
#undef ER_A
  const __mmask16 m0 = nr >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << nr) - 1);
  const __mmask16 m1 = nr >= 32 ? __mmask16(0xFFFF) : nr > 16 ? __mmask16((1u << (nr - 16)) - 1) : 0;
  if (ep == nullptr) {
    store_tile<Act::kNone, false>(c, mr, C, ldc, m0, m1, acc, nullptr, nullptr, 0.f, 0.f);
    return;
  }
  if (ep->res != nullptr) {
    const bool relu = ep->res_act == Act::kRelu;
    switch (ep->act) {
      case Act::kRelu:
        store_tile<Act::kRelu, true, true>(c, mr, C, ldc, m0, m1, acc, ep->rb, ep->cb, ep->lo, ep->hi, ep->res,
                                           ep->ldr, relu);
        break;
      case Act::kClip:
        store_tile<Act::kClip, true, true>(c, mr, C, ldc, m0, m1, acc, ep->rb, ep->cb, ep->lo, ep->hi, ep->res,
                                           ep->ldr, relu);
        break;
      default:
        store_tile<Act::kNone, true, true>(c, mr, C, ldc, m0, m1, acc, ep->rb, ep->cb, ep->lo, ep->hi, ep->res,
                                           ep->ldr, relu);
        break;
    }
    return;
  }
  switch (ep->act) {
    case Act::kRelu: store_tile<Act::kRelu, true>(c, mr, C, ldc, m0, m1, acc, ep->rb, ep->cb, ep->lo, ep->hi); break;
    case Act::kClip: store_tile<Act::kClip, true>(c, mr, C, ldc, m0, m1, acc, ep->rb, ep->cb, ep->lo, ep->hi); break;
    default: store_tile<Act::kNone, true>(c, mr, C, ldc, m0, m1, acc, ep->rb, ep->cb, ep->lo, ep->hi); break;
  }
}

// The body for R = mr rows (mr in 1..8).
template <bool kPA>
__attribute__((target("avx512f"))) inline void rows_call(int64_t kc, const float* A, int64_t lda,
                                                         int64_t mr, const float* Bp, int64_t ldbp,
                                                         float* C, int64_t ldc, int64_t nr, bool acc,
                                                         const TileEpi* ep) {
  switch (mr) {
    case 1: ukr_body<kPA, 1>(kc, A, lda, mr, Bp, ldbp, C, ldc, nr, acc, ep); break;
    case 2: ukr_body<kPA, 2>(kc, A, lda, mr, Bp, ldbp, C, ldc, nr, acc, ep); break;
    case 3: ukr_body<kPA, 3>(kc, A, lda, mr, Bp, ldbp, C, ldc, nr, acc, ep); break;
    case 4: ukr_body<kPA, 4>(kc, A, lda, mr, Bp, ldbp, C, ldc, nr, acc, ep); break;
    case 5: ukr_body<kPA, 5>(kc, A, lda, mr, Bp, ldbp, C, ldc, nr, acc, ep); break;
    case 6: ukr_body<kPA, 6>(kc, A, lda, mr, Bp, ldbp, C, ldc, nr, acc, ep); break;
    case 7: ukr_body<kPA, 7>(kc, A, lda, mr, Bp, ldbp, C, ldc, nr, acc, ep); break;
    default: ukr_body<kPA, kMR>(kc, A, lda, mr, Bp, ldbp, C, ldc, nr, acc, ep); break;
  }
}

__attribute__((target("avx512f"))) void ukr_avx512(int64_t kc, const float* A, int64_t lda,
                                                   int64_t mr, const float* Bp, int64_t ldbp,
                                                   float* C, int64_t ldc, int64_t nr, bool acc,
                                                   const TileEpi* ep) {
  rows_call<false>(kc, A, lda, mr, Bp, ldbp, C, ldc, nr, acc, ep);
}

__attribute__((target("avx512f"))) void ukr_avx512_pa(int64_t kc, const float* A, int64_t lda,
                                                      int64_t mr, const float* Bp, int64_t ldbp,
                                                      float* C, int64_t ldc, int64_t nr, bool acc,
                                                      const TileEpi* ep) {
  rows_call<true>(kc, A, lda, mr, Bp, ldbp, C, ldc, nr, acc, ep);
}

}  // namespace

bool has_avx512() {
  static const bool ok = !env_flag("EDGERUN_NO_AVX512") && has_avx2_fma() &&
                         __builtin_cpu_supports("avx512f");
  return ok;
}

Ukr avx512_kernel() { return {ukr_avx512, kMR, kNR, "avx512", ukr_avx512_pa}; }
#else
bool has_avx512() { return false; }
Ukr avx512_kernel() { return {nullptr, 0, 0, "avx512", nullptr}; }
#endif

}  // namespace gemm
}  // namespace kernels
}  // namespace edgerun
