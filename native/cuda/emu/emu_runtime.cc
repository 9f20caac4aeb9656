// The emulation runtime: fibers, the block scheduler, barriers, warp collectives and kernel launch.
// (Memory, access checks and the rest of the runtime API are in emu_memory.cc.)
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>

#include "emu_internal.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

namespace emu {

uint3 threadIdx{0, 0, 0};
uint3 blockIdx{0, 0, 0};
dim3 blockDim;
dim3 gridDim;

namespace detail {
unsigned char* g_dyn_smem = nullptr;
size_t g_dyn_smem_bytes = 0;
constinit thread_local bool tl_in_launch = false;

Runtime& rt() {
  static Runtime* r = new Runtime;  // never destroyed: a launch may outlive static destructors
  return *r;
}

namespace {

// ---- context switch ---------------------------------------------------------------------------------
#if EMU_ASM_SWITCH
// peft_emu_switch(save, load): pushes the callee-saved registers (and MXCSR / x87 control word, which the
// ABI also makes callee-saved), stores rsp in *save, switches to `load` and pops the same frame from there.
// A new fiber's stack holds such a frame whose return address is peft_emu_fiber_start, which calls
// r13(r12). ucontext would do the same but makes a sigprocmask syscall per switch (10x slower).
extern "C" void peft_emu_switch(void** save, void* load);
extern "C" void peft_emu_fiber_start();
asm(R"(
  .pushsection .text
  .globl peft_emu_switch
  .hidden peft_emu_switch
  .type peft_emu_switch, @function
  .p2align 4
peft_emu_switch:
  .cfi_startproc
  pushq %rbp
  .cfi_adjust_cfa_offset 8
  pushq %rbx
  .cfi_adjust_cfa_offset 8
  pushq %r12
  .cfi_adjust_cfa_offset 8
  pushq %r13
  .cfi_adjust_cfa_offset 8
  pushq %r14
  .cfi_adjust_cfa_offset 8
  pushq %r15
  .cfi_adjust_cfa_offset 8
  subq $8, %rsp
  .cfi_adjust_cfa_offset 8
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  .cfi_adjust_cfa_offset -8
  popq %r15
  .cfi_adjust_cfa_offset -8
  popq %r14
  .cfi_adjust_cfa_offset -8
  popq %r13
  .cfi_adjust_cfa_offset -8
  popq %r12
  .cfi_adjust_cfa_offset -8
  popq %rbx
  .cfi_adjust_cfa_offset -8
  popq %rbp
  .cfi_adjust_cfa_offset -8
  ret
  .cfi_endproc
  .size peft_emu_switch, .-peft_emu_switch

  .globl peft_emu_fiber_start
  .hidden peft_emu_fiber_start
  .type peft_emu_fiber_start, @function
  .p2align 4
peft_emu_fiber_start:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  callq *%r13
  ud2
  .cfi_endproc
  .size peft_emu_fiber_start, .-peft_emu_fiber_start
  .popsection
)");
#endif

void fiber_entry(Fiber* f);

#if !EMU_ASM_SWITCH
void uc_entry() { fiber_entry(rt().cur); }
#endif

// Gives a fiber a fresh context that starts the kernel thread. Done for every block, so fibers that a
// failed launch abandoned mid-kernel are simply overwritten.
void prepare(Fiber& f) {
#if EMU_ASAN
  // Frames abandoned on this stack (fiber_entry never returns) leave poisoned shadow behind.
  __asan_unpoison_memory_region(f.stack_lo, f.stack_bytes);
#endif
#if EMU_ASM_SWITCH
  uintptr_t top = reinterpret_cast<uintptr_t>(f.stack_lo + f.stack_bytes) & ~uintptr_t{15};
  uint64_t* s = reinterpret_cast<uint64_t*>(top - 16);  // rsp after `ret`: 16-byte aligned, as after a call
  s[0] = s[1] = 0;
  uint64_t* sp = s;
  *--sp = reinterpret_cast<uint64_t>(&peft_emu_fiber_start);  // return address
  *--sp = 0;                                                 // rbp
  *--sp = 0;                                                 // rbx
  *--sp = reinterpret_cast<uint64_t>(&f);                    // r12: argument
  *--sp = reinterpret_cast<uint64_t>(&fiber_entry);          // r13: entry
  *--sp = 0;                                                 // r14
  *--sp = 0;                                                 // r15
  *--sp = 0x1f80ull | (0x037full << 32);                     // default MXCSR and x87 control word
  f.sp = sp;
#else
  getcontext(&f.uc);
  f.uc.uc_stack.ss_sp = f.stack_lo;
  f.uc.uc_stack.ss_size = f.stack_bytes;
  f.uc.uc_link = nullptr;
  makecontext(&f.uc, uc_entry, 0);
#endif
}

// Scheduler -> fiber. Returns when the fiber blocks, exits or fails.
void resume(Runtime& r, Fiber& f) {
  r.cur = &f;
  threadIdx = f.tid;
  f.state = FState::Running;
#if EMU_ASAN
  __sanitizer_start_switch_fiber(&r.asan_sched_fake, f.stack_lo, f.stack_bytes);
#endif
#if EMU_ASM_SWITCH
  peft_emu_switch(&r.sched_sp, f.sp);
#else
  swapcontext(&r.sched_uc, &f.uc);
#endif
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(r.asan_sched_fake, nullptr, nullptr);
#endif
  r.cur = nullptr;
}

// Fiber -> scheduler. With `final`, the fiber is never resumed.
void to_scheduler(Fiber& f, bool final) {
  Runtime& r = rt();
#if EMU_ASAN
  __sanitizer_start_switch_fiber(final ? nullptr : &f.asan_fake_stack, r.asan_sched_bottom, r.asan_sched_size);
#else
  (void)final;
#endif
#if EMU_ASM_SWITCH
  peft_emu_switch(&f.sp, r.sched_sp);
#else
  swapcontext(&f.uc, &r.sched_uc);
#endif
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(f.asan_fake_stack, &r.asan_sched_bottom, &r.asan_sched_size);
#endif
}

const char* op_name(int op) {
  switch (op) {
    case 0: return "__syncthreads";
    case kWarpSync: return "__syncwarp";
    case kWarpShfl: return "a warp shuffle";
    case kWarpVote: return "a warp vote";
    case kWarpMmaLoad: return "wmma::load_matrix_sync";
    case kWarpMmaStore: return "wmma::store_matrix_sync";
    case kWarpMma: return "wmma::mma_sync";
  }
  return "?";
}

void fmt_tid(char* buf, size_t n, unsigned linear) {
  unsigned bx = blockDim.x, by = blockDim.y;
  snprintf(buf, n, "(%u,%u,%u)", linear % bx, (linear / bx) % by, linear / (bx * by));
}

Fiber& current(const char* what, const SrcLoc& loc) {
  Fiber* f = running_fiber();
  if (!f) {
    // Only a build error can get here (device code called from host code); no input can.
    fprintf(stderr, "emu: %s called outside a kernel (%s:%u)\n", what, loc.file_name(), loc.line());
    abort();
  }
  return *f;
}

void release_block(Block& b) {
  unsigned buf = b.gen & 1;
  b.n[buf] = static_cast<int>(b.arrived);
  b.arrived = 0;
  ++b.gen;
  b.count[b.gen & 1] = 0;
}

void release_warp(Warp& w) {
  unsigned buf = w.gen & 1;
  w.active[buf] = w.live;
  w.arrived = 0;
  ++w.gen;
  // Lanes that no longer take part read as all-ones (NaN / -1) in the next round.
  for (unsigned l = 0; l < 32; ++l)
    if (!((w.live >> l) & 1u)) w.slot[w.gen & 1][l] = ~uint64_t{0};
}

// The kernel thread has returned: it leaves the block's and its warp's counts, which may complete a
// barrier the others are waiting at (as on Volta and later).
void thread_exit(Runtime& r, Fiber& f) {
  Block& b = r.blk;
  Warp& w = b.warps[f.linear / 32];
  unsigned lane = f.linear % 32;
  --b.live;
  w.live &= ~(1u << lane);
  w.slot[w.gen & 1][lane] = ~uint64_t{0};
  if (b.arrived > 0 && b.arrived == b.live) release_block(b);
  if (w.arrived > 0 && w.arrived == std::popcount(w.live)) release_warp(w);
  f.state = FState::Done;
}

void fiber_entry(Fiber* f) {
  Runtime& r = rt();
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &r.asan_sched_bottom, &r.asan_sched_size);
#endif
#if defined(__cpp_exceptions)
  // Kernel code does not throw, but if it does, the exception must end here: it may not unwind past
  // the fiber's first frame, and the launch must fail rather than the process.
  try {
    r.thunk(r.ctx);
  } catch (const std::exception& e) {
    if (!r.failed) {
      r.failed = true;
      r.code = cudaErrorLaunchFailure;
      r.msg = strf("kernel %s threw a C++ exception: %s", r.desc, e.what());
    }
  } catch (...) {
    if (!r.failed) {
      r.failed = true;
      r.code = cudaErrorLaunchFailure;
      r.msg = strf("kernel %s threw a C++ exception", r.desc);
    }
  }
#else
  r.thunk(r.ctx);
#endif
  thread_exit(r, *f);
  to_scheduler(*f, true);
  __builtin_trap();  // a finished fiber is never resumed
}

bool ensure_fibers(Runtime& r, unsigned n) {
  if (r.stack_bytes == 0) {
    size_t kb = 64;
    if (const char* s = getenv("EMU_STACK_KB")) kb = std::clamp<size_t>(strtoul(s, nullptr, 10), 16, 8192);
    r.stack_bytes = kb * 1024;
  }
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_t bytes = (r.stack_bytes + page - 1) / page * page;
  while (r.fibers.size() < n) {
    void* m = mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return false;
    // Guard page below the stack: an overflow faults instead of corrupting the neighbour's stack.
    mprotect(m, page, PROT_NONE);
    auto f = std::make_unique<Fiber>();
    f->map = static_cast<unsigned char*>(m);
    f->map_bytes = bytes + page;
    f->stack_lo = f->map + page;
    f->stack_bytes = bytes;
    r.fibers.push_back(std::move(f));
  }
  return true;
}

void fill_order(std::vector<unsigned>& v, Order o, unsigned n, std::mt19937_64& rng) {
  v.resize(n);
  std::iota(v.begin(), v.end(), 0u);
  if (o == Order::Reverse) std::reverse(v.begin(), v.end());
  if (o == Order::Random) std::shuffle(v.begin(), v.end(), rng);
}

std::string deadlock_message(Runtime& r) {
  struct Group {
    int op;
    const char* file;
    unsigned line;
    unsigned count, first;
  };
  std::vector<Group> groups;
  for (unsigned t = 0; t < r.nthreads; ++t) {
    Fiber& f = *r.fibers[t];
    if (f.state != FState::WaitBlock && f.state != FState::WaitWarp) continue;
    auto it = std::find_if(groups.begin(), groups.end(), [&](const Group& g) {
      return g.op == f.wait_op && g.line == f.wait_line && std::string_view(g.file) == f.wait_file;
    });
    if (it == groups.end()) groups.push_back({f.wait_op, f.wait_file, f.wait_line, 1, t});
    else ++it->count;
  }
  std::string m = strf("deadlock in kernel %s, block (%u,%u,%u): no thread can proceed;", r.desc, blockIdx.x,
                       blockIdx.y, blockIdx.z);
  for (const Group& g : groups) {
    char tid[48];
    fmt_tid(tid, sizeof tid, g.first);
    m += strf(" %u thread(s) (first %s) wait in %s at %s:%u;", g.count, tid, op_name(g.op), g.file, g.line);
  }
  m += strf(" %u of %u threads have not exited", r.blk.live, r.nthreads);
  return m;
}

void run_block(Runtime& r, Order o) {
  unsigned char *smem_lo = __start_emu_smem, *smem_hi = __stop_emu_smem;
  if (smem_lo && smem_hi > smem_lo) memset(smem_lo, 0xff, static_cast<size_t>(smem_hi - smem_lo));
  if (g_dyn_smem_bytes) memset(r.dyn, 0xff, g_dyn_smem_bytes);
  ++r.block_serial;  // SMEM_ARRAY variables poison themselves on first use in this block
  unsigned n = r.nthreads;
  Block& b = r.blk;
  b.live = n;
  b.arrived = 0;
  b.gen = 0;
  b.count[0] = b.count[1] = 0;
  for (unsigned w = 0; w < (n + 31) / 32; ++w) {
    Warp& wp = b.warps[w];
    unsigned lanes = std::min(32u, n - w * 32);
    wp.live = lanes == 32 ? ~0u : (1u << lanes) - 1;
    wp.arrived = 0;
    wp.gen = 0;
    wp.active[0] = wp.active[1] = 0;
    memset(wp.slot, 0xff, sizeof wp.slot);
  }
  unsigned bx = blockDim.x, by = blockDim.y;
  for (unsigned t = 0; t < n; ++t) {
    Fiber& f = *r.fibers[t];
    f.linear = t;
    f.tid = {t % bx, (t / bx) % by, t / (bx * by)};
    f.state = FState::Ready;
    prepare(f);
  }
  // Scheduling goes warp by warp: a warp's lanes run (each as far as it can) until the whole warp waits
  // at a block barrier or has exited, then the next warp runs. Warps thus drift as far apart as the block
  // barriers allow, which turns a missing __syncthreads between warps into a wrong result; lanes drift
  // apart between warp collectives, which does the same for a missing __syncwarp. A warp gets at most
  // kWarpRounds rounds per visit, so one that spins on a flag (with __syncwarp in the loop) waiting for
  // another warp does not starve it.
  constexpr int kWarpRounds = 1024;
  const unsigned nwarps = (n + 31) / 32;
  fill_order(r.warp_order, o, nwarps, r.rng);
  fill_order(r.lane_order, o, 32, r.rng);
  while (b.live > 0) {
    bool progress = false;
    for (unsigned w : r.warp_order) {
      bool warp_progress = true;
      for (int round = 0; warp_progress && round < kWarpRounds; ++round) {
        warp_progress = false;
        if (o == Order::Random) std::shuffle(r.lane_order.begin(), r.lane_order.end(), r.rng);
        for (unsigned l : r.lane_order) {
          unsigned t = w * 32 + l;
          if (t >= n) continue;
          Fiber& f = *r.fibers[t];
          if (f.state == FState::Done) continue;
          if (f.state == FState::WaitBlock && b.gen == f.wait_gen) continue;
          if (f.state == FState::WaitWarp && b.warps[w].gen == f.wait_gen) continue;
          resume(r, f);
          warp_progress = progress = true;
          if (r.failed) return;
        }
      }
    }
    if (!progress) {
      r.failed = true;
      r.code = cudaErrorLaunchFailure;
      r.msg = deadlock_message(r);
      return;
    }
    if (o == Order::Random) std::shuffle(r.warp_order.begin(), r.warp_order.end(), r.rng);
  }
}

// Blocks run in the chosen order too; `random` visits them in an affine permutation i -> (a*i + c) mod n.
struct BlockOrder {
  uint64_t n, a = 1, c = 0;
  Order o;
  BlockOrder(uint64_t count, Order ord, std::mt19937_64& rng) : n(count), o(ord) {
    if (o == Order::Random && n > 1) {
      do a = rng() % n; while (a == 0 || std::gcd(a, n) != 1);
      c = rng() % n;
    }
  }
  uint64_t operator()(uint64_t i) const {
    if (o == Order::Forward) return i;
    if (o == Order::Reverse) return n - 1 - i;
    return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * i + c) % n);
  }
};

