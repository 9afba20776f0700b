// Cache-blocked fp32 GEMM with register micro-kernels chosen at run time:
// AVX-512 8x32 (kernels_gemm_avx512.cpp), AVX2+FMA 6x16, or a portable 6x16
// the compiler vectorises. When K fits one block (1x1 convs, im2col panels of
// small convs) full B strips are read in place; otherwise B is packed per
// (K block, N block) into strips. A rows are read in place. Constant weights may
// instead be packed once at load (kernels::conv2d_pack_weights: A in [K][8] panels
// per 8-row tile; sgemm_pack_b: B in strips), same sums. Bias + activation
// are applied to each tile in registers after its last K block (no second
// pass over C).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "edgerun/kernels.h"
#include "edgerun/status.h"
#include "env.h"
#include "gemm_ukr.h"

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
constexpr int64_t kMC = 240;  // M rows per task: conv weights up to 240 rows pack B once
constexpr int64_t kMinSplitMacs = int64_t(1) << 20;  // smallest GEMM split_tasks reshapes

using gemm::MicroKernel;
using gemm::TileEpi;
using gemm::Ukr;

inline float epi1(float v, int64_t r, int64_t j, const TileEpi& e) {
  if (e.rb) v += e.rb[r];
  if (e.cb) v += e.cb[j];
  v = apply_act(v, e.act, e.lo, e.hi);
  return e.res ? apply_act(v + e.res[r * e.ldr + j], e.res_act, 0.f, 0.f) : v;
}

// The epilogue of row m of C, columns from 0 (col_bias and the residual row not offset).
inline TileEpi row_epi(const GemmEpilogue& ep, int64_t m) {
  return {ep.row_bias ? ep.row_bias + m : nullptr, ep.col_bias, ep.act, ep.lo, ep.hi,
          ep.res ? ep.res + m * ep.ldr : nullptr, ep.ldr, ep.res_act};
}

// Writes the accumulated tile to C (the valid part only), epilogue applied if given.
inline void store_tile(const float* tile, float* C, int64_t ldc, int64_t mr, int64_t nr, bool acc,
                       const TileEpi* ep) {
  for (int64_t r = 0; r < mr; ++r)
    for (int64_t j = 0; j < nr; ++j) {
      float v = acc ? C[r * ldc + j] + tile[r * kNR + j] : tile[r * kNR + j];
      C[r * ldc + j] = ep ? epi1(v, r, j, *ep) : v;
    }
}

void ukr_portable(int64_t kc, const float* A, int64_t lda, int64_t mr, const float* Bp,
                  int64_t ldbp, float* C,
                  int64_t ldc, int64_t nr, bool acc, const TileEpi* ep) {
  float t[kMR * kNR] = {0};
  const float* a[kMR];
  for (int64_t r = 0; r < kMR; ++r) a[r] = A + (r < mr ? r : 0) * lda;
  for (int64_t k = 0; k < kc; ++k) {
    const float* b = Bp + k * ldbp;
    for (int64_t r = 0; r < kMR; ++r) {
      float av = a[r][k];
      for (int64_t j = 0; j < kNR; ++j) t[r * kNR + j] += av * b[j];
    }
  }
  store_tile(t, C, ldc, mr, nr, acc, ep);
}

