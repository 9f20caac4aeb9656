// Householder QR of a column-major float64 matrix, in place (LAPACK's dgeqr2 layout: R on and above the
// diagonal, each reflector's vector below it with an implicit leading 1). Backward stable whatever the
// conditioning or rank of the input, which is why the SVDs here start from it.
import { dot, type ColMat } from "./dense.js";
import { native } from "../native.js";

export interface QR {
  /** The factored matrix: R above the diagonal, reflector vectors below. */
  a: ColMat;
  /** Reflector j is H = I − tau[j]·v·vᵀ; tau 0 is the identity (the column was already reduced). */
  tau: Float64Array;
  /** Number of reflectors: min(m, n). */
  k: number;
}

/** Factors a = Q·R in place (a is overwritten). */
export function householderQr(a: ColMat): QR {
  const { m, n, data } = a;
  const k = Math.min(m, n);
  const tau = new Float64Array(k);
  for (let j = 0; j < k; j++) {
    const cj = j * m;
    const below = m - j - 1;
    const xnorm2 = dot(data, cj + j + 1, data, cj + j + 1, below);
    if (xnorm2 === 0) continue; // nothing below the diagonal: H = I, also for a negative diagonal (dlarfg)
    const alpha = data[cj + j];
    const beta = -Math.sign(alpha || 1) * Math.sqrt(alpha * alpha + xnorm2);
    tau[j] = (beta - alpha) / beta;
    const scale = 1 / (alpha - beta);
    for (let i = cj + j + 1; i < cj + m; i++) data[i] *= scale;
    data[cj + j] = beta;
    applyReflector(data, cj + j, below, tau[j], data, m, j, j + 1, n);
  }
  return { a, tau, k };
}

/**
 * Applies H = I − tau·v·vᵀ (v = [1, v[vo+1 .. vo+below]]) to columns c0 .. c1−1 of the column-major
 * matrix x (leading dimension ld), on rows row .. row+below. The loop that bounds the whole QR runs natively
 * on the arrays' own memory (columns split across the thread pool).
 */
function applyReflector(v: Float64Array, vo: number, below: number, tau: number, x: Float64Array, ld: number, row: number, c0: number, c1: number): void {
  if (tau === 0 || c1 <= c0) return;
  native.applyReflector(v, vo, below, tau, x, ld, row, c0, c1);
}

/** x ← Q·x for a column-major x with qr's row count (Q = H₀·H₁·…, so the reflectors go last to first). */
export function applyQ(qr: QR, x: ColMat): void {
  const { m, data } = qr.a;
  if (x.m !== m) throw new RangeError(`applyQ: x has ${x.m} rows, Q is ${m} × ${m}`);
  for (let j = qr.k - 1; j >= 0; j--) applyReflector(data, j * m + j, m - j - 1, qr.tau[j], x.data, m, j, 0, x.n);
}

/** R's entry (i, j) (zero below the diagonal). */
export function rAt(qr: QR, i: number, j: number): number {
  return i <= j ? qr.a.data[j * qr.a.m + i] : 0;
}
