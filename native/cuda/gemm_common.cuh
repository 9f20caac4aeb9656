// What the f32 GEMMs (SIMT and TF32) share: element loads from strided views, the mapping of a block's
// threads onto the tile elements they stage, and the epilogue.
#pragma once
#include "dtype.cuh"
#include "launch.cuh"

namespace peft::PEFT_CUDA_NS {

// Element (i, j) of a strided view as f32; zero outside rows x cols (tiles are zero-padded at the edges,
// so the products need no masks).
__device__ __forceinline__ float load_view(const CudaMat& v, int64_t i, int64_t j, int64_t rows, int64_t cols) {
  if (i >= rows || j >= cols) return 0.f;
  return load_f32(v.p, DType(v.dt), i * v.rs + j * v.cs);
}

// Element (i, k) of A as staged: times the per-k scale a_ks[k] when there is one (one f32 product, rounded once).
__device__ __forceinline__ float load_a(const CudaGemm& g, int64_t i, int64_t k) {
  const float v = load_view(g.A, i, k, g.M, g.K);
  return g.a_ks && k < g.K ? v * gload(g.a_ks + k) : v;
}

// Which (outer, k) of a tile with kOuter rows of A (or columns of B) and kK k-steps the block's staged
// element e is. Consecutive threads take consecutive addresses along the view's unit-stride dimension, so
// global reads coalesce for either layout (the choice is uniform across the block).
struct TileSlot {
  int outer, k;
};
template <int kOuter, int kK>
__device__ __forceinline__ TileSlot tile_slot(int e, bool k_contiguous) {
  if (k_contiguous) return {e / kK, e % kK};
  return {e % kOuter, e / kOuter};
}
// B(k, n) lives at k*rs + n*cs: its k runs are contiguous unless its n stride is 1.
__device__ __forceinline__ bool a_k_contiguous(const CudaGemm& g) { return g.A.cs == 1; }
__device__ __forceinline__ bool b_k_contiguous(const CudaGemm& g) { return g.B.cs != 1; }

// One accumulated element of C, in the order of the CPU backend's reference GEMM: alpha · acc, + bias,
// ⊙ col_scale, + the old C when accumulating, one rounding into C's dtype.
__device__ __forceinline__ void gemm_epilogue(const CudaGemm& g, int64_t m, int64_t n, float acc) {
  float v = g.alpha * acc;
  if (g.bias) v += load_f32(g.bias, DType(g.bias_dt), n);
  if (g.col_scale) v *= gload(g.col_scale + n);
  const int64_t at = m * g.ldc + n;
  if (g.accumulate) v += load_f32(g.C, DType(g.c_dt), at);
  store_f32(g.C, DType(g.c_dt), at, v);
}

}  // namespace peft::PEFT_CUDA_NS