std::atomic<int> g_order{-1};
std::atomic<uint64_t> g_seed{1};
std::atomic<uint64_t> g_seed_version{0};

}  // namespace

// ---- barriers and collectives (called from kernels) -------------------------------------------------
int block_barrier(int kind, int pred, const SrcLoc& loc) {
  Fiber& f = current("__syncthreads", loc);
  Runtime& r = rt();
  Block& b = r.blk;
  if (b.arrived == 0) {
    b.kind = kind;
    b.file = loc.file_name();
    b.line = loc.line();
    b.first = f.linear;
  } else if (b.line != loc.line() || std::string_view(b.file) != loc.file_name() || b.kind != kind) {
    // CUDA requires every thread of the block to reach the same __syncthreads; hardware may hang or
    // silently mis-synchronise, so this is an error here.
    char other[48];
    fmt_tid(other, sizeof other, b.first);
    fail(cudaErrorLaunchFailure, loc, "divergent __syncthreads: thread %s waits at %s:%u but this thread reached another one",
         other, b.file, b.line);
  }
  uint64_t g = b.gen;
  unsigned buf = g & 1;
  b.count[buf] += pred;
  if (++b.arrived == b.live) {
    release_block(b);
  } else {
    f.state = FState::WaitBlock;
    f.wait_gen = g;
    f.wait_op = 0;
    f.wait_file = loc.file_name();
    f.wait_line = loc.line();
    to_scheduler(f, false);
  }
  switch (kind) {
    case kBarCount: return b.count[buf];
    case kBarAnd: return b.count[buf] == b.n[buf];
    case kBarOr: return b.count[buf] > 0;
  }
  return 0;
}

