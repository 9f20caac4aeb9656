// Tiny random Llama-family models for tests: built in memory, written in transformers' on-disk format
// (config.json + model.safetensors, or shards with an index), and read back as float64 weights for the
// reference in test/llama-reference.ts.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { AdamW, LlamaForCausalLM, Tensor, llamaConfig, llamaConfigToJSON, manualSeed, saveSafetensorsSync, type DType, type LlamaConfig, type LlamaConfigInit } from "../../lib/index.js";
import type { RefConfig, RefWeights } from "../llama-reference.js";

/** A random model; norm weights are drawn around 1 (not left at ones) so their use is tested too. */
export function tinyLlama(init: LlamaConfigInit, seed = 1, dtype: DType = "f32"): LlamaForCausalLM {
  manualSeed(seed);
  const model = new LlamaForCausalLM(llamaConfig(init));
  for (const [name, p] of model.namedParameters()) {
    if (!name.endsWith("norm.weight")) continue;
    const r = Tensor.rand(p.shape, { seed: seed + 7, stream: name.length, lo: 0.5, hi: 1.5 });
    p.copyFrom(r);
    r.dispose();
  }
  return dtype === "f32" ? model : model.to(dtype);
}

/**
 * Multiplies the head's weight by `factor`. A trained LM's head gives sharp logits; PyTorch's init (rows of
 * norm ~0.6 after a unit-RMS norm) caps them near 3, too flat for any adapter below it to make a token nearly
 * certain. Scaled as training would, memorisation tests can reach a near-zero loss.
 */
export function sharpenHead(model: LlamaForCausalLM, factor = 10): void {
  const w = model.lm_head.weight, big = w.toFloat32Array().map((v) => factor * v);
  const t = Tensor.fromArray(big, w.shape);
  w.copyFrom(t);
  t.dispose();
}

/** Writes `model` as transformers would save it; `shards` > 1 splits the tensors over an index. */
export function writeLlama(model: LlamaForCausalLM, dir: string, opts: { shards?: number; config?: Record<string, unknown> } = {}): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "config.json"), JSON.stringify({ ...llamaConfigToJSON(model.config), ...opts.config }, null, 2));
  const sd = model.stateDict();
  const shards = opts.shards ?? 1;
  if (shards === 1) {
    saveSafetensorsSync(join(dir, "model.safetensors"), sd, { format: "pt" });
    return;
  }
  const keys = Object.keys(sd).sort();
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const file = `model-${String(s + 1).padStart(5, "0")}-of-${String(shards).padStart(5, "0")}.safetensors`;
    const part = Object.fromEntries(keys.filter((_, i) => i % shards === s).map((k) => [k, sd[k]]));
    for (const k of Object.keys(part)) weightMap[k] = file;
    saveSafetensorsSync(join(dir, file), part, { format: "pt" });
  }
  writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }));
}

export function refConfigOf(c: LlamaConfig): RefConfig {
  return {
    vocabSize: c.vocabSize, hiddenSize: c.hiddenSize, intermediateSize: c.intermediateSize, numLayers: c.numHiddenLayers,
    numHeads: c.numAttentionHeads, numKvHeads: c.numKeyValueHeads, headDim: c.headDim, rmsNormEps: c.rmsNormEps,
    ropeTheta: c.ropeTheta, ropeScaling: c.ropeScaling, tieWordEmbeddings: c.tieWordEmbeddings,
  };
}

/** The model's weights (tied ones once, under the embedding's name) in float64. */
export function refWeightsOf(model: LlamaForCausalLM): RefWeights {
  const w: RefWeights = new Map();
  for (const [name, p] of model.namedParameters()) w.set(name, p.toFloat64Array());
  return w;
}

/** Causal-LM training steps on `ids` (labels = ids) with AdamW over the trainable parameters: the first and last losses. */
export function trainCausalLm(model: { forward(ids: Tensor, o: { labels: Tensor }): { logits: Tensor; loss?: Tensor | null }; parameters(): Iterable<Tensor> }, ids: Tensor, steps: number, lr = 1e-2): { first: number; last: number } {
  const opt = new AdamW([...model.parameters()].filter((p) => p.requiresGrad), { lr, weightDecay: 0 });
  let first = 0, last = 0;
  for (let step = 0; step < steps; step++) {
    const { logits, loss } = model.forward(ids, { labels: ids });
    last = loss!.toFloat64Array()[0];
    if (step === 0) first = last;
    loss!.backward();
    opt.step();
    opt.zeroGrad();
    logits.dispose();
    loss!.dispose();
  }
  return { first, last };
}
