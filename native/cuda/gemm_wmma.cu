// y[M,N] = x[M,K] * W[N,K]^T (+ bias[N]) on tensor cores through WMMA m16n16k16: f16 or bf16 inputs,
// f32 accumulation, f32 / f16 / bf16 output (one rounding, after the bias add), any M, N, K.
//
// A block computes a 64x64 tile of y with 4 warps, each owning a 32x32 quadrant (2x2 fragments), and
// walks K in steps of 32. x and W tiles travel through shared memory as 8-element chunks (one 16-byte
// vector when K % 8 == 0 and the pointers are aligned); chunks that cross an edge of x or W are
// zero-filled, so the MMA never sees out-of-range data and no fragment needs masking. The next k-tile
// is fetched into registers while the current one is multiplied.
// A fused LoRA's rank-R term (rank) is added in f32 to the stored tile (lora_rank_tile.cuh).
// The epilogue (bias, conversion, edge masking) depends on each element's position, so it runs on the
// tile stored to shared memory with store_matrix_sync, never on fragment registers: which element a lane
// holds is unspecified on the GPU (and different again in the emulator).
#include "dtype.cuh"
#include "launch.cuh"
#include "lora_rank_tile.cuh"
#include "wmma_quadrant.cuh"

namespace peft::PEFT_CUDA_NS {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kBM = int(kGemmTileM), kBN = int(kGemmTileN), kBK = 32;
constexpr int kGemmThreads = 128;
constexpr int kLdAB = kBK + 8;  // elements; the pad staggers rows across banks, keeps rows 16-byte aligned
constexpr int kLdC = kBN + 4;   // floats
constexpr int kChunksPerRow = kBK / 8;
constexpr int kChunks = kBM * kChunksPerRow / kGemmThreads;  // 8-element chunks per thread per operand
constexpr int kSmemAB = 2 * kBM * kLdAB * 2;                 // x and W tiles (2-byte elements)
constexpr int kSmemC = kBM * kLdC * 4;                       // the f32 output tile, aliasing them
constexpr int kSmemBytes = kSmemAB > kSmemC ? kSmemAB : kSmemC;
static_assert(kBM == kBN && kChunks * kGemmThreads == kBM * kChunksPerRow, "tile shape");
// WMMA needs 32-byte aligned tile pointers: rows of 16 x kLdAB elements, k offsets of 16 elements, the W
// tile after the x tile, and rows of 16 x kLdC floats must all be multiples of 32 bytes.
static_assert((16 * kLdAB * 2) % 32 == 0 && (kBM * kLdAB * 2) % 32 == 0 && (16 * kLdC * 4) % 32 == 0, "alignment");

__device__ __forceinline__ unsigned short bits16(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ unsigned short bits16(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

// Elements [k, k+8) of row r of a [rows, K] matrix, zero where r or k is out of range.
template <class T>
__device__ __forceinline__ uint4 load_chunk(const T* __restrict__ base, int64_t rows, int64_t K, int64_t r, int64_t k,
                                            bool vec) {
  uint4 v = make_uint4(0u, 0u, 0u, 0u);  // +0.0 in both f16 and bf16
  if (r >= rows || k >= K) return v;
  const T* p = base + r * K + k;
  if (vec) return gload(reinterpret_cast<const uint4*>(p));  // K % 8 == 0, so the whole chunk is in range
  unsigned h[8];
PEFT_UNROLL
  for (int j = 0; j < 8; ++j) h[j] = k + j < K ? bits16(gload(p + j)) : 0u;
  v.x = h[0] | (h[1] << 16);
  v.y = h[2] | (h[3] << 16);
  v.z = h[4] | (h[5] << 16);
  v.w = h[6] | (h[7] << 16);
  return v;
}

template <class T>
__global__ void __launch_bounds__(kGemmThreads) gemm_nt_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                              const void* __restrict__ bias, DType bias_dt,
                                                              void* __restrict__ y, DType out_dt, int64_t M,
                                                              int64_t N, int64_t K, CudaRank rank) {
  SMEM_ARRAY(unsigned char, smem, [kSmemBytes]);
  T(*xs)[kLdAB] = reinterpret_cast<T(*)[kLdAB]>(smem);
  T(*ws)[kLdAB] = reinterpret_cast<T(*)[kLdAB]>(smem + kBM * kLdAB * sizeof(T));
  float(*ys)[kLdC] = reinterpret_cast<float(*)[kLdC]>(smem);

  const int tid = threadIdx.x, warp = tid / 32;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  const int64_t m0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * kBN;
  const bool vec = K % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
  zero_2x2(acc);

  // This thread's chunks: chunk c covers row c / kChunksPerRow, columns (c % kChunksPerRow) * 8 + [0, 8).
  uint4 rx[kChunks], rw[kChunks];
PEFT_UNROLL
  for (int i = 0; i < kChunks; ++i) {
    const int c = tid + i * kGemmThreads, row = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    rx[i] = load_chunk(x, M, K, m0 + row, col, vec);
    rw[i] = load_chunk(w, N, K, n0 + row, col, vec);
  }

  const int64_t ktiles = (K + kBK - 1) / kBK;
  for (int64_t kt = 0; kt < ktiles; ++kt) {
PEFT_UNROLL
    for (int i = 0; i < kChunks; ++i) {
      const int c = tid + i * kGemmThreads, row = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
      store_vec(&xs[row][col], rx[i]);
      store_vec(&ws[row][col], rw[i]);
    }
    __syncthreads();  // tiles complete before any warp reads them
    if (kt + 1 < ktiles) {
      const int64_t k0 = (kt + 1) * kBK;
PEFT_UNROLL
      for (int i = 0; i < kChunks; ++i) {
        const int c = tid + i * kGemmThreads, row = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
        rx[i] = load_chunk(x, M, K, m0 + row, k0 + col, vec);
        rw[i] = load_chunk(w, N, K, n0 + row, k0 + col, vec);
      }
    }
PEFT_UNROLL
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b[2];  // W rows are B's columns
PEFT_UNROLL
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], &xs[wm + i * 16][kk], kLdAB);
PEFT_UNROLL
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], &ws[wn + j * 16][kk], kLdAB);
      mma_2x2(acc, a, b);
    }
    __syncthreads();  // every warp is done with the tiles before they are overwritten
  }

  // The output tile reuses the input tiles' shared memory: the loop's last barrier ended their use.
  store_2x2(&ys[0][0], kLdC, wm, wn, acc);
  __syncthreads();
  add_rank_tile<kBM, kBN, kLdC, kGemmThreads>(&ys[0][0], rank, m0, n0, M, N);
  // Consecutive threads write consecutive columns of a row (coalesced).
  for (int e = tid; e < kBM * kBN; e += kGemmThreads) {
    const int r = e / kBN, c = e % kBN;
    const int64_t gm = m0 + r, gn = n0 + c;
    if (gm < M && gn < N) {
      float v = ys[r][c];
      if (bias) v += load_f32(bias, bias_dt, gn);
      store_f32(y, out_dt, gm * N + gn, v);
    }
  }
}

}  // namespace

cudaError_t launch_gemm_nt(const void* x, const void* w, const void* bias, DType bias_dt, void* y, DType in_dt,
                           DType out_dt, int64_t M, int64_t N, int64_t K, const CudaRank& rank) {
  const dim3 grid(unsigned((M + kBM - 1) / kBM), unsigned((N + kBN - 1) / kBN));
  if (in_dt == DType::F16)
    LAUNCH(grid, kGemmThreads, 0, 0, gemm_nt_kernel<__half>)(static_cast<const __half*>(x), static_cast<const __half*>(w),
                                                              bias, bias_dt, y, out_dt, M, N, K, rank);
  else
    LAUNCH(grid, kGemmThreads, 0, 0, gemm_nt_kernel<__nv_bfloat16>)(static_cast<const __nv_bfloat16*>(x),
                                                                     static_cast<const __nv_bfloat16*>(w), bias, bias_dt,
                                                                     y, out_dt, M, N, K, rank);
  return cudaGetLastError();
}

}  // namespace peft::PEFT_CUDA_NS
