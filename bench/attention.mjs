// Flash-style attention (F.scaledDotProductAttention's kernels) forward and backward at T = 512, B = 1,
// Hq = 12, Hkv = 4, D = 64, causal, against the FMA peak of the active kernel path measured in the same run
// (target 0.5x for forward + backward). Model FLOPs count T(T+1)/2 scores per head: the forward 4·D per
// score (q·kᵀ and p·v), the backward 8·D (dv, dp, dq, dk; the recomputed q·kᵀ is not counted).
// Run with `npm run bench -- attention`.
import { Tensor, backend } from "../dist/index.js";
import { native } from "../dist/native.js";
import { ceilingRate } from "./ceilings.mjs";

const B = 1, T = 512, Hq = 12, Hkv = 4, D = 64;
const scores = B * Hq * (T * (T + 1)) / 2;
const h = Tensor.handle;
const peak = () => (backend.isa === "avx512" ? "fma-avx512" : backend.isa === "avx2" ? "fma-avx2" : null);

function lazy(dtype) {
  let v = null;
  return {
    get: () => (v ??= (() => {
      const t = {
        q: Tensor.randn([B, T, Hq, D], { seed: 1 }).to(dtype), k: Tensor.randn([B, T, Hkv, D], { seed: 2 }).to(dtype),
        v: Tensor.randn([B, T, Hkv, D], { seed: 3 }).to(dtype), g: Tensor.randn([B, T, Hq, D], { seed: 4 }).to(dtype),
      };
      const [o, l] = native.attention(h(t.q), h(t.k), h(t.v), null, true, 1 / Math.sqrt(D));
      return { ...t, o: new Tensor(o), lse: new Tensor(l) };
    })()),
    drop: () => { if (v) for (const t of Object.values(v)) t.dispose(); v = null; },
  };
}

const forward = (t) => native.attention(h(t.q), h(t.k), h(t.v), null, true, 1 / Math.sqrt(D)).forEach((x) => x.dispose());
const backward = (t) => native.attentionBackward(h(t.q), h(t.k), h(t.v), null, true, 1 / Math.sqrt(D), h(t.o), h(t.lse), h(t.g)).forEach((x) => x.dispose());

function kase(dtype, part) {
  const t = lazy(dtype);
  const perScore = { forward: 4 * D, backward: 8 * D, "forward+backward": 12 * D }[part];
  const run = {
    forward: () => forward(t.get()),
    backward: () => backward(t.get()),
    "forward+backward": () => (forward(t.get()), backward(t.get())),
  }[part];
  const compute = peak();
  return {
    name: `attention ${part} B=${B} T=${T} Hq=${Hq} Hkv=${Hkv} D=${D} causal ${dtype}`,
    shape: [B, T, Hq, Hkv, D], dtype, isa: backend.isa, flops: scores * perScore,
    setup: () => { t.get(); }, teardown: t.drop,
    run,
    baselines: compute ? [{ name: `${compute} peak`, rate: () => ceilingRate(compute) }] : [],
    target: compute && part === "forward+backward" ? { baseline: `${compute} peak`, min: 0.5 } : undefined,
  };
}

export const cases = [kase("f32", "forward+backward"), kase("f32", "forward"), kase("f32", "backward"), kase("bf16", "forward+backward")];

