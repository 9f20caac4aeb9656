// Conv2d against the machine's own ceilings in the same run: dense forward and backward (dx + dW) against
// the FMA peak, the depthwise stencil against the DRAM roofline of its bytes, and LoRA's fused forward
// against the base convolution alone.
import { Conv2d, LoraConv2d, Tensor } from "../dist/index.js";
import { conv2d, conv2dBackward } from "../dist/ops.js";
import { native } from "../dist/native.js";
import { ceilingRate, computeCeilingOf } from "./ceilings.mjs";

const fma = computeCeilingOf(native._benchGemmKernel("f32", "f32"));

function lazy(make) {
  let v = null;
  return { get: () => (v ??= make()), drop: () => { if (v) v.dispose(); v = null; } };
}

function convOf({ N, C, OC, H, k, groups = 1 }) {
  const m = new Conv2d(C, OC, k, { padding: (k - 1) / 2, groups, seed: 1 });
  const x = Tensor.randn([N, C, H, H], { seed: 2 });
  const dy = Tensor.randn([N, OC, H, H], { seed: 3 });
  return { m, x, dy, dispose() { m.dispose(); x.dispose(); dy.dispose(); } };
}

const label = ({ N, C, OC, H, k, groups = 1 }) => `N=${N} ${C}->${OC} ${H}x${H} ${k}x${k}${groups > 1 ? ` groups=${groups}` : ""}`;
const convFlops = ({ N, C, OC, H, k, groups = 1 }) => 2 * N * OC * H * H * (C / groups) * k * k;

function forwardCase(s, min) {
  const t = lazy(() => convOf(s));
  return {
    name: `Conv2d forward ${label(s)} f32`, shape: [s.N, s.C, s.OC, s.H, s.k], dtype: "f32", flops: convFlops(s),
    setup: () => { t.get(); }, teardown: t.drop,
    run: () => conv2d(t.get().x, t.get().m.weight, t.get().m.bias, t.get().m.geometry).dispose(),
    baselines: [{ name: `${fma} peak`, rate: () => ceilingRate(fma) }],
    target: { baseline: `${fma} peak`, min },
  };
}

function backwardCase(s, min) {
  const t = lazy(() => convOf(s));
  const dW = lazy(() => Tensor.zeros(t.get().m.weight.shape));
  return {
    name: `Conv2d backward (dx + dW) ${label(s)} f32`, shape: [s.N, s.C, s.OC, s.H, s.k], dtype: "f32", flops: 2 * convFlops(s),
    setup: () => { t.get(); dW.get(); }, teardown: () => { t.drop(); dW.drop(); },
    run: () => conv2dBackward(t.get().dy, t.get().x, t.get().m.weight, t.get().m.geometry, { dW: dW.get() }).dispose(),
    baselines: [{ name: `${fma} peak`, rate: () => ceilingRate(fma) }],
    target: { baseline: `${fma} peak`, min },
  };
}

function depthwiseCase(s, min) {
  const t = lazy(() => convOf(s));
  const bytes = 4 * s.N * (s.C + s.OC) * s.H * s.H; // x read, y written
  return {
    name: `Conv2d depthwise forward ${label(s)} f32`, shape: [s.N, s.C, s.H, s.k], dtype: "f32", bytes,
    setup: () => { t.get(); }, teardown: t.drop,
    run: () => conv2d(t.get().x, t.get().m.weight, t.get().m.bias, t.get().m.geometry).dispose(),
    baselines: [{ name: "DRAM roofline (read)", rate: () => ceilingRate("dram-read") }],
    target: { baseline: "DRAM roofline (read)", min },
  };
}

function loraForwardCase(s, slack, r = 8) {
  const t = lazy(() => {
    const v = convOf(s);
    v.m.weight.requiresGrad = false;
    v.l = new LoraConv2d(v.m, { r, loraAlpha: 2 * r, initLoraWeights: false });
    v.l.eval();
    return v;
  });
  return {
    name: `LoRA Conv2d forward r=${r} ${label(s)} f32 (fused)`, shape: [s.N, s.C, s.OC, s.H, s.k], dtype: "f32",
    flops: convFlops(s) + 2 * s.N * s.H * s.H * r * (s.C * s.k * s.k + s.OC),
    setup: () => { t.get(); }, teardown: t.drop,
    run: () => t.get().l.forward(t.get().x).dispose(),
    baselines: [{ name: "base conv", run: () => conv2d(t.get().x, t.get().m.weight, t.get().m.bias, t.get().m.geometry).dispose() }],
    target: { baseline: "base conv", min: 1 / slack, note: `≤ ${slack}x base conv` },
  };
}

const A = { N: 8, C: 64, OC: 64, H: 56, k: 3 }, B = { N: 8, C: 256, OC: 64, H: 56, k: 1 }, C = { N: 8, C: 128, OC: 128, H: 28, k: 3 };
export const cases = [
  forwardCase(A, 0.75), forwardCase(B, 0.75), forwardCase(C, 0.75),
  backwardCase(A, 0.65), backwardCase(B, 0.65), backwardCase(C, 0.65),
  depthwiseCase({ N: 8, C: 256, OC: 256, H: 56, k: 3, groups: 256 }, 0.6),
  loraForwardCase(A, 1.2), loraForwardCase(B, 1.2), loraForwardCase(C, 1.1),
];
