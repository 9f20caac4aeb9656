// CUDA-on-CPU emulation, part 2: what kernel code calls — thread indices, barriers, warp collectives,
// atomics, bounds-checked memory access and dynamic shared memory.
//
// Each CUDA thread of a block is a fiber; a barrier or collective is a yield to the scheduler
// (emu_runtime.cc). Violations (out-of-bounds access, divergent barriers, partial-mask collectives) end
// the launch with an error instead of crashing: the failing fiber records a message and switches straight
// back to the scheduler, so nothing unwinds across fiber stacks.
#pragma once
#include <atomic>
#include <source_location>

#include "emu_types.h"

namespace emu {
namespace detail {
// Whether a __PRETTY_FUNCTION__ names a template instantiation ("... [with T = ...]").
constexpr bool in_template(const char* pretty) {
  for (const char* p = pretty; *p; ++p)
    if (p[0] == '[' && p[1] == 'w' && p[2] == 'i' && p[3] == 't' && p[4] == 'h' && p[5] == ' ') return true;
  return false;
}
// Bookkeeping of one SMEM_ARRAY variable (a zero-initialised static: no guard variable).
struct SmemSlot {
  size_t offset;          // in the static shared memory arena; 0 until first use
  uint64_t block_serial;  // the block that last poisoned it
};
// The variable's storage, poisoned with 0xFF the first time a thread of a new block reaches it.
void* static_smem(SmemSlot* slot, size_t bytes, const char* name);
}  // namespace detail
}  // namespace emu

// Static shared memory, the plain way: one named section holds the __shared__ variables of non-template
// functions; blocks run one at a time, so they can share it, and the linker's __start_/__stop_ symbols
// let the runtime poison it before each block. `static` makes it zero-initialised data (no guard
// variable); `used` keeps the compiler from assuming no other code touches it.
// GCC drops section attributes on statics of template instantiations (GCC bug 70435), which would leave
// them silently unpoisoned, so templates are refused here and use SMEM_ARRAY (compat.cuh) instead. The
// variables of external-linkage inline functions cannot share the section with those of internal
// functions either (GCC reports a section type conflict): put kernels in an anonymous namespace.
#define __shared__                                                                                       \
  static_assert(!::emu::detail::in_template(__PRETTY_FUNCTION__),                                       \
                "__shared__ in a template: the emulator cannot poison it (GCC bug 70435); use SMEM_ARRAY"); \
  static __attribute__((section("emu_smem"), aligned(16), used))

