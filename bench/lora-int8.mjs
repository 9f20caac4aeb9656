// LoRA on the int8 base (LoraLinear8bitLt), measured against the int8 base alone in the same run: the forward
// (T = s·x·Aᵀ as an f32 GEMM, then the int8 kernel with T·Bᵀ summed in its epilogue) beside int8Linear, and
// the training backward (dx through the int8 dx kernel plus the adapter's dA, dB and dx share) beside the
// int8 dx alone. What the forward ratio shows is the skinny x·Aᵀ GEMM and the r FMAs per output element.
import { Linear, Linear8bitLt, LoraLinear8bitLt, Tensor, noGrad } from "../dist/index.js";
import { int8Linear, int8LinearGradInput } from "../dist/ops.js";

const R = 16;

function lazy(make) {
  let v = null;
  return { get: () => (v ??= make()), drop: () => { if (v) v.dispose(); v = null; } };
}

// Linear8bitLt(K, N) (threshold 0) under a rank-16 adapter with non-zero B.
function makeLayer(M, K, N) {
  const dense = new Linear(K, N, { bias: false, seed: 1 });
  const q = Linear8bitLt.fromLinear(dense);
  dense.dispose();
  const l = new LoraLinear8bitLt(q, { r: R, loraAlpha: 2 * R });
  l.loraB.get("default").weight.copyFrom(Tensor.randn([N, R], { seed: 2, std: 0.01 }));
  const x = Tensor.randn([M, K], { seed: 3 }), dy = Tensor.randn([M, N], { seed: 4 });
  return { l, q, x, dy, dispose() { l.dispose(); x.dispose(); dy.dispose(); } };
}

const within = (slack, what) => ({ baseline: what, min: 1 / slack, note: `≤ ${slack}x ${what}` });

function forwardCase([M, K, N]) {
  const t = lazy(() => { const v = makeLayer(M, K, N); v.l.eval(); return v; });
  return {
    name: `LoRA on int8 forward r=${R} M=${M} K=${K} N=${N} x f32 (int8 base + f32 adapter)`,
    shape: [M, K, N], dtype: "x f32, CB i8", flops: 2 * M * N * K + 2 * M * R * (K + N),
    setup: () => { t.get(); }, teardown: t.drop,
    run: () => noGrad(() => t.get().l.forward(t.get().x)).dispose(),
    baselines: [{ name: "int8 base alone", run: () => int8Linear(t.get().x, t.get().q.weight, t.get().q.SCB, null, 0).dispose() }],
    target: within(1.06, "int8 base alone"),
  };
}

function backwardCase([M, K, N]) {
  const t = lazy(() => { const v = makeLayer(M, K, N); v.l.train(); return v; });
  return {
    name: `LoRA on int8 backward r=${R} M=${M} K=${K} N=${N} (dx, dA, dB)`,
    shape: [M, K, N], dtype: "dy f32, CB i8", flops: 2 * M * N * K + 2 * M * R * (2 * K + 2 * N),
    setup: () => { t.get(); }, teardown: t.drop,
    before: () => noGrad(() => t.get().l.forward(t.get().x)).dispose(), // saves x and s·x·Aᵀ (untimed)
    run: () => t.get().l.backward(t.get().dy).dispose(),
    baselines: [{ name: "int8 dx alone", run: () => int8LinearGradInput(t.get().dy, t.get().q.weight, t.get().q.SCB).dispose() }],
    target: within(1.1, "int8 dx alone"),
  };
}

export const cases = [forwardCase([512, 4096, 4096]), backwardCase([512, 4096, 4096])];
