// The kernels of fused LoRA on the cuda device (lora_ops.cu runs them with the GEMMs):
//  - lora_down: T = drop(x)·Aᵀ, the adapters' (M, r) projection kept for the backward, with the dropout
//    mask made on the fly from the CPU's Philox stream (bit-equal masks: element i draws lane i % 4 of
//    block i / 4, exactly as the dropout kernel and the CPU do). T is thin (r columns), so K is split
//    over the grid to fill the GPU: each split's partial sums go to scratch and lora_sum_splits adds them
//    in split order (deterministic);
//  - lora_gather: adapters' factors concatenated, scaled and transposed into f32 matrices;
//  - lora_merge: the in-place W += L·Rm streaming update (each element of W read and written once, the
//    rank terms added in f32 in rank order, as the CPU's rank_update, and rounded once);
//  - flag_not_below: safeMerge's finite check in W's dtype.
// The base product with T·Bᵀ riding on its output tile is the GEMMs' rank term (CudaRank).
#include "../core/philox.h"
#include "dtype.cuh"
#include "lora_launch.cuh"

namespace peft::PEFT_CUDA_NS {
namespace {

constexpr int kDownRows = 32, kDownRanks = 16, kDownK = 32, kDownThreads = 256;
static_assert(kDownThreads == kDownRows * kDownRanks / 2, "two outputs per thread");
static_assert(kLoraMaxRank == 65535 * kDownRanks, "the rank limit is the grid's");

// The CPU's dropout factor of element i: scale when its Philox uniform is >= keep_from, else 0.
__device__ __forceinline__ float drop_factor(int64_t i, uint32_t k0, uint32_t k1, float keep_from, float scale) {
  const Philox4x32 r = philox4x32_10(uint64_t(i / 4), k0, k1);
  return u32_to_unit(r.v[i % 4]) >= keep_from ? scale : 0.0f;
}

// A block: 32 rows x 16 ranks of T over k in [z·kchunk, (z+1)·kchunk) (z = blockIdx.z), walking it in steps
// of 32 through shared memory (x k-major, so a warp's reads of one k are broadcasts); each thread owns one
// row and two ranks 8 apart. Split z writes out + z·zstride (row stride ldo).
__global__ void __launch_bounds__(kDownThreads) lora_down_kernel(const void* x, DType xdt, int64_t M, int64_t K,
                                                                 int64_t kchunk, const void* A, DType adt, int64_t r,
                                                                 float* out, int64_t ldo, int64_t zstride, float keep_from,
                                                                 float scale, uint32_t k0, uint32_t k1) {
  SMEM_ARRAY(float, xs, [kDownK][kDownRows + 1]);
  SMEM_ARRAY(float, as, [kDownK][kDownRanks + 1]);
  const int tid = threadIdx.x, row = tid / 8, rank = tid % 8;
  const int64_t m0 = int64_t(blockIdx.x) * kDownRows, j0 = int64_t(blockIdx.y) * kDownRanks;
  const int64_t kbegin = int64_t(blockIdx.z) * kchunk, kend = kbegin + kchunk < K ? kbegin + kchunk : K;
  const bool drop = keep_from > 0.0f;
  float acc0 = 0.0f, acc1 = 0.0f;
  for (int64_t kb = kbegin; kb < kend; kb += kDownK) {
    for (int e = tid; e < kDownRows * kDownK; e += kDownThreads) {  // consecutive threads: consecutive k
      const int i = e / kDownK, k = e % kDownK;
      const int64_t m = m0 + i, kk = kb + k;
      float v = 0.0f;
      if (m < M && kk < kend) {
        v = load_f32(x, xdt, m * K + kk);
        if (drop) v *= drop_factor(m * K + kk, k0, k1, keep_from, scale);
      }
      xs[k][i] = v;
    }
    for (int e = tid; e < kDownRanks * kDownK; e += kDownThreads) {
      const int j = e / kDownK, k = e % kDownK;
      const int64_t jj = j0 + j, kk = kb + k;
      as[k][j] = jj < r && kk < kend ? load_f32(A, adt, jj * K + kk) : 0.0f;
    }
    __syncthreads();  // staged before any thread reads
PEFT_UNROLL
    for (int k = 0; k < kDownK; ++k) {
      const float xv = xs[k][row];
      acc0 = fmaf(xv, as[k][rank], acc0);
      acc1 = fmaf(xv, as[k][rank + 8], acc1);
    }
    __syncthreads();  // every thread is done with the stage before it is overwritten
  }
  const int64_t m = m0 + row;
  if (m >= M) return;
  float* o = out + int64_t(blockIdx.z) * zstride + m * ldo + j0;
  if (j0 + rank < r) gstore(o + rank, acc0);
  if (j0 + rank + 8 < r) gstore(o + rank + 8, acc1);
}

// T[m, j] (row stride ldt) = Σ_z P[z][m, j] over the splits in order; P (splits, M, r) contiguous.
__global__ void __launch_bounds__(kEltThreads) lora_sum_splits_kernel(const float* P, int64_t splits, int64_t M, int64_t r,
                                                                      float* T, int64_t ldt) {
  PEFT_GRID_STRIDE(e, M * r) {
    float s = 0.0f;
    for (int64_t z = 0; z < splits; ++z) s += gload(P + z * M * r + e);
    gstore(T + (e / r) * ldt + e % r, s);
  }
}

__global__ void __launch_bounds__(kEltThreads) lora_gather_kernel(const void* src, DType sdt, int64_t rows, int64_t cols,
                                                                  int64_t rs, int64_t cs, float f, float* dst, int64_t ld) {
  PEFT_GRID_STRIDE(e, rows * cols) {
    const int64_t i = e / cols, j = e % cols;
    gstore(dst + i * ld + j, f * load_f32(src, sdt, i * rs + j * cs));
  }
}

constexpr int kMergeThreads = 256;
constexpr int kMergeRows = int(kLoraMergeRows);

// A block: 32 rows x 256 columns of W; a thread owns one column of them (stores coalesce along the row).
// Each value of Rm is loaded once per block and serves 32 rows; L's rows go through shared memory.
__global__ void __launch_bounds__(kMergeThreads) lora_merge_kernel(const void* src, DType sdt, void* dst, DType ddt,
                                                                   int64_t rows, int64_t cols, const float* L,
                                                                   const float* Rm, int64_t R) {
  SMEM_ARRAY(float, Ls, [kMergeRows][16]);
  const int tid = threadIdx.x;
  const int64_t c = int64_t(blockIdx.x) * kMergeThreads + tid, r0 = int64_t(blockIdx.y) * kMergeRows;
  const bool col_ok = c < cols;
  float v[kMergeRows];
PEFT_UNROLL
  for (int i = 0; i < kMergeRows; ++i) v[i] = col_ok && r0 + i < rows ? load_f32(src, sdt, (r0 + i) * cols + c) : 0.0f;
  for (int64_t j0 = 0; j0 < R; j0 += 16) {
    for (int e = tid; e < kMergeRows * 16; e += kMergeThreads) {
      const int i = e / 16, j = e % 16;
      Ls[i][j] = r0 + i < rows && j0 + j < R ? gload(L + (r0 + i) * R + j0 + j) : 0.0f;
    }
    __syncthreads();  // staged before any thread reads
    const int steps = R - j0 < 16 ? int(R - j0) : 16;
    for (int j = 0; j < steps; ++j) {
      const float rm = col_ok ? gload(Rm + (j0 + j) * cols + c) : 0.0f;
PEFT_UNROLL
      for (int i = 0; i < kMergeRows; ++i) v[i] = fmaf(Ls[i][j], rm, v[i]);
    }
    __syncthreads();  // every thread is done with the stage before it is overwritten
  }
  if (!col_ok) return;
PEFT_UNROLL
  for (int i = 0; i < kMergeRows; ++i)
    if (r0 + i < rows) store_f32(dst, ddt, (r0 + i) * cols + c, v[i]);
}

__global__ void __launch_bounds__(kEltThreads) flag_not_below_kernel(const float* v, int64_t n, float bound, int* flag) {
  PEFT_GRID_STRIDE(i, n) {
    if (!(fabsf(gload(v + i)) < bound)) atomicMax(flag, 1);  // NaN fails the comparison too
  }
}

}  // namespace

int64_t lora_down_splits(int64_t M, int64_t K, int64_t r, int64_t scratch_floats) {
  const int64_t tiles = ((M + kDownRows - 1) / kDownRows) * ((r + kDownRanks - 1) / kDownRanks);
  int64_t splits = (K + kLoraDownChunk - 1) / kLoraDownChunk;
  if (splits * tiles > kLoraDownBlocks) splits = kLoraDownBlocks / tiles;
  if (M * r > 0 && splits > scratch_floats / (M * r)) splits = scratch_floats / (M * r);
  return splits < 1 ? 1 : splits;
}

cudaError_t launch_lora_down(const void* x, DType xdt, int64_t M, int64_t K, const void* A, DType adt, int64_t r, float* T,
                             int64_t ldt, float* partials, int64_t partial_floats, float keep_from, float scale, uint64_t seed,
                             uint64_t stream) {
  const RngKey key = rng_key(seed, stream);
  const int64_t splits = lora_down_splits(M, K, r, partials ? partial_floats : 0), kchunk = (K + splits - 1) / splits;
  const dim3 grid(unsigned((M + kDownRows - 1) / kDownRows), unsigned((r + kDownRanks - 1) / kDownRanks), unsigned(splits));
  if (splits == 1) {
    LAUNCH(grid, kDownThreads, 0, 0, lora_down_kernel)(x, xdt, M, K, kchunk, A, adt, r, T, ldt, 0, keep_from, scale, key.k0, key.k1);
    return cudaGetLastError();
  }
  LAUNCH(grid, kDownThreads, 0, 0, lora_down_kernel)(x, xdt, M, K, kchunk, A, adt, r, partials, r, M * r, keep_from, scale, key.k0,
                                                     key.k1);
  if (cudaError_t e = cudaGetLastError()) return e;
  LAUNCH(elt_grid(M * r), kEltThreads, 0, 0, lora_sum_splits_kernel)(partials, splits, M, r, T, ldt);
  return cudaGetLastError();
}

cudaError_t launch_lora_gather(const void* src, DType sdt, int64_t rows, int64_t cols, int64_t rs, int64_t cs, float f,
                               float* dst, int64_t ld) {
  LAUNCH(elt_grid(rows * cols), kEltThreads, 0, 0, lora_gather_kernel)(src, sdt, rows, cols, rs, cs, f, dst, ld);
  return cudaGetLastError();
}

cudaError_t launch_lora_merge(const void* src, DType sdt, void* dst, DType ddt, int64_t rows, int64_t cols, const float* L,
                              const float* Rm, int64_t R) {
  const dim3 grid(unsigned((cols + kMergeThreads - 1) / kMergeThreads), unsigned((rows + kMergeRows - 1) / kMergeRows));
  LAUNCH(grid, kMergeThreads, 0, 0, lora_merge_kernel)(src, sdt, dst, ddt, rows, cols, L, Rm, R);
  return cudaGetLastError();
}

cudaError_t launch_flag_not_below(const float* v, int64_t n, float bound, int* flag) {
  LAUNCH(elt_grid(n), kEltThreads, 0, 0, flag_not_below_kernel)(v, n, bound, flag);
  return cudaGetLastError();
}

}  // namespace peft::PEFT_CUDA_NS
