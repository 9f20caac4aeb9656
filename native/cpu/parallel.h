// The process-wide thread pool. One pool serves every Node environment (main thread and workers):
// jobs from several threads queue; a parallel region started from inside a pool job runs inline.
#pragma once
#include <cstdint>
#include <functional>

namespace peft {

// Calls fn(begin, end) over [0, n) split into contiguous chunks of at least `grain` items, on up to
// num_threads() threads (the caller takes part). Returns when every chunk is done. Exceptions thrown by
// fn are rethrown on the caller (the first one wins).
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

// Runs fn(tid, nthreads) once for each tid < nthreads (nthreads <= num_threads()); for kernels that
// partition work themselves (GEMM splits by M or N). The parts are claimed by whichever pool thread is free:
// usually one per thread, but a part a sleeping worker has not yet claimed runs on a thread that is done
// with its own, after it. Parts must not wait on each other.
void parallel_run(int nthreads, const std::function<void(int, int)>& fn);

// Runs fn(r0, r1, c0, c1) on a tm x tn grid of threads, each taking an even share of [0, rows) x [0, cols),
// with begin()/end() (either may be null) around each thread's share: a kernel set's per-thread setup,
// e.g. AMX tile configuration, released even when fn throws.
void parallel_grid(int tm, int tn, int64_t rows, int64_t cols, void (*begin)(), void (*end)(),
                   const std::function<void(int64_t, int64_t, int64_t, int64_t)>& fn);

int num_threads();
// Zero-fills a block on the pool (installed as core's host zero fill at load).
void parallel_zero_fill(void* p, size_t bytes);
// Waits until no job is running (an environment being torn down calls this before its state goes away).
void drain_pool();
void set_num_threads(int n);  // n >= 1

}  // namespace peft
