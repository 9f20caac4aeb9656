// IA3's fused kernels against our own base GEMM in the same run: the scale applied as x is packed (input
// side) or in the epilogue (output side) should cost next to nothing over linear(); backward against the
// dx GEMM alone.
import { IA3Layer, Linear, Tensor, linear, linearGradInput } from "../dist/index.js";
import { native } from "../dist/native.js";
import { ceilingRate } from "./ceilings.mjs";

const h = Tensor.handle;

function lazy(make) {
  let v = null;
  return { get: () => (v ??= make()), drop: () => { if (v) for (const t of Object.values(v)) t.dispose(); v = null; } };
}

const tensors = (M, K, N) => () => ({
  x: Tensor.randn([M, K], { seed: 1 }), w: Tensor.randn([N, K], { seed: 2 }), dy: Tensor.randn([M, N], { seed: 3 }),
  lin: Tensor.rand([K], { seed: 4, lo: 0.5, hi: 1.5 }), lout: Tensor.rand([N], { seed: 5, lo: 0.5, hi: 1.5 }),
});

const within = (slack, what) => ({ baseline: what, min: 1 / slack, note: `≤ ${slack}x ${what}` });

function forwardCase([M, K, N], input, evict) {
  const t = lazy(tensors(M, K, N));
  const before = (w) => () => {
    if (evict) native._benchEvict(h(t.get().w));
    else w();
    native._benchWake();
  };
  const ours = () => new Tensor(native.ia3Forward(h(t.get().x), h(t.get().w), null, false, h(input ? t.get().lin : t.get().lout), input, false)).dispose();
  const base = () => linear(t.get().x, t.get().w).dispose();
  return {
    name: `IA3 forward (${input ? "input" : "output"} side) M=${M} K=${K} N=${N} f32${M <= 32 ? (evict ? " (W evicted)" : " (warm)") : ""}`,
    shape: [M, K, N], dtype: "f32", flops: 2 * M * N * K,
    setup: () => { t.get(); }, teardown: t.drop,
    before: before(ours),
    run: ours,
    baselines: [{ name: "base GEMM", before: before(base), run: base }],
    target: within(1.03, "base GEMM"),
  };
}

function backwardCase([M, K, N], input) {
  const t = lazy(tensors(M, K, N));
  const y0 = lazy(() => ({ y0: linear(t.get().x, t.get().w) }));
  const dl = lazy(() => ({ dl: Tensor.zeros([input ? K : N]) }));
  return {
    name: `IA3 backward (${input ? "input" : "output"} side) M=${M} K=${K} N=${N} f32 (dx, dl)`,
    shape: [M, K, N], dtype: "f32", flops: 2 * M * N * K,
    setup: () => { t.get(); y0.get(); dl.get(); }, teardown: () => { t.drop(); y0.drop(); dl.drop(); },
    run: () => {
      const v = t.get();
      new Tensor(native.ia3Backward(h(v.dy), h(v.x), h(v.w), null, false, h(input ? v.lin : v.lout), input, h(y0.get().y0), true, null, null, h(dl.get().dl))).dispose();
    },
    baselines: [{ name: "dx GEMM alone", run: () => linearGradInput(t.get().dy, t.get().w).dispose() }],
    target: within(1.05, "dx GEMM alone"),
  };
}

function mergeCase(N, K, feedforward) {
  let l = null;
  return {
    name: `IA3 merge/unmerge in place (${feedforward ? "columns" : "rows + bias"}) W ${N}x${K} f32`,
    shape: [N, K], dtype: "f32", bytes: 2 * N * K * 4, // W read and written once
    setup: () => {
      l = new IA3Layer(new Linear(K, N, { seed: 1 }), { isFeedforward: feedforward });
      l.ia3Vector("default").copyFrom(Tensor.rand(l.ia3Vector("default").shape, { seed: 2, lo: 0.5, hi: 1.5 }));
    },
    teardown: () => l.dispose(),
    run: () => (l.merged ? l.unmerge() : l.merge()),
    baselines: [{ name: "in-place RMW bandwidth", rate: () => ceilingRate("dram-rmw") }],
    target: { baseline: "in-place RMW bandwidth", min: 0.8 },
  };
}

export const cases = [
  mergeCase(4096, 4096, false), mergeCase(4096, 4096, true),
  forwardCase([512, 4096, 4096], true, false), forwardCase([512, 4096, 4096], false, false),
  forwardCase([16, 4096, 4096], true, true), forwardCase([16, 4096, 4096], false, true),
  backwardCase([512, 4096, 4096], true), backwardCase([512, 4096, 4096], false),
];