const uint64_t* warp_collective(int op, unsigned mask, uint64_t value, const SrcLoc& loc, unsigned* active) {
  Fiber& f = current(op_name(op), loc);
  Runtime& r = rt();
  unsigned wi = f.linear / 32, lane = f.linear % 32;
  Warp& w = r.blk.warps[wi];
  if ((mask & w.live) != w.live)
    fail(cudaErrorLaunchFailure, loc,
         "%s with mask 0x%08x while lanes 0x%08x of warp %u are active: collectives over part of a warp are not emulated",
         op_name(op), mask, w.live, wi);
  if (w.arrived == 0) {
    w.op = op;
    w.file = loc.file_name();
    w.line = loc.line();
    w.first_lane = lane;
  } else if (w.op != op) {
    fail(cudaErrorLaunchFailure, loc, "divergent warp collectives in warp %u: lane %u waits in %s at %s:%u but lane %u reached %s",
         wi, w.first_lane, op_name(w.op), w.file, w.line, lane, op_name(op));
  }
  uint64_t g = w.gen;
  unsigned buf = g & 1;
  w.slot[buf][lane] = value;
  if (++w.arrived == std::popcount(w.live)) {
    release_warp(w);
  } else {
    f.state = FState::WaitWarp;
    f.wait_gen = g;
    f.wait_op = op;
    f.wait_file = loc.file_name();
    f.wait_line = loc.line();
    to_scheduler(f, false);
  }
  *active = w.active[buf];
  return w.slot[buf];
}

