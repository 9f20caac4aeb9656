// A whole LoRA training step of an MLP stack: 2 blocks of Linear(1024→2816) → SiLU → Linear(2816→1024) on
// 512 tokens, LoRA r=16 on every Linear, frozen base, AdamW; in f32 and in bf16 mode (bf16 base and
// activations, f32 adapters and optimizer). Model FLOPs: 2·P·T forward + 2·P·T for dx (the frozen base has
// no dW) + LoRA's rank-r products. Measured against the peak of the step's dtype in the same run and against
// the step's base GEMMs run alone; forward, backward and AdamW are timed alone too, so the report shows each
// phase's share of the step.
import { AdamW, F, Linear, LoraConfig, SiLU, Sequential, Tensor, getPeftModel, linear, linearGradInput, tidy } from "../dist/index.js";
import { backend } from "../dist/index.js";
import { ceilingRate, peakOfDtype } from "./ceilings.mjs";

const T = 512, E = 1024, I = 2816, R = 16, BLOCKS = 2;
const LAYERS = Array.from({ length: BLOCKS }, () => [[E, I], [I, E]]).flat(); // [in, out]

function stepFlops() {
  const P = LAYERS.reduce((s, [i, o]) => s + i * o, 0);
  // LoRA per layer: forward x·Aᵀ and (x·Aᵀ)·Bᵀ (2·T·r·(in + out)); backward dB, d(xAᵀ), dA and dx's share
  // (4·T·r·(in + out)).
  const lora = LAYERS.reduce((s, [i, o]) => s + 6 * T * R * (i + o), 0);
  return 2 * P * T + 2 * P * T + lora;
}

function makeState(dtype) {
  const layers = [];
  for (let b = 0; b < BLOCKS; b++) layers.push(new Linear(E, I, { seed: 2 * b }), new SiLU(), new Linear(I, E, { seed: 2 * b + 1 }));
  const base = new Sequential(...layers).to(dtype);
  const targets = layers.map((l, i) => (l instanceof Linear ? String(i) : null)).filter((n) => n !== null);
  const model = getPeftModel(base, new LoraConfig({ r: R, loraAlpha: 2 * R, targetModules: targets, initLoraWeights: false }));
  model.train();
  const x = Tensor.randn([T, E], { seed: 7 }).to(dtype);
  const params = [...model.parameters()].filter((p) => p.requiresGrad);
  const opt = new AdamW(params, { lr: 1e-4 });
  const weights = [...model.namedParameters()].filter(([n]) => /base_layer\.weight$/.test(n)).map(([, p]) => p);
  const acts = new Map(), grads = new Map();
  for (const [i, o] of LAYERS) {
    if (!acts.has(i)) acts.set(i, Tensor.randn([T, i], { seed: i }).to(dtype));
    if (!grads.has(o)) grads.set(o, Tensor.randn([T, o], { seed: o + 1 }).to(dtype));
  }
  let loss = null;
  const s = {
    forward: () => (loss = tidy(() => F.mseLoss(model.forward(x), Tensor.zeros([T, E], { dtype })))),
    backward: () => {
      loss.backward();
      loss.dispose();
      loss = null;
    },
    drop: () => {
      loss?.dispose();
      loss = null;
    },
    update: () => {
      opt.step();
      opt.zeroGrad();
    },
    gemms: () => {
      for (const w of weights) {
        const [o, i] = w.shape;
        linear(acts.get(i), w).dispose();
        linearGradInput(grads.get(o), w).dispose();
      }
    },
    dispose() {
      loss?.dispose();
      model.dispose();
      x.dispose();
      for (const t of [...acts.values(), ...grads.values()]) t.dispose();
    },
  };
  return s;
}

function stepCase(dtype) {
  let s = null;
  const state = () => (s ??= makeState(dtype));
  const peak = peakOfDtype(dtype);
  const amx = dtype === "bf16" && peak === "amx-bf16";
  return {
    name: `MLP stack ${BLOCKS}x(${E}→${I}→${E}) LoRA r=${R} training step (fwd + bwd + AdamW), T=${T}, ${dtype}${dtype === "bf16" ? " mode" : ""}`,
    shape: [T, E, I], dtype, kernel: peak,
    flops: stepFlops(),
    setup: () => void state(),
    teardown: () => {
      s?.dispose();
      s = null;
    },
    before: () => state().drop(),
    run: () => {
      const st = state();
      st.forward();
      st.backward();
      st.update();
    },
    baselines: [
      { name: `${peak} peak`, rate: () => ceilingRate(peak) },
      { name: "its base GEMMs alone", run: () => state().gemms() },
      { name: "forward alone", run: () => state().forward(), before: () => state().drop() },
      { name: "backward alone", before: () => { state().drop(); state().forward(); }, run: () => state().backward() },
      { name: "AdamW alone", before: () => { state().drop(); state().forward(); state().backward(); }, run: () => state().update() },
    ],
    target: amx
      ? { baseline: "its base GEMMs alone", min: 1 / 1.15, note: "step <= 1.15x the sum of its GEMMs (AMX)" }
      : dtype === "bf16"
        ? { baseline: `${peak} peak`, min: 0.7, note: "model FLOP utilisation >= 0.70 of vdpbf16ps" }
        : { baseline: `${peak} peak`, min: 0.84, note: "model FLOP utilisation >= 0.84 of the FMA peak" },
  };
}

export const cases = [stepCase("f32"), stepCase("bf16")];