#ifdef ER_X86
// R rows x 16 columns. The 6-row kernel on a 2- or 4-row tile (the last row tile of
// M = 16, 32, 40, 80 ...) would compute 6 rows and keep mr: ukr_avx2 picks the
// smallest R >= mr instead (the stem conv, M = 32: 36 -> 32 rows computed). Every
// row sums its k terms in the same order whatever R is: the same bits.
template <int R>
__attribute__((target("avx2,fma"))) inline void ukr_avx2_rows(int64_t kc, const float* A, int64_t lda,
                                                              int64_t mr, const float* Bp, int64_t ldbp,
                                                              float* C, int64_t ldc, int64_t nr, bool acc,
                                                              const TileEpi* ep) {
  static_assert(R == 2 || R == 4 || R == 6, "row tiles of 2, 4 or 6");
  // Named accumulators: GCC keeps an indexed __m256 array in memory inside the loop.
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  const float* a0 = A;
  const float* a1 = A + (mr > 1 ? 1 : 0) * lda;
  const float* a2 = A + (mr > 2 ? 2 : 0) * lda;
  const float* a3 = A + (mr > 3 ? 3 : 0) * lda;
  const float* a4 = A + (mr > 4 ? 4 : 0) * lda;
  const float* a5 = A + (mr > 5 ? 5 : 0) * lda;
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(Bp), b1 = _mm256_loadu_ps(Bp + 8);
    Bp += ldbp;
    __m256 a = _mm256_broadcast_ss(a0 + k);
    c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01);
    a = _mm256_broadcast_ss(a1 + k);
    c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11);
    if constexpr (R > 2) {
      a = _mm256_broadcast_ss(a2 + k);
      c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21);
      a = _mm256_broadcast_ss(a3 + k);
      c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31);
    }
    if constexpr (R > 4) {
      a = _mm256_broadcast_ss(a4 + k);
      c40 = _mm256_fmadd_ps(a, b0, c40); c41 = _mm256_fmadd_ps(a, b1, c41);
      a = _mm256_broadcast_ss(a5 + k);
      c50 = _mm256_fmadd_ps(a, b0, c50); c51 = _mm256_fmadd_ps(a, b1, c51);
    }
  }
  const __m256 c[kMR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  if (mr == R && nr == kNR) {
    __m256 cb0 = _mm256_setzero_ps(), cb1 = cb0;
    if (ep && ep->cb) {
      cb0 = _mm256_loadu_ps(ep->cb);
      cb1 = _mm256_loadu_ps(ep->cb + 8);
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      float* cr = C + r * ldc;
      __m256 v0 = c[r][0], v1 = c[r][1];
      if (acc) {
        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(cr));
        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(cr + 8));
      }
      if (ep) {  // fused bias + activation while the tile is in registers
        const __m256 rb = _mm256_set1_ps(ep->rb ? ep->rb[r] : 0.f);
        v0 = _mm256_add_ps(_mm256_add_ps(v0, rb), cb0);
        v1 = _mm256_add_ps(_mm256_add_ps(v1, rb), cb1);
        if (ep->act == Act::kRelu) {
          v0 = _mm256_max_ps(v0, _mm256_setzero_ps());
          v1 = _mm256_max_ps(v1, _mm256_setzero_ps());
        } else if (ep->act == Act::kClip) {
          const __m256 lo = _mm256_set1_ps(ep->lo), hi = _mm256_set1_ps(ep->hi);
          v0 = _mm256_min_ps(_mm256_max_ps(v0, lo), hi);
          v1 = _mm256_min_ps(_mm256_max_ps(v1, lo), hi);
        }
        if (ep->res) {  // the residual Add (+ Relu) after the conv's own epilogue
          const float* rr = ep->res + r * ep->ldr;
          v0 = _mm256_add_ps(v0, _mm256_loadu_ps(rr));
          v1 = _mm256_add_ps(v1, _mm256_loadu_ps(rr + 8));
          if (ep->res_act == Act::kRelu) {
            v0 = _mm256_max_ps(v0, _mm256_setzero_ps());
            v1 = _mm256_max_ps(v1, _mm256_setzero_ps());
          }
        }
      }
      _mm256_storeu_ps(cr, v0);
      _mm256_storeu_ps(cr + 8, v1);
    }
    return;
  }
  alignas(32) float t[kMR * kNR];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    _mm256_store_ps(t + r * kNR, c[r][0]);
    _mm256_store_ps(t + r * kNR + 8, c[r][1]);
  }
  store_tile(t, C, ldc, mr, nr, acc, ep);  // mr <= R: ukr_avx2 picks R
}

void ukr_avx2(int64_t kc, const float* A, int64_t lda, int64_t mr, const float* Bp, int64_t ldbp,
              float* C, int64_t ldc, int64_t nr, bool acc, const TileEpi* ep) {
  if (mr <= 2) ukr_avx2_rows<2>(kc, A, lda, mr, Bp, ldbp, C, ldc, nr, acc, ep);
  else if (mr <= 4) ukr_avx2_rows<4>(kc, A, lda, mr, Bp, ldbp, C, ldc, nr, acc, ep);
  else ukr_avx2_rows<kMR>(kc, A, lda, mr, Bp, ldbp, C, ldc, nr, acc, ep);
}
#endif

