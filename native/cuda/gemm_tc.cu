// The strided GEMMs on tensor cores, with the same CudaGemm contract as the SIMT kernel (any transposes,
// alpha, bias, column scale, accumulation), for
//  - f32 A and B on TF32 (backend.cuda.allowTf32, off by default as PyTorch's
//    torch.backends.cuda.matmul.allow_tf32): each input is rounded to TF32 (10 mantissa bits, to nearest
//    with ties away from zero: cvt.rna.tf32.f32, wmma::__float_to_tf32) before the products;
//  - f16 or bf16 A and B of one dtype in the layouts the x·Wᵀ kernel (gemm_wmma.cu) does not take: the
//    gradients' transposed products, accumulation into dW.
// Products of TF32, f16 or bf16 values are exact in f32 and accumulate in f32.
//
// A block computes a 64x64 tile of C with 4 warps, each owning a 32x32 quadrant (2x2 fragments), walking K
// in steps of 16 through shared memory (A as [m][k], B as [k][n], zero-padded at the edges, staged
// element by element from any strides, so global reads coalesce along whichever dimension is contiguous).
// A fused LoRA's rank-R term (g.rank) is added in f32 to the stored tile (lora_rank_tile.cuh).
// The epilogue depends on each element's position, so it runs on the tile stored to shared memory with
// store_matrix_sync, never on fragment registers (their layout is unspecified, and differs when emulated).
#include "gemm_common.cuh"
#include "lora_rank_tile.cuh"
#include "wmma_quadrant.cuh"

