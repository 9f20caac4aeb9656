// 4-bit weights (native/cpu/nf4*.cc, bitsandbytes' NF4): the forward y = x·Wᵀ. M = 16 (the small-batch kernels:
// codes dequantised in registers, f32 FMA for f32 compute, AMX tiles for bf16 x with bf16 compute) with the codes
// (and their cached panel form) flushed from every cache level, against the roofline of the 4-bit bytes
// (codes + f32 absmax) from DRAM capped by the compute peak the kernel runs at, and against our f32 GEMM with its
// W evicted too; M = 512 (W unpacked block by block into the GEMM's f32 panels, or its bf16 AMX pairs) against
// our f32 GEMM.
import { Tensor, backend, linear, linearGradInput } from "../dist/index.js";
import { quant4Linear, quant4LinearGradInput, quant4Quantize } from "../dist/ops.js";
import { native } from "../dist/native.js";
import { ceilingRate, computeCeilingOf, rooflineRate } from "./ceilings.mjs";

const h = Tensor.handle;
const amx = backend.features.includes("amx");

function lazy(make) {
  let v = null;
  return { get: () => (v ??= make()), drop: () => { if (v) for (const t of Object.values(v)) t?.dispose?.(); v = null; } };
}

// cdt: the compute dtype (x is given in it; the weight was quantised from a tensor of that dtype).
function inputs([M, K, N], cdt) {
  return lazy(() => {
    const w = Tensor.randn([N, K], { seed: 2 });
    const wq = cdt === "f32" ? w : w.to(cdt);
    const [packed, absmax] = quant4Quantize(wq, "nf4", 64);
    if (wq !== w) wq.dispose();
    const x = Tensor.randn([M, K], { seed: 1 });
    return { x, xc: cdt === "f32" ? null : x.to(cdt), w, packed, absmax };
  });
}

const operand = (v, K, N, cdt) => ({ packed: v.packed, absmax: v.absmax, quantType: "nf4", blocksize: 64, shape: [N, K], dtype: cdt, computeDtype: cdt });

function forwardCase(shape, evict, cdt = "f32") {
  const [M, K, N] = shape;
  const flops = 2 * M * N * K;
  const t = inputs(shape, cdt);
  // bf16 compute on AMX: the small-batch tile kernel, or the AMX GEMM reading bf16 pairs unpacked from the codes.
  const onAmx = cdt === "bf16" && amx;
  const kernel = onAmx ? "amx-bf16" : native._benchGemmKernel("f32", "f32");
  const compute = computeCeilingOf(kernel);
  const ours = () => quant4Linear(t.get().xc ?? t.get().x, operand(t.get(), K, N, cdt), null).dispose();
  const f32 = () => linear(t.get().x, t.get().w).dispose();
  const prepare = (which, run) => () => {
    if (evict) native._benchEvict(h(t.get()[which]));
    else run();
    native._benchWake();
  };
  const bytes4 = (N * K) / 2 + (N * K / 64) * 4;
  const baselines = [{ name: "our f32 GEMM", before: prepare("w", f32), run: f32 }];
  if (evict) baselines.unshift({ name: "DRAM roofline (4-bit bytes)", rate: () => rooflineRate(flops, bytes4, compute) });
  else baselines.unshift({ name: `${compute} peak`, rate: () => ceilingRate(compute) });
  return {
    name: `quant4Linear NF4 y=x·Wᵀ M=${M} K=${K} N=${N} x ${cdt}${evict ? " (W evicted)" : ""}`,
    shape, dtype: `x ${cdt}, W nf4 (blocksize 64), compute ${cdt}`, flops, kernel: `${kernel} + nf4 unpack`,
    setup: () => { t.get(); }, teardown: t.drop,
    before: prepare("packed", ours),
    run: ours,
    baselines,
    // The targets: >= 0.7x the 4-bit roofline and >= 1.6x our f32 at M = 16 (5x where AMX is used: the 4-bit
    // path does not use AMX), >= 0.8x our f32 GEMM at M = 512.
    target: evict ? { baseline: "DRAM roofline (4-bit bytes)", min: 0.7 } : { baseline: "our f32 GEMM", min: 0.8 },
  };
}

function decodeRatioCase() {
  const c = forwardCase([16, 4096, 4096], true);
  return { ...c, name: `${c.name}, against f32`, target: { baseline: "our f32 GEMM", min: 1.6, note: amx ? "f32 compute: AMX would round x and W to bf16 (the 5x target is the bf16-compute case)" : undefined } };
}

// bf16 compute (QLoRA's usual bnb_4bit_compute_dtype) at M = 16: on AMX the issue asks 5x our f32 GEMM.
function bf16RatioCase() {
  const c = forwardCase([16, 4096, 4096], true, "bf16");
  return { ...c, name: `${c.name}, against f32`, target: { baseline: "our f32 GEMM", min: amx ? 5 : 1.6 } };
}

// dx = dy·W (QLoRA's backward through the frozen 4-bit base) at M = 512 against our f32 dx GEMM: f32, or bf16 dy
// with bf16 compute (the AMX GEMM reading W's rows as bf16 pairs).
function gradInputCase([M, K, N], cdt) {
  const t = lazy(() => {
    const v = inputs([M, K, N], cdt).get();
    const dy = Tensor.randn([M, N], { seed: 5 });
    return { ...v, dy, dyc: cdt === "f32" ? null : dy.to(cdt) };
  });
  const ours = () => quant4LinearGradInput(t.get().dyc ?? t.get().dy, operand(t.get(), K, N, cdt)).dispose();
  const f32 = () => linearGradInput(t.get().dy, t.get().w).dispose();
  return {
    name: `quant4LinearGradInput NF4 dx=dy·W M=${M} K=${K} N=${N} dy ${cdt}`,
    shape: [M, K, N], dtype: `dy ${cdt}, W nf4 (blocksize 64), compute ${cdt}`, flops: 2 * M * N * K,
    kernel: cdt === "bf16" && amx ? "amx-bf16 + nf4 row unpack" : `${native._benchGemmKernel("f32", "f32")} + nf4 row unpack`,
    setup: () => { t.get(); }, teardown: t.drop,
    run: ours,
    baselines: [{ name: "our f32 dx GEMM", run: f32 }],
  };
}

export const cases = [
  forwardCase([16, 4096, 4096], true), decodeRatioCase(), forwardCase([16, 4096, 4096], true, "bf16"), bf16RatioCase(),
  forwardCase([512, 4096, 4096], false), forwardCase([512, 4096, 4096], false, "bf16"),
  gradInputCase([512, 4096, 4096], "f32"), gradInputCase([512, 4096, 4096], "bf16"),
];
