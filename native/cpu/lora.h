// LoRA on a dense layer, CPU: the fused forward, the backward and in-place merge, all built on gemm() with
// its rank-R extension (the adapters ride on the base GEMM's output tile, so y is written once).
#pragma once
#include <cstdint>
#include <vector>

#include "../core/dtype.h"
#include "../core/storage.h"
#include "gemm.h"

namespace peft {

// The base product y = x·Wᵀ (+ b); W stored (N, K), or (K, N) when w_in_out (GPT-2 Conv1D).
struct DenseView {
  int64_t M = 0, K = 0, N = 0;
  const void* x = nullptr;
  DType x_dt = DType::F32;
  const void* W = nullptr;
  DType w_dt = DType::F32;
  bool w_in_out = false;
  Storage* w_cache = nullptr;  // where the packed weight is kept
  const void* bias = nullptr;
  DType bias_dt = DType::F32;
};

// One adapter: A (r, K), B (N, r), y += scale · (drop(x)·Aᵀ)·Bᵀ; dropout p with its Philox (seed, stream).
struct AdapterView {
  int64_t r = 0;
  const void* A = nullptr;
  DType a_dt = DType::F32;
  Storage* a_cache = nullptr;  // where A's packed form for the rank term from x is kept
  const void* B = nullptr;
  DType b_dt = DType::F32;
  float scale = 1;
  double p = 0;
  uint64_t seed = 0, stream = 0;
  void* dA = nullptr;  // gradients, accumulated (null: not wanted)
  DType da_dt = DType::F32;
  void* dB = nullptr;
  DType db_dt = DType::F32;
};

int64_t total_rank(const std::vector<AdapterView>& ad);

// The base weight as the product's B (K, N), and as (N, K) for the gradient dy·W.
GemmMat dense_weight_kn(const DenseView& d);
GemmMat dense_weight_nk(const DenseView& d);

// y (M, N) in y_dt; T (M, R) f32 receives drop(x)·Aᵀ per adapter (unscaled), kept for backward.
void lora_forward_cpu(const DenseView& d, const std::vector<AdapterView>& ad, void* y, DType y_dt, float* T);

// Accumulates dA, dB of every adapter from dy (M, N) and the forward's T; writes dx (M, K) when non-null.
void lora_backward_cpu(const DenseView& d, const std::vector<AdapterView>& ad, const void* dy, DType dy_dt, const float* T,
                       void* dx, DType dx_dt);

// W += sign · Σ scale·B·A (transposed for w_in_out) in one streaming pass over W (rank_update), the sum
// rounded once into W's dtype.
// With `safe`, the result is computed aside and committed only if finite; returns the index of the first adapter
// whose delta makes W non-finite (W untouched), or -1.
int lora_merge_cpu(void* W, DType w_dt, int64_t N, int64_t K, bool w_in_out, const std::vector<AdapterView>& ad, float sign,
                   bool safe, bool commit = true);

}  // namespace peft