namespace peft::PEFT_CUDA_NS {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kTcBM = int(kTcTileM), kTcBN = int(kTcTileN), kTcBK = 16;
constexpr int kTcThreads = 128;
constexpr int kTcLdA = kTcBK + 8;  // elements; rows stay 32-byte aligned, the pad staggers banks
constexpr int kTcLdB = kTcBN + 8;
constexpr int kTcLdC = kTcBN + 4;  // floats
constexpr int kTcPerThread = kTcBM * kTcBK / kTcThreads;  // staged elements of A (and of B) per thread
static_assert(kTcBM == kTcBN && kTcPerThread == 8, "tile shape");

// What each input precision stores in shared memory and its MMA shape's k.
template <class In>
struct TcInput {
  using Stored = In;
  static constexpr int kK = 16;
};
template <>
struct TcInput<wmma::precision::tf32> {
  using Stored = float;
  static constexpr int kK = 8;
};

template <class In>
struct TcSmem {
  using T = typename TcInput<In>::Stored;
  static constexpr int kK = TcInput<In>::kK;
  static constexpr int kAB = (kTcBM * kTcLdA + kTcBK * kTcLdB) * int(sizeof(T));
  static constexpr int kC = kTcBM * kTcLdC * 4;
  static constexpr int kBytes = kAB > kC ? kAB : kC;
  // WMMA tile pointers must be 32-byte aligned: 16-row steps and k steps of A, k-row steps and 16-column
  // steps of B, the B tile's offset, and 16-row steps of C.
  static_assert((16 * kTcLdA * sizeof(T)) % 32 == 0 && (kK * sizeof(T)) % 32 == 0 && (kK * kTcLdB * sizeof(T)) % 32 == 0 &&
                    (16 * sizeof(T)) % 32 == 0 && (kTcBM * kTcLdA * sizeof(T)) % 32 == 0 && (16 * kTcLdC * 4) % 32 == 0,
                "alignment");
};

template <class In>
__global__ void __launch_bounds__(kTcThreads) gemm_tc_kernel(CudaGemm g) {
  using S = TcSmem<In>;
  using T = typename S::T;
  constexpr int kK = S::kK;
  SMEM_ARRAY(unsigned char, smem, [S::kBytes]);
  T(*As)[kTcLdA] = reinterpret_cast<T(*)[kTcLdA]>(smem);
  T(*Bs)[kTcLdB] = reinterpret_cast<T(*)[kTcLdB]>(smem + kTcBM * kTcLdA * sizeof(T));
  float(*Cs)[kTcLdC] = reinterpret_cast<float(*)[kTcLdC]>(smem);

  const int tid = threadIdx.x, warp = tid / 32;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  const int64_t m0 = int64_t(blockIdx.x) * kTcBM, n0 = int64_t(blockIdx.y) * kTcBN;
  const bool a_kc = a_k_contiguous(g), b_kc = b_k_contiguous(g);

  wmma::fragment<wmma::accumulator, 16, 16, kK, float> acc[2][2];
  zero_2x2(acc);

  for (int64_t k0 = 0; k0 < g.K; k0 += kTcBK) {
PEFT_UNROLL
    for (int s = 0; s < kTcPerThread; ++s) {
      // f16/bf16 inputs were widened exactly by load_view; from_f32 narrows them back exactly (cuda_gemm
      // sends products with a per-k scale of A to the SIMT kernel; with TF32 the scaled value is rounded as any).
      const TileSlot a = tile_slot<kTcBM, kTcBK>(tid + s * kTcThreads, a_kc);
      const TileSlot b = tile_slot<kTcBN, kTcBK>(tid + s * kTcThreads, b_kc);
      As[a.outer][a.k] = from_f32<T>(load_a(g, m0 + a.outer, k0 + a.k));
      Bs[b.k][b.outer] = from_f32<T>(load_view(g.B, k0 + b.k, n0 + b.outer, g.K, g.N));
    }
    __syncthreads();  // tiles complete before any warp reads them
PEFT_UNROLL
    for (int kk = 0; kk < kTcBK; kk += kK) {
      wmma::fragment<wmma::matrix_a, 16, 16, kK, In, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, kK, In, wmma::row_major> fb[2];
PEFT_UNROLL
      for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(fa[i], &As[wm + i * 16][kk], kTcLdA);
        wmma::load_matrix_sync(fb[i], &Bs[kk][wn + i * 16], kTcLdB);
        if constexpr (kK == 8) {
          // TF32: the loads carry full f32 values; round them as the hardware conversion does (uniform
          // over the fragment: no element position is involved).
PEFT_UNROLL
          for (int e = 0; e < fa[i].num_elements; ++e) fa[i].x[e] = wmma::__float_to_tf32(fa[i].x[e]);
PEFT_UNROLL
          for (int e = 0; e < fb[i].num_elements; ++e) fb[i].x[e] = wmma::__float_to_tf32(fb[i].x[e]);
        }
      }
      mma_2x2(acc, fa, fb);
    }
    __syncthreads();  // every warp is done with the tiles before they are overwritten
  }

  // The output tile reuses the input tiles' shared memory: the loop's last barrier ended their use.
  store_2x2(&Cs[0][0], kTcLdC, wm, wn, acc);
  __syncthreads();
  add_rank_tile<kTcBM, kTcBN, kTcLdC, kTcThreads>(&Cs[0][0], g.rank, m0, n0, g.M, g.N);
  for (int e = tid; e < kTcBM * kTcBN; e += kTcThreads) {  // consecutive threads: consecutive columns
    const int r = e / kTcBN, c = e % kTcBN;
    if (m0 + r < g.M && n0 + c < g.N) gemm_epilogue(g, m0 + r, n0 + c, Cs[r][c]);
  }
}

}  // namespace

cudaError_t launch_gemm_tc(const CudaGemm& g) {
  const dim3 grid(unsigned((g.M + kTcBM - 1) / kTcBM), unsigned((g.N + kTcBN - 1) / kTcBN));
  if (g.A.dt == int(DType::F16))
    LAUNCH(grid, kTcThreads, 0, 0, gemm_tc_kernel<__half>)(g);
  else if (g.A.dt == int(DType::BF16))
    LAUNCH(grid, kTcThreads, 0, 0, gemm_tc_kernel<__nv_bfloat16>)(g);
  else
    LAUNCH(grid, kTcThreads, 0, 0, gemm_tc_kernel<wmma::precision::tf32>)(g);
  return cudaGetLastError();
}

}  // namespace peft::PEFT_CUDA_NS
