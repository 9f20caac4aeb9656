// A float64 reference of transformers' Llama-family causal LM forward (LlamaForCausalLM / MistralForCausalLM
// / Qwen2ForCausalLM, eager attention), written plainly: RMSNorm, rotate-half rope (default, linear and
// llama3 inverse frequencies), grouped-query causal attention with key padding masked, SwiGLU MLP, tied or
// untied head, optional q/k/v/o and MLP biases, optional LoRA deltas on any linear, and the shifted
// cross-entropy with ignore index -100 averaged over the non-ignored tokens.
import type { RopeScaling } from "../lib/index.js";

// The rope scaling as the library's config parser gives it (a plain description, no logic).
export type RefRopeScaling = RopeScaling | null;

export interface RefConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RefRopeScaling;
  tieWordEmbeddings: boolean;
}

/** Weights by transformers' parameter name (row-major, as stored), in float64. */
export type RefWeights = Map<string, Float64Array>;

/** A LoRA delta on a linear: y += scale · (x Aᵀ) Bᵀ with A (r, in), B (out, r). */
export interface RefLora {
  A: Float64Array;
  B: Float64Array;
  r: number;
  scale: number;
}

/** transformers' rope inverse frequencies (default, "linear" or "llama3" scaling; attention scaling 1). */
export function refInvFreq(cfg: Pick<RefConfig, "headDim" | "ropeTheta" | "ropeScaling">): Float64Array {
  const half = cfg.headDim / 2;
  const inv = new Float64Array(half);
  for (let j = 0; j < half; j++) inv[j] = 1 / cfg.ropeTheta ** ((2 * j) / cfg.headDim);
  const s = cfg.ropeScaling;
  if (!s) return inv;
  if (s.type === "linear") return inv.map((f) => f / s.factor);
  const lowWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
  const highWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
  return inv.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen > lowWavelen) return f / s.factor;
    if (wavelen < highWavelen) return f;
    const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
    return (1 - smooth) * (f / s.factor) + smooth * f;
  });
}

function weight(w: RefWeights, name: string): Float64Array {
  const t = w.get(name);
  if (!t) throw new Error(`reference: no weight ${name}`);
  return t;
}

/** x (rows, in) · Wᵀ (+ b) (+ LoRA), W (out, in). */
function linear(x: Float64Array, rows: number, inF: number, w: RefWeights, name: string, lora?: Map<string, RefLora>): Float64Array {
  const W = weight(w, `${name}.weight`);
  const outF = W.length / inF;
  const b = w.get(`${name}.bias`);
  const y = new Float64Array(rows * outF);
  for (let i = 0; i < rows; i++)
    for (let o = 0; o < outF; o++) {
      let s = b ? b[o] : 0;
      for (let k = 0; k < inF; k++) s += x[i * inF + k] * W[o * inF + k];
      y[i * outF + o] = s;
    }
  const l = lora?.get(name);
  if (l) {
    for (let i = 0; i < rows; i++) {
      const t = new Float64Array(l.r);
      for (let j = 0; j < l.r; j++) for (let k = 0; k < inF; k++) t[j] += x[i * inF + k] * l.A[j * inF + k];
      for (let o = 0; o < outF; o++) {
        let s = 0;
        for (let j = 0; j < l.r; j++) s += t[j] * l.B[o * l.r + j];
        y[i * outF + o] += l.scale * s;
      }
    }
  }
  return y;
}

function rmsNorm(x: Float64Array, rows: number, dim: number, g: Float64Array, eps: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let i = 0; i < rows; i++) {
    let ss = 0;
    for (let k = 0; k < dim; k++) ss += x[i * dim + k] ** 2;
    const inv = 1 / Math.sqrt(ss / dim + eps);
    for (let k = 0; k < dim; k++) y[i * dim + k] = x[i * dim + k] * inv * g[k];
  }
  return y;
}

/** q or k (B·T, H·D) rotated in place by rotate-half with angles positions[b][t] · invFreq. */
function rope(x: Float64Array, B: number, T: number, H: number, D: number, inv: Float64Array, positions: number[][]): void {
  const half = D / 2;
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T; t++)
      for (let h = 0; h < H; h++) {
        const at = ((b * T + t) * H + h) * D;
        const v = x.slice(at, at + D);
        for (let d = 0; d < D; d++) {
          const ang = positions[b][t] * inv[d % half];
          const rot = d < half ? -v[d + half] : v[d - half];
          x[at + d] = v[d] * Math.cos(ang) + rot * Math.sin(ang);
        }
      }
}

const silu = (v: number) => v / (1 + Math.exp(-v));

export interface RefInputs {
  /** [B][T] token ids. */
  ids: number[][];
  /** [B][T] key mask (1 attend, 0 padding); all ones when absent. */
  attentionMask?: number[][] | null;
  /** [B][T] positions; 0..T-1 when absent. */
  positionIds?: number[][] | null;
  /** LoRA deltas by module path ("model.layers.0.self_attn.q_proj"). */
  lora?: Map<string, RefLora>;
  /** [B·T·hidden] input embeddings used in place of the ids' rows (ids then only give B and T). */
  embeds?: Float64Array;
  /**
   * Keys and values before every layer's own (prefix tuning), per layer [B·P·kvHeads·headDim], unrotated:
   * positions then default to P..P+T-1 and attentionMask covers P + T keys.
   */
  prefix?: { length: number; keys: Float64Array[]; values: Float64Array[] };
}

