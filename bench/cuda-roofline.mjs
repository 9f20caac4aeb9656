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
// Fused LoRA at a 7B-class projection: 512 tokens, 4096 -> 4096, rank 16.
const Ml = 512, rl = 16;
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
  // LoRA (lora_fused.cu). The fused forward is the base GEMM plus T = x·Aᵀ (a small SIMT kernel reading x
  // once more) and the rank term T·(sB)ᵀ on each output tile (f32, from shared memory): against the base
  // GEMM alone it adds 2·M·K·r + 2·M·N·r flops and one read of x; target <= 1.05x the base GEMM's time.
  { name: "gemm bf16 WMMA (512, 4096, 4096)", flops: 2 * Ml * n * n, bytes: 2 * (Ml * n + n * n + Ml * n), peak: "bf16", note: "the base alone" },
  { name: "lora T = x·Aᵀ f32 (512, 4096, r 16)", flops: 2 * Ml * n * rl, bytes: 2 * Ml * n + 4 * rl * n + 4 * Ml * rl, peak: "f32", note: "x read again; A from L2" },
  { name: "lora forward bf16 (512, 4096, 4096) r16", flops: 2 * Ml * n * n + 2 * Ml * n * rl + 2 * Ml * rl * n, bytes: 2 * (2 * Ml * n + n * n + Ml * n) + 4 * (2 * rl * n + Ml * rl),
    peak: "bf16", note: "base + T kernel + the f32 rank epilogue on each tile (CUDA cores)" },
  // The merge streams W once (read, write) with the r rank terms per element: memory-bound; target >= 0.8x copy.
  { name: "lora merge bf16 4096x4096 r16", flops: 2 * n * n * rl, bytes: 2 * 2 * n * n + 4 * rl * 2 * n, peak: "f32", note: "W read+written once; A rows from L2 (32 rows of W per load)" },
  { name: "copy bf16 4096x4096", flops: 0, bytes: 2 * 2 * n * n, peak: "f32", note: "the merge's bandwidth reference" },
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
console.log("ceiling at 4096³, element-wise >= 0.8x copy bandwidth (scripts/gpu-check.sh measures both); fused LoRA");
console.log("forward <= 1.05x the base GEMM at (512, 4096, 4096) bf16, LoRA merge >= 0.8x copy bandwidth (peft_lora_check --bench);");
console.log("int8 GEMM >= 0.5x the int8 mma ceiling at 4096³ and faster than the f16 GEMM (peft_int8_check --bench).");
