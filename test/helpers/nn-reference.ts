// Float64 references for layer tests: dense products, finite differences, comparisons with tolerances.
import { expect } from "vitest";
import { Tensor } from "../../lib/index.js";

export type Mat = { data: Float64Array; rows: number; cols: number };

export function mat(t: Tensor): Mat {
  const cols = t.shape[t.shape.length - 1] ?? 1;
  const rows = cols ? t.numel / cols : 0;
  return { data: t.toFloat64Array(), rows, cols };
}

/** y[m, n] = Σ_k x[m, k] w[n, k] (+ b[n]) in float64; with inOut, w is stored (k, n). */
export function refLinear(x: Mat, w: Mat, b: Float64Array | null, inOut = false): Float64Array {
  const M = x.rows, K = x.cols, N = inOut ? w.cols : w.rows;
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = b ? b[n] : 0;
      for (let k = 0; k < K; k++) s += x.data[m * K + k] * (inOut ? w.data[k * N + n] : w.data[n * K + k]);
      y[m * N + n] = s;
    }
  return y;
}

/** Σ |a||b| per output, the scale of the rounding error of a dot product. */
export function refLinearAbs(x: Mat, w: Mat, inOut = false): Float64Array {
  const abs = (m: Mat): Mat => ({ ...m, data: m.data.map(Math.abs) });
  return refLinear(abs(x), abs(w), null, inOut);
}

/**
 * |got - want| <= tol[i] elementwise, with a message naming the first offending index.
 * tol = K·2^-24·Σ|x||w| (f32 accumulation) + rounding of the output dtype.
 */
export function expectClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: (i: number) => number, what = "") {
  expect(got.length, `${what} length`).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    if (!(err <= tol(i))) expect.fail(`${what}[${i}]: got ${got[i]}, want ${want[i]} (|err| ${err} > tol ${tol(i)})`);
  }
}

export const EPS: Record<string, number> = { f32: 2 ** -24, bf16: 2 ** -8, f16: 2 ** -11 };

/** Central finite differences of a scalar function f(p) over the entries of a float64 array. */
export function finiteDiff(p: Float64Array, f: (p: Float64Array) => number, h = 1e-6): Float64Array {
  const g = new Float64Array(p.length);
  for (let i = 0; i < p.length; i++) {
    const keep = p[i];
    p[i] = keep + h;
    const up = f(p);
    p[i] = keep - h;
    const down = f(p);
    p[i] = keep;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

/** Deterministic values in [-1, 1) (exactly representable in bf16 when `coarse`). */
export function values(n: number, seed: number, coarse = false): Float64Array {
  const out = new Float64Array(n);
  let s = seed * 2654435761 + 1;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) % 2147483648;
    const u = s / 2147483648;
    out[i] = coarse ? Math.round((u * 2 - 1) * 64) / 64 : u * 2 - 1;
  }
  return out;
}