// AVX-512 (8x32) where the CPU has it, else AVX2+FMA (6x16), else portable (6x16).
Ukr pick_kernel() {
#ifdef ER_X86
  if (gemm::has_avx512()) return gemm::avx512_kernel();
  if (has_avx2_fma()) return {ukr_avx2, kMR, kNR, "avx2-fma"};
#endif
  return {ukr_portable, kMR, kNR, "portable"};
}

inline void prefetch(const float* p) {
#if defined(__GNUC__)
  __builtin_prefetch(p, 0, 3);
#endif
}

// Packs B[k0:k0+kc, n0:n0+nc] into ceil(nc/nrw) strips of [kc][nrw], zero padded.
void pack_b(const float* B, int64_t ldb, int64_t kc, int64_t nc, float* out, int64_t nrw) {
  for (int64_t s = 0; s < nc; s += nrw) {
    int64_t w = std::min(nrw, nc - s);
    float* o = out + s * kc;
    for (int64_t k = 0; k < kc; ++k) {
      const float* b = B + k * ldb + s;
      float* d = o + k * nrw;
      if (w == nrw) {
        std::memcpy(d, b, sizeof(float) * nrw);
      } else {
        for (int64_t j = 0; j < w; ++j) d[j] = b[j];
        for (int64_t j = w; j < nrw; ++j) d[j] = 0.f;
      }
    }
  }
}

// One row tile (rows m.., at most m1) x one strip (columns col..col + nr of C) over K block k0 (kc rows):
// the micro-kernel on A's rows, or on the panels packed at load (ap), the epilogue after the last K block.
inline void tile_call(const Ukr& u, int64_t kc, int64_t k0, int64_t m, int64_t m1, int64_t col, const float* A,
                      int64_t lda, const float* ap, int64_t mpad, const float* bp, int64_t ldbp, float* C,
                      int64_t ldc, int64_t nr, bool last, const GemmEpilogue* ep) {
  const int64_t MR = u.mr;
  TileEpi te;
  if (last)
    te = {ep->row_bias ? ep->row_bias + m : nullptr, ep->col_bias ? ep->col_bias + col : nullptr, ep->act, ep->lo,
          ep->hi, ep->res ? ep->res + m * ep->ldr + col : nullptr, ep->ldr, ep->res_act};
  float* c = C + m * ldc + col;
  if (ap != nullptr)
    u.fn_pa(kc, ap + k0 * mpad + m * kc, MR, std::min(MR, m1 - m), bp, ldbp, c, ldc, nr, k0 > 0, last ? &te : nullptr);
  else
    u.fn(kc, A + m * lda + k0, lda, std::min(MR, m1 - m), bp, ldbp, c, ldc, nr, k0 > 0, last ? &te : nullptr);
}

// Strips outer, row tiles inner, for a task of more than four row tiles whose A is read in place
// (a Gemm step: a ViT's 197 tokens) and whose B is a packed strip (packed per call, or at load):
// the strip (kc x 32 floats, 32 KB) stays in L1 while every row tile passes over it, and each
// row tile's A (8 x kc floats) comes from L2; row tiles outer read the whole 128-column block
// from L2 for every row tile (MatMul + Add, 197 x 384 x 1536 and back: 0.96-0.97x the time).
// Convs on AVX-512 (A packed at load) and B read in place keep row tiles outer. Same kernel calls on the
// same values, only their order changes: the same bits (EDGERUN_NO_STRIPS_OUTER=1: row tiles
// outer everywhere, read once per process).
inline bool strips_outer(int64_t rows, int64_t mr, const float* ap, bool direct, const float* bpk) {
  static const bool off = env_flag("EDGERUN_NO_STRIPS_OUTER");
  return !off && rows > 4 * mr && ap == nullptr && (!direct || bpk != nullptr);
}

