// Householder QR of a column-major float64 matrix, in place (LAPACK's dgeqr2 layout: R on and above the
// diagonal, each reflector's vector below it with an implicit leading 1). Backward stable whatever the
// conditioning or rank of the input, which is why the SVDs here start from it.
import { axpy, dot, type ColMat } from "./dense.js";

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
 * matrix x (leading dimension ld), on rows row .. row+below. Four columns share each pass over v, which
 * cuts the loads per multiply-add that bound this loop.
 */
function applyReflector(v: Float64Array, vo: number, below: number, tau: number, x: Float64Array, ld: number, row: number, c0: number, c1: number): void {
  if (tau === 0) return;
  let c = c0;
  for (; c + 3 < c1; c += 4) {
    const o0 = c * ld + row, o1 = o0 + ld, o2 = o1 + ld, o3 = o2 + ld;
    let w0 = x[o0], w1 = x[o1], w2 = x[o2], w3 = x[o3];
    for (let i = 1; i <= below; i++) {
      const vi = v[vo + i];
      w0 += vi * x[o0 + i];
      w1 += vi * x[o1 + i];
      w2 += vi * x[o2 + i];
      w3 += vi * x[o3 + i];
    }
    w0 *= tau, w1 *= tau, w2 *= tau, w3 *= tau;
    x[o0] -= w0, x[o1] -= w1, x[o2] -= w2, x[o3] -= w3;
    for (let i = 1; i <= below; i++) {
      const vi = v[vo + i];
      x[o0 + i] -= w0 * vi;
      x[o1 + i] -= w1 * vi;
      x[o2 + i] -= w2 * vi;
      x[o3 + i] -= w3 * vi;
    }
  }
  for (; c < c1; c++) {
    const o = c * ld + row;
    const w = tau * (x[o] + dot(v, vo + 1, x, o + 1, below));
    x[o] -= w;
    axpy(-w, v, vo + 1, x, o + 1, below);
  }
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
