// What the tensor-core GEMMs share: each warp owns a 32x32 quadrant of the block's tile as 2x2 accumulator
// fragments. zero_2x2 clears them; mma_2x2 runs one k-step on it; store_2x2 writes it into a shared f32 (or int32) tile (row stride ld), where
// the position-dependent epilogue reads it (fragment layouts are unspecified, and differ when emulated).
#pragma once
#include "compat.cuh"

namespace peft::PEFT_CUDA_NS {

template <class Acc>
__device__ __forceinline__ void zero_2x2(Acc (&acc)[2][2]) {
PEFT_UNROLL
  for (int i = 0; i < 2; ++i)
PEFT_UNROLL
    for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(acc[i][j], typename Acc::element_type(0));
}

template <class Acc, class FA, class FB>
__device__ __forceinline__ void mma_2x2(Acc (&acc)[2][2], const FA (&a)[2], const FB (&b)[2]) {
PEFT_UNROLL
  for (int i = 0; i < 2; ++i)
PEFT_UNROLL
    for (int j = 0; j < 2; ++j) nvcuda::wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
}

template <class T, class Acc>
__device__ __forceinline__ void store_2x2(T* tile, int ld, int wm, int wn, const Acc (&acc)[2][2]) {
PEFT_UNROLL
  for (int i = 0; i < 2; ++i)
PEFT_UNROLL
    for (int j = 0; j < 2; ++j)
      nvcuda::wmma::store_matrix_sync(tile + (wm + i * 16) * ld + wn + j * 16, acc[i][j], ld, nvcuda::wmma::mem_row_major);
}

}  // namespace peft::PEFT_CUDA_NS