// One task: rows [m0, m1) x cols [n0, n1) of C, all of K: row tiles outer,
// the task's strips inner (C is written in 6 runs of <= 128 floats), or the reverse (strips_outer).
// When K fits one block, full strips are read in place from B (the 1x1-conv
// activation or the im2col panel is already [K][N]): no packing copy. The first
// row tile prefetches the next strip, since K row streams outrun the hardware
// prefetcher; only a partial last strip is packed (zero padded).
// Packed at load (constant weights): ap (gemm::pack_a's layout for mpad rows, m0 a multiple of
// the tile rows) is read instead of A, bpk (sgemm_pack_b's strips, n0 a multiple of the strip width: strip
// (n0 + s) / NR, K block k0 at + k0 * NR) instead of B and the per-call packing.
void gemm_tile(const Ukr& u, int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K,
               const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
               float* pack, const GemmEpilogue* ep, const float* ap, int64_t mpad, const float* bpk) {
  const int64_t nc = n1 - n0;
  const bool direct = K <= kKC;
  const int64_t MR = u.mr, NR = u.nr;
  const int64_t tail = nc / NR * NR;  // first column of a partial strip
  for (int64_t k0 = 0; k0 < K; k0 += kKC) {
    const int64_t kc = std::min(kKC, K - k0);
    const bool last = ep != nullptr && k0 + kc >= K;
    if (bpk == nullptr && !direct) pack_b(B + k0 * ldb + n0, ldb, kc, nc, pack, NR);
    else if (bpk == nullptr && tail < nc) pack_b(B + n0 + tail, ldb, kc, nc - tail, pack, NR);
    const auto one = [&](int64_t m, int64_t s) {
      const int64_t nr = std::min(NR, nc - s);
      const float* bp = pack + s * kc;
      int64_t ldbp = NR;
      if (bpk != nullptr) {
        bp = bpk + (n0 + s) * K + k0 * NR;
      } else if (direct && nr == NR) {
        bp = B + n0 + s;
        ldbp = ldb;
        if (m == m0 && s + 2 * NR <= nc)
          for (int64_t k = 0; k < kc; ++k) prefetch(bp + k * ldb + NR);
      } else if (direct) {
        bp = pack;
      }
      tile_call(u, kc, k0, m, m1, n0 + s, A, lda, ap, mpad, bp, ldbp, C, ldc, nr, last, ep);
    };
    if (strips_outer(m1 - m0, MR, ap, direct, bpk)) {
      for (int64_t s = 0; s < nc; s += NR)
        for (int64_t m = m0; m < m1; m += MR) one(m, s);
    } else {
      for (int64_t m = m0; m < m1; m += MR)
        for (int64_t s = 0; s < nc; s += NR) one(m, s);
    }
  }
}

// gemm_tile with B from a packer (an implicit-GEMM conv: strips packed from the input image),
// one strip at a time: the packer writes a strip (kc x 32 floats, 32 KB) and every row tile of
// A passes over it while it is in L1 (8 x kc floats of A from L2 per call, a quarter of the
// strip). Packing the whole 128-column block first sent it through L2 and back (ResNet-18's
// 3x3 convs: ~7 % slower). Same kernel calls on the same values as gemm_tile: the same bits.
void gemm_tile_packer(const Ukr& u, int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K,
                      const float* A, int64_t lda, float* C, int64_t ldc, float* pack,
                      const GemmEpilogue* ep, const gemm::BPacker& packer, const float* ap,
                      int64_t mpad) {
  const int64_t nc = n1 - n0;
  const int64_t MR = u.mr, NR = u.nr;
  for (int64_t k0 = 0; k0 < K; k0 += kKC) {
    const int64_t kc = std::min(kKC, K - k0);
    const bool last = ep != nullptr && k0 + kc >= K;
    for (int64_t s = 0; s < nc; s += NR) {
      const int64_t nr = std::min(NR, nc - s);
      packer.fn(packer.ctx, k0, kc, n0 + s, nr, pack);
      for (int64_t m = m0; m < m1; m += MR) {
        tile_call(u, kc, k0, m, m1, n0 + s, A, lda, ap, mpad, pack, NR, C, ldc, nr, last, ep);
      }
    }
  }
}