unsigned lane_id() {
  Fiber* f = running_fiber();
  return f ? f->linear % 32 : 0;
}

unsigned active_lanes() {
  Fiber* f = running_fiber();
  return f ? rt().blk.warps[f->linear / 32].live : 1u;
}

// PTX shfl.sync semantics: lanes form segments of `width`; a source outside the caller's segment (or
// past its end for up/down/bfly) yields the caller's own value.
int shfl_source(int mode, unsigned lane, int arg, int width, const SrcLoc& loc) {
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    fail(cudaErrorLaunchFailure, loc, "shuffle width %d is not a power of two in [1, 32]", width);
  int segmask = 32 - width, l = static_cast<int>(lane);
  int min_lane = l & segmask, max_lane = min_lane | (31 & ~segmask);
  int j = l;
  switch (mode) {
    case kShflIdx: j = min_lane | (arg & 31 & ~segmask); break;
    case kShflUp: j = l - arg; if (j < min_lane) j = l; break;
    case kShflDown: j = l + arg; if (j > max_lane) j = l; break;
    case kShflXor: j = l ^ (arg & 31); if (j > max_lane) j = l; break;
  }
  return j;
}

void fail(cudaError_t code, const SrcLoc& loc, const char* fmt, ...) {
  char what[640];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  Fiber* f = running_fiber();
  if (!f) {
    fprintf(stderr, "emu: %s (%s:%u), outside a kernel\n", what, loc.file_name(), loc.line());
    abort();  // device code called from host code: a build error, not reachable from input
  }
  Runtime& r = rt();
  if (!r.failed) {
    char tid[48];
    fmt_tid(tid, sizeof tid, f->linear);
    r.failed = true;
    r.code = code;
    r.msg = loc.line() ? strf("%s at %s:%u (kernel %s, block (%u,%u,%u), thread %s)", what, loc.file_name(), loc.line(),
                              r.desc, blockIdx.x, blockIdx.y, blockIdx.z, tid)
                       : strf("%s (kernel %s, block (%u,%u,%u), thread %s)", what, r.desc, blockIdx.x, blockIdx.y,
                              blockIdx.z, tid);
  }
  // Abandon this fiber: no unwinding, nothing on its stack owns heap memory (messages are formatted into
  // arrays), and the next block re-prepares every fiber.
  f->state = FState::Done;
  to_scheduler(*f, true);
  __builtin_trap();
}

