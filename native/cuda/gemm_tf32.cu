// The f32 GEMM on TF32 tensor cores (backend.cuda.allowTf32, off by default as PyTorch's
// torch.backends.cuda.matmul.allow_tf32): the same CudaGemm contract as the SIMT kernel, but each f32
// input is rounded to TF32 (10 mantissa bits, to nearest with ties away from zero: cvt.rna.tf32.f32,
// wmma::__float_to_tf32) before the products; products of TF32 values are exact in f32 and accumulate in
// f32. Only A and B in f32 come here.
//
// A block computes a 64x64 tile of C with 4 warps, each owning a 32x32 quadrant (2x2 m16n16k8 fragments),
// walking K in steps of 16 through shared memory (A as [m][k], B as [k][n], zero-padded at the edges).
// The epilogue depends on each element's position, so it runs on the tile stored to shared memory with
// store_matrix_sync, never on fragment registers (their layout is unspecified, and differs when emulated).
#include "gemm_common.cuh"
#include "wmma_quadrant.cuh"

namespace peft::PEFT_CUDA_NS {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kTfBM = int(kTf32TileM), kTfBN = int(kTf32TileN), kTfBK = 16;
constexpr int kTfThreads = 128;
constexpr int kTfLdA = kTfBK + 8;  // floats; rows stay 32-byte aligned, the pad staggers banks
constexpr int kTfLdB = kTfBN + 8;
constexpr int kTfLdC = kTfBN + 4;
constexpr int kTfPerThread = kTfBM * kTfBK / kTfThreads;  // staged elements of A (and of B) per thread
constexpr int kTfSmemAB = (kTfBM * kTfLdA + kTfBK * kTfLdB) * 4;
constexpr int kTfSmemC = kTfBM * kTfLdC * 4;
constexpr int kTfSmem = kTfSmemAB > kTfSmemC ? kTfSmemAB : kTfSmemC;
static_assert(kTfBM == kTfBN && kTfPerThread == 8, "tile shape");
// WMMA tile pointers must be 32-byte aligned: 16-row steps and 8-element k steps of A, 8-row k steps and
// 16-column steps of B, the B tile's offset, and 16-row steps of C.
static_assert((16 * kTfLdA * 4) % 32 == 0 && (8 * kTfLdB * 4) % 32 == 0 && (kTfBM * kTfLdA * 4) % 32 == 0 &&
                  (16 * kTfLdC * 4) % 32 == 0,
              "alignment");

__global__ void __launch_bounds__(kTfThreads) gemm_tf32_kernel(CudaGemm g) {
  SMEM_ARRAY(unsigned char, smem, [kTfSmem]);
  float(*As)[kTfLdA] = reinterpret_cast<float(*)[kTfLdA]>(smem);
  float(*Bs)[kTfLdB] = reinterpret_cast<float(*)[kTfLdB]>(smem + kTfBM * kTfLdA * 4);
  float(*Cs)[kTfLdC] = reinterpret_cast<float(*)[kTfLdC]>(smem);

  const int tid = threadIdx.x, warp = tid / 32;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  const int64_t m0 = int64_t(blockIdx.x) * kTfBM, n0 = int64_t(blockIdx.y) * kTfBN;
  const bool a_kc = a_k_contiguous(g), b_kc = b_k_contiguous(g);

  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[2][2];
PEFT_UNROLL
  for (int i = 0; i < 2; ++i)
PEFT_UNROLL
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int64_t k0 = 0; k0 < g.K; k0 += kTfBK) {
PEFT_UNROLL
    for (int s = 0; s < kTfPerThread; ++s) {
      const TileSlot a = tile_slot<kTfBM, kTfBK>(tid + s * kTfThreads, a_kc);
      const TileSlot b = tile_slot<kTfBN, kTfBK>(tid + s * kTfThreads, b_kc);
      As[a.outer][a.k] = load_view(g.A, m0 + a.outer, k0 + a.k, g.M, g.K);
      Bs[b.k][b.outer] = load_view(g.B, k0 + b.k, n0 + b.outer, g.K, g.N);
    }
    __syncthreads();  // tiles complete before any warp reads them
PEFT_UNROLL
    for (int kk = 0; kk < kTfBK; kk += 8) {
      wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb[2];
PEFT_UNROLL
      for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(fa[i], &As[wm + i * 16][kk], kTfLdA);
        wmma::load_matrix_sync(fb[i], &Bs[kk][wn + i * 16], kTfLdB);
        // The loads carry full f32 values; the tensor cores read TF32, so round them as the hardware
        // conversion does (uniform over the fragment: no element position is involved).
PEFT_UNROLL
        for (int e = 0; e < fa[i].num_elements; ++e) fa[i].x[e] = wmma::__float_to_tf32(fa[i].x[e]);
PEFT_UNROLL
        for (int e = 0; e < fb[i].num_elements; ++e) fb[i].x[e] = wmma::__float_to_tf32(fb[i].x[e]);
      }
      mma_2x2(acc, fa, fb);
    }
    __syncthreads();  // every warp is done with the tiles before they are overwritten
  }

  // The output tile reuses the input tiles' shared memory: the loop's last barrier ended their use.
  store_2x2(&Cs[0][0], kTfLdC, wm, wn, acc);
  __syncthreads();
  for (int e = tid; e < kTfBM * kTfBN; e += kTfThreads) {  // consecutive threads: consecutive columns
    const int r = e / kTfBN, c = e % kTfBN;
    if (m0 + r < g.M && n0 + c < g.N) gemm_epilogue(g, m0 + r, n0 + c, Cs[r][c]);
  }
}

}  // namespace

cudaError_t launch_gemm_tf32(const CudaGemm& g) {
  const dim3 grid(unsigned((g.M + kTfBM - 1) / kTfBM), unsigned((g.N + kTfBN - 1) / kTfBN));
  LAUNCH(grid, kTfThreads, 0, 0, gemm_tf32_kernel)(g);
  return cudaGetLastError();
}

}  // namespace peft::PEFT_CUDA_NS
