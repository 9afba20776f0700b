// The worker pool behind edgerun/parallel.h.
//
// Each worker has a mailbox: a job and a state (idle -> posted -> running -> idle). The
// dispatcher writes the job only while the state is idle (it waits for every participant
// of a region before it returns, and regions are serialized by dispatch_), then posts it.
// A worker spins on its state, then sleeps on cv_: its sleeping flag is set under m_ and
// read by the dispatcher after it posts (both seq_cst), so either the dispatcher sees the
// flag and notifies under m_, or the worker sees the post and does not wait.
//
// A worker takes a posted job by moving its state posted -> running (CAS). The dispatcher,
// once its own share is done, takes back every job still posted (posted -> idle, CAS) and
// runs that share itself: a worker that is not on a core (still waking, or behind another
// busy process on a machine with no free core) never holds up the region. Exactly one of
// the two CASes succeeds, so every share runs once, with its own participant index (its
// scratch, its static range: the same bits).
#include "edgerun/parallel.h"

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "env.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ER_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__) || defined(__arm__)
#define ER_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define ER_CPU_RELAX() ((void)0)
#endif

namespace edgerun {
namespace kernels {
namespace {

thread_local int tl_tid = 0;
thread_local int tl_nt = 1;
thread_local bool tl_in_region = false;

struct Job {
  void (*fn)(void*, int, int) = nullptr;
  void* ctx = nullptr;
  int nt = 1;
};

enum State : int { kIdle = 0, kPosted = 1, kRunning = 2 };

struct alignas(64) Mailbox {
  Job job;
  std::atomic<int> state{kIdle};
  std::atomic<bool> sleeping{false};
  std::atomic<bool> absent{false};  // its last share was taken back; cleared when it takes one
};

// Waits until done() holds: spins, then yields (more participants than free cores must
// still make progress).
template <class Done>
void wait_until(Done done) {
  for (unsigned i = 0; !done(); ++i) {
    if (i % 64 != 63) ER_CPU_RELAX();
    else std::this_thread::yield();
  }
}

// A duration in microseconds from the environment, or `fallback` when unset or not a
// non-negative integer (env_count warns).
std::chrono::microseconds env_us(const char* name, long fallback) {
  return std::chrono::microseconds(env_count(name, fallback));
}

// Sets the thread-local region state for one participant, restoring it on exit.
class Participant {
 public:
  Participant(int t, int nt) : t_(tl_tid), nt_(tl_nt), in_(tl_in_region) {
    tl_tid = t;
    tl_nt = nt;
    tl_in_region = nt > 1 || in_;
  }
  ~Participant() {
    tl_tid = t_;
    tl_nt = nt_;
    tl_in_region = in_;
  }

 private:
  int t_, nt_;
  bool in_;
};

// A worker woken onto the core of the thread that woke it would share that core for the
// whole run, both waiting on each other, while another core idles. A guest kernel does this
// when the idle core's vCPU is halted (it reads as preempted): measured on a 2-vCPU KVM guest,
// EfficientNet blocks.7 at 2 threads with a 20 ms gap between requests took 5-8 ms instead
// of ~1.4. Such a worker moves itself off that core (the affinity is restored at once;
// nothing is pinned).
void leave_core(int busy_cpu) {
  if (busy_cpu < 0 || sched_getcpu() != busy_cpu) return;
  cpu_set_t mask, other;
  if (sched_getaffinity(0, sizeof(mask), &mask) != 0) return;
  other = mask;
  CPU_CLR(busy_cpu, &other);
  if (CPU_COUNT(&other) == 0) return;
  if (sched_setaffinity(0, sizeof(other), &other) == 0) sched_setaffinity(0, sizeof(mask), &mask);
}

class Pool {
 public:
  static Pool*& instance() {
    static Pool* p = new Pool();  // never destroyed: detached workers may outlive static destructors
    return p;
  }

  void run(int nt, void (*fn)(void*, int, int), void* ctx) {
    std::lock_guard<std::mutex> d(dispatch_);
    grow(nt - 1);
    pending_.store(nt - 1, std::memory_order_relaxed);
    dispatcher_cpu_.store(sched_getcpu(), std::memory_order_relaxed);
    bool wake = false;
    for (int w = 0; w < nt - 1; ++w) {
      Mailbox& mb = *boxes_[size_t(w)];
      mb.job = Job{fn, ctx, nt};
      mb.state.store(kPosted, std::memory_order_seq_cst);
      wake = wake || mb.sleeping.load(std::memory_order_seq_cst);
    }
    if (wake) {
      {
        std::lock_guard<std::mutex> lk(m_);
        wake_gen_.fetch_add(1, std::memory_order_relaxed);
        cv_.notify_all();
      }
      // A worker woken onto this core runs only when this thread lets it: now, so that it
      // moves to a free core (leave_core) instead of waiting the whole run behind us while
      // we take its shares back.
      std::this_thread::yield();
    }
    const auto posted_at = std::chrono::steady_clock::now();
    {
      Participant self(0, nt);
      fn(ctx, 0, nt);
    }
    for (int w = 0; w < nt - 1; ++w) {  // shares no worker has taken yet: run them here
      Mailbox& mb = *boxes_[size_t(w)];
      // A worker that has been taking its shares gets grace_ from the post (after any wake's
      // yield): one late by tens of us costs less to wait for than to replace (its share's data
      // and scratch are in its core's cache). The wait yields: a worker that the guest kernel
      // put on this core runs, and moves off it (leave_core). One that missed its last share
      // gets one yield.
      if (mb.absent.load(std::memory_order_relaxed)) {
        if (mb.state.load(std::memory_order_acquire) == kPosted) std::this_thread::yield();
      } else {
        wait_until([&] {
          return mb.state.load(std::memory_order_acquire) != kPosted ||
                 std::chrono::steady_clock::now() - posted_at >= grace_;
        });
      }
      int posted = kPosted;
      if (!mb.state.compare_exchange_strong(posted, kIdle, std::memory_order_acq_rel)) continue;
      mb.absent.store(true, std::memory_order_relaxed);
      taken_back_.fetch_add(1, std::memory_order_relaxed);
      pending_.fetch_sub(1, std::memory_order_relaxed);
      Participant self(w + 1, nt);
      fn(ctx, w + 1, nt);
    }
    wait_until([&] { return pending_.load(std::memory_order_acquire) == 0; });
  }

