// The llama-tiny fixture (test/fixtures/llama-tiny, see its README.md): a transformers-format model,
// a PEFT adapter and torch float64 expectations, read into plain arrays for the float64 reference.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { F, Tensor, loadSafetensorsSync, noGrad, type LlamaForCausalLM } from "../../lib/index.js";
import type { RefConfig, RefLora, RefWeights } from "../llama-reference.js";

export const LLAMA_TINY = fileURLToPath(new URL("../fixtures/llama-tiny", import.meta.url));
export const LLAMA_TINY_MODEL = join(LLAMA_TINY, "model");
export const LLAMA_TINY_ADAPTER = join(LLAMA_TINY, "adapter");

export interface LlamaTinyCase {
  cfg: RefConfig;
  weights: RefWeights;
  lora: Map<string, RefLora>;
  inputs: Record<string, Tensor>;
  expected: Record<string, Tensor>;
  caseJson: { tolerance: Record<string, { atol?: number; rtol?: number; atol_rel_to_max?: number }>; params: Record<string, unknown> };
}

/** A 2-D integer tensor as rows of numbers. */
export function rowsOf(t: Tensor): number[][] {
  const v = Array.from(t.toFloat64Array());
  const [B, T] = t.shape;
  return Array.from({ length: B }, (_, b) => v.slice(b * T, (b + 1) * T));
}

let cached: LlamaTinyCase | null = null;

export function llamaTiny(): LlamaTinyCase {
  if (cached) return cached;
  const c = JSON.parse(readFileSync(join(LLAMA_TINY_MODEL, "config.json"), "utf8"));
  const cfg: RefConfig = {
    vocabSize: c.vocab_size, hiddenSize: c.hidden_size, intermediateSize: c.intermediate_size, numLayers: c.num_hidden_layers,
    numHeads: c.num_attention_heads, numKvHeads: c.num_key_value_heads, headDim: c.head_dim, rmsNormEps: c.rms_norm_eps,
    ropeTheta: c.rope_theta, ropeScaling: null, tieWordEmbeddings: c.tie_word_embeddings,
  };
  const weights: RefWeights = new Map();
  for (const [k, t] of Object.entries(loadSafetensorsSync(join(LLAMA_TINY_MODEL, "model.safetensors")))) weights.set(k, t.toFloat64Array());
  const ac = JSON.parse(readFileSync(join(LLAMA_TINY_ADAPTER, "adapter_config.json"), "utf8"));
  const lora = new Map<string, RefLora>();
  const ad = loadSafetensorsSync(join(LLAMA_TINY_ADAPTER, "adapter_model.safetensors"));
  for (const [k, t] of Object.entries(ad)) {
    const m = /^base_model\.model\.(.*)\.lora_A\.weight$/.exec(k);
    if (!m) continue;
    const B = ad[`base_model.model.${m[1]}.lora_B.weight`];
    lora.set(m[1], { A: t.toFloat64Array(), B: B.toFloat64Array(), r: ac.r, scale: ac.lora_alpha / ac.r });
  }
  cached = {
    cfg, weights, lora,
    inputs: loadSafetensorsSync(join(LLAMA_TINY, "inputs.safetensors")),
    expected: loadSafetensorsSync(join(LLAMA_TINY, "expected.safetensors")),
    caseJson: JSON.parse(readFileSync(join(LLAMA_TINY, "case.json"), "utf8")),
  };
  return cached;
}

/** case.json's rule: |actual - expected| <= atol + rtol·|expected| elementwise. */
export function caseTol(want: ArrayLike<number>, tol: { atol?: number; rtol?: number; atol_rel_to_max?: number }): (i: number) => number {
  let atol = tol.atol ?? 0;
  if (tol.atol_rel_to_max !== undefined) {
    let m = 0;
    for (let i = 0; i < want.length; i++) m = Math.max(m, Math.abs(want[i]));
    atol = tol.atol_rel_to_max * m;
  }
  return (i) => atol + (tol.rtol ?? 0) * Math.abs(want[i]);
}

/** Greedy continuation of `prompt` by `steps` full forwards (no KV cache). */
export function greedy(model: { forward: LlamaForCausalLM["forward"] }, prompt: number[], steps: number): number[] {
  const seq = [...prompt];
  for (let s = 0; s < steps; s++) {
    const ids = Tensor.fromArray(seq, [1, seq.length], "i64");
    const next = noGrad(() => {
      const { logits } = model.forward(ids);
      const last = F.narrow(logits, 1, seq.length - 1, 1);
      const arg = F.argmax(last, -1);
      const v = arg.toFloat64Array()[0];
      for (const t of [logits, last, arg]) t.dispose();
      return v;
    });
    ids.dispose();
    seq.push(next);
  }
  return seq.slice(prompt.length);
}

