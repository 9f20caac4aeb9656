// The f32 tile arithmetic of the flash-style attention (attention.cc drives it): scores of a query tile against
// a key tile, the online softmax step, and the products that accumulate outputs and gradients. Built once per
// ISA from attention_impl.h and picked at run time. Rows of head vectors are padded with zeros to Dp, a
// multiple of kAttnLanes, so every product runs on whole vectors.
#pragma once
#include <cstdint>

namespace peft {

// Keys per tile: every score row is kAttnKeys wide (columns past the tile's keys are masked).
constexpr int kAttnKeys = 64;
// Queries per tile.
constexpr int kAttnQueries = 32;
// Padding unit of the head dimension (one 64-byte vector).
constexpr int kAttnLanes = 16;

struct AttentionTiles {
  // S[i][j] = scale · Σ_d A[i][d]·Bt[d][j] for i < rows rounded up to 4 (A has that many rows), j < kAttnKeys
  // (A [.][Dp], Bt [Dp][kAttnKeys]).
  void (*scores)(const float* A, int rows, const float* Bt, int Dp, float scale, float* S);
  // One online-softmax step per row: key j is kept when bias[j] == 0 (else bias[j] = -inf) and j < limit[i];
  // the running max m, the running sum l (kAttnLanes partial sums per row: the row's sum is their total) and
  // the accumulator rows acc [rows][Dp] are rescaled to the new max; S is left holding the probabilities (0
  // where masked).
  void (*softmax_step)(float* S, int rows, const float* bias, const int* limit, float* m, float* l, float* acc, int Dp);
  // S <- exp(S − lse[i]) where key j is kept (as above), else 0: the backward's probabilities.
  void (*probs)(float* S, int rows, const float* bias, const int* limit, const float* lse);
  // dP <- P ∘ (dP − delta[i]) · scale (dP and P [rows][kAttnKeys]).
  void (*dscores)(const float* P, float* dP, int rows, const float* delta, float scale);
  // acc[o][:] += Σ_{t < n} P[o·po + t·pt]·X[t][:] for o < outs (acc [outs][Dp], X [n][Dp]): P·X with
  // (po, pt) = (kAttnKeys, 1), Pᵀ·X with (1, kAttnKeys).
  void (*accum)(const float* P, int po, int pt, int outs, int n, const float* X, int Dp, float* acc);
  // The decode shape, reading K and V in place (no packing): out[r][:] = softmax_j(scale · Q[r]·K[j]) · V
  // over keys j < n with keep[j] != 0 (keep null: all), for `rows` f32 query rows Q [rows][D]; K and V are
  // f32 or (bf16) bf16 rows of D elements, `stride` elements apart, widened to f32 as they are loaded.
  // out [rows][D] f32, normalised; lse[r] = the row's logsumexp (+inf and a zero row when no key is kept).
  // P: scratch of n floats.
  void (*direct)(const float* Q, int rows, const void* K, const void* V, bool bf16, int64_t stride, int64_t n, int D, float scale,
                 const uint8_t* keep, float* P, float* out, float* lse);
};

// The build for the active ISA (backend.setIsa / NODE_PEFT_ISA).
const AttentionTiles& attention_tiles();
const AttentionTiles& attention_tiles_avx2();
const AttentionTiles& attention_tiles_avx512();

}  // namespace peft
