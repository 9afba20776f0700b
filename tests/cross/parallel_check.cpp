// The engine's worker pool (cpp/src/parallel.cpp) under ThreadSanitizer: three caller threads
// run loops and team regions on the one pool, with pauses long enough for the workers to sleep
// between them (EDGERUN_SPIN_US set small by the test). Every region's result is checked; TSan
// reports any data race (exit code 66). With the argument "one-core" the process first limits
// itself to one CPU: workers are then often off the core when a region starts, so callers take
// their shares back (parallel.h), the path this exercises. Built by tests/runtime/test_parallel.py.
#include <sched.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "edgerun/parallel.h"

using namespace edgerun::kernels;

namespace {

void work(int seed) {
  constexpr int64_t kN = 1000;
  std::vector<double> v(kN);
  std::vector<int> seen(kN);
  for (int r = 0; r < 200; ++r) {
    parallel_for(3, kN, [&](int64_t i) { v[size_t(i)] = double(i * seed + r); });
    // Each index of a team runs once, on whichever thread: count the visits.
    parallel_team(3, [&](int t, int nt) {
      int64_t b, e;
      static_range(kN, t, nt, &b, &e);
      for (int64_t i = b; i < e; ++i) {
        v[size_t(i)] += 1;
        seen[size_t(i)] += 1;
      }
    });
    // A second region reads what the first wrote on other threads.
    parallel_team(2, [&](int t, int nt) {
      int64_t b, e;
      static_range(kN, t, nt, &b, &e);
      double s = 0;
      for (int64_t i = b; i < e; ++i) s += v[size_t((i + kN / 2) % kN)];
      if (s < 0) std::abort();
    });
    for (int64_t i = 0; i < kN; ++i)
      if (v[size_t(i)] != double(i * seed + r + 1) || seen[size_t(i)] != r + 1) {
        std::printf("caller %d round %d: v[%lld] wrong\n", seed, r, static_cast<long long>(i));
        std::exit(1);
      }
    if (r % 40 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));  // workers sleep
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "one-core") == 0) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu(), &one);
    if (sched_setaffinity(0, sizeof(one), &one) != 0) return 2;
  }
  std::thread a(work, 1), b(work, 2);
  work(3);
  a.join();
  b.join();
  std::printf("ok, %llu shares taken back\n", static_cast<unsigned long long>(shares_taken_back()));
  return 0;
}
