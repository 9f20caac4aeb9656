// The CPU GEMM every dense product goes through (linear, matmul, LoRA, backward).
// C[M,N] (=|+=) s[N] ⊙ (alpha * A[M,K]·B[K,N] (+ A2[M,R]·B2[R,N]) (+ bias[N])), f32 accumulation,
// operands f32/bf16/f16 in any mix, C rounded once into its dtype.
#pragma once
#include <cstdint>

#include "../core/dtype.h"
#include "../core/storage.h"

namespace peft {

// A strided matrix view: element (i, j) lives at p + (i*rs + j*cs) elements of dt.
struct GemmMat {
  const void* p = nullptr;
  DType dt = DType::F32;
  int64_t rs = 0, cs = 0;
  // A only: column k is multiplied by ks[k] (f32) as it is packed (IA3's input-side scale: no pass over x).
  const float* ks = nullptr;
};

// A B operand that is no matrix in memory (a 4-bit quantised weight): the GEMM has it unpacked into f32
// panels block by block as the loop nest reaches them, so no f32 copy of the whole of B is ever made.
struct GemmBSource {
  // k-steps [k0, k0 + kc) of columns [n0, n0 + nr): with dt F32 as f32, k-step k at dst + (k - k0) * nr, zeros
  // past K and N; with dt BF16 in the bf16 kernels' pair layout (BLayout::BF16Pairs: k-pair q at
  // dst + (q - k0 / 2) * 2 * nr, each column's two values in 32 bits, zeros past K), for A in bf16 on a machine
  // with AVX-512 BF16 only (those kernels read it).
  void (*unpack)(const GemmBSource& s, int64_t k0, int64_t kc, int64_t n0, int nr, void* dst) = nullptr;
  const void* state = nullptr;
  DType dt = DType::F32;
};

struct GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  GemmMat A;  // M x K
  GemmMat B;  // K x N
  void* C = nullptr;
  DType c_dt = DType::F32;
  int64_t ldc = 0;  // C is row-major with row stride ldc
  float alpha = 1.0f;
  bool accumulate = false;       // C += result (C read in c_dt, the sum rounded once)
  const void* bias = nullptr;    // length N, added once
  DType bias_dt = DType::F32;
  // Length N (f32): C (=|+=) col_scale ⊙ (alpha·A·B + A2·B2 + bias), applied in the epilogue (IA3's
  // output-side scale); an accumulated C is not scaled.
  const float* col_scale = nullptr;
  // Extra rank-R k-steps applied on the same output tile (fused LoRA: [A, A2]·[B; B2]).
  int64_t R = 0;
  GemmMat A2;  // M x R
  GemmMat B2;  // R x N
  // LoRA's A2 from x itself: with t_b set (K x R), A2 = (A·t_b)·diag(t_scale) and A2 is not read. Each thread
  // computes its rows' product from the A it packed (one x pass, no pool dispatch of its own) when it packs
  // all of K at once, else with a product of its own; t_out (M x R f32, row stride R), when set, receives A·t_b.
  GemmMat t_b;
  // Where t_b's packed form is kept (LoRA's A: packed once per version, not by every thread on every call).
  Storage* t_b_cache = nullptr;
  const float* t_scale = nullptr;
  float* t_out = nullptr;
  // When B is a weight that is reused across calls, its packed form is cached on this storage
  // (dropped when the storage's version changes). Null: pack per call.
  Storage* b_cache = nullptr;
  // When set, B is read through this (f32 panels made per block) and the view `B` is ignored.
  const GemmBSource* b_src = nullptr;
};

// A row-major matrix with row stride ld, and the transpose of one (the views every GEMM caller builds).
inline GemmMat mat_rows(const void* p, DType dt, int64_t ld) { return {p, dt, ld, 1}; }
inline GemmMat mat_cols(const void* p, DType dt, int64_t ld) { return {p, dt, 1, ld}; }

// Blocked, packed, multi-threaded; the kernel path follows active_isa() / amx_enabled() and the dtypes.
void gemm(const GemmArgs& args);
// The plain triple loop with the same semantics, kept for tests and for the K = 0 edge.
void gemm_reference(const GemmArgs& args);

// For benches: the kernel set gemm() picks for these operand dtypes on the active path ("avx512-f32", ...).
const char* gemm_kernel_name(DType a, DType b);
// For benches: the packed weight cached on `s` (its memory), or {nullptr, 0}, so it can be evicted.
struct MemRegion {
  const void* p = nullptr;
  size_t bytes = 0;
};
MemRegion gemm_cached_pack(Storage* s);

}  // namespace peft