void* static_smem(SmemSlot* slot, size_t bytes, const char* name) {
  SrcLoc here = SrcLoc::current();
  current("SMEM_ARRAY", here);
  Runtime& r = rt();
  if (slot->offset == 0) {
    size_t off = (r.arena_used + 127) / 128 * 128;
    if (!r.arena) {
      void* m = mmap(nullptr, kSmemArenaBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) fail(cudaErrorMemoryAllocation, here, "cannot map the static shared memory arena");
      r.arena = static_cast<unsigned char*>(m);
    }
    if (bytes > 227 * 1024 || off + bytes > kSmemArenaBytes)
      fail(cudaErrorLaunchOutOfResources, here, "static shared memory %s (%zu bytes) does not fit (%zu bytes in use)", name,
           bytes, r.arena_used);
    slot->offset = off;
    r.arena_used = off + bytes;
  }
  if (slot->block_serial != r.block_serial) {
    memset(r.arena + slot->offset, 0xff, bytes);
    slot->block_serial = r.block_serial;
  }
  return r.arena + slot->offset;
}

void dyn_smem_oob(ptrdiff_t byte_offset, size_t bytes) {
  fail(cudaErrorIllegalAddress, SrcLoc{}, "dynamic shared memory access of %zu bytes at byte offset %td is out of bounds (the launch has %zu bytes)",
       bytes, byte_offset, g_dyn_smem_bytes);
}