  uint64_t taken_back() const { return taken_back_.load(std::memory_order_relaxed); }

  // The fork()ed child's pool (see after_fork_in_child).
  static void reset() { instance() = new Pool(); }

 private:
  Pool()
      : spin_(env_us("EDGERUN_SPIN_US", kDefaultSpinUs)),
        grace_(env_us("EDGERUN_TAKEBACK_US", kDefaultTakeBackUs)) {}

  void grow(int workers) {
    while (int(boxes_.size()) < workers) {
      boxes_.push_back(std::make_unique<Mailbox>());
      const size_t idx = boxes_.size() - 1;
      Mailbox* mb = boxes_.back().get();
      std::thread([this, idx, mb] { work(int(idx), mb); }).detach();
    }
  }

  void work(int idx, Mailbox* mb) {
    for (;;) {
      int posted = kPosted;
      if (!mb->state.compare_exchange_strong(posted, kRunning, std::memory_order_acq_rel)) {
        auto t0 = std::chrono::steady_clock::now();
        for (unsigned i = 1; mb->state.load(std::memory_order_acquire) != kPosted; ++i) {
          ER_CPU_RELAX();
          if (i % 64 != 0) continue;
          std::this_thread::yield();  // hand the core back at once if the dispatcher shares it
          leave_core(dispatcher_cpu_.load(std::memory_order_relaxed));  // and do not stay there
          if (std::chrono::steady_clock::now() - t0 < spin_) continue;
          std::unique_lock<std::mutex> lk(m_);
          mb->sleeping.store(true, std::memory_order_seq_cst);
          // Woken, a worker spins again even when its share was taken back while it woke:
          // the run's next layers follow within microseconds. (Waiting for a post only, it
          // would sleep again at every layer and never join the run.)
          const uint64_t gen = wake_gen_.load(std::memory_order_relaxed);
          cv_.wait(lk, [&] {
            return mb->state.load(std::memory_order_seq_cst) == kPosted ||
                   wake_gen_.load(std::memory_order_relaxed) != gen;
          });
          mb->sleeping.store(false, std::memory_order_relaxed);
          lk.unlock();
          leave_core(dispatcher_cpu_.load(std::memory_order_relaxed));
          t0 = std::chrono::steady_clock::now();
        }
        continue;  // posted: take it with the CAS above (the dispatcher may have taken it back)
      }
      mb->absent.store(false, std::memory_order_relaxed);
      const Job j = mb->job;
      {
        Participant self(idx + 1, j.nt);
        j.fn(j.ctx, idx + 1, j.nt);
      }
      mb->state.store(kIdle, std::memory_order_release);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  const std::chrono::steady_clock::duration spin_;
  const std::chrono::steady_clock::duration grace_;
  std::mutex dispatch_;
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Mailbox>> boxes_;  // only the dispatcher (under dispatch_) grows it
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> taken_back_{0};
  std::atomic<uint64_t> wake_gen_{0};  // bumped (under m_) at every notify
  std::atomic<int> dispatcher_cpu_{-1};
};

// A fork()ed child has only the forking thread: give it a fresh pool (the old one,
// whose workers do not exist there, is left allocated).
void after_fork_in_child() { Pool::reset(); }

Pool& pool() {
  static const bool registered = [] {
    pthread_atfork(nullptr, nullptr, after_fork_in_child);
    return true;
  }();
  (void)registered;
  return *Pool::instance();
}

}  // namespace

int thread_id() { return tl_tid; }
int team_size() { return tl_nt; }

void parallel_run(int threads, void (*fn)(void*, int, int), void* ctx) {
  if (threads <= 1 || tl_in_region) {
    Participant self(0, 1);
    fn(ctx, 0, 1);
    return;
  }
  pool().run(threads, fn, ctx);
}

uint64_t shares_taken_back() { return pool().taken_back(); }

}  // namespace kernels
}  // namespace edgerun
