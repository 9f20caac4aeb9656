// The CUDA kernels' roofline on paper, for when no GPU is at hand: for each kernel at a training-sized
// shape, the flops, the bytes it moves through device memory (its own access pattern, not the ideal), and
// the time that would take at an H200's (and an H100's) peaks; the larger of the compute and the memory
// time is the kernel's floor. On a GPU, scripts/gpu-check.sh measures the device's ceilings and each
// kernel's ratio to them instead.
//   node bench/cuda-roofline.mjs
// Peaks (dense, SXM parts, NVIDIA's data sheets): f32 CUDA-core FMA 67 TFLOP/s on both; TF32 tensor cores
// 494.7; bf16/f16 tensor cores 989.4; int8 tensor cores 1978.9 TOP/s; HBM 4.8 TB/s (H200, HBM3e) and 3.35 TB/s
// (H100, HBM3).
const PEAKS = {
  H200: { f32: 67e12, tf32: 494.7e12, bf16: 989.4e12, int8: 1978.9e12, hbm: 4.8e12 },
  H100: { f32: 67e12, tf32: 494.7e12, bf16: 989.4e12, int8: 1978.9e12, hbm: 3.35e12 },
};

const n = 4096, E = 1 << 26, R = 4096, V = 32000;
const fmtB = (b) => `${(b / 1e9).toFixed(1)} GB`;
// flops, bytes, the compute peak it runs against, and a note on the bytes.
const kernels = [
  // GEMMs: the compulsory traffic (A and B read once, C written once). The tiles re-read A and B panels
  // (N/128 or N/64 times), which the 50 MB L2 serves at 4096³; the L2 traffic is in the note.
  { name: "gemm f32 SIMT 4096³", flops: 2 * n ** 3, bytes: 3 * 4 * n * n, peak: "f32", note: `128x128 tiles: ${fmtB(8 * n * n * (n / 128))} from L2` },
  { name: "gemm tf32 WMMA 4096³", flops: 2 * n ** 3, bytes: 3 * 4 * n * n, peak: "tf32", note: `64x64 tiles: ${fmtB(8 * n * n * (n / 64))} from L2` },
  { name: "gemm bf16 WMMA 4096³", flops: 2 * n ** 3, bytes: 2 * 2 * n * n + 4 * n * n, peak: "bf16", note: `64x64 tiles: ${fmtB(4 * n * n * (n / 64))} from L2` },
  // LLM.int8 (int8_matmul.cu) at 4096³, f16 x: quantising x (read f16, write int8 + a scale per row), then the
  // int8 GEMM (x_q and CB read once, f16 y written): half the f16 GEMM's operand bytes and twice its peak.
  { name: "int8 linear WMMA s8 4096³", flops: 2 * n ** 3, bytes: 2 * n * n + n * n + 2 * n * n + 2 * n * n, peak: "int8", note: `quantise x + 64x64 tiles: ${fmtB(2 * n * n * (n / 64))} from L2` },
  { name: "int8 linear __dp4a 8x4096x4096", flops: 2 * 8 * n * n, bytes: n * n, peak: "f32", note: "decode step: CB read once (dp4a: 4 MACs/instruction)" },
  { name: "int8 grad input 4096³ (SIMT)", flops: 2 * n ** 3, bytes: 4 * n * n + n * n + 4 * n * n, peak: "f32", note: "dy·(CB·SCB/127): f32 SIMT, CB widened as staged" },
  { name: "IA3 scale columns f32 4096²", flops: n * n, bytes: 8 * n * n, peak: "f32", note: "y = y0 ⊙ l (output side, training)" },
  { name: "axpy / add f32 2^26", flops: 2 * E, bytes: 12 * E, peak: "f32", note: "read a, b; write a" },
  { name: "activation (gelu) f32 2^26", flops: 20 * E, bytes: 8 * E, peak: "f32", note: "erf form in double: ~20 flops" },
  { name: "dropout f32 2^26", flops: 25 * E, bytes: 8 * E, peak: "f32", note: "Philox: ~100 integer ops per 4 elements" },
  { name: "log-softmax f32 4096x32000", flops: 4 * R * V, bytes: 4 * R * V * 4, peak: "f32", note: "3 reads of x (max, sum, out) + write" },
  { name: "cross-entropy f32 4096x32000", flops: 5 * R * V, bytes: 4 * R * V * 4, peak: "f32", note: "3 reads of logits + grad write" },
  { name: "sumRows f32 4096x4096", flops: n * n, bytes: 4 * n * n, peak: "f32", note: "one read" },
  { name: "AdamW f32 2^26", flops: 14 * E, bytes: 28 * E, peak: "f32", note: "read p g m v, write p m v" },
];

const fmt = (x, unit) => (x >= 1e9 ? `${(x / 1e9).toFixed(2)} G${unit}` : x >= 1e6 ? `${(x / 1e6).toFixed(1)} M${unit}` : `${x.toFixed(0)} ${unit}`);
const ms = (s) => `${(s * 1e3).toFixed(3)}`;
const rows = kernels.map((k) => {
  const out = { kernel: k.name, flops: fmt(k.flops, "FLOP"), bytes: fmt(k.bytes, "B"), "flop/B": (k.flops / k.bytes).toFixed(1) };
  for (const [gpu, p] of Object.entries(PEAKS)) {
    const tc = k.flops / p[k.peak], tm = k.bytes / p.hbm;
    out[`${gpu} ms`] = ms(Math.max(tc, tm));
    out[`${gpu} bound`] = tc >= tm ? `compute (${k.peak})` : "memory";
  }
  out.note = k.note;
  return out;
});
console.table(rows);
console.log("Targets when a GPU is lent: f32 SIMT GEMM >= 0.6x the measured FMA ceiling, f16/bf16 WMMA >= 0.5x the mma");
console.log("ceiling at 4096³, element-wise >= 0.8x copy bandwidth (scripts/gpu-check.sh measures both); int8 GEMM >= 0.5x the");
console.log("int8 mma ceiling at 4096³ and faster than the f16 GEMM (int8_check.cu measures both).");