// ---- launch ---------------------------------------------------------------------------------------------
// "name(types)" from the launch site's text and param_types<P...>()'s "... [with P = {types}]".
void describe_kernel(char* out, size_t n, const char* name, const char* params) {
  std::string_view p = params;
  size_t b = p.find("P = {"), e = p.rfind("}]");
  if (b == std::string_view::npos || e == std::string_view::npos || e < b + 5) {
    snprintf(out, n, "%s", name);
    return;
  }
  std::string_view types = p.substr(b + 5, e - b - 5);
  snprintf(out, n, "%s(%.*s)", name, static_cast<int>(types.size()), types.data());
}

void launch(dim3 grid, dim3 block, size_t smem, cudaStream_t, const char* name, const char* params, const void* fn,
            void (*thunk)(void*), void* ctx) {
  if (running_fiber())
    fail(cudaErrorNotSupported, SrcLoc{}, "launch of %s from inside a kernel is not supported", name);
  uint64_t nthreads = uint64_t{block.x} * block.y * block.z;
  if (!grid.x || !grid.y || !grid.z || !block.x || !block.y || !block.z || block.x > 1024 || block.y > 1024 ||
      block.z > 64 || nthreads > kMaxBlockThreads || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    set_error(cudaErrorInvalidConfiguration,
              strf("launch of %s: invalid configuration grid (%u,%u,%u), block (%u,%u,%u)", name, grid.x, grid.y, grid.z,
                   block.x, block.y, block.z));
    return;
  }
  size_t limit = 48 * 1024;
  {
    Registry& g = reg();
    std::lock_guard<std::mutex> lk(g.mu);
    auto it = g.max_dyn_smem.find(fn);
    if (it != g.max_dyn_smem.end()) limit = static_cast<size_t>(it->second);
  }
  if (smem > limit) {
    set_error(cudaErrorInvalidValue, strf("launch of %s: %zu bytes of dynamic shared memory exceed the limit of %zu "
                                          "(raise it with cudaFuncSetAttribute)", name, smem, limit));
    return;
  }
  Runtime& r = rt();
  std::lock_guard<std::mutex> lk(r.launch_mu);
  if (!ensure_fibers(r, static_cast<unsigned>(nthreads))) {
    set_error(cudaErrorMemoryAllocation, strf("launch of %s: cannot map fiber stacks", name));
    return;
  }
  if (smem > r.dyn_cap) {
    size_t cap = (smem + 127) / 128 * 128;
    void* d = std::aligned_alloc(128, cap);
    if (!d) {
      set_error(cudaErrorMemoryAllocation, strf("launch of %s: cannot allocate dynamic shared memory", name));
      return;
    }
    std::free(r.dyn);
    r.dyn = static_cast<unsigned char*>(d);
    r.dyn_cap = cap;
  }
  Order o = order();  // first, so that EMU_SEED is read before the generator is seeded
  if (uint64_t v = g_seed_version.load(); v != r.seed_version) {
    r.seed_version = v;
    r.rng.seed(g_seed.load());
  }
  r.name = name;
  r.params = params;
  describe_kernel(r.desc, sizeof r.desc, name, params);
  r.thunk = thunk;
  r.ctx = ctx;
  r.nthreads = static_cast<unsigned>(nthreads);
  r.failed = false;
  r.code = cudaSuccess;
  r.msg.clear();
  r.cache_epoch = 0;
  gridDim = grid;
  blockDim = block;
  g_dyn_smem = r.dyn;
  g_dyn_smem_bytes = smem;
  BlockOrder blocks(uint64_t{grid.x} * grid.y * grid.z, o, r.rng);
  tl_in_launch = true;
  for (uint64_t i = 0; i < blocks.n && !r.failed; ++i) {
    uint64_t bl = blocks(i);
    blockIdx = {static_cast<unsigned>(bl % grid.x), static_cast<unsigned>(bl / grid.x % grid.y),
                static_cast<unsigned>(bl / (uint64_t{grid.x} * grid.y))};
    run_block(r, o);
  }
  tl_in_launch = false;
  g_dyn_smem_bytes = 0;
  if (r.failed) {
    set_error(r.code, r.msg);
    set_pending(r.code);
  }
}

}  // namespace detail

