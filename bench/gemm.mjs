// The CPU GEMM behind linear and its gradients, against the machine's ceilings measured in the same run:
// the compute peak of the kernel's instruction family, the DRAM roofline for small M (where each weight
// byte is used M times), and our own f32 GEMM for the 16-bit weight paths. Small-M cases run both warm
// and with the weight's packed form evicted from every cache level (clflushopt) before each repeat.
import { Tensor, backend, linear, linearGradInput, linearGradWeight } from "../dist/index.js";
import { native } from "../dist/native.js";
import { computeCeilingOf, ceilingRate, rooflineRate } from "./ceilings.mjs";

const SHAPES = [[16, 4096, 4096], [512, 4096, 4096], [2048, 1024, 1024]];
const SIZE = { f32: 4, bf16: 2, f16: 2 };
const h = Tensor.handle;
const amx = backend.features.includes("amx");

// Tensors made on first use and dropped by teardown, so one case's weights are not resident in the next.
function lazy(make) {
  let v = null;
  return { get: () => (v ??= make()), drop: () => { if (v) for (const t of Object.values(v)) t.dispose(); v = null; } };
}

// The targets: f32 at large M near the FMA peak, f32 at M = 16 near the DRAM roofline, bf16 weights with
// f32 x as fast as f32 at large M and near their (halved-bytes) roofline at M = 16, bf16 x with bf16
// weights 3x f32 where AMX tiles exist.
function targetOf(M, K, xdt, wdt, evict, compute) {
  const small = M <= 32;
  if (xdt === "f32" && (wdt === "f32" || wdt === "bf16") && small)
    return evict ? { baseline: "DRAM roofline", min: 0.8, note: wdt === "bf16" ? "roofline capped by the compute peak" : undefined } : undefined;
  if (xdt === "f32" && wdt === "f32") return { baseline: `${compute} peak`, min: 0.85 };
  if (xdt === "f32" && wdt === "bf16") return { baseline: "our f32 GEMM", min: 0.95 };
  if (xdt === "bf16" && wdt === "bf16" && M === 512 && K === 4096)
    return { baseline: "our f32 GEMM", min: 3, applies: amx, note: amx ? "AMX" : "AMX only: n/a, this CPU has no AMX" };
  return undefined;
}

// `into`: the GEMM writes a preallocated C through the test hook (same kernels, same cached packed W)
// instead of linear() allocating y, which shows what the op adds around the GEMM.
function linearCase([M, K, N], xdt, wdt, evict, into = false) {
  const flops = 2 * M * N * K;
  const kernel = native._benchGemmKernel(xdt, wdt);
  const compute = computeCeilingOf(kernel);
  const t = lazy(() => ({
    x: Tensor.randn([M, K], { seed: 1 }).to(xdt), w: Tensor.randn([N, K], { seed: 2 }).to(wdt),
    x32: Tensor.randn([M, K], { seed: 1 }), w32: Tensor.randn([N, K], { seed: 2 }), y: Tensor.zeros([M, N], { dtype: xdt }),
  }));
  const small = M <= 32;
  // Warm: W as the previous call left it (a decode loop). Evicted: W's packed form flushed from every
  // cache level. Either way the pool is woken first, so the timed call does not pay for that.
  const prepare = (w, run) => () => {
    if (evict) native._benchEvict(h(t.get()[w]));
    else if (small) run();
    native._benchWake();
  };
  const ours = into
    ? () => native._gemmTest(h(t.get().x), h(t.get().w), h(t.get().y), { transB: true, cacheB: true })
    : () => linear(t.get().x, t.get().w).dispose();
  const f32 = () => linear(t.get().x32, t.get().w32).dispose();
  const baselines = [{ name: `${compute} peak`, rate: () => ceilingRate(compute) }];
  if (small) baselines.push({ name: "DRAM roofline", rate: () => rooflineRate(flops, N * K * SIZE[wdt], compute) });
  const ours32 = xdt !== "f32" || wdt !== "f32";
  if (ours32) baselines.push({ name: "our f32 GEMM", before: prepare("w32", f32), run: f32 });

  const target = targetOf(M, K, xdt, wdt, evict, compute);
  return {
    name: `${into ? "gemm C=x·Wᵀ into a preallocated C" : "linear y=x·Wᵀ"} M=${M} K=${K} N=${N} x ${xdt} W ${wdt}${small ? (evict ? " (W evicted)" : " (warm)") : ""}`,
    shape: [M, K, N], dtype: `x ${xdt}, W ${wdt}`, kernel, flops,
    setup: () => { t.get(); }, teardown: t.drop,
    before: prepare("w", ours),
    run: ours,
    baselines,
    target,
  };
}

