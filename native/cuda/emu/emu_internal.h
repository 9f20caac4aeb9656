// State shared by the emulation runtime's translation units (emu_runtime.cc: fibers, scheduler, launch;
// emu_memory.cc: allocations, access checks, runtime API). Not for kernels.
#pragma once
#include <atomic>
#include <cstdarg>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "cuda_emu.h"

#if !defined(__x86_64__) || defined(EMU_USE_UCONTEXT)
#include <ucontext.h>
#define EMU_ASM_SWITCH 0
#else
#define EMU_ASM_SWITCH 1
#endif

// Linker-provided bounds of the static shared memory section (null when no kernel uses __shared__).
extern "C" {
extern unsigned char __start_emu_smem[] __attribute__((weak, visibility("hidden")));
extern unsigned char __stop_emu_smem[] __attribute__((weak, visibility("hidden")));
}

namespace emu::detail {

constexpr unsigned kMaxBlockThreads = 1024;
constexpr size_t kSmemArenaBytes = size_t{4} << 20;  // reserved address space; pages are touched on use

enum class FState : uint8_t { Ready, Running, WaitBlock, WaitWarp, Done };

struct Fiber {
  void* sp = nullptr;  // saved stack pointer while switched out (asm switch)
  unsigned char* map = nullptr;
  size_t map_bytes = 0;
  unsigned char* stack_lo = nullptr;  // usable stack, above the guard page
  size_t stack_bytes = 0;
  uint3 tid{0, 0, 0};
  unsigned linear = 0;
  FState state = FState::Done;
  // What the fiber waits for, for the scheduler and for deadlock reports.
  uint64_t wait_gen = 0;
  int wait_op = 0;  // 0: __syncthreads, else a WarpOp
  const char* wait_file = "";
  unsigned wait_line = 0;
#if !EMU_ASM_SWITCH
  ucontext_t uc;
#endif
  void* asan_fake_stack = nullptr;
};

struct Warp {
  uint32_t live = 0;  // lanes that exist and have not exited
  int arrived = 0;
  uint64_t gen = 0;
  int op = 0;
  const char* file = "";
  unsigned line = 0;
  unsigned first_lane = 0;
  uint32_t active[2] = {0, 0};  // lanes that took part, per buffer
  // Double-buffered deposits: a lane that runs ahead writes the other buffer, and cannot come back to
  // this one before every lane has passed the next round (and so has read this one).
  uint64_t slot[2][32];
};

struct Block {
  unsigned live = 0;
  unsigned arrived = 0;
  uint64_t gen = 0;
  int kind = 0;
  const char* file = "";
  unsigned line = 0;
  unsigned first = 0;
  int count[2] = {0, 0};  // __syncthreads_count/and/or: predicate sums per round (double-buffered)
  int n[2] = {0, 0};
  Warp warps[kMaxBlockThreads / 32];
};

struct Runtime {
  std::mutex launch_mu;  // one launch at a time: static shared memory is a single global section
  std::vector<std::unique_ptr<Fiber>> fibers;
  size_t stack_bytes = 0;
  void* sched_sp = nullptr;
#if !EMU_ASM_SWITCH
  ucontext_t sched_uc;
#endif
  void* asan_sched_fake = nullptr;
  const void* asan_sched_bottom = nullptr;
  size_t asan_sched_size = 0;

  Fiber* cur = nullptr;  // running fiber; only meaningful on the launching thread (tl_in_launch)
  Block blk;
  // The launch in progress.
  const char* name = "";
  const char* params = "";
  char desc[512] = "";  // "name(parameter types)" for messages
  unsigned nthreads = 0;
  void (*thunk)(void*) = nullptr;
  void* ctx = nullptr;
  bool failed = false;
  cudaError_t code = cudaSuccess;
  std::string msg;
  std::vector<unsigned> warp_order, lane_order;
  std::mt19937_64 rng{1};
  uint64_t seed_version = 0;
  // Arena of the SMEM_ARRAY variables: each gets a fixed 128-byte aligned place on first use, for the
  // life of the process (their slots cache the offset). Offset 0 is never handed out.
  unsigned char* arena = nullptr;
  size_t arena_used = 128;
  uint64_t block_serial = 0;  // counts blocks, so SMEM_ARRAY variables know when to re-poison
  // Dynamic shared memory buffer (grown as needed, 128-byte aligned).
  unsigned char* dyn = nullptr;
  size_t dyn_cap = 0;
  // A few recently matched allocations, so most global accesses skip the registry lock.
  struct Range {
    uintptr_t lo = 0, hi = 0;
  } cache[4];
  unsigned cache_next = 0;
  uint64_t cache_epoch = 0;
};
Runtime& rt();

// Allocation registry (cudaMalloc and register_memory), shared by every thread.
struct Allocation {
  size_t bytes;
  bool owned;  // from cudaMalloc, so cudaFree may release it
};
struct Registry {
  std::mutex mu;
  std::map<uintptr_t, Allocation> allocs;
  std::map<const void*, int> max_dyn_smem;  // cudaFuncSetAttribute
  std::atomic<uint64_t> epoch{1};           // bumped on every free, invalidates Runtime::cache
};
Registry& reg();

extern thread_local constinit bool tl_in_launch;  // constinit: no TLS init wrapper across TUs
inline Fiber* running_fiber() { return tl_in_launch ? rt().cur : nullptr; }

// Sets the calling thread's last error and message; returns the code.
cudaError_t set_error(cudaError_t e, std::string msg);
// Execution errors are also reported by the next synchronise, as on the GPU.
void set_pending(cudaError_t e);
std::string strf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

}  // namespace emu::detail
