// Block-wide reductions for the row kernels: a warp reduces with butterfly shuffles, then every thread
// combines the per-warp results in warp order, so each thread holds the same value and the result does not
// depend on scheduling (a row's sum is the same in every run). blockDim.x must be a multiple of 32.
#pragma once
#include "compat.cuh"

namespace peft::PEFT_CUDA_NS {

struct SumOp {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
// The larger of two values; NaN wins, so a NaN anywhere in a row reaches the result as it does on the CPU.
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return (a > b || a != a) ? a : b; }
};

// `scratch` holds at least blockDim.x / 32 values in shared memory; it may be reused after this returns.
template <class T, class Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T* scratch) {
PEFT_UNROLL
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warps = int(blockDim.x) / 32;
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  T r = scratch[0];
  for (int w = 1; w < warps; ++w) r = op(r, scratch[w]);
  __syncthreads();  // every thread has read scratch before a later reduction overwrites it
  return r;
}

}  // namespace peft::PEFT_CUDA_NS
