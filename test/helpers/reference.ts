// Float64 GEMM reference and its error bound, for tests of anything built on the GEMM.
import { UNIT, tolIn, type FloatDType } from "./numeric.js";

/** A matrix as the tests hold it: exact values (what the tensor stores, as doubles) and a shape. */
export interface Mat {
  v: ArrayLike<number>;
  rows: number;
  cols: number;
}

export interface GemmRefOptions {
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  bias?: ArrayLike<number> | null;
  /** The fused extra k-steps: a2 is M x R, b2 is R x N (row-major). */
  a2?: Mat | null;
  b2?: Mat | null;
  /** C's previous values (accumulate). */
  c?: ArrayLike<number> | null;
  /** Per column of C: multiplies alpha·A·B + A2·B2 + bias (not C's previous values). */
  colScale?: ArrayLike<number> | null;
  /** Per k: multiplies column k of op(A). */
  aScale?: ArrayLike<number> | null;
}

/**
 * value = s ⊙ (alpha·op(A·diag(aScale))·op(B) + A2·B2 + bias) + C in float64 (s = colScale or 1), with `mag` = the same sum over absolute values
 * (what the f32 roundings act on) and `steps` = the number of k-steps per output (K + R).
 */
export function gemmRef(a: Mat, b: Mat, o: GemmRefOptions = {}): { value: Float64Array; mag: Float64Array; M: number; N: number; steps: number } {
  const M = o.transA ? a.cols : a.rows, K = o.transA ? a.rows : a.cols;
  const N = o.transB ? b.rows : b.cols;
  const A = (i: number, k: number) => (o.transA ? a.v[k * a.cols + i] : a.v[i * a.cols + k]);
  const B = (k: number, j: number) => (o.transB ? b.v[j * b.cols + k] : b.v[k * b.cols + j]);
  const alpha = o.alpha ?? 1;
  const R = o.a2 ? o.a2.cols : 0;
  const value = new Float64Array(M * N), mag = new Float64Array(M * N);
  const arow = new Float64Array(K);
  // B's columns laid out contiguously once, so the inner loop walks two dense rows (the reference is the
  // slowest part of the GEMM tests otherwise).
  const bcols = new Float64Array(N * K);
  for (let j = 0; j < N; j++) for (let k = 0; k < K; k++) bcols[j * K + k] = B(k, j);
  for (let i = 0; i < M; i++) {
    for (let k = 0; k < K; k++) arow[k] = A(i, k) * (o.aScale ? o.aScale[k] : 1);
    for (let j = 0; j < N; j++) {
      let s = 0, m = 0;
      const col = j * K;
      for (let k = 0; k < K; k++) {
        const p = arow[k] * bcols[col + k];
        s += p;
        m += Math.abs(p);
      }
      s *= alpha;
      m *= Math.abs(alpha);
      for (let r = 0; r < R; r++) {
        const p = o.a2!.v[i * R + r] * o.b2!.v[r * N + j];
        s += p;
        m += Math.abs(p);
      }
      if (o.bias) (s += o.bias[j]), (m += Math.abs(o.bias[j]));
      if (o.colScale) (s *= o.colScale[j]), (m *= Math.abs(o.colScale[j]));
      if (o.c) (s += o.c[i * N + j]), (m += Math.abs(o.c[i * N + j]));
      value[i * N + j] = s;
      mag[i * N + j] = m;
    }
  }
  // A scaled A element is rounded once more before its product: one more step's worth of error.
  return { value, mag, M, N, steps: K + R + (o.aScale ? 1 : 0) + (o.colScale ? 1 : 0) };
}

/**
 * The bound for one output of a GEMM accumulated in f32 and rounded once into `out`: each of the `steps`
 * k-steps and the few adds after them (alpha, bias, C, a stored partial) rounds once with relative error
 * at most u(f32) of the running magnitude, so |err| <= (steps + 4)·u(f32)·Σ|a||b| + rounding into `out`.
 */
export function gemmTol(out: FloatDType, steps: number, value: number, mag: number): number {
  return tolIn(out, value, (steps + 4) * UNIT.f32, mag);
}
