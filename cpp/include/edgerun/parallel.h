// edgerun/parallel.h: the native engine's worker threads.
//
// One process-wide pool runs the kernels' parallel loops. A region's participants are
// the calling thread (index 0) and threads - 1 workers. Between the layers of one run,
// regions follow each other within microseconds, so an idle worker first spins; after
// EDGERUN_SPIN_US (default kDefaultSpinUs) without work it sleeps on a condition
// variable until the next region wakes it (one wake per request, not per layer).
//
// Why not OpenMP: libgomp's workers spin ~300,000 iterations after every region. At a
// 20 ms request period on 2 threads that burnt ~11 ms of CPU per request on top of
// ~2.3 ms of work (EfficientNet blocks.7 front, Zen 5), CPU a robot's control loop on
// the same cores needs; OMP_WAIT_POLICY=PASSIVE stopped that but made every layer
// pay a wake, and 2 threads were then no faster than 1.
//
// A share no worker has started by the time the caller has finished its own (and waited
// kDefaultTakeBackUs from the post) is run by the caller, with that share's participant
// index: the same scratch, the same bits. A worker that is not on a core then costs a
// region at most that wait, and the following regions nothing until it is back. Without
// this, one other busy process on a 2-core machine made 2 threads ~10x slower than 1
// (EfficientNet blocks.7: 20.9 vs 2.0 ms, Zen 5 VM), the worker waiting behind it for a
// time slice at every layer. So participants never wait for each other inside a region:
// there is no barrier.
//
// Calls from inside a region (a kernel run with threads = 1 inside a strip task) run
// inline, as one participant with thread_id() 0, like an inactive nested OpenMP team.
// Regions from different caller threads take turns (one mutex). A fork()ed child
// starts with an empty pool.
#pragma once

#include <cstdint>

namespace edgerun {
namespace kernels {

constexpr int kDefaultSpinUs = 100;
// How long the caller, its own share done, waits for a worker to start its share before it
// runs it itself (EDGERUN_TAKEBACK_US). A worker that missed its last share is not waited for.
constexpr int kDefaultTakeBackUs = 300;

// Index of the calling participant in the current region (0 outside any region).
int thread_id();
// Participants of the current region (1 outside any region).
int team_size();

// Runs fn(ctx, t, nt) for t = 0..nt-1 on nt = threads participants (the caller is t = 0)
// and returns when all have returned. threads <= 1, or a call inside a region: inline.
void parallel_run(int threads, void (*fn)(void*, int, int), void* ctx);

// Shares the calling threads have run for a worker that had not started them, since the
// process started (a diagnostic: benchmarks report it).
uint64_t shares_taken_back();

// [*b, *e): participant t's contiguous share of n iterations over nt participants
// (the first n % nt participants get one more), as OpenMP's schedule(static).
inline void static_range(int64_t n, int t, int nt, int64_t* b, int64_t* e) {
  const int64_t q = n / nt, r = n % nt;
  *b = t * q + (t < r ? t : r);
  *e = *b + q + (t < r ? 1 : 0);
}

// A team region: f(t, nt) for every participant index t (any thread may run any index;
// f must not wait for another index).
template <class F>
void parallel_team(int threads, F&& f) {
  parallel_run(threads, [](void* c, int t, int nt) { (*static_cast<F*>(c))(t, nt); }, &f);
}

// f(i) for i in [0, n), shared out in static contiguous blocks over up to `threads`
// participants (never more participants than iterations). An iteration's result must not
// depend on which participant runs it (thread_id() picks scratch only).
template <class F>
void parallel_for(int threads, int64_t n, F&& f) {
  if (n <= 0) return;
  const int nt = int(threads < n ? threads : n);
  parallel_team(nt, [&](int t, int k) {
    int64_t b, e;
    static_range(n, t, k, &b, &e);
    for (int64_t i = b; i < e; ++i) f(i);
  });
}

}  // namespace kernels
}  // namespace edgerun
