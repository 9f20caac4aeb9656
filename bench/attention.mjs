// Flash-style attention (F.scaledDotProductAttention's kernels) forward and backward at T = 512, B = 1,
// Hq = 12, Hkv = 4, D = 64, causal, against the FMA peak of the active kernel path measured in the same run
// (target 0.5x for forward + backward). Model FLOPs count T(T+1)/2 scores per head: the forward 4·D per
// score (q·kᵀ and p·v), the backward 8·D (dv, dp, dq, dk; the recomputed q·kᵀ is not counted).
// Run alone with `node bench/attention.mjs` to time every kernel path as well.
import { fileURLToPath } from "node:url";
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

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const best = (fn, reps = 5) => {
    let s = Infinity;
    for (let i = 0; i < reps; i++) {
      const t0 = process.hrtime.bigint();
      fn();
      s = Math.min(s, Number(process.hrtime.bigint() - t0) / 1e9);
    }
    return s;
  };
  const paths = ["scalar", "avx2", "avx512"].filter((isa) => isa === "scalar" || backend.features.includes(isa === "avx2" ? "avx2" : "avx512f"));
  const active = backend.isa;
  for (const c of cases) {
    c.setup();
    const cols = paths.map((isa) => {
      backend.setIsa(isa);
      c.run();
      const s = best(c.run);
      return `${isa} ${(s * 1e3).toFixed(1)} ms ${(c.flops / s / 1e9).toFixed(1)} GFLOP/s`;
    });
    backend.setIsa(active);
    const p = peak();
    console.log(`${c.name}: ${cols.join(" | ")}${p ? ` | ${p} peak ${ceilingRate(p).toFixed(1)} GFLOP/s` : ""}`);
    c.teardown();
  }
}
