// The f32 tile arithmetic of the flash-style attention (attention.cc drives it): scores of a query tile against
// a key tile, the online softmax step, and the three products that accumulate outputs and gradients. Built
// once per ISA from attention_impl.h and picked at run time.
#pragma once
#include <cstdint>

namespace peft {

// Keys per tile: every score row is kAttnKeys wide (columns past the tile's keys are masked).
constexpr int kAttnKeys = 64;
// Queries per tile.
constexpr int kAttnQueries = 32;

struct AttentionTiles {
  // S[i][j] = scale · Σ_d A[i][d]·Bt[d][j] for i < rows, j < kAttnKeys (A [rows][D], Bt [D][kAttnKeys]).
  void (*scores)(const float* A, int rows, const float* Bt, int D, float scale, float* S);
  // One online-softmax step per row: keys with ok[j] == 0 or j >= limit[i] are masked; the running max m and
  // sum l and the accumulator rows acc [rows][D] are rescaled to the new max; S is left holding the
  // probabilities (0 where masked).
  void (*softmax_step)(float* S, int rows, const uint8_t* ok, const int* limit, float* m, float* l, float* acc, int D);
  // S <- exp(S − lse[i]) where key j is kept (ok[j] and j < limit[i]), else 0: the backward's probabilities.
  void (*probs)(float* S, int rows, const uint8_t* ok, const int* limit, const float* lse);
  // dP <- P ∘ (dP − delta[i]) · scale (dP and P [rows][kAttnKeys]).
  void (*dscores)(const float* P, float* dP, int rows, const float* delta, float scale);
  // acc[i][:] += Σ_{j < cols} P[i][j]·X[j][:] (acc [rows][D], X [cols][D]).
  void (*accum_px)(const float* P, int rows, int cols, const float* X, int D, float* acc);
  // acc[j][:] += Σ_{i < rows} P[i][j]·X[i][:] for j < cols (acc [cols][D], X [rows][D]).
  void (*accum_ptx)(const float* P, int rows, int cols, const float* X, int D, float* acc);
};

// The build for the active ISA (backend.setIsa / NODE_PEFT_ISA).
const AttentionTiles& attention_tiles();
const AttentionTiles& attention_tiles_avx2();
const AttentionTiles& attention_tiles_avx512();

}  // namespace peft
