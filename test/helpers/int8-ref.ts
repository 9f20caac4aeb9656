// bitsandbytes' LLM.int8 arithmetic in plain JS (the order of rounding of int8_vectorwise_quant,
// int8_mm_dequant and int8_mixed_scaled_mm), so kernels can be compared exactly where the arithmetic is exact.
import { roundTo } from "./numeric.js";

const f = Math.fround;

/** Round half to even, as torch.round and the kernels' cvtps2dq. */
export function rint(v: number): number {
  const r = Math.round(v);
  return Math.abs(v - Math.trunc(v)) === 0.5 ? 2 * Math.round(v / 2) : r;
}

/**
 * Quantises rows (values as stored, any float dtype) as int8_vectorwise_quant on the f16 cast: outlier
 * elements (|v| >= threshold > 0) left out of the absmax, every column in `outlierCols` zeroed.
 */
export function quantRows(v: ArrayLike<number>, rows: number, cols: number, threshold = 0, outlierCols: Set<number> = new Set()) {
  const h = roundTo(v, "f16");
  const q = new Int32Array(rows * cols), s = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let amax = 0;
    for (let k = 0; k < cols; k++) {
      const a = Math.abs(h[r * cols + k]);
      if (threshold > 0 && a >= threshold) continue;
      amax = Math.max(amax, a);
    }
    s[r] = amax;
    const scale = amax > 0 ? f(127 / amax) : 0;
    for (let k = 0; k < cols; k++) {
      const x = h[r * cols + k];
      const skip = outlierCols.has(k) || (threshold > 0 && Math.abs(x) >= threshold);
      q[r * cols + k] = skip ? 0 : rint(f(x * scale)) || 0;
    }
  }
  return { q, s };
}

/** Columns of x (rows x cols) with any |x16| >= threshold. */
export function outlierColumns(x: ArrayLike<number>, rows: number, cols: number, threshold: number): Set<number> {
  const h = roundTo(x, "f16");
  const out = new Set<number>();
  if (threshold <= 0) return out;
  for (let i = 0; i < rows * cols; i++) if (Math.abs(h[i]) >= threshold) out.add(i % cols);
  return out;
}

/** The exact int32 products xq·CBᵀ (wrapping as int32 arithmetic does). */
export function int32Product(xq: Int32Array, cb: ArrayLike<number>, M: number, K: number, N: number): Int32Array {
  const out = new Int32Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += xq[m * K + k] * cb[n * K + k];
      out[m * N + n] = s;
    }
  return out;
}

/** int8_mm_dequant in f32: f32(acc) · f32(SCx·SCB) · 6.200124e-05f (+ bias), not yet rounded to y's dtype. */
export function dequant(acc: Int32Array, scx: Float64Array, scb: ArrayLike<number>, bias: ArrayLike<number> | null, M: number, N: number): Float64Array {
  const out = new Float64Array(M * N);
  const c = f(6.200124e-5);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let y = f(f(f(acc[m * N + n]) * f(scx[m] * scb[n])) * c);
      if (bias) y = f(y + bias[n]);
      out[m * N + n] = y;
    }
  return out;
}

/** The dequantised weight as bitsandbytes' int8_vectorwise_dequant writes it (f32): CB·SCB·(1/127). */
export function dequantWeight(cb: ArrayLike<number>, scb: ArrayLike<number>, N: number, K: number): Float64Array {
  const out = new Float64Array(N * K), c = f(7.874015718698502e-3);
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) out[n * K + k] = f(f(cb[n * K + k] * scb[n]) * c);
  return out;
}

/**
 * fma in f32: a·b + c rounded once. a·b of two f32 values is exact in float64; their sum s is off the exact
 * value by e (two-sum), which decides only when s falls exactly between two f32 values.
 */
export function fmaF32(a: number, b: number, c: number): number {
  const p = a * b, s = p + c, bv = s - p, e = p - (s - bv) + (c - bv);
  const r = Math.fround(s);
  if (r === s || e === 0) return r;
  const bits = new Float32Array([r]), i32 = new Int32Array(bits.buffer);
  if (r === 0) bits[0] = Math.sign(s) * 2 ** -149;
  else i32[0] += (s > r) === (r > 0) ? 1 : -1;
  const other = bits[0];
  if (s - r !== other - s) return r; // not a tie: float64 already rounded to the nearer one
  return (other > r) === (e > 0) ? other : r;
}