// Few rows (a fully connected layer at batch 1-2): B streams through once, four k
// rows at a time, into the C rows (a task's columns stay in L1). The packed GEMM would
// copy all of B every call: EfficientNet-Lite0's 1280 x 1000 classifier took 1.06 ms
// of an 11.9 ms run that way. A task takes a thread's whole share of the columns, so
// each B row is read as one contiguous run: 256-column tasks read 1 KB of every 4 KB
// row and the hardware prefetcher fetched the rest for nothing; the AVX2 pass also
// prefetches the next pass's four rows. That classifier: ~390 -> ~200 us at 1 thread
// (onnxruntime 220). Each output still sums its K products in order 0..K-1 (with FMA
// on AVX2 machines, like the GEMM kernels), so the thread count changes no bit.
constexpr int64_t kGemvMaxM = 2;

// c[j] += a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j], summed left to right.
void axpy4_portable(int64_t n, const float* a, const float* b0, const float* b1, const float* b2,
                    const float* b3, float* c) {
  const float a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
  for (int64_t j = 0; j < n; ++j) c[j] = c[j] + a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j];
}

#ifdef ER_X86
__attribute__((target("avx2,fma"))) void axpy4_avx2(int64_t n, const float* a, const float* b0,
                                                    const float* b1, const float* b2,
                                                    const float* b3, float* c) {
  const __m256 a0 = _mm256_set1_ps(a[0]), a1 = _mm256_set1_ps(a[1]);
  const __m256 a2 = _mm256_set1_ps(a[2]), a3 = _mm256_set1_ps(a[3]);
  const int64_t pf = 4 * (b1 - b0);  // the next pass's rows (a prefetch never faults)
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    if ((j & 15) == 0) {
      _mm_prefetch(reinterpret_cast<const char*>(b0 + pf + j), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(b1 + pf + j), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(b2 + pf + j), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(b3 + pf + j), _MM_HINT_T0);
    }
    __m256 v = _mm256_loadu_ps(c + j);
    v = _mm256_fmadd_ps(a0, _mm256_loadu_ps(b0 + j), v);
    v = _mm256_fmadd_ps(a1, _mm256_loadu_ps(b1 + j), v);
    v = _mm256_fmadd_ps(a2, _mm256_loadu_ps(b2 + j), v);
    v = _mm256_fmadd_ps(a3, _mm256_loadu_ps(b3 + j), v);
    _mm256_storeu_ps(c + j, v);
  }
  for (; j < n; ++j)
    c[j] = std::fma(a[3], b3[j], std::fma(a[2], b2[j], std::fma(a[1], b1[j], std::fma(a[0], b0[j], c[j]))));
}
#endif

void gemv_rows(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
               int64_t ldb, float* C, int64_t ldc, int threads, const GemmEpilogue* ep) {
  const int64_t share = (N + threads - 1) / threads;
  const int64_t cols = std::min(N, (share + 15) / 16 * 16);
  const int64_t tasks = (N + cols - 1) / cols;
#ifdef ER_X86
  const auto axpy4 = has_avx2_fma() ? axpy4_avx2 : axpy4_portable;
#else
  const auto axpy4 = axpy4_portable;
#endif
  parallel_for(threads, tasks, [&](int64_t t) {
    const int64_t n0 = t * cols, nw = std::min(N - n0, cols);
    for (int64_t m = 0; m < M; ++m) std::memset(C + m * ldc + n0, 0, sizeof(float) * size_t(nw));
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
      const float* b0 = B + k * ldb + n0;
      const float* b1 = b0 + ldb;
      const float* b2 = b1 + ldb;
      const float* b3 = b2 + ldb;
      for (int64_t m = 0; m < M; ++m) axpy4(nw, A + m * lda + k, b0, b1, b2, b3, C + m * ldc + n0);
    }
    for (; k < K; ++k) {
      const float* b = B + k * ldb + n0;
      for (int64_t m = 0; m < M; ++m) {
        const float a = A[m * lda + k];
        float* c = C + m * ldc + n0;
        for (int64_t j = 0; j < nw; ++j) c[j] += a * b[j];
      }
    }
    if (ep == nullptr) return;
    for (int64_t m = 0; m < M; ++m) {
      const TileEpi te = row_epi(*ep, m);
      float* c = C + m * ldc;
      for (int64_t j = n0; j < n0 + nw; ++j) c[j] = epi1(c[j], 0, j, te);
    }
  });
}

