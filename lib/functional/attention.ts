// The attention-family ops of decoder LMs in the [batch, seq, heads, headDim] layout (the q/k/v projections
// reshaped without a transpose): rotary position embedding and scaled dot-product attention.
import type { Tensor } from "../tensor.js";
import { attentionArgs, rotaryArgs, type AttentionOptions } from "./attention-args.js";
import { attentionComposed, rotaryComposed } from "./attention-composed.js";

export type { AttentionOptions } from "./attention-args.js";

/**
 * transformers' apply_rotary_pos_emb on one of q/k: x [B, T, H, D] (f32/bf16), cos/sin f32 [B or 1, T, D]
 * in the cat(freqs, freqs) layout; out = x·cos + rotateHalf(x)·sin in x's dtype, gradient for x.
 */
export function rotaryEmbedding(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  const a = rotaryArgs(x, cos, sin);
  return rotaryComposed(a.x, a.cos, a.sin);
}

/**
 * softmax(q·kᵀ·scale + mask)·v with grouped-query heads: q [B, T, Hq, D], k/v [B, S, Hkv, D], query head h
 * reads kv head floor(h / (Hq / Hkv)). causal aligns the last query with the last key (query i sits at key
 * position S − T + i); attentionMask [B, S] masks keys (0 = masked); a query with no key left outputs 0.
 * Output [B, T, Hq, D] in q's dtype; gradients for q, k and v.
 */
export function scaledDotProductAttention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions = {}): Tensor {
  return attentionComposed(attentionArgs(q, k, v, options));
}
