// Machine ceilings (native/cpu/ceilings*.cc): register-only peak loops per instruction family and DRAM
// bandwidth, on the pool's threads. Other families measure their cases against these in the same run;
// as cases here they put the ceilings themselves in the report.
import { backend } from "../dist/index.js";
import { native } from "../dist/native.js";

const available = new Map(native._benchCeilings().map((c) => [c.name, c]));

/** Whether this CPU can run ceiling `name`. */
export const hasCeiling = (name) => available.has(name);

/**
 * One measurement of ceiling `name` on the pool's threads (GFLOP/s, GOP/s or GB/s). Short, so it sits
 * close in time to the run it is compared with (this machine's rates drift over ~0.1 s).
 */
export function ceilingRate(name, seconds = name.startsWith("dram") ? 0.1 : 0.04) {
  return native._benchCeiling(name, backend.threads, seconds);
}

/** The compute peak a whole step of `dtype` is measured against: FMA for f32; AMX, else vdpbf16ps, for bf16 mode. */
export function peakOfDtype(dtype) {
  if (dtype === "bf16") return hasCeiling("amx-bf16") ? "amx-bf16" : hasCeiling("dpbf16-avx512") ? "dpbf16-avx512" : "fma-avx512";
  return hasCeiling("fma-avx512") ? "fma-avx512" : "fma-avx2";
}

/** The compute ceiling a GEMM kernel set runs against. */
export function computeCeilingOf(kernel) {
  if (kernel.startsWith("amx")) return "amx-bf16";
  if (kernel.startsWith("avx512-bf16")) return "dpbf16-avx512";
  if (kernel.startsWith("avx512")) return "fma-avx512";
  if (kernel.startsWith("avx2")) return "fma-avx2";
  return null;
}

/**
 * The roofline of a kernel doing `flops` over `bytes` of memory traffic: DRAM read bandwidth times the
 * arithmetic intensity, capped by the compute ceiling (both measured now).
 */
export function rooflineRate(flops, bytes, compute) {
  const bw = ceilingRate("dram-read") * (flops / bytes);
  return compute ? Math.min(bw, ceilingRate(compute)) : bw;
}

export const cases = [...available.values()].map((c) => ({
  name: `ceiling ${c.name}: ${c.what}`,
  unit: c.unit,
  isa: c.name,
  measure: () => ceilingRate(c.name),
}));
