// Rotary embedding and scaled dot-product attention composed of differentiable F ops: a path for tensors the
// fused CPU kernels do not take (other devices). Holds the full [T, S] score matrix per head.
import { Tensor, type DType } from "../tensor.js";
import { record, wantsGrad } from "../autograd/record.js";
import type { AttentionArgs } from "./attention-args.js";
import { add, mul, neg } from "./elementwise.js";
import { cat, expand, narrow, permute, transpose, unsqueeze } from "./shape.js";
import { matmul } from "./matmul.js";
import { softmax } from "./nn.js";

/** x in another dtype, as one graph node whose gradient is cast back. */
function castTo(x: Tensor, dtype: DType): Tensor {
  if (x.dtype === dtype) return x;
  const y = x.to(dtype);
  if (!wantsGrad(x)) return y;
  const from = x.dtype;
  return record("CastBackward", [x], y, ([g]) => [g ? g.to(from) : null]);
}

/** Runs the steps, disposing every intermediate (the graph keeps what it saved); returns the last. */
function composed(build: (keep: <T extends Tensor>(t: T) => T) => Tensor): Tensor {
  const made: Tensor[] = [];
  const out = build((t) => (made.push(t), t));
  for (const t of made) if (t !== out) t.dispose();
  return out;
}

/** out = x·cos + rotateHalf(x)·sin, rotateHalf(x) = cat(−x[..., D/2:], x[..., :D/2]). */
export function rotaryComposed(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  const half = x.shape[3] / 2;
  return composed((keep) => {
    const c = keep(unsqueeze(cos, 2)), s = keep(unsqueeze(sin, 2));
    const rotated = keep(cat([keep(neg(keep(narrow(x, 3, half, half)))), keep(narrow(x, 3, 0, half))], 3));
    const y = keep(add(keep(mul(x, c)), keep(mul(rotated, s))));
    return castTo(y, x.dtype);
  });
}

/** Zeros of q's shape as an output of q, k and v (empty operands: every gradient is zero too). */
function emptyAttention(a: AttentionArgs): Tensor {
  const y = Tensor.zeros(a.q.shape, { dtype: a.q.dtype, device: a.q.device });
  if (!wantsGrad(a.q, a.k, a.v)) return y;
  return record("ScaledDotProductAttentionBackward", [a.q, a.k, a.v], y, (_g, _s, needs) =>
    [a.q, a.k, a.v].map((t, i) => (needs[i] ? Tensor.zeros(t.shape, { dtype: t.dtype, device: t.device }) : null)));
}

/**
 * The additive score bias (0 where a key is attended, −1e30 where masked: finite, so a fully masked row
 * stays finite) and a 0/1 factor zeroing the rows with no attended key, [B or 1, 1, T, S] and [.., T, 1].
 */
function maskTensors(a: AttentionArgs, T: number, S: number): { bias: Tensor; rows: Tensor } | null {
  if (!a.causal && !a.mask) return null;
  const keys = a.mask ? a.mask.toFloat64Array() : null;
  const Bm = a.mask ? a.mask.shape[0] : 1;
  const bias = new Float32Array(Bm * T * S), rows = new Float32Array(Bm * T);
  for (let b = 0; b < Bm; b++)
    for (let i = 0; i < T; i++) {
      let any = false;
      for (let j = 0; j < S; j++) {
        const ok = (!a.causal || j <= S - T + i) && (!keys || keys[b * S + j] !== 0);
        bias[(b * T + i) * S + j] = ok ? 0 : -1e30;
        any ||= ok;
      }
      rows[b * T + i] = any ? 1 : 0;
    }
  const onDevice = (data: Float32Array, shape: number[]) => {
    const t = Tensor.fromArray(data, shape, a.q.dtype);
    if (a.q.device === "cpu") return t;
    const moved = t.to(a.q.device);
    t.dispose();
    return moved;
  };
  return { bias: onDevice(bias, [Bm, 1, T, S]), rows: onDevice(rows, [Bm, 1, T, 1]) };
}

/** softmax(q·kᵀ·scale + mask)·v per head, query head h reading kv head h / (Hq / Hkv). */
export function attentionComposed(a: AttentionArgs): Tensor {
  const [B, T, Hq, D] = a.q.shape;
  const [, S, Hkv] = a.k.shape;
  if (!B || !T || !Hq || !D || !S) return emptyAttention(a);
  const group = Hq / Hkv;
  return composed((keep) => {
    const heads = (t: Tensor) => keep(permute(t, [0, 2, 1, 3]));
    // transformers' repeat_kv: every kv head repeated for its `group` query heads.
    const repeat = (t: Tensor) =>
      group === 1 ? t : keep(keep(keep(expand(keep(t.reshape([B, Hkv, 1, S, D])), [B, Hkv, group, S, D]))).reshape([B, Hq, S, D]));
    const q = heads(a.q), k = repeat(heads(a.k)), v = repeat(heads(a.v));
    let scores = keep(mul(keep(matmul(q, keep(transpose(k, 2, 3)))), a.scale));
    const m = maskTensors(a, T, S);
    if (m) scores = keep(add(scores, keep(m.bias)));
    let p = keep(softmax(scores, -1));
    if (m) p = keep(mul(p, keep(m.rows)));
    return permute(keep(matmul(p, v)), [0, 2, 1, 3]);
  });
}
