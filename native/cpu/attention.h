// Flash-style scaled dot-product attention on the CPU, in the [batch, seq, heads, headDim] layout with
// grouped-query heads. No [T, S] score matrix is ever held: the forward streams key tiles through an online
// softmax and keeps only the output and each row's logsumexp; the backward recomputes the probabilities tile
// by tile.
#pragma once
#include <cstdint>

#include "../core/dtype.h"

namespace peft {

struct AttentionShape {
  int64_t B, T, S, Hq, Hkv, D;
  float scale;
  // Query i sees keys j <= S − T + i (the last query aligned with the last key).
  bool causal;
  // [B][S], nonzero = the key is attended; null: every key.
  const uint8_t* key_ok;
  // Positions each batch row of k/v holds when they are longer buffers whose first S positions are the keys
  // (a preallocated KV cache read in place); 0: S. The forward only.
  int64_t kv_rows = 0;
};

// q [B][T][Hq][D], k/v [B][S or kv_rows][Hkv][D], out like q, all in dt (f32/f16/bf16, computed in f32); lse f32 [B][Hq][T]
// (+inf for a query with no key left, whose output is 0).
void attention_forward_cpu(const AttentionShape& a, const void* q, const void* k, const void* v, DType dt, void* out, float* lse);

// dq, dk, dv (shapes and dtype of q, k, v) from dout and the forward's out and lse.
void attention_backward_cpu(const AttentionShape& a, const void* q, const void* k, const void* v, DType dt, const void* out,
                            const float* lse, const void* dout, void* dq, void* dk, void* dv);

}  // namespace peft