function gradCase(kind, [M, K, N]) {
  const flops = 2 * M * N * K;
  const t = lazy(() => ({ dy: Tensor.randn([M, N], { seed: 3 }), x: Tensor.randn([M, K], { seed: 4 }), w: Tensor.randn([N, K], { seed: 5 }), dw: Tensor.zeros([N, K]) }));
  const kernel = native._benchGemmKernel("f32", "f32");
  const compute = computeCeilingOf(kernel);
  const run = kind === "dx"
    ? () => linearGradInput(t.get().dy, t.get().w).dispose()
    : () => linearGradWeight(t.get().dy, t.get().x, t.get().dw, { accumulate: true });
  return {
    name: kind === "dx" ? `linearGradInput dx=dy·W M=${M} K=${K} N=${N} f32` : `linearGradWeight dW+=dyᵀ·x M=${M} K=${K} N=${N} f32`,
    shape: [M, K, N], dtype: "f32", kernel, flops,
    setup: () => { t.get(); }, teardown: t.drop,
    run,
    baselines: [{ name: `${compute} peak`, rate: () => ceilingRate(compute) }],
  };
}

// The fused LoRA form: rank-R extra k-steps applied on the register-resident C tile in the last K block
// (GEMM on [x, T]·[W, B]ᵀ), against the same GEMM without them; flops count the extra steps.
function fusedCase([M, K, N], R) {
  const t = lazy(() => ({
    x: Tensor.randn([M, K], { seed: 6 }), w: Tensor.randn([N, K], { seed: 7 }), y: Tensor.zeros([M, N]),
    a2: Tensor.randn([M, R], { seed: 8 }), b2: Tensor.randn([R, N], { seed: 9 }),
  }));
  const gemm = (extra) => () => {
    const v = t.get();
    native._gemmTest(h(v.x), h(v.w), h(v.y), extra ? { transB: true, cacheB: true, a2: h(v.a2), b2: h(v.b2) } : { transB: true, cacheB: true });
  };
  return {
    name: `gemm C=x·Wᵀ + T·Bᵀ (fused rank-${R} extra k-steps) M=${M} K=${K} N=${N} f32`,
    shape: [M, K, N], dtype: "f32", kernel: native._benchGemmKernel("f32", "f32"), flops: 2 * M * N * (K + R),
    setup: () => { t.get(); }, teardown: t.drop,
    run: gemm(true),
    baselines: [{ name: "same GEMM without them", run: gemm(false) }],
  };
}

// A training step writes every weight, so the next forward repacks it: linear right after W.copyFrom
// (repack + GEMM) against linear with the pack already cached.
function repackCase([M, K, N], wdt) {
  const t = lazy(() => ({ x: Tensor.randn([M, K], { seed: 10 }), w: Tensor.randn([N, K], { seed: 11 }).to(wdt), w2: Tensor.randn([N, K], { seed: 12 }).to(wdt) }));
  const ours = () => linear(t.get().x, t.get().w).dispose();
  return {
    name: `linear right after a write to W (repack + GEMM) M=${M} K=${K} N=${N} x f32 W ${wdt}`,
    shape: [M, K, N], dtype: `x f32, W ${wdt}`, kernel: native._benchGemmKernel("f32", wdt), flops: 2 * M * N * K,
    setup: () => { t.get(); }, teardown: t.drop,
    before: () => t.get().w.copyFrom(t.get().w2),
    run: ours,
    baselines: [{ name: "with the pack cached", run: ours }],
  };
}

export const cases = [
  ...SHAPES.flatMap((s) => ["f32", "bf16"].flatMap((wdt) => ["f32", "bf16"].flatMap((xdt) =>
    s[0] <= 32 ? [linearCase(s, xdt, wdt, false), linearCase(s, xdt, wdt, true)] : [linearCase(s, xdt, wdt, false)]))),
  ...SHAPES.map((s) => linearCase(s, "f32", "f32", s[0] <= 32, true)),
  fusedCase([512, 4096, 4096], 16),
  fusedCase([2048, 1024, 1024], 16),
  repackCase([512, 4096, 4096], "f32"),
  repackCase([512, 4096, 4096], "bf16"),
  gradCase("dx", [512, 4096, 4096]),
  gradCase("dW", [512, 4096, 4096]),
];
