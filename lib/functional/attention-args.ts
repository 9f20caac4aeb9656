// Argument checks shared by the attention-family ops (rotary embedding, scaled dot-product attention): one
// PeftError per problem, naming the op, the tensor and what was expected.
import type { Tensor } from "../tensor.js";
import { optionsArg, peftError, typeError } from "../errors.js";
import { shown, tensorArg } from "./raw.js";

const shapeOf = (t: Tensor) => `[${t.shape.join(", ")}]`;

/** A float tensor of the given rank whose dtype is one the op computes in. */
export function floatRank(v: unknown, op: string, name: string, rank: number, layout: string): Tensor {
  const t = tensorArg(v, op, name);
  if (t.shape.length !== rank) throw peftError("ERR_SHAPE", `${op}: ${name} must have ${rank} dimensions ${layout}, got ${shapeOf(t)}`);
  if (t.dtype !== "f32" && t.dtype !== "bf16") throw peftError("ERR_DTYPE", `${op}: ${name} must be f32 or bf16, got ${t.dtype}`);
  return t;
}

/** x [B, T, H, D] with cos/sin f32 [B or 1, T, D] (D even). */
export function rotaryArgs(x: unknown, cos: unknown, sin: unknown): { x: Tensor; cos: Tensor; sin: Tensor } {
  const op = "rotaryEmbedding";
  const xt = floatRank(x, op, "x", 4, "[batch, seq, heads, headDim]");
  const [B, T, , D] = xt.shape;
  if (D % 2) throw peftError("ERR_SHAPE", `${op}: x's headDim must be even (rotate-half pairs its halves), got ${D}`);
  const tables = { cos, sin } as Record<string, unknown>;
  for (const name of ["cos", "sin"]) {
    const t = floatRank(tables[name], op, name, 3, "[batch or 1, seq, headDim]");
    if (t.dtype !== "f32") throw peftError("ERR_DTYPE", `${op}: ${name} must be f32, got ${t.dtype}`);
    if ((t.shape[0] !== B && t.shape[0] !== 1) || t.shape[1] !== T || t.shape[2] !== D)
      throw peftError("ERR_SHAPE", `${op}: ${name} has shape ${shapeOf(t)}, expected [${B} or 1, ${T}, ${D}] for x ${shapeOf(xt)}`);
    if (t.device !== xt.device) throw peftError("ERR_DEVICE", `${op}: ${name} is on ${t.device}, x on ${xt.device}`);
  }
  const c = cos as Tensor, s = sin as Tensor;
  if (c.shape[0] !== s.shape[0]) throw peftError("ERR_SHAPE", `${op}: cos ${shapeOf(c)} and sin ${shapeOf(s)} differ in shape`);
  return { x: xt, cos: c, sin: s };
}

export interface AttentionOptions {
  /** Each query attends only to keys at or before its position (bottom-right aligned when T < S). */
  causal?: boolean;
  /** [batch, S] key mask, nonzero = attend (any numeric dtype). */
  attentionMask?: Tensor | null;
  /** Score scale, default 1/sqrt(headDim). */
  scale?: number;
  /**
   * Only the first keyLength positions of k/v are keys: k/v may be longer buffers (a preallocated KV cache),
   * read in place without a copy. No gradient flows through such a call (slice the keys for one).
   */
  keyLength?: number;
}

export interface AttentionArgs {
  q: Tensor; k: Tensor; v: Tensor;
  causal: boolean; mask: Tensor | null; scale: number;
  /** Keys used: keyLength, or all of k's positions. */
  keys: number;
}

/** q [B, T, Hq, D], k/v [B, S, Hkv, D] with Hq % Hkv == 0, options checked. */
export function attentionArgs(q: unknown, k: unknown, v: unknown, options: AttentionOptions | undefined): AttentionArgs {
  const op = "scaledDotProductAttention";
  const qt = floatRank(q, op, "q", 4, "[batch, seq, heads, headDim]");
  const kt = floatRank(k, op, "k", 4, "[batch, seq, kvHeads, headDim]");
  const vt = floatRank(v, op, "v", 4, "[batch, seq, kvHeads, headDim]");
  const [B, , Hq, D] = qt.shape;
  const [Bk, S, Hkv, Dk] = kt.shape;
  if (vt.shape.join() !== kt.shape.join()) throw peftError("ERR_SHAPE", `${op}: v ${shapeOf(vt)} must have k's shape ${shapeOf(kt)}`);
  if (Bk !== B || Dk !== D) throw peftError("ERR_SHAPE", `${op}: k ${shapeOf(kt)} must match q ${shapeOf(qt)} in batch and headDim`);
  if (Hkv === 0 ? Hq !== 0 : Hq % Hkv !== 0)
    throw peftError("ERR_SHAPE", `${op}: q's ${Hq} heads are not a multiple of k/v's ${Hkv} heads`);
  for (const [t, n] of [[kt, "k"], [vt, "v"]] as const) {
    if (t.dtype !== qt.dtype) throw peftError("ERR_DTYPE", `${op}: ${n} is ${t.dtype} but q is ${qt.dtype} (q, k and v share a dtype)`);
    if (t.device !== qt.device) throw peftError("ERR_DEVICE", `${op}: ${n} is on ${t.device}, q on ${qt.device}`);
  }
  const o = optionsArg(options, op);
  if (o.causal !== undefined && typeof o.causal !== "boolean") throw typeError(`${op}: causal must be a boolean, got ${shown(o.causal)}`);
  const scale = o.scale ?? 1 / Math.sqrt(D);
  if (typeof scale !== "number" || !Number.isFinite(scale)) throw typeError(`${op}: scale must be a finite number, got ${shown(o.scale)}`);
  const keys = o.keyLength ?? S;
  if (typeof keys !== "number" || !Number.isInteger(keys) || keys < 0 || keys > S)
    throw typeError(`${op}: keyLength must be an integer from 0 to the ${S} positions k/v hold, got ${shown(o.keyLength)}`);
  let mask: Tensor | null = null;
  if (o.attentionMask !== undefined && o.attentionMask !== null) {
    mask = tensorArg(o.attentionMask, op, "attentionMask");
    if (mask.shape.length !== 2 || mask.shape[0] !== B || mask.shape[1] !== keys)
      throw peftError("ERR_SHAPE", `${op}: attentionMask must be a [batch, keys] = [${B}, ${keys}] key mask, got ${shapeOf(mask)}`);
    if (mask.device !== qt.device) throw peftError("ERR_DEVICE", `${op}: attentionMask is on ${mask.device}, q on ${qt.device}`);
  }
  return { q: qt, k: kt, v: vt, causal: o.causal === true, mask, scale, keys };
}