namespace emu {

// The indices of the fiber that is running; the scheduler sets them before resuming a fiber.
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

using SrcLoc = std::source_location;

namespace detail {
// Barrier kinds for __syncthreads and its _count/_and/_or forms.
enum BarKind : int { kBarSync = 0, kBarCount = 1, kBarAnd = 2, kBarOr = 3 };
// Warp collective kinds; every lane of a warp must reach the same kind in the same round.
enum WarpOp : int { kWarpSync = 1, kWarpShfl = 2, kWarpVote = 3, kWarpMmaLoad = 4, kWarpMmaStore = 5, kWarpMma = 6 };
enum ShflMode : int { kShflIdx = 0, kShflUp = 1, kShflDown = 2, kShflXor = 3 };

int block_barrier(int kind, int pred, const SrcLoc& loc);
// Deposits `value` for this lane, waits for every active lane of the warp, and returns the 32 deposited
// values (stable until this lane's next collective). `*active` receives the lanes that took part.
const uint64_t* warp_collective(int op, unsigned mask, uint64_t value, const SrcLoc& loc, unsigned* active);
unsigned lane_id();
unsigned active_lanes();
// Ends the launch with `code` and a printf-style message. Never returns into the kernel.
[[noreturn]] void fail(cudaError_t code, const SrcLoc& loc, const char* fmt, ...) __attribute__((format(printf, 3, 4)));

// Dynamic shared memory of the running block (128-byte aligned, poisoned with 0xFF before each block).
extern unsigned char* g_dyn_smem;
extern size_t g_dyn_smem_bytes;
[[noreturn]] void dyn_smem_oob(ptrdiff_t byte_offset, size_t bytes);

int shfl_source(int mode, unsigned lane, int arg, int width, const SrcLoc& loc);
}  // namespace detail

// Is [p, p + bytes) inside static or dynamic shared memory, the running thread's stack, or one cudaMalloc
// (or register_memory) allocation? Inside a kernel a bad range ends the launch with
// cudaErrorIllegalAddress; elsewhere it returns false and sets the calling thread's last error.
bool check_access(const void* p, size_t bytes, const SrcLoc& loc = SrcLoc::current());

// ---- barriers -----------------------------------------------------------------------------------------
inline void __syncthreads(const SrcLoc& loc = SrcLoc::current()) { detail::block_barrier(detail::kBarSync, 0, loc); }
inline int __syncthreads_count(int p, const SrcLoc& loc = SrcLoc::current()) {
  return detail::block_barrier(detail::kBarCount, p != 0, loc);
}
inline int __syncthreads_and(int p, const SrcLoc& loc = SrcLoc::current()) {
  return detail::block_barrier(detail::kBarAnd, p != 0, loc);
}
inline int __syncthreads_or(int p, const SrcLoc& loc = SrcLoc::current()) {
  return detail::block_barrier(detail::kBarOr, p != 0, loc);
}
// Blocks run one at a time on one OS thread, so fences only need to stop compiler reordering.
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
[[noreturn]] inline void __trap(const SrcLoc& loc = SrcLoc::current()) {
  detail::fail(cudaErrorAssert, loc, "__trap() called");
}

// ---- warp collectives ---------------------------------------------------------------------------------
// The mask must name every active lane of the warp: sub-warp groups running different collectives at the
// same time are not modelled, and are reported instead of silently mis-executed.
inline void __syncwarp(unsigned mask = 0xffffffffu, const SrcLoc& loc = SrcLoc::current()) {
  unsigned active;
  detail::warp_collective(detail::kWarpSync, mask, 0, loc, &active);
}
inline unsigned __activemask() { return detail::active_lanes(); }

namespace detail {
template <class T>
T shfl(int mode, unsigned mask, T v, int arg, int width, const SrcLoc& loc) {
  static_assert(std::is_trivially_copyable_v<T>, "shuffled type must be trivially copyable");
  constexpr size_t kWords = (sizeof(T) + 7) / 8;
  uint64_t in[kWords] = {}, out[kWords];
  std::memcpy(in, &v, sizeof(T));
  int src = shfl_source(mode, lane_id(), arg, width, loc);
  for (size_t i = 0; i < kWords; ++i) {  // one exchange per 8 bytes, like the hardware's 32-bit pieces
    unsigned active;
    out[i] = warp_collective(kWarpShfl, mask, in[i], loc, &active)[src];
  }
  T r;
  std::memcpy(&r, out, sizeof(T));
  return r;
}
// Returns the lanes that voted true; `*active` receives the lanes that took part.
inline unsigned vote(unsigned mask, int pred, const SrcLoc& loc, unsigned* active_out) {
  unsigned active;
  const uint64_t* s = warp_collective(kWarpVote, mask, pred != 0, loc, &active);
  *active_out = active;
  unsigned bits = 0;
  for (unsigned l = 0; l < 32; ++l)
    if (((active >> l) & 1u) && s[l]) bits |= 1u << l;
  return bits;
}
}  // namespace detail

template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32, const SrcLoc& loc = SrcLoc::current()) {
  return detail::shfl(detail::kShflIdx, mask, v, src, width, loc);
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, const SrcLoc& loc = SrcLoc::current()) {
  return detail::shfl(detail::kShflUp, mask, v, static_cast<int>(delta), width, loc);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, const SrcLoc& loc = SrcLoc::current()) {
  return detail::shfl(detail::kShflDown, mask, v, static_cast<int>(delta), width, loc);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const SrcLoc& loc = SrcLoc::current()) {
  return detail::shfl(detail::kShflXor, mask, v, lane_mask, width, loc);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const SrcLoc& loc = SrcLoc::current()) {
  unsigned active;
  return detail::vote(mask, pred, loc, &active) & mask;
}
inline int __any_sync(unsigned mask, int pred, const SrcLoc& loc = SrcLoc::current()) {
  unsigned active;
  return (detail::vote(mask, pred, loc, &active) & mask) != 0;
}
inline int __all_sync(unsigned mask, int pred, const SrcLoc& loc = SrcLoc::current()) {
  unsigned active;
  unsigned yes = detail::vote(mask, pred, loc, &active);
  return (yes & active & mask) == (active & mask);
}

// ---- atomics ----------------------------------------------------------------------------------------------
// One block runs at a time, but std::atomic_ref keeps them atomic should the runtime ever run blocks in
// parallel. Each checks its address like any global access.
namespace detail {
template <class T, class F>
T atomic_rmw(T* p, F f, const SrcLoc& loc) {
  check_access(p, sizeof(T), loc);
  std::atomic_ref<T> r(*p);
  T old = r.load(std::memory_order_relaxed);
  while (!r.compare_exchange_weak(old, f(old), std::memory_order_relaxed)) {
  }
  return old;
}
}  // namespace detail
#define EMU_ATOMIC_(name, T, expr)                                             \
  inline T name(T* p, T v, const SrcLoc& loc = SrcLoc::current()) {            \
    return detail::atomic_rmw(p, [v]([[maybe_unused]] T o) -> T { return expr; }, loc);         \
  }
