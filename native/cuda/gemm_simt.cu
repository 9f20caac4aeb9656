// The full-f32 GEMM on the CUDA cores (PyTorch's default matmul precision):
//   C[M,N] (=|+=) col_scale ⊙ (alpha · A[M,K]·B[K,N] + bias[N])
// with A and B strided views (any transposes) in f32, f16 or bf16 (B also i8), A optionally scaled per k
// (g.a_ks), each element widened to f32 exactly as it is staged into shared memory, f32 FMA accumulation in k
// order, and C (f32/f16/bf16) rounded once.
//
// A block computes a 128x128 tile of C with 256 threads, each owning an 8x8 register block (two 4-row by
// two 4-column groups 64 apart, so a warp's shared-memory reads are conflict-free float4 runs). K is
// walked in steps of 8: the A tile is stored k-major (As[k][m]) and B as Bs[k][n], so the inner loop reads
// 8 values of each per k and does 64 FMAs. Each thread fetches the next k-tile into registers while the
// current one is multiplied. Out-of-range rows, columns and k are zero-filled at staging, so the inner loop
// needs no masks; the epilogue masks the stores. A fused LoRA's rank-R term (g.rank) is ceil(R / 8) more
// k-tiles, staged from A2 and B2 after A's and B's, into the same accumulators.
#include "gemm_common.cuh"

namespace peft::PEFT_CUDA_NS {
namespace {

constexpr int kSimtBM = int(kSimtTileM), kSimtBN = int(kSimtTileN), kSimtBK = 8;
constexpr int kSimtThreads = 256;
constexpr int kSimtPerThread = kSimtBM * kSimtBK / kSimtThreads;  // staged elements of A (and of B) per thread per k-tile
static_assert(kSimtBM == 128 && kSimtBN == 128 && kSimtPerThread == 4, "the thread mapping below assumes 128x128x8 tiles");

__global__ void __launch_bounds__(kSimtThreads) gemm_simt_kernel(CudaGemm g) {
  SMEM_ARRAY(float, As, [kSimtBK][kSimtBM]);
  SMEM_ARRAY(float, Bs, [kSimtBK][kSimtBN]);

  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t m0 = int64_t(blockIdx.x) * kSimtBM, n0 = int64_t(blockIdx.y) * kSimtBN;
  const bool a_kc = a_k_contiguous(g), b_kc = b_k_contiguous(g);

  float acc[8][8];
PEFT_UNROLL
  for (int i = 0; i < 8; ++i)
PEFT_UNROLL
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

  // This thread's staged elements: slot s of the A tile and of the B tile.
  auto slot_a = [&](int s) { return tile_slot<kSimtBM, kSimtBK>(tid + s * kSimtThreads, a_kc); };
  auto slot_b = [&](int s) { return tile_slot<kSimtBN, kSimtBK>(tid + s * kSimtThreads, b_kc); };
  float ra[kSimtPerThread], rb[kSimtPerThread];
  const int64_t main_tiles = (g.K + kSimtBK - 1) / kSimtBK;
  const int64_t ktiles = main_tiles + (g.rank.R + kSimtBK - 1) / kSimtBK;
  auto fetch = [&](int64_t kt) {
    // Uniform across the block: A's and B's k-tiles first (A with its per-k scale), then the rank term's.
    const bool main = kt < main_tiles;
    const CudaMat& b = main ? g.B : g.rank.B2;
    const int64_t k0 = (main ? kt : kt - main_tiles) * kSimtBK, kend = main ? g.K : g.rank.R;
PEFT_UNROLL
    for (int s = 0; s < kSimtPerThread; ++s) {
      const int64_t m = m0 + slot_a(s).outer, k = k0 + slot_a(s).k;
      ra[s] = main ? load_a(g, m, k) : g.rank.scale * load_view(g.rank.A2, m, k, g.M, g.rank.R);
      rb[s] = load_view(b, k0 + slot_b(s).k, n0 + slot_b(s).outer, kend, g.N);
    }
  };
  if (ktiles > 0) fetch(0);

  for (int64_t kt = 0; kt < ktiles; ++kt) {
PEFT_UNROLL
    for (int s = 0; s < kSimtPerThread; ++s) {
      As[slot_a(s).k][slot_a(s).outer] = ra[s];
      Bs[slot_b(s).k][slot_b(s).outer] = rb[s];
    }
    __syncthreads();  // the tiles are complete before any thread reads them
    if (kt + 1 < ktiles) fetch(kt + 1);
PEFT_UNROLL
    for (int k = 0; k < kSimtBK; ++k) {
      float av[8], bv[8];
PEFT_UNROLL
      for (int i = 0; i < 4; ++i) {
        av[i] = As[k][ty * 4 + i];
        av[i + 4] = As[k][ty * 4 + i + 64];
        bv[i] = Bs[k][tx * 4 + i];
        bv[i + 4] = Bs[k][tx * 4 + i + 64];
      }
PEFT_UNROLL
      for (int i = 0; i < 8; ++i)
PEFT_UNROLL
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();  // every thread is done with the tiles before they are overwritten
  }

PEFT_UNROLL
  for (int i = 0; i < 8; ++i) {
    const int64_t m = m0 + ty * 4 + (i % 4) + (i / 4) * 64;
    if (m >= g.M) continue;
PEFT_UNROLL
    for (int j = 0; j < 8; ++j) {
      const int64_t n = n0 + tx * 4 + (j % 4) + (j / 4) * 64;
      if (n >= g.N) continue;
      gemm_epilogue(g, m, n, acc[i][j]);
    }
  }
}

}  // namespace

cudaError_t launch_gemm_simt(const CudaGemm& g) {
  const dim3 grid(unsigned((g.M + kSimtBM - 1) / kSimtBM), unsigned((g.N + kSimtBN - 1) / kSimtBN));
  LAUNCH(grid, kSimtThreads, 0, 0, gemm_simt_kernel)(g);
  return cudaGetLastError();
}

}  // namespace peft::PEFT_CUDA_NS
