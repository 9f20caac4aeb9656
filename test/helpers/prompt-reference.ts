// Float64 references of the prompt encoders (PEFT's PromptEmbedding, PromptEncoder MLP/LSTM, PrefixEncoder)
// and of a causal LM's forward with their prompt: virtual-token embeddings before the input's, or a
// key/value prefix in every layer, as PEFT's PeftModelForCausalLM gives them to transformers.
import type { PeftModel, LlamaForCausalLM } from "../../lib/index.js";
import { refLlamaLogits, type RefInputs } from "../llama-reference.js";
import { refConfigOf, refWeightsOf } from "./llama-models.js";
import { refLstm } from "./lstm-reference.js";

/** The adapter's parameters by name under its encoder (embedding.weight, mlp_head.0.weight, ...), in float64. */
export function encoderParams(peft: PeftModel, adapter = "default"): Map<string, Float64Array> {
  const prefix = `base_model.prompt_encoder.${adapter}.`;
  return new Map([...peft.namedParameters()].filter(([n]) => n.startsWith(prefix)).map(([n, p]) => [n.slice(prefix.length), p.toFloat64Array()]));
}

/** rows·out = x (rows·in) Wᵀ + b. */
function linear(x: Float64Array, rows: number, w: Float64Array, b: Float64Array | undefined, out: number): Float64Array {
  const inF = w.length / out, y = new Float64Array(rows * out);
  for (let r = 0; r < rows; r++)
    for (let o = 0; o < out; o++) {
      let s = b ? b[o] : 0;
      for (let k = 0; k < inF; k++) s += x[r * inF + k] * w[o * inF + k];
      y[r * out + o] = s;
    }
  return y;
}

/** Linear layers by Sequential index with `act` between them (none after the last). */
function mlp(p: Map<string, Float64Array>, head: string, indices: number[], x: Float64Array, rows: number, act: (v: number) => number): Float64Array {
  let h = x;
  for (const [k, i] of indices.entries()) {
    const w = p.get(`${head}.${i}.weight`)!, b = p.get(`${head}.${i}.bias`);
    h = linear(h, rows, w, b, b!.length);
    if (k + 1 < indices.length) h = h.map(act);
  }
  return h;
}

const relu = (v: number) => Math.max(0, v);

/**
 * The prompt an encoder makes for tokens 0..n-1, [n·width]: the table itself (prompt tuning, prefix without
 * projection, any inference adapter), or the P-tuning MLP / LSTM+MLP, or the prefix projection.
 */
export function refPrompt(p: Map<string, Float64Array>, n: number, kind: "table" | "mlp" | "lstm" | "projection", sizes: { hidden?: number; lstmLayers?: number } = {}): Float64Array {
  const e = p.get("embedding.weight")!;
  if (kind === "table") return e;
  const width = e.length / n;
  if (kind === "mlp") return mlp(p, "mlp_head", [0, 2, 4], e, n, relu);
  if (kind === "projection") return mlp(p, "transform", [0, 2], e, n, Math.tanh);
  const lp = new Map([...p].filter(([k]) => k.startsWith("lstm_head.")).map(([k, v]) => [k.slice("lstm_head.".length), v]));
  const { output } = refLstm(lp, e, { batch: 1, seq: n, inputSize: width, hiddenSize: sizes.hidden!, numLayers: sizes.lstmLayers ?? 2, bidirectional: true });
  return mlp(p, "mlp_head", [0, 2], output, n, relu);
}

/** Logits [B·(n+T)·V] with `prompt` (n rows of hidden) before each row's token embeddings. */
export function refPromptTuningLogits(lm: LlamaForCausalLM, prompt: Float64Array, ids: number[][], mask?: number[][]): Float64Array {
  const w = refWeightsOf(lm), E = lm.config.hiddenSize, n = prompt.length / E;
  const emb = w.get("model.embed_tokens.weight")!;
  const T = ids[0].length;
  const embeds = new Float64Array(ids.length * (n + T) * E);
  ids.forEach((row, b) => {
    embeds.set(prompt, b * (n + T) * E);
    row.forEach((id, t) => embeds.set(emb.subarray(id * E, (id + 1) * E), (b * (n + T) + n + t) * E));
  });
  const inp: RefInputs = { ids: ids.map((r) => [...new Array<number>(n).fill(0), ...r]), embeds, attentionMask: mask?.map((r) => [...new Array<number>(n).fill(1), ...r]) };
  return refLlamaLogits(refConfigOf(lm.config), w, inp);
}

/** Logits [B·T·V] with `prefix` ([n · layers·2·kvHeads·headDim], PEFT's layout) as every layer's leading keys/values. */
export function refPrefixLogits(lm: LlamaForCausalLM, prefix: Float64Array, n: number, ids: number[][], mask?: number[][]): Float64Array {
  const { numHiddenLayers: L, numKeyValueHeads: H, headDim: D } = lm.config;
  const B = ids.length;
  const part = (block: number) => {
    const out = new Float64Array(B * n * H * D);
    for (let b = 0; b < B; b++)
      for (let p = 0; p < n; p++)
        for (let i = 0; i < H * D; i++) out[(b * n + p) * H * D + i] = prefix[p * 2 * L * H * D + block * H * D + i];
    return out;
  };
  const keys = Array.from({ length: L }, (_, l) => part(2 * l));
  const values = Array.from({ length: L }, (_, l) => part(2 * l + 1));
  const inp: RefInputs = { ids, prefix: { length: n, keys, values }, attentionMask: mask?.map((r) => [...new Array<number>(n).fill(1), ...r]) };
  return refLlamaLogits(refConfigOf(lm.config), refWeightsOf(lm), inp);
}
