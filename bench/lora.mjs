// LoRA on a Linear, measured against our own base GEMM in the same run: the fused forward (adapters as
// extra k-steps of the base GEMM) beside PEFT's unfused three-op path, the fused backward beside the dx
// GEMM alone, and the in-place merge beside the machine's read-modify-write bandwidth.
import { Linear, LoraLinear, Tensor, linear, linearGradInput } from "../dist/index.js";
import { addInPlace } from "../dist/kernels.js";
import { ceilingRate } from "./ceilings.mjs";

const R = 16;

function lazy(make) {
  let v = null;
  return { get: () => (v ??= make()), drop: () => { if (v) v.dispose(); v = null; } };
}

// A LoRA layer over Linear(K, N) with random non-zero A and B (B is zero right after PEFT's init).
function makeLayer(M, K, N) {
  const base = new Linear(K, N, { bias: false, seed: 1 });
  base.weight.requiresGrad = false;
  const l = new LoraLinear(base, { r: R, loraAlpha: 2 * R });
  l.loraB.get("default").weight.copyFrom(Tensor.randn([N, R], { seed: 2, std: 0.01 }));
  const x = Tensor.randn([M, K], { seed: 3 }), dy = Tensor.randn([M, N], { seed: 4 });
  return {
    l, x, dy,
    A: l.loraA.get("default").weight, B: l.loraB.get("default").weight,
    dispose() { l.dispose(); x.dispose(); dy.dispose(); },
  };
}

// PEFT's forward: base(x) + scaling * lora_B(lora_A(x)), three products and an add.
function unfused(t) {
  const y = linear(t.x, t.l.baseLayer.weight);
  const xa = linear(t.x, t.A);
  const d = linear(xa, t.B);
  addInPlace(y, d, t.l.scaling.default);
  for (const v of [y, xa, d]) v.dispose();
}

// Target expressed as a ratio against the base GEMM: ours may take at most `slack` times its time.
const within = (slack, what) => ({ baseline: what, min: 1 / slack, note: `≤ ${slack}x ${what}` });

function forwardCase([M, K, N], slack) {
  const t = lazy(() => { const v = makeLayer(M, K, N); v.l.eval(); return v; });
  return {
    name: `LoRA forward r=${R} M=${M} K=${K} N=${N} f32 (fused)`,
    shape: [M, K, N], dtype: "f32", flops: 2 * M * N * K + 2 * M * R * (K + N),
    setup: () => { t.get(); }, teardown: t.drop,
    run: () => t.get().l.forward(t.get().x).dispose(),
    baselines: [
      { name: "base GEMM", run: () => linear(t.get().x, t.get().l.baseLayer.weight).dispose() },
      { name: "unfused three-op path", run: () => unfused(t.get()) },
    ],
    target: within(slack, "base GEMM"),
  };
}

function backwardCase([M, K, N]) {
  const t = lazy(() => { const v = makeLayer(M, K, N); v.l.train(); return v; });
  return {
    name: `LoRA backward r=${R} M=${M} K=${K} N=${N} f32 (dA, dB, dx)`,
    shape: [M, K, N], dtype: "f32", flops: 2 * M * N * K + 2 * M * R * (2 * K + 2 * N),
    setup: () => { t.get(); }, teardown: t.drop,
    before: () => t.get().l.forward(t.get().x).dispose(), // saves x and x·Aᵀ (untimed)
    run: () => t.get().l.backward(t.get().dy).dispose(),
    baselines: [{ name: "dx GEMM alone", run: () => linearGradInput(t.get().dy, t.get().l.baseLayer.weight).dispose() }],
    target: within(1.1, "dx GEMM alone"),
  };
}

function mergeCase(N, K) {
  const t = lazy(() => makeLayer(1, K, N));
  return {
    name: `LoRA merge/unmerge in place r=${R} W ${N}x${K} f32`,
    shape: [N, K], dtype: "f32", bytes: 2 * N * K * 4, // W read and written once
    setup: () => { t.get(); }, teardown: t.drop,
    run: () => { const l = t.get().l; if (l.merged) l.unmerge(); else l.merge(); },
    baselines: [{ name: "in-place RMW bandwidth", rate: () => ceilingRate("dram-rmw") }],
    target: { baseline: "in-place RMW bandwidth", min: 0.8 },
  };
}

export const cases = [
  forwardCase([512, 4096, 4096], 1.04),
  forwardCase([2048, 1024, 1024], 1.06),
  forwardCase([16, 4096, 4096], 1.04),
  backwardCase([512, 4096, 4096]),
  mergeCase(4096, 4096),
];
