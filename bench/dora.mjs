// DoRA (use_dora) on a Linear, measured against plain LoRA on the same base in the same run. The eval forward
// reuses the weight norm ‖W + s·B·A‖ while W, A and B are unchanged, so it adds the adapter's two thin
// products and the per-output rescale and bias passes over y; the training step (forward + backward: dA, dB,
// dm, dx, after a write to B as an optimizer step makes) also recomputes the norm (one product A·Wᵀ over W).
import { Linear, LoraLinear, Tensor, noGrad } from "../dist/index.js";

const R = 16;

function lazy(make) {
  let v = null;
  return { get: () => (v ??= make()), drop: () => { if (v) v.dispose(); v = null; } };
}

// LoRA and DoRA layers over two Linear(K, N) with the same weights, non-zero B and a magnitude away from the norm.
function makePair(M, K, N, training) {
  const mk = (useDora) => {
    const base = new Linear(K, N, { seed: 1 });
    base.weight.requiresGrad = false;
    base.bias.requiresGrad = false;
    const l = new LoraLinear(base, { r: R, loraAlpha: 2 * R, useDora });
    l.loraB.get("default").weight.copyFrom(Tensor.randn([N, R], { seed: 2, std: 0.01 }));
    if (useDora) {
      const m = l.doraMagnitude("default");
      const r = Tensor.randn(m.shape, { seed: 5, std: 0.01 });
      const s = r.toFloat32Array();
      r.dispose();
      const m2 = Tensor.fromArray(m.toFloat32Array().map((v, i) => v * (1 + s[i])), m.shape);
      m.copyFrom(m2);
      m2.dispose();
    }
    l.train(training);
    return l;
  };
  const lora = mk(false), dora = mk(true);
  const x = Tensor.randn([M, K], { seed: 3 }), dy = Tensor.randn([M, N], { seed: 4 });
  return { lora, dora, x, dy, dispose() { lora.dispose(); dora.dispose(); x.dispose(); dy.dispose(); } };
}

const within = (slack, what) => ({ baseline: what, min: 1 / slack, note: `≤ ${slack}x ${what}` });

function forwardCase([M, K, N], slack) {
  const t = lazy(() => makePair(M, K, N, false));
  return {
    name: `DoRA forward r=${R} M=${M} K=${K} N=${N} f32 (eval)`,
    shape: [M, K, N], dtype: "f32", flops: 2 * M * N * K + 2 * M * R * (K + N) + 2 * N * K * R,
    setup: () => { t.get(); }, teardown: t.drop,
    run: () => noGrad(() => t.get().dora.forward(t.get().x)).dispose(),
    baselines: [{ name: "LoRA forward", run: () => noGrad(() => t.get().lora.forward(t.get().x)).dispose() }],
    target: slack ? within(slack, "LoRA forward") : undefined,
  };
}

function stepCase([M, K, N]) {
  const t = lazy(() => makePair(M, K, N, true));
  const step = (l) => {
    const B = l.loraB.get("default").weight;
    B.copyFrom(B); // an optimizer step writes B: the norm is recomputed
    noGrad(() => l.forward(t.get().x)).dispose();
    l.backward(t.get().dy)?.dispose();
    l.zeroGrad();
  };
  return {
    name: `DoRA training step r=${R} M=${M} K=${K} N=${N} f32 (forward + dA, dB, dm, dx)`,
    shape: [M, K, N], dtype: "f32", flops: 3 * 2 * M * N * K,
    setup: () => { t.get(); }, teardown: t.drop,
    run: () => step(t.get().dora),
    baselines: [{ name: "LoRA training step", run: () => step(t.get().lora) }],
  };
}

export const cases = [
  forwardCase([512, 4096, 4096], 1.15),
  forwardCase([16, 4096, 4096]),
  stepCase([512, 4096, 4096]),
];
