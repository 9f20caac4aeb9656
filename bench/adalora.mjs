// AdaLoRA against LoRA in the same run: SVDLinear runs LoRA's fused kernels with A' = A ⊙ E (made per call) and
// adds dA = dA' ⊙ E, dE = Σ dA' ⊙ A after the fused backward, so at the same rank it should cost next to nothing
// over LoraLinear. The allocator's per-step update (importance and uncertainty EMAs over every adapter entry) is
// measured against an AdamW step over the same parameters: both are streaming passes over the adapters.
import { AdaLoraConfig, AdamW, Linear, LoraLinear, Module, ModuleDict, SVDLinear, Tensor, getPeftModel } from "../dist/index.js";

const within = (slack, what) => ({ baseline: what, min: 1 / slack, note: `≤ ${slack}x ${what}` });

function layerPair(K, N, r) {
  const ada = new SVDLinear(new Linear(K, N, { seed: 1 }), { r, loraAlpha: 16 });
  const lora = new LoraLinear(new Linear(K, N, { seed: 1 }), { r, loraAlpha: 16 });
  // Non-zero E and B, so no path is skipped.
  ada.svdFactors("default").E.copyFrom(Tensor.randn([r, 1], { seed: 2 }));
  lora.loraFactors("default").B.copyFrom(Tensor.randn([N, r], { seed: 3, std: 0.02 }));
  return { ada, lora };
}

function forwardCase(M, K, N, r) {
  let p = null, x = null;
  const run = (l) => () => l.forward(x).dispose();
  return {
    name: `SVDLinear forward (eval) M=${M} K=${K} N=${N} r=${r} f32`,
    shape: [M, K, N], dtype: "f32", flops: 2 * M * N * K,
    setup: () => {
      p = layerPair(K, N, r);
      p.ada.eval(), p.lora.eval();
      x = Tensor.randn([M, K], { seed: 4 });
    },
    teardown: () => (p.ada.dispose(), p.lora.dispose(), x.dispose()),
    run: () => run(p.ada)(),
    baselines: [{ name: "LoraLinear forward", run: () => run(p.lora)() }],
    target: within(1.05, "LoraLinear forward"),
  };
}

function trainStepCase(M, K, N, r) {
  let p = null, x = null, dy = null;
  const step = (l) => {
    l.forward(x).dispose();
    l.backward(dy, { inputGrad: true })?.dispose();
  };
  return {
    name: `SVDLinear forward + backward M=${M} K=${K} N=${N} r=${r} f32 (dx, dA, dE, dB)`,
    shape: [M, K, N], dtype: "f32", flops: 3 * 2 * M * N * K,
    setup: () => {
      p = layerPair(K, N, r);
      p.ada.train(), p.lora.train();
      x = Tensor.randn([M, K], { seed: 4 });
      dy = Tensor.randn([M, N], { seed: 5 });
    },
    teardown: () => (p.ada.dispose(), p.lora.dispose(), x.dispose(), dy.dispose()),
    run: () => step(p.ada),
    baselines: [{ name: "LoraLinear forward + backward", run: () => step(p.lora) }],
    target: within(1.1, "LoraLinear forward + backward"),
  };
}

/** n blocks with q_proj / v_proj (d → d): the llama defaults' targets. */
class Stack extends Module {
  constructor(n, d) {
    super();
    for (let i = 0; i < n; i++)
      this.registerModule(`l${i}`, new ModuleDict({ q_proj: new Linear(d, d, { seed: i }), v_proj: new Linear(d, d, { seed: i + 100 }) }));
  }
  forward(x) {
    return x;
  }
}

function allocatorCase(n, d, r) {
  let m = null, opt = null, params = null;
  return {
    name: `AdaLoRA updateAndAllocate (importance EMAs, masking) ${2 * n} layers ${d}x${d} r=${r}`,
    shape: [2 * n, d, r], dtype: "f32", bytes: 2 * n * (2 * d * r + r) * 4 * 6, // p, g read; 2 EMAs read and written
    setup: () => {
      m = getPeftModel(new Stack(n, d), new AdaLoraConfig({ initR: r, targetR: r / 2, totalStep: 1_000_000, targetModules: ["q_proj", "v_proj"] }));
      params = [...m.parameters()].filter((t) => t.requiresGrad);
      for (const t of params) t.grad = Tensor.randn(t.shape, { seed: 7 });
      opt = new AdamW(params, { lr: 1e-4 });
    },
    teardown: () => m.dispose(),
    // Step 1 of a long schedule allocates (deltaT 1): update and mask, as every step of the budgeting phase.
    run: () => m.baseModel.updateAndAllocate(1),
    baselines: [{ name: "AdamW step", run: () => opt.step() }],
  };
}

export const cases = [forwardCase(256, 2048, 2048, 12), trainStepCase(256, 2048, 2048, 12), allocatorCase(16, 2048, 12)];