/**
 * Logits (B·T·V, row-major) of the causal LM. A query row whose every key is masked outputs zeros (the
 * library's rule; such rows are padding and never reach the loss).
 */
export function refLlamaLogits(cfg: RefConfig, w: RefWeights, inp: RefInputs): Float64Array {
  const B = inp.ids.length, T = inp.ids[0].length, E = cfg.hiddenSize, H = cfg.numHeads, Hkv = cfg.numKvHeads, D = cfg.headDim;
  const rows = B * T;
  const P = inp.prefix?.length ?? 0;
  const positions = inp.positionIds ?? inp.ids.map((r) => r.map((_, t) => P + t));
  const mask = inp.attentionMask ?? inp.ids.map((r) => [...new Array<number>(P).fill(1), ...r.map(() => 1)]);
  const inv = refInvFreq(cfg);
  const emb = weight(w, "model.embed_tokens.weight");
  let h = new Float64Array(rows * E);
  if (inp.embeds) h.set(inp.embeds);
  else for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) h.set(emb.subarray(inp.ids[b][t] * E, (inp.ids[b][t] + 1) * E), (b * T + t) * E);
  const scale = 1 / Math.sqrt(D);
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    const n = rmsNorm(h, rows, E, weight(w, `${p}.input_layernorm.weight`), cfg.rmsNormEps);
    const q = linear(n, rows, E, w, `${p}.self_attn.q_proj`, inp.lora);
    const k = linear(n, rows, E, w, `${p}.self_attn.k_proj`, inp.lora);
    const v = linear(n, rows, E, w, `${p}.self_attn.v_proj`, inp.lora);
    rope(q, B, T, H, D, inv, positions);
    rope(k, B, T, Hkv, D, inv, positions);
    const att = new Float64Array(rows * H * D);
    // Key/value j of the S = P + T this layer sees: the prefix's first, then the input's own.
    const S = P + T;
    const kvAt = (src: Float64Array, pre: Float64Array | undefined, b: number, j: number, kv: number, d: number) =>
      j < P ? pre![((b * P + j) * Hkv + kv) * D + d] : src[((b * T + j - P) * Hkv + kv) * D + d];
    for (let b = 0; b < B; b++)
      for (let hh = 0; hh < H; hh++) {
        const kv = Math.floor(hh / (H / Hkv));
        for (let i = 0; i < T; i++) {
          const s = new Float64Array(S).fill(-Infinity);
          let m = -Infinity;
          for (let j = 0; j <= P + i; j++) {
            if (!mask[b][j]) continue;
            let dot = 0;
            for (let d = 0; d < D; d++) dot += q[((b * T + i) * H + hh) * D + d] * kvAt(k, inp.prefix?.keys[l], b, j, kv, d);
            s[j] = dot * scale;
            m = Math.max(m, s[j]);
          }
          if (m === -Infinity) continue; // every key masked: zeros
          let z = 0;
          for (let j = 0; j < S; j++) z += s[j] === -Infinity ? 0 : Math.exp(s[j] - m);
          for (let j = 0; j < S; j++) {
            if (s[j] === -Infinity) continue;
            const pj = Math.exp(s[j] - m) / z;
            for (let d = 0; d < D; d++) att[((b * T + i) * H + hh) * D + d] += pj * kvAt(v, inp.prefix?.values[l], b, j, kv, d);
          }
        }
      }
    const o = linear(att, rows, H * D, w, `${p}.self_attn.o_proj`, inp.lora);
    for (let i = 0; i < h.length; i++) h[i] += o[i];
    const n2 = rmsNorm(h, rows, E, weight(w, `${p}.post_attention_layernorm.weight`), cfg.rmsNormEps);
    const gate = linear(n2, rows, E, w, `${p}.mlp.gate_proj`, inp.lora);
    const up = linear(n2, rows, E, w, `${p}.mlp.up_proj`, inp.lora);
    for (let i = 0; i < gate.length; i++) gate[i] = silu(gate[i]) * up[i];
    const down = linear(gate, rows, cfg.intermediateSize, w, `${p}.mlp.down_proj`, inp.lora);
    for (let i = 0; i < h.length; i++) h[i] += down[i];
  }
  h = rmsNorm(h, rows, E, weight(w, "model.norm.weight"), cfg.rmsNormEps);
  const head = cfg.tieWordEmbeddings ? "model.embed_tokens" : "lm_head";
  return linear(h, rows, E, w, head, inp.lora);
}

/** Mean cross-entropy of logits[:, :-1] against labels[:, 1:], ignoring -100 (NaN when nothing counts). */
export function refShiftedLoss(logits: Float64Array, labels: number[][], V: number): number {
  const B = labels.length, T = labels[0].length;
  let sum = 0, count = 0;
  for (let b = 0; b < B; b++)
    for (let t = 0; t + 1 < T; t++) {
      const y = labels[b][t + 1];
      if (y === -100) continue;
      const row = logits.subarray((b * T + t) * V, (b * T + t + 1) * V);
      let m = -Infinity;
      for (const v of row) m = Math.max(m, v);
      let z = 0;
      for (const v of row) z += Math.exp(v - m);
      sum += m + Math.log(z) - row[y];
      count++;
    }
  return sum / count;
}
