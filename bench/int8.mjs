// LLM.int8 (native/cpu/int8*.cc): the int8 linear forward against the vpdpbusd and AMX-INT8 peaks and our
// f32 GEMM measured in the same run, the M = 16 decode shape with CB evicted against the DRAM roofline of its
// int8 bytes, the cost of outlier columns (threshold 6 with 1 % outlier columns against threshold 0), and
// bitsandbytes' weight quantisation (what loading with quantize: "int8" adds per tensor) against a memcpy of
// the same bytes.
import { Tensor, backend, linear } from "../dist/index.js";
import { int8Linear, int8Quantize } from "../dist/ops.js";
import { native } from "../dist/native.js";
import { ceilingRate, hasCeiling, rooflineRate } from "./ceilings.mjs";

const h = Tensor.handle;
const amx = backend.features.includes("amx") && backend.features.includes("amx-int8");
const vnni = hasCeiling("vnni-avx512");

function lazy(make) {
  let v = null;
  return { get: () => (v ??= make()), drop: () => { if (v) for (const t of Object.values(v)) t.dispose(); v = null; } };
}

// x ~ N(0, 1) with `outliers` of its K columns scaled past the threshold (transformers' 6.0).
function inputs([M, K, N], outliers = 0) {
  return lazy(() => {
    const x = Tensor.randn([M, K], { seed: 1 });
    const v = x.view();
    const every = outliers ? Math.round(1 / outliers) : 0;
    if (every) for (let m = 0; m < M; m++) for (let k = 0; k < K; k += every) v[m * K + k] = 8 + (m % 3);
    const x2 = Tensor.zeros([M, K]);
    x2.copyFrom(x);
    const w = Tensor.randn([N, K], { seed: 2 });
    const [cb, scb] = int8Quantize(w);
    return { x: x2, x0: x, w, cb, scb };
  });
}

// Forward with the kernel set `path` ("vnni": AMX turned off; "amx"), against the instruction's peak and
// our f32 GEMM on the same shape.
function forwardCase(shape, path) {
  const [M, K, N] = shape;
  const t = inputs(shape);
  const ours = () => int8Linear(t.get().x, t.get().cb, t.get().scb, null, 0).dispose();
  const f32 = () => linear(t.get().x, t.get().w).dispose();
  const peak = path === "amx" ? "amx-int8" : "vnni-avx512";
  const baselines = [{ name: `${peak} peak`, rate: () => ceilingRate(peak) }, { name: "our f32 GEMM", run: f32 }];
  if (path === "amx") baselines.push({ name: "vnni-avx512 peak", rate: () => ceilingRate("vnni-avx512") });
  const applies = path === "amx" ? amx : vnni;
  return {
    name: `int8Linear y=x·dequant(CB)ᵀ M=${M} K=${K} N=${N} x f32, threshold 0 (${path === "amx" ? "AMX-INT8" : "AVX-512 VNNI"})`,
    shape, dtype: "x f32, CB i8", flops: 2 * M * N * K,
    setup: () => { backend.setAmx(path === "amx"); t.get(); if (!applies) throw new Error(`${peak} is not available on this CPU`); },
    teardown: () => { backend.setAmx(true); t.drop(); },
    get kernel() { return native._benchInt8Kernel(); },
    run: ours,
    baselines,
    target: { baseline: `${peak} peak`, min: path === "amx" ? 0.35 : 0.8, applies },
  };
}

function f32RatioCase(shape) {
  const c = forwardCase(shape, amx ? "amx" : "vnni");
  return { ...c, name: c.name.replace("threshold 0", "threshold 0, against f32"), target: { baseline: "our f32 GEMM", min: 3 } };
}

// M = 16 with CB (and its packed form) flushed from every cache level before each run.
function decodeCase() {
  const shape = [16, 4096, 4096];
  const [M, K, N] = shape;
  const t = inputs(shape);
  return {
    name: `int8Linear M=${M} K=${K} N=${N} x f32 (CB evicted)`,
    shape, dtype: "x f32, CB i8", flops: 2 * M * N * K,
    // The set for large M; 16 rows never take AMX tiles (32 rows a block) but vpdpbusd's 16 x 16 blocks.
    get kernel() { const k = native._benchInt8Kernel(); return k === "amx-int8" ? "avx512-vnni" : k; },
    setup: () => { t.get(); }, teardown: t.drop,
    before: () => { native._benchEvict(h(t.get().cb)); native._benchWake(); },
    run: () => int8Linear(t.get().x, t.get().cb, t.get().scb, null, 0).dispose(),
    baselines: [{ name: "DRAM roofline", rate: () => rooflineRate(2 * M * N * K, N * K, vnni ? "vnni-avx512" : null) }],
    target: { baseline: "DRAM roofline", min: 0.8 },
  };
}

// threshold 6 with 1 % of the columns holding outliers, against threshold 0 on the same x.
function outlierCase(shape) {
  const [M, K, N] = shape;
  const t = inputs(shape, 0.01);
  return {
    name: `int8Linear M=${M} K=${K} N=${N} threshold 6, 1 % outlier columns`,
    shape, dtype: "x f32, CB i8", flops: 2 * M * N * K,
    get kernel() { return native._benchInt8Kernel(); },
    setup: () => { t.get(); }, teardown: t.drop,
    run: () => int8Linear(t.get().x, t.get().cb, t.get().scb, null, 6).dispose(),
    baselines: [{ name: "threshold 0", run: () => int8Linear(t.get().x, t.get().cb, t.get().scb, null, 0).dispose() }],
    // <= 1.15x the time of threshold 0.
    target: { baseline: "threshold 0", min: 1 / 1.15 },
  };
}

// What loading with quantize: "int8" adds per weight: bitsandbytes' quantisation of it, against a memcpy of the
// same bytes (copyFrom between two tensors of the file's dtype).
function quantizeCase(dt) {
  const [N, K] = [4096, 4096];
  const t = lazy(() => {
    const w = Tensor.randn([N, K], { seed: 3 }).to(dt);
    return { w, w2: Tensor.zeros([N, K], { dtype: dt }), src: Tensor.randn([N, K], { seed: 4 }).to(dt) };
  });
  return {
    name: `int8Quantize (load-time quantisation) ${N}x${K} ${dt}`,
    shape: [N, K], dtype: dt, bytes: N * K * (dt === "f32" ? 4 : 2),
    setup: () => { t.get(); }, teardown: t.drop,
    run: () => { for (const x of int8Quantize(t.get().w)) x.dispose(); },
    baselines: [{ name: "memcpy of the same bytes", run: () => t.get().w2.copyFrom(t.get().src) }],
    target: { baseline: "memcpy of the same bytes", min: 0.5 },
  };
}

export const cases = [
  forwardCase([512, 4096, 4096], "vnni"),
  forwardCase([2048, 1024, 1024], "vnni"),
  ...(amx ? [forwardCase([512, 4096, 4096], "amx"), forwardCase([2048, 1024, 1024], "amx")] : []),
  f32RatioCase([512, 4096, 4096]),
  f32RatioCase([2048, 1024, 1024]),
  decodeCase(),
  outlierCase([512, 4096, 4096]),
  quantizeCase("bf16"),
  quantizeCase("f32"),
];
