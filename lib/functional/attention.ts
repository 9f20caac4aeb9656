// The attention-family ops of decoder LMs in the [batch, seq, heads, headDim] layout (the q/k/v projections
// reshaped without a transpose): rotary position embedding and scaled dot-product attention, each one graph
// node over fused CPU kernels (other devices get ERR_NOT_ON_DEVICE from the kernel).
import { Tensor } from "../tensor.js";
import { native } from "../native.js";
import { record, wantsGrad } from "../autograd/record.js";
import { peftError } from "../errors.js";
import { attentionArgs, rotaryArgs, type AttentionOptions } from "./attention-args.js";

export type { AttentionOptions } from "./attention-args.js";

const h = Tensor.handle;

/** g in the dtype a kernel wants (a fresh tensor when converted: `done` disposes it). */
function inDtype(g: Tensor, like: Tensor): { t: Tensor; done: () => void } {
  if (g.dtype === like.dtype) return { t: g, done: () => {} };
  const t = g.to(like.dtype);
  return { t, done: () => t.dispose() };
}

/**
 * transformers' apply_rotary_pos_emb on one of q/k: x [B, T, H, D] (f32/bf16), cos/sin f32 [B or 1, T, D]
 * in the cat(freqs, freqs) layout; out = x·cos + rotateHalf(x)·sin in x's dtype, gradient for x.
 */
export function rotaryEmbedding(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  const a = rotaryArgs(x, cos, sin);
  const y = new Tensor(native.rotaryEmbedding(h(a.x), h(a.cos), h(a.sin), false));
  if (!wantsGrad(a.x)) return y;
  // The rotation is linear in x: its backward is the transposed rotation of the gradient.
  return record("RotaryEmbeddingBackward", [a.x], y, ([g], [c, s]) =>
    [g ? new Tensor(native.rotaryEmbedding(h(g), h(c), h(s), true)) : null], [a.cos, a.sin]);
}

/**
 * softmax(q·kᵀ·scale + mask)·v with grouped-query heads: q [B, T, Hq, D], k/v [B, S, Hkv, D], query head h
 * reads kv head floor(h / (Hq / Hkv)). causal aligns the last query with the last key (query i sits at key
 * position S − T + i); attentionMask [B, S] masks keys (0 = masked); a query with no key left outputs 0.
 * Output [B, T, Hq, D] in q's dtype; gradients for q, k and v. The forward keeps only the output and each
 * row's logsumexp; the backward recomputes the probabilities tile by tile.
 */
export function scaledDotProductAttention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions = {}): Tensor {
  const a = attentionArgs(q, k, v, options);
  const mask = a.mask ? h(a.mask) : null;
  const inPlace = a.keys !== a.k.shape[1];
  if (inPlace && wantsGrad(a.q, a.k, a.v))
    throw peftError("ERR_UNSUPPORTED", `scaledDotProductAttention: keyLength ${a.keys} reads longer k/v buffers in place, which has no gradient; slice the keys, or run under noGrad`);
  const [o, l] = native.attention(h(a.q), h(a.k), h(a.v), mask, a.causal, a.scale, inPlace ? a.keys : undefined);
  const y = new Tensor(o), lse = new Tensor(l);
  if (!wantsGrad(a.q, a.k, a.v)) {
    lse.dispose();
    return y;
  }
  const saved = [a.q, a.k, a.v, y, lse, ...(a.mask ? [a.mask] : [])];
  record("ScaledDotProductAttentionBackward", [a.q, a.k, a.v], y, ([g], [qs, ks, vs, ys, ls, ms], needs) => {
    if (!g) return [null, null, null];
    const dout = inDtype(g, qs);
    const grads = native.attentionBackward(h(qs), h(ks), h(vs), ms ? h(ms) : null, a.causal, a.scale, h(ys), h(ls), h(dout.t));
    dout.done();
    return grads.map((t, i) => {
      const gt = new Tensor(t);
      if (needs[i]) return gt;
      gt.dispose();
      return null;
    });
  }, saved);
  lse.dispose();
  return y;
}
