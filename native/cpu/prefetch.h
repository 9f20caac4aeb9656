// Software prefetches for the x86 kernels (GEMM and int8 tile loops). Include only from files built for x86.
#pragma once

namespace peft {

// As volatile asm: GCC treats a function holding only __builtin_prefetch calls as pure and deletes calls to
// it, so the intrinsic silently vanished from the helpers that issue them. The address goes in as a register,
// not a memory operand: a memory operand makes the compiler store every accumulator whose address escapes
// before each prefetch (28 stores per k-step in a kernel loop).
static inline void prefetch_l1(const void* p) { __asm__ volatile("prefetcht0 (%0)" : : "r"(p)); }
static inline void prefetch_l2(const void* p) { __asm__ volatile("prefetcht1 (%0)" : : "r"(p)); }

}  // namespace peft
