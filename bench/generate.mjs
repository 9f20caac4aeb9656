// Decoding and prefill of the ~100M-parameter Llama of bench/llama.mjs (random weights made in memory) at
// batch 1, f32 and bf16: a decode step reads every projection and the head once per token, so its rate is
// reported as weight bytes per second against the DRAM read ceiling measured in the same run (the roofline
// of a token: target >= 0.6x); prefill of 512 tokens as model FLOPs against the dtype's compute peak.
import { LlamaForCausalLM, Tensor, llamaConfig, noGrad } from "../dist/index.js";
import { ceilingRate, peakOfDtype } from "./ceilings.mjs";

const CONFIG = { vocabSize: 32000, hiddenSize: 768, intermediateSize: 2048, numHiddenLayers: 12, numAttentionHeads: 12, numKeyValueHeads: 4, maxPositionEmbeddings: 2048 };
const CONTEXT = 128; // positions already in the cache when decoding starts
const STEPS = 16; // tokens decoded per timed run
const PREFILL = 512;

/** Parameters read by the matrix products of one token (the embedding is a one-row lookup). */
function matmulParams() {
  const { hiddenSize: E, intermediateSize: I, numAttentionHeads: H, numKeyValueHeads: Hkv, numHiddenLayers: L, vocabSize: V } = CONFIG;
  const D = E / H;
  return L * (E * H * D + 2 * E * Hkv * D + H * D * E + 3 * E * I) + E * V;
}

const ids = (n, from = 0) => Array.from({ length: n }, (_, i) => ((from + i) * 7919) % CONFIG.vocabSize);

function state(dtype, cacheLength) {
  const model = new LlamaForCausalLM(llamaConfig(CONFIG), { dtype }).eval();
  const cache = model.createCache({ maxLength: cacheLength });
  return { model, cache, dispose: () => (cache.dispose(), model.dispose()) };
}

function forward(s, tokens) {
  noGrad(() => {
    const t = Tensor.fromArray(tokens, [1, tokens.length], "i64");
    s.model.forward(t, { pastKeyValues: s.cache }).logits.dispose();
    t.dispose();
  });
}

function decodeCase(dtype) {
  let s = null;
  const bytes = matmulParams() * (dtype === "f32" ? 4 : 2) * STEPS;
  return {
    name: `llama ~100M decode, batch 1, ${STEPS} tokens after ${CONTEXT} cached, ${dtype} (rate = weight bytes read per second)`,
    shape: [1, CONTEXT + STEPS], dtype, kernel: "decode",
    bytes,
    maxReps: 5,
    setup: () => {
      s = state(dtype, CONTEXT + STEPS);
      forward(s, ids(CONTEXT));
    },
    teardown: () => {
      s?.dispose();
      s = null;
    },
    // Each run decodes the same STEPS positions again (the cache is rewound to the prompt).
    before: () => void (s.cache.length = CONTEXT),
    run: () => {
      for (let i = 0; i < STEPS; i++) forward(s, [ids(1, CONTEXT + i)[0]]);
    },
    baselines: [{ name: "dram-read ceiling", rate: () => ceilingRate("dram-read") }],
    target: { baseline: "dram-read ceiling", min: 0.6, note: "decode >= 0.6x the DRAM roofline of its weight bytes per token" },
  };
}

function prefillCase(dtype) {
  let s = null;
  const { numHiddenLayers: L, numAttentionHeads: H, hiddenSize: E } = CONFIG;
  const flops = 2 * matmulParams() * PREFILL + L * H * 2 * (2 * (E / H)) * ((PREFILL * (PREFILL + 1)) / 2);
  const peak = peakOfDtype(dtype);
  return {
    name: `llama ~100M prefill, ${PREFILL} tokens into the cache, ${dtype} (tokens/s = rate / ${(flops / PREFILL / 1e9).toFixed(3)} GFLOP)`,
    shape: [1, PREFILL], dtype, kernel: peak,
    flops,
    maxReps: 5,
    setup: () => void (s = state(dtype, PREFILL)),
    teardown: () => {
      s?.dispose();
      s = null;
    },
    before: () => void (s.cache.length = 0),
    run: () => forward(s, ids(PREFILL)),
    baselines: [{ name: `${peak} peak`, rate: () => ceilingRate(peak) }],
  };
}

export const cases = [decodeCase("f32"), decodeCase("bf16"), prefillCase("f32"), prefillCase("bf16")];

