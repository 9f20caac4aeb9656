// Process-wide thread pool: one job runs at a time (callers from several threads queue on a mutex), split
// into parts that the caller and the workers claim one at a time; workers spin briefly for the next job and
// then sleep. The caller claims parts too, so it never waits for a worker that has not woken yet: it waits
// only for parts already running.
#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "../core/errors.h"
#include "isa.h"

namespace peft {
namespace {

// A spin-wait hint (x86 `pause`, arm64 `yield`): the polling core backs off, leaving the memory pipeline and a
// sibling hyper-thread to the work it waits for. A compiler builtin needs no ISA flags (SSE2 is part of x86-64).
inline void cpu_relax() {
#if PEFT_X86
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

thread_local bool t_in_job = false;  // nested regions run inline

class Pool {
 public:
  Pool() {
    int n = static_cast<int>(std::thread::hardware_concurrency());
    if (const char* env = std::getenv("NODE_PEFT_NUM_THREADS")) {
      int v = std::atoi(env);
      if (v >= 1) n = v;
    }
    nthreads_ = std::max(1, std::min(n, 256));
  }

  int size() const { return nthreads_.load(); }

  void drain() { std::lock_guard<std::mutex> submit(submit_mu_); }

  void resize(int n) {
    std::lock_guard<std::mutex> submit(submit_mu_);
    stop_workers();
    nthreads_ = n;
  }

  void run(int n, const std::function<void(int, int)>& fn) {
    if (n <= 1 || t_in_job) {
      for (int t = 0; t < n; t++) fn(t, n);
      return;
    }
    std::lock_guard<std::mutex> submit(submit_mu_);
    n = std::min(n, nthreads_.load());
    if (n <= 1) {
      fn(0, 1);
      return;
    }
    ensure_workers(n - 1);
    error_ = nullptr;
    done_.store(0, std::memory_order_relaxed);
    uint64_t gen;
    {
      // The job's parameters change only together with the generation, under mu_, so a worker that
      // wakes late reads one consistent job.
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      job_threads_ = n;
      gen = generation_.fetch_add(1, std::memory_order_acq_rel) + 1;
      next_.store(gen << 32, std::memory_order_release);
    }
    cv_.notify_all();
    run_parts(&fn, gen, n);
    // Wait for the parts workers took: spin first (jobs are short), then yield.
    auto start = std::chrono::steady_clock::now();
    while (done_.load(std::memory_order_acquire) != n) {
      cpu_relax();
      if (std::chrono::steady_clock::now() - start > std::chrono::microseconds(200)) std::this_thread::yield();
    }
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // Claims and runs parts of job `gen` (n parts) until none is left. next_ holds the generation in its high
  // half and the next unclaimed part in its low half, so a worker that read a finished job's parameters
  // claims nothing of the next job.
  void run_parts(const std::function<void(int, int)>* fn, uint64_t gen, int n) {
    uint64_t cur = next_.load(std::memory_order_acquire);
    for (;;) {
      if (cur >> 32 != (gen & 0xffffffffu) || static_cast<int>(cur & 0xffffffffu) >= n) return;
      if (!next_.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
      run_part(fn, static_cast<int>(cur & 0xffffffffu), n);
      done_.fetch_add(1, std::memory_order_acq_rel);
      cur = next_.load(std::memory_order_acquire);
    }
  }

  void run_part(const std::function<void(int, int)>* fn, int tid, int n) {
    t_in_job = true;
    try {
      (*fn)(tid, n);
    } catch (...) {
      std::lock_guard<std::mutex> lk(err_mu_);
      if (!error_) error_ = std::current_exception();
    }
    t_in_job = false;
  }

  void worker(uint64_t seen) {
    for (;;) {
      // Spin for the next job briefly (a training step issues ops back to back), then sleep.
      auto start = std::chrono::steady_clock::now();
      while (generation_.load(std::memory_order_acquire) == seen && !quit_.load()) {
        cpu_relax();
        if (std::chrono::steady_clock::now() - start > std::chrono::microseconds(100)) {
          std::unique_lock<std::mutex> lk(mu_);
          cv_.wait(lk, [&] { return generation_.load() != seen || quit_.load(); });
          break;
        }
      }
      if (quit_.load()) return;
      const std::function<void(int, int)>* fn;
      int nt;
      {
        std::lock_guard<std::mutex> lk(mu_);
        seen = generation_.load(std::memory_order_acquire);
        fn = fn_;
        nt = job_threads_;
      }
      run_parts(fn, seen, nt);
    }
  }

  void ensure_workers(int want) {
    while (static_cast<int>(workers_.size()) < want) {
      uint64_t seen = generation_.load();
      workers_.emplace_back([this, seen] { worker(seen); });
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
    quit_ = false;
  }

  std::mutex submit_mu_;  // one job at a time; other callers queue here
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<uint64_t> next_{0};  // (generation << 32) | next unclaimed part
  std::atomic<int> done_{0};       // parts of the current job finished
  std::atomic<bool> quit_{false};
  std::atomic<int> nthreads_{1};
  int job_threads_ = 0;
  const std::function<void(int, int)>* fn_ = nullptr;
  std::mutex err_mu_;
  std::exception_ptr error_;
  std::vector<std::thread> workers_;
};

// Never destroyed: workers may be asleep on its condition variable when the process exits.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

}  // namespace

int num_threads() { return pool().size(); }

void drain_pool() {
  if (!t_in_job) pool().drain();
}

void set_num_threads(int n) {
  if (n < 1 || n > 256) fail_range(cat("setNumThreads: expected an integer in [1, 256], got ", n));
  pool().resize(n);
}

void parallel_run(int nthreads, const std::function<void(int, int)>& fn) { pool().run(nthreads, fn); }

void parallel_zero_fill(void* p, size_t bytes) {
  parallel_for(static_cast<int64_t>(bytes), 1 << 20, [&](int64_t b, int64_t e) { std::memset(static_cast<char*>(p) + b, 0, e - b); });
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int64_t chunks = std::min<int64_t>((n + grain - 1) / grain, t_in_job ? 1 : num_threads());
  if (chunks <= 1) {
    fn(0, n);
    return;
  }
  int nt = static_cast<int>(chunks);
  pool().run(nt, [&](int tid, int parts) {
    int64_t b = n * tid / parts, e = n * (tid + 1) / parts;
    if (b < e) fn(b, e);
  });
}

void parallel_grid(int tm, int tn, int64_t rows, int64_t cols, void (*begin)(), void (*end)(),
                   const std::function<void(int64_t, int64_t, int64_t, int64_t)>& fn) {
  parallel_run(tm * tn, [&](int tid, int) {
    const int im = tid / tn, in = tid % tn;
    if (begin) begin();
    struct End {
      void (*end)();
      ~End() {
        if (end) end();
      }
    } done{end};
    fn(rows * im / tm, rows * (im + 1) / tm, cols * in / tn, cols * (in + 1) / tn);
  });
}

}  // namespace peft
