// The truncated SVD of a matrix given as a product Δ = L·Mᵀ (L: m × p, M: n × p, p small): QR of both
// factors, then a Jacobi SVD of the p × p core R_L·R_Mᵀ. Exact (to working precision) and O((m + n)·p²),
// against O(m·n·min(m, n)) for an SVD of the formed m × n product.
//
// Sign convention: singular vectors are defined up to a common sign per pair; each pair (uⱼ, vⱼ) returned
// here is oriented so that the entry of largest magnitude in uⱼ (the first one, on a tie) is positive.
import { axpy, colMajorOf, type ColMat } from "./dense.js";
import { applyQ, householderQr, rAt, type QR } from "./householder.js";
import { jacobiSvd } from "./jacobi-svd.js";

export interface TruncatedSvd {
  /** U·S, m × k column-major: column j is σⱼ·uⱼ. */
  us: ColMat;
  /** V, n × k column-major: column j is vⱼ (row j of Vh). */
  v: ColMat;
  /** σ₀ ≥ σ₁ ≥ … (k of them). */
  s: Float64Array;
}

/** A factor of Δ = L·Mᵀ: a matrix (overwritten here), or a number d for the d × d identity. */
export type Factor = ColMat | number;

const rows = (f: Factor) => (typeof f === "number" ? f : f.m);
const cols = (f: Factor) => (typeof f === "number" ? f : f.n);

/** The leading k singular triplets of L·Mᵀ (fewer when min(m, n, p) < k). */
export function lowRankSvd(L: Factor, M: Factor, k: number): TruncatedSvd {
  const p = cols(L);
  if (cols(M) !== p) throw new RangeError(`lowRankSvd: L has ${p} columns and M has ${cols(M)}`);
  // L itself gives U·S = Q_L·R_L·R_Mᵀ·V_c = L·(R_Mᵀ·V_c) for half the work of applying Q_L.
  const l0 = typeof L === "number" ? null : L.data.slice();
  const qrL = typeof L === "number" ? null : householderQr(L);
  const qrM = typeof M === "number" ? null : householderQr(M);
  const sL = qrL ? qrL.k : p;
  const sM = qrM ? qrM.k : p;
  const core = jacobiSvd(coreOf(qrL, qrM, sL, sM, p));
  const kk = Math.min(k, sL, sM);
  const x = rmTransposeTimes(qrM, core.v, core.order, kk, p);
  const us = l0 ? times(l0, rows(L), x) : x;
  const v = lift(core.v, core.order, kk, qrM, rows(M));
  const s = Float64Array.from({ length: kk }, (_, j) => core.s[core.order[j]]);
  orient(us, v);
  return { us, v, s };
}

/** R_Mᵀ·V_c[:, order[0..k)] (p × k), R_M the identity when M is. */
function rmTransposeTimes(qrM: QR | null, vc: ColMat, order: Int32Array, k: number, p: number): ColMat {
  const out = new Float64Array(p * k);
  for (let j = 0; j < k; j++) {
    const vo = order[j] * vc.m;
    for (let t = 0; t < p; t++) {
      if (!qrM) {
        out[j * p + t] = vc.data[vo + t];
        continue;
      }
      let acc = 0;
      for (let i = 0; i <= Math.min(t, vc.m - 1); i++) acc += rAt(qrM, i, t) * vc.data[vo + i];
      out[j * p + t] = acc;
    }
  }
  return { m: p, n: k, data: out };
}

/** a·x for a column-major a (m × x.m). */
function times(a: Float64Array, m: number, x: ColMat): ColMat {
  const out = new Float64Array(m * x.n);
  for (let j = 0; j < x.n; j++) for (let t = 0; t < x.m; t++) axpy(x.data[j * x.m + t], a, t * m, out, j * m, m);
  return { m, n: x.n, data: out };
}

/** R_L·R_Mᵀ (sL × sM), either R being the identity when its factor is. */
function coreOf(qrL: QR | null, qrM: QR | null, sL: number, sM: number, p: number): ColMat {
  const c = new Float64Array(sL * sM);
  const rl = (i: number, t: number) => (qrL ? rAt(qrL, i, t) : +(i === t));
  const rm = (j: number, t: number) => (qrM ? rAt(qrM, j, t) : +(j === t));
  for (let j = 0; j < sM; j++)
    for (let i = 0; i < sL; i++) {
      let acc = 0;
      for (let t = Math.max(i, j); t < p; t++) acc += rl(i, t) * rm(j, t);
      c[j * sL + i] = acc;
    }
  return { m: sL, n: sM, data: c };
}

/** Columns order[0..k) of x, padded to `rows` rows and multiplied by the factor's Q (when it has one). */
function lift(x: ColMat, order: Int32Array, k: number, qr: QR | null, rowsOut: number): ColMat {
  const out = new Float64Array(rowsOut * k);
  for (let j = 0; j < k; j++) out.set(x.data.subarray(order[j] * x.m, order[j] * x.m + x.m), j * rowsOut);
  const y = { m: rowsOut, n: k, data: out };
  if (qr) applyQ(qr, y);
  return y;
}

/** The sign convention above: flips (uⱼ, vⱼ) together. */
export function orient(us: ColMat, v: ColMat): void {
  for (let j = 0; j < us.n; j++) {
    const o = j * us.m;
    let at = o;
    for (let i = o + 1; i < o + us.m; i++) if (Math.abs(us.data[i]) > Math.abs(us.data[at])) at = i;
    if (us.data[at] >= 0) continue;
    for (let i = o; i < o + us.m; i++) us.data[i] = -us.data[i];
    for (let i = j * v.m; i < (j + 1) * v.m; i++) v.data[i] = -v.data[i];
  }
}

/** The leading k singular triplets of a dense m × n matrix given row-major: O(m·n·min(m, n)). */
export function exactSvd(rowMajor: ArrayLike<number>, m: number, n: number, k: number): TruncatedSvd {
  // Δ = L·Mᵀ with the identity on the longer side, so the QR runs on the tall orientation of Δ. Δ's
  // row-major data is Δᵀ column-major, so the wide case needs no transpose.
  if (m >= n) return lowRankSvd(colMajorOf(rowMajor, m, n), n, k);
  return lowRankSvd(m, { m: n, n: m, data: Float64Array.from(rowMajor) }, k);
}
