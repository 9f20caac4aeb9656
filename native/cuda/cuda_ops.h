// Host API of the CUDA kernels, for the addon's op table. Two implementations with the same signatures:
//   peft::cuda_gpu::*  real CUDA (cuda_ops.cu and the kernel files built by nvcc; only when nvcc exists)
//   peft::cuda_emu::*  the same sources built by g++ against the CPU emulator (native/cuda/emu/*.cc)
// so one binary can hold both and pick per device (NODE_PEFT_CUDA=emu selects the emulated one).
//
// Conventions:
//  - Every function returns 0 on success, otherwise a cudaError_t value (1 = cudaErrorInvalidValue for a
//    rejected argument) and, when `err` is non-null, a message naming the op, the arguments and the cause.
//  - Pointers passed as device memory come from cuda_malloc. Element counts and sizes are in elements of
//    the given dtype; dtype codes are peft::DType (F32=0, F16=1, BF16=2, I8=3, U8=4, I32=5, I64=6).
//  - Compute calls are synchronous: they return after the kernel has finished, with its error if any.
//    Emulated errors (out-of-bounds access, deadlock) fail the call; they never end the process.
//  - f16/bf16 results are computed in f32 and rounded once, to nearest even.
//
// Building:
//  - GPU: nvcc compiles native/cuda/*.cu (C++17 or later; -gencode for sm_80, sm_90 and compute_90 PTX;
//    static cudart). scripts/cuda-check.sh does the same compile and checks ptxas for spills.
//  - Emulated: the host compiler compiles native/cuda/emu/*.cc with -std=c++20 -fvisibility=hidden (and
//    -pthread); kernels_emu.cc pulls in the .cu files. scripts/cuda-emu-test.sh builds and runs the tests.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#define PEFT_CUDA_OPS_DECLARATIONS                                                                              \
  /* available: kernels can run; emulated: on the CPU; reason: why not, or what runs them. */                   \
  int cuda_runtime_state(bool* available, bool* emulated, std::string* reason);                                 \
  int cuda_malloc(void** ptr, size_t bytes, std::string* err);                                                  \
  int cuda_free(void* ptr, std::string* err);                                                                   \
  int cuda_memcpy_h2d(void* dst, const void* src, size_t bytes, std::string* err);                              \
  int cuda_memcpy_d2h(void* dst, const void* src, size_t bytes, std::string* err);                              \
  int cuda_memcpy_d2d(void* dst, const void* src, size_t bytes, std::string* err);                              \
  int cuda_memset(void* dst, int byte_value, size_t bytes, std::string* err);                                   \
  int cuda_synchronize(std::string* err);                                                                       \
  /* dst = src as dst_dt. f32/f16/bf16 convert into each other; equal dtypes (any) copy. No overlap. */         \
  int cuda_convert(const void* src, int src_dt, void* dst, int dst_dt, int64_t n, std::string* err);            \
  /* out = a + b (f32/f16/bf16); out may be a or b, other overlaps are rejected. */                             \
  int cuda_add(const void* a, const void* b, void* out, int dt, int64_t n, std::string* err);                   \
  /* y = alpha*x + beta*y (f32/f16/bf16); y is not read when beta == 0; x may be y (then y *= alpha + beta). */  \
  int cuda_scale(float alpha, const void* x, float beta, void* y, int dt, int64_t n, std::string* err);         \
  /* y[M,N] = x[M,K] * w[N,K]^T (+ bias[N]), row-major, contiguous. in_dt: F16 or BF16 (x and w);              \
     bias: null or bias_dt F32/F16/BF16; out_dt: F32/F16/BF16. f32 accumulation. M, N or K may be 0. */          \
  int cuda_gemm_nt(const void* x, const void* w, const void* bias, void* y, int in_dt, int bias_dt, int out_dt, \
                   int64_t M, int64_t N, int64_t K, std::string* err);

namespace peft {
namespace cuda_gpu {
PEFT_CUDA_OPS_DECLARATIONS
}
namespace cuda_emu {
PEFT_CUDA_OPS_DECLARATIONS
}
}  // namespace peft
