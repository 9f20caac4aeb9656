// The rank-R term of a fused LoRA product (CudaRank: A2[M,R]·B2[R,N]) added to a tensor-core GEMM's f32
// output tile in shared memory, after store_matrix_sync and before the position-dependent epilogue. The
// rank part stays in f32 (the adapters are f32; T = drop(x)·Aᵀ is f32): 16 ranks at a time, the tile's rows
// of A2 and columns of B2 are staged in shared memory, then each thread adds its elements' 16 k-steps.
#pragma once
#include "gemm_common.cuh"

namespace peft::PEFT_CUDA_NS {

constexpr int kRankStep = 16;

// tile: kBM x kBN floats with row stride kLd (rows m0.., columns n0.. of C). Every thread of the block calls
// it (it synchronises); a no-op when rank.R == 0.
template <int kBM, int kBN, int kLd, int kThreads>
__device__ __forceinline__ void add_rank_tile(float* tile, const CudaRank& rank, int64_t m0, int64_t n0, int64_t M,
                                              int64_t N) {
  if (rank.R == 0) return;
  SMEM_ARRAY(float, As, [kBM][kRankStep + 1]);  // the pad staggers the row reads of a warp
  SMEM_ARRAY(float, Bs, [kRankStep][kBN]);
  const int tid = threadIdx.x;
  for (int64_t j0 = 0; j0 < rank.R; j0 += kRankStep) {
    for (int e = tid; e < kBM * kRankStep; e += kThreads)
      As[e / kRankStep][e % kRankStep] = rank.scale * load_view(rank.A2, m0 + e / kRankStep, j0 + e % kRankStep, M, rank.R);
    for (int e = tid; e < kRankStep * kBN; e += kThreads)
      Bs[e / kBN][e % kBN] = load_view(rank.B2, j0 + e / kBN, n0 + e % kBN, rank.R, N);
    __syncthreads();  // staged before any thread reads
    for (int e = tid; e < kBM * kBN; e += kThreads) {  // a warp: one row, consecutive columns
      const int r = e / kBN, c = e % kBN;
      float v = tile[r * kLd + c];
PEFT_UNROLL
      for (int j = 0; j < kRankStep; ++j) v = fmaf(As[r][j], Bs[j][c], v);  // zero-padded past R
      tile[r * kLd + c] = v;
    }
    __syncthreads();  // every thread is done with the stage before the next one overwrites it
  }
}

}  // namespace peft::PEFT_CUDA_NS
