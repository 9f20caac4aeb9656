// Float64 references for layer tests: dense products and deterministic test values (tolerance and
// finite-difference helpers are in numeric.ts).
export { expectClose, UNIT as EPS, numericGrad } from "./numeric.js";
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