EMU_ATOMIC_(atomicAdd, int, o + v)
EMU_ATOMIC_(atomicAdd, unsigned, o + v)
EMU_ATOMIC_(atomicAdd, unsigned long long, o + v)
EMU_ATOMIC_(atomicAdd, float, o + v)
EMU_ATOMIC_(atomicAdd, double, o + v)
EMU_ATOMIC_(atomicSub, int, o - v)
EMU_ATOMIC_(atomicSub, unsigned, o - v)
EMU_ATOMIC_(atomicMax, int, o > v ? o : v)
EMU_ATOMIC_(atomicMax, unsigned, o > v ? o : v)
EMU_ATOMIC_(atomicMax, long long, o > v ? o : v)
EMU_ATOMIC_(atomicMax, unsigned long long, o > v ? o : v)
EMU_ATOMIC_(atomicMin, int, o < v ? o : v)
EMU_ATOMIC_(atomicMin, unsigned, o < v ? o : v)
EMU_ATOMIC_(atomicMin, long long, o < v ? o : v)
EMU_ATOMIC_(atomicMin, unsigned long long, o < v ? o : v)
EMU_ATOMIC_(atomicExch, int, v)
EMU_ATOMIC_(atomicExch, unsigned, v)
EMU_ATOMIC_(atomicExch, unsigned long long, v)
EMU_ATOMIC_(atomicExch, float, v)
EMU_ATOMIC_(atomicAnd, int, o & v)
EMU_ATOMIC_(atomicAnd, unsigned, o & v)
EMU_ATOMIC_(atomicOr, int, o | v)
EMU_ATOMIC_(atomicOr, unsigned, o | v)
EMU_ATOMIC_(atomicXor, int, o ^ v)
EMU_ATOMIC_(atomicXor, unsigned, o ^ v)
#undef EMU_ATOMIC_
#define EMU_ATOMIC_CAS_(T)                                                        \
  inline T atomicCAS(T* p, T cmp, T v, const SrcLoc& loc = SrcLoc::current()) {  \
    check_access(p, sizeof(T), loc);                                              \
    std::atomic_ref<T>(*p).compare_exchange_strong(cmp, v);                       \
    return cmp;                                                                   \
  }
EMU_ATOMIC_CAS_(int)
EMU_ATOMIC_CAS_(unsigned)
EMU_ATOMIC_CAS_(unsigned long long)
#undef EMU_ATOMIC_CAS_

template <class T>
T __ldg(const T* p, const SrcLoc& loc = SrcLoc::current()) {
  check_access(p, sizeof(T), loc);
  return *p;
}

// ---- dynamic shared memory ------------------------------------------------------------------------------
// What DYN_SMEM gives a kernel in the emulated build: a pointer that checks every element access against
// the launch's dynamic shared memory size. It converts to T* (unchecked) for APIs that take pointers.
template <class T>
class SmemPtr {
 public:
  SmemPtr(T* base, ptrdiff_t off) : base_(base), off_(off) {}
  template <class I, std::enable_if_t<std::is_integral_v<I>, int> = 0>
  T& operator[](I i) const { return at(off_ + static_cast<ptrdiff_t>(i)); }
  T& operator*() const { return at(off_); }
  T* operator->() const { return &at(off_); }
  template <class I, std::enable_if_t<std::is_integral_v<I>, int> = 0>
  SmemPtr operator+(I i) const { return {base_, off_ + static_cast<ptrdiff_t>(i)}; }
  template <class I, std::enable_if_t<std::is_integral_v<I>, int> = 0>
  SmemPtr operator-(I i) const { return {base_, off_ - static_cast<ptrdiff_t>(i)}; }
  template <class I, std::enable_if_t<std::is_integral_v<I>, int> = 0>
  SmemPtr& operator+=(I i) { off_ += static_cast<ptrdiff_t>(i); return *this; }
  SmemPtr& operator++() { ++off_; return *this; }
  operator T*() const { return base_ + off_; }

 private:
  T& at(ptrdiff_t i) const {
    ptrdiff_t byte = i * static_cast<ptrdiff_t>(sizeof(T));
    if (byte < 0 || static_cast<size_t>(byte) + sizeof(T) > detail::g_dyn_smem_bytes)
      detail::dyn_smem_oob(byte, sizeof(T));
    return base_[i];
  }
  T* base_;
  ptrdiff_t off_;
};
template <class T>
SmemPtr<T> dyn_smem() { return {reinterpret_cast<T*>(detail::g_dyn_smem), 0}; }

}  // namespace emu