// ---- controls ---------------------------------------------------------------------------------------------
bool parse_order(const char* s, Order* out) {
  std::string_view v = s ? s : "";
  if (v == "forward") *out = Order::Forward;
  else if (v == "reverse") *out = Order::Reverse;
  else if (v == "random") *out = Order::Random;
  else return false;
  return true;
}

const char* order_name(Order o) {
  return o == Order::Reverse ? "reverse" : o == Order::Random ? "random" : "forward";
}

void set_order(Order o) { detail::g_order.store(static_cast<int>(o)); }

Order order() {
  int o = detail::g_order.load();
  if (o < 0) {
    Order parsed = Order::Forward;
    const char* env = getenv("EMU_ORDER");
    if (env && *env && !parse_order(env, &parsed))
      fprintf(stderr, "emu: ignoring EMU_ORDER=%s (expected forward, reverse or random)\n", env);
    if (const char* s = getenv("EMU_SEED")) set_seed(strtoull(s, nullptr, 10));
    int expected = -1;
    detail::g_order.compare_exchange_strong(expected, static_cast<int>(parsed));
    o = detail::g_order.load();
  }
  return static_cast<Order>(o);
}

void set_seed(uint64_t seed) {
  detail::g_seed.store(seed);
  detail::g_seed_version.fetch_add(1);
}

}  // namespace emu
