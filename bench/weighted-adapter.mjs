// addWeightedAdapter's SVD routes on one 4096x4096 LoRA layer holding two r=16 adapters, against one
// (4096, 4096, 4096) f32 GEMM measured in the same run: the svd type takes its SVD from the factors
// (QR of the stacked factors, a 32x32 core) and should cost at most 0.01x that GEMM; a type that forms the
// delta (ties_svd, density 0.5) with svdRank 32 goes through the randomized SVD and should stay under 0.5x.
// Run with the others (`npm run bench -- --filter weighted`) or alone (`node bench/weighted-adapter.mjs`).
import { fileURLToPath } from "node:url";
import { Linear, LoraLinear, Tensor, matmul } from "../dist/index.js";
import { combineLayer } from "../dist/tuners/lora/combine-layer.js";

const N = 4096, R = 16;

function lazy(make) {
  let v = null;
  return { get: () => (v ??= make()), drop: () => { if (v) v.dispose(); v = null; } };
}

// The layer with adapters a and b (random A and B, scalings 2 and 0.5) and the targets the cases write.
function makeLayer() {
  const base = new Linear(N, N, { bias: false, seed: 1 });
  const l = new LoraLinear(base, { adapterName: "a", r: R, loraAlpha: 2 * R, initLoraWeights: false });
  l.updateLayer({ adapterName: "b", r: R, loraAlpha: R / 2, initLoraWeights: false });
  l.updateLayer({ adapterName: "svd", r: R, loraAlpha: R });
  l.updateLayer({ adapterName: "ties_svd", r: 32, loraAlpha: 32 });
  return l;
}

const spec = (type, rank, extra = {}) => ({
  type, adapters: ["a", "b"], weights: [0.7, -1.3], rank, density: 0.5, majoritySignMethod: "total", svdClamp: null,
  svdMethod: "randomized", draw: ((s) => () => ({ seed: 7, stream: s++ }))(0), warnDensity: () => {}, ...extra,
});

const layer = lazy(makeLayer);
const gemm = lazy(() => {
  const x = Tensor.randn([N, N], { seed: 2 }), w = Tensor.randn([N, N], { seed: 3 });
  return { x, w, dispose: () => { x.dispose(); w.dispose(); } };
});
const runGemm = () => matmul(gemm.get().x, gemm.get().w).dispose();
const GEMM = `(${N}, ${N}, ${N}) f32 GEMM`;

function svdCase(type, rank, maxRatio, extra) {
  return {
    name: `addWeightedAdapter ${type} on a ${N}x${N} layer, two r=${R} adapters → r=${rank}`,
    shape: [N, N], dtype: "f32",
    setup: () => { layer.get(); gemm.get(); },
    teardown: () => { layer.drop(); gemm.drop(); },
    run: () => combineLayer(layer.get(), type, spec(type, rank, extra), "bench"),
    baselines: [{ name: GEMM, run: runGemm }],
    target: { baseline: GEMM, min: 1 / maxRatio, note: `≤ ${maxRatio}x one ${GEMM}` },
  };
}

export const cases = [svdCase("svd", R, 0.01), svdCase("ties_svd", 32, 0.5)];

// Alone: a few interleaved repeats of each case and the GEMM, medians and their ratio.
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
  const time = (fn) => { const t0 = performance.now(); fn(); return performance.now() - t0; };
  for (const c of cases) {
    c.setup();
    c.run(), runGemm();
    const ours = [], base = [];
    for (let i = 0; i < 5; i++) ours.push(time(c.run)), base.push(time(runGemm));
    const [o, b] = [median(ours), median(base)];
    console.log(`${c.name}: ${o.toFixed(1)} ms, GEMM ${b.toFixed(0)} ms → ${(o / b).toFixed(4)}x (target ${c.target.note})`);
    c.teardown();
  }
}