// Task shape on several threads: kMC x kNC blocks, or smaller ones when those would not
// share out evenly (a 1x1 conv on a 7x7 plane is one 128-column block: 192 output
// channels were one task, one thread idle; 40 channels on a 28x28 plane were seven
// column blocks, 4 + 3). A task reads its rows of A and its columns of B, so the split
// goes along the dimension whose operand is cheaper to read twice: the columns when A
// (M x K) is the smaller, the rows otherwise. The first block count from the default
// whose task count is a multiple of the threads (and at least two per thread) is used,
// in whole 32-column strips where one fits (then 16). Which rows or columns a task takes
// changes no sum, so neither does the thread count.
void split_tasks(int64_t M, int64_t N, int threads, const Ukr& ukr, int64_t* mc, int64_t* nc,
                 int64_t min_unit) {
  const auto even = [&](int64_t tasks) { return tasks % threads == 0 && tasks >= 2 * threads; };
  const auto up = [](int64_t v, int64_t to) { return (v + to - 1) / to * to; };
  const int64_t mt = (M + kMC - 1) / kMC, nt = (N + kNC - 1) / kNC;
  if (even(mt * nt)) return;
  if (M <= N) {  // A is the smaller operand: more column blocks
    for (const int64_t unit : {int64_t(32), int64_t(16)}) {
      if (unit < min_unit) break;
      for (int64_t want = nt; want <= (N + unit - 1) / unit; ++want) {
        const int64_t c = up((N + want - 1) / want, unit);
        if (even(mt * ((N + c - 1) / c))) {
          *nc = c;
          return;
        }
      }
    }
    return;
  }
  for (int64_t want = mt; want <= (M + ukr.mr - 1) / ukr.mr; ++want) {
    const int64_t c = up((M + want - 1) / want, ukr.mr);
    if (even((M + c - 1) / c * nt)) {
      *mc = c;
      return;
    }
  }
}

}  // namespace

bool force_portable() {
  static const bool on = env_flag("EDGERUN_FORCE_PORTABLE");
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

const char* gemm_path() { return pick_kernel().name; }

size_t sgemm_scratch_floats(int threads) {
  // kNC is a multiple of both strip widths (16, 32): no rounding needed.
  static_assert(kNC % 32 == 0, "kNC must hold whole 16- and 32-wide strips");
  return size_t(std::max(threads, 1)) * size_t(kKC * kNC);
}

namespace {

void sgemm_impl(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                int64_t ldb, float* C, int64_t ldc, float* scratch, int threads,
                const GemmEpilogue* ep, const gemm::BPacker* packer, const float* ap,
                const float* bpk = nullptr) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t m = 0; m < M; ++m) {
      float* c = C + m * ldc;
      std::memset(c, 0, sizeof(float) * N);
      if (ep) {
        const TileEpi te = row_epi(*ep, m);
        for (int64_t j = 0; j < N; ++j) c[j] = epi1(0.f, 0, j, te);
      }
    }
    return;
  }
  if (M <= kGemvMaxM && packer == nullptr) {
    ER_ASSERT(ap == nullptr && bpk == nullptr);  // the row-at-a-time path reads A, B in place
    gemv_rows(M, N, K, A, lda, B, ldb, C, ldc, threads, ep);
    return;
  }
  static const Ukr ukr = pick_kernel();
  ER_ASSERT(ap == nullptr || ukr.fn_pa != nullptr);
  int64_t mc = kMC, nc = kNC;
  // Under ~1M multiply-adds (~10 us) a parallel region costs more than it shares out
  // (the digits CNN's convs: its 2-thread fronts measured 20 % slower split).
  // Prepacked B: column blocks in whole strips (split_tasks' 16-column fallback would cut one).
  if (threads > 1 && M * N * K >= kMinSplitMacs)
    split_tasks(M, N, threads, ukr, &mc, &nc, bpk != nullptr ? ukr.nr : 16);
  const int64_t mt = (M + mc - 1) / mc, nt = (N + nc - 1) / nc, tasks = mt * nt;
  const int64_t mpad = (M + ukr.mr - 1) / ukr.mr * ukr.mr;  // rows of a packed A
  const size_t per_thread = sgemm_scratch_floats(1);
  parallel_for(threads, tasks, [&](int64_t t) {
    const int64_t mi = t / nt, ni = t % nt;
    float* pack = scratch + per_thread * size_t(thread_id());
    const int64_t m0 = mi * mc, m1 = std::min(M, (mi + 1) * mc);
    const int64_t n0 = ni * nc, n1 = std::min(N, (ni + 1) * nc);
    if (packer != nullptr) gemm_tile_packer(ukr, m0, m1, n0, n1, K, A, lda, C, ldc, pack, ep, *packer, ap, mpad);
    else gemm_tile(ukr, m0, m1, n0, n1, K, A, lda, B, ldb, C, ldc, pack, ep, ap, mpad, bpk);
  });
}

}  // namespace

void sgemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
           int64_t ldb, float* C, int64_t ldc, float* scratch, int threads,
           const GemmEpilogue* ep) {
  sgemm_impl(M, N, K, A, lda, B, ldb, C, ldc, scratch, threads, ep, nullptr, nullptr);
}

size_t sgemm_pack_b_floats(int64_t K, int64_t N) {
  static const bool off = env_flag("EDGERUN_NO_PACK_B");
  static const Ukr ukr = pick_kernel();
  if (off || K <= 0 || N <= 0) return 0;
  return size_t((N + ukr.nr - 1) / ukr.nr) * size_t(ukr.nr) * size_t(K);
}

void sgemm_pack_b(int64_t K, int64_t N, const float* B, int64_t ldb, float* packed) {
  static const Ukr ukr = pick_kernel();
  for (int64_t n = 0; n < N; n += ukr.nr) pack_b(B + n, ldb, K, std::min(ukr.nr, N - n), packed + n * K, ukr.nr);
}

void sgemm_pb(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* bpacked,
              float* C, int64_t ldc, float* scratch, int threads, const GemmEpilogue* ep) {
  sgemm_impl(M, N, K, A, lda, nullptr, N, C, ldc, scratch, threads, ep, nullptr, nullptr, bpacked);
}

namespace gemm {

int64_t strip_width() {
  static const Ukr ukr = pick_kernel();
  return ukr.nr;
}

void sgemm_packed_b(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                    const BPacker& packer, float* C, int64_t ldc, float* scratch, int threads,
                    const GemmEpilogue* ep, const float* ap) {
  sgemm_impl(M, N, K, A, lda, nullptr, N, C, ldc, scratch, threads, ep, &packer, ap);
}

bool packed_a_ok() {
  static const Ukr ukr = pick_kernel();
  return ukr.fn_pa != nullptr;
}

size_t pack_a_floats(int64_t M, int64_t K) {
  static const Ukr ukr = pick_kernel();
  return size_t((M + ukr.mr - 1) / ukr.mr * ukr.mr) * size_t(K);
}

void pack_a(int64_t M, int64_t K, const float* A, int64_t lda, float* out) {
  static const Ukr ukr = pick_kernel();
  const int64_t MR = ukr.mr;
  for (int64_t k0 = 0; k0 < K; k0 += kKC)
    for (int64_t m = 0; m < M; m += MR)
      for (int64_t k = k0; k < std::min(K, k0 + kKC); ++k)
        for (int64_t r = 0; r < MR; ++r) *out++ = m + r < M ? A[(m + r) * lda + k] : 0.f;
}

void sgemm_pa(int64_t M, int64_t N, int64_t K, const float* ap, const float* B, int64_t ldb,
              float* C, int64_t ldc, float* scratch, int threads, const GemmEpilogue* ep) {
  sgemm_impl(M, N, K, nullptr, 0, B, ldb, C, ldc, scratch, threads, ep, nullptr, ap);
}

}  // namespace gemm

}  // namespace kernels
}  // namespace edgerun
