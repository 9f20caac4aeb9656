// A whole LoRA training step of a ~100M-parameter Llama (hidden 768, 12 layers, intermediate 2048, 12 query
// / 4 kv heads, vocab 32000; random weights made in memory) on one sequence of 512 tokens, f32 and bf16 mode:
// forward, shifted cross-entropy, backward into LoRA r=16 on q/k/v/o/gate/up/down. Reported as model FLOP
// utilisation against the peak of the step's dtype measured in the same run, and against the same step's
// GEMMs run alone (what a step costs beyond its matrix products).
import { LlamaForCausalLM, LoraConfig, Tensor, getPeftModel, linear, linearGradInput, llamaConfig, tidy } from "../dist/index.js";
import { backend } from "../dist/index.js";
import { ceilingRate, peakOfDtype } from "./ceilings.mjs";

const T = 512;
const R = 16;
const TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
const CONFIG = {
  vocabSize: 32000, hiddenSize: 768, intermediateSize: 2048, numHiddenLayers: 12, numAttentionHeads: 12, numKeyValueHeads: 4,
  maxPositionEmbeddings: 2048,
};

/** [in, out] of every adapted projection of one layer, and of the head. */
function projections() {
  const { hiddenSize: E, intermediateSize: I, numAttentionHeads: H, numKeyValueHeads: Hkv } = CONFIG;
  const D = E / H;
  return { layer: [[E, H * D], [E, Hkv * D], [E, Hkv * D], [H * D, E], [E, I], [E, I], [I, E]], head: [E, CONFIG.vocabSize] };
}

/**
 * Model FLOPs of one step: forward 2·P·T over the matmul parameters (the embedding is a lookup), causal
 * attention as T(T+1)/2 scores per head (QKᵀ and PV, 2·D each), backward the input gradients (2·P·T) and
 * twice the attention (dQ, dK, dV, dP), and LoRA's rank-R products (2 forward, 4 backward per side).
 */
function stepFlops() {
  const { layer, head } = projections();
  const L = CONFIG.numHiddenLayers, H = CONFIG.numAttentionHeads, D = CONFIG.hiddenSize / H;
  const P = L * layer.reduce((s, [i, o]) => s + i * o, 0) + head[0] * head[1];
  const attentionFwd = L * H * 2 * (2 * D) * ((T * (T + 1)) / 2);
  const lora = L * layer.reduce((s, [i, o]) => s + 6 * T * R * (i + o), 0);
  return 2 * P * T + attentionFwd + 2 * P * T + 2 * attentionFwd + lora;
}

function makeState(dtype) {
  const model = new LlamaForCausalLM(llamaConfig(CONFIG), { dtype });
  const peft = getPeftModel(model, new LoraConfig({ r: R, loraAlpha: 2 * R, targetModules: TARGETS }));
  // B is zero after PEFT's init; a trained adapter is not, and the step's work does not depend on it.
  peft.train();
  const ids = Tensor.fromArray(Array.from({ length: T }, (_, i) => (i * 7919) % CONFIG.vocabSize), [1, T], "i64");
  const params = [...peft.parameters()].filter((p) => p.requiresGrad);
  // The GEMMs of the step alone: each projection's forward and input gradient, the head's too.
  const { layer, head } = projections();
  const shapes = [...Array(CONFIG.numHiddenLayers).fill(layer).flat(), head];
  const weights = [...peft.namedParameters()].filter(([n]) => /(_proj\.base_layer|lm_head)\.weight$/.test(n)).map(([, p]) => p);
  const inputs = new Map(), grads = new Map();
  for (const [i, o] of shapes) {
    if (!inputs.has(i)) inputs.set(i, Tensor.randn([T, i], { seed: i, dtype }));
    if (!grads.has(o)) grads.set(o, Tensor.randn([T, o], { seed: o + 1, dtype }));
  }
  return {
    peft, ids, params, weights, inputs, grads,
    dispose() {
      peft.dispose();
      ids.dispose();
      for (const t of [...inputs.values(), ...grads.values()]) t.dispose();
    },
  };
}

function trainStep(s) {
  const loss = tidy(() => s.peft.forward(s.ids, { labels: s.ids }).loss);
  loss.backward();
  loss.dispose();
  for (const p of s.params) {
    p.grad?.dispose();
    p.grad = null;
  }
}

function gemmsAlone(s) {
  for (const w of s.weights) {
    const [o, i] = w.shape;
    linear(s.inputs.get(i), w).dispose();
    linearGradInput(s.grads.get(o), w).dispose();
  }
}

function stepCase(dtype) {
  let s = null;
  const state = () => (s ??= makeState(dtype));
  const peak = peakOfDtype(dtype);
  return {
    name: `llama ~100M LoRA r=${R} (q/k/v/o/gate/up/down) training step, T=${T}, ${dtype}${dtype === "bf16" ? " mode" : ""}`,
    shape: [1, T], dtype, kernel: peak,
    flops: stepFlops(),
    // a step takes seconds on a small machine: three repeats keep the family under a few minutes
    maxReps: 3,
    setup: () => void state(),
    teardown: () => {
      s?.dispose();
      s = null;
    },
    run: () => trainStep(state()),
    baselines: [
      { name: `${peak} peak`, rate: () => ceilingRate(peak) },
      { name: "its GEMMs alone", run: () => gemmsAlone(state()) },
    ],
    target: backend.features.includes("amx")
      ? { baseline: "its GEMMs alone", min: 1 / 1.15, note: "step <= 1.15x the sum of its GEMMs (AMX); MFU target 0.55 of the peak" }
      : { baseline: `${peak} peak`, min: 0.55, note: "model FLOP utilisation >= 0.55" },
  };
}

export const cases = [stepCase("f32"), stepCase("bf16")];
