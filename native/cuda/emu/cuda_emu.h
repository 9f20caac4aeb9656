// CUDA-on-CPU emulation: lets g++ compile the project's .cu kernels and run them on the CPU, so tests
// cover the CUDA kernels on machines without a GPU. Include it through native/cuda/compat.cuh, which
// picks it when the compiler is not nvcc. The runtime is native/cuda/emu/emu_runtime.cc.
//
// Model:
//  - the threads of a block are fibers (hand-written context switch on x86-64, ucontext elsewhere) with
//    guarded 64 KiB stacks (EMU_STACK_KB); a thread runs until it blocks in a barrier or collective, and
//    a warp runs until all its lanes wait at a block barrier, so threads and warps drift as far apart as
//    the synchronisation allows (a missing barrier shows up as a wrong result); blocks run one after the
//    other; launches are synchronous and serialised;
//  - EMU_ORDER=forward|reverse|random (or emu::set_order) permutes the order threads and blocks run in;
//  - shared memory (static and dynamic) and cudaMalloc memory are filled with 0xFF bytes before use: NaN
//    for f32/f16/bf16 and -1 for integers (static shared memory has no type, so one pattern serves both);
//    static shared memory is __shared__ in non-template functions (a named section) and SMEM_ARRAY
//    anywhere (an arena), because GCC drops the section attribute in templates;
//  - exited threads leave barriers and warps, as on Volta and later;
//  - deadlocks, divergent __syncthreads, partial-mask collectives and out-of-bounds accesses (global
//    memory through check_access/EMU_CHECK, dynamic shared memory through DYN_SMEM) end the launch with an
//    error code and a message (emu::last_error_message()); they never abort the process.
// Not modelled: inline PTX (guard it with PEFT_HAS_PTX), grid-wide sync, spinning on other blocks, a
// thread that loops forever without a barrier (hangs), overflow of the fiber stack (guard page: SIGSEGV),
// collectives over part of a warp (reported as errors), the bounds of each static shared array (only
// the shared region as a whole is checked; the sanitizer test build's -fsanitize=bounds checks indices).
#pragma once
#include "emu_types.h"
#include "emu_device.h"
#include "emu_host.h"
#include "emu_wmma.h"

using namespace emu;  // kernels name threadIdx, __half, cudaMalloc, ... unqualified, as under nvcc
