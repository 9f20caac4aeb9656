// One-sided (Hestenes) Jacobi SVD of a small column-major float64 matrix: plane rotations applied from the
// right until every pair of columns is orthogonal to working precision. Chosen for the small cores here
// because it computes even tiny singular values to high relative accuracy and needs no bidiagonalization.
import { dot, type ColMat } from "./dense.js";

export interface JacobiSvd {
  /** g·v: column j is σⱼ·uⱼ (the left vector scaled by its singular value); columns in g's input order. */
  g: ColMat;
  /** The accumulated rotations (n × n, orthogonal): g = a·v. */
  v: ColMat;
  /** Column norms of g, i.e. the singular values, in column order. */
  s: Float64Array;
  /** Column indices by decreasing singular value (ties keep column order). */
  order: Int32Array;
}

// Columns count as orthogonal once |gₚ·g_q| ≤ TOL·‖gₚ‖·‖g_q‖; a few ulps, the accuracy the sweeps can reach.
const TOL = 4 * Number.EPSILON;
// Quadratic convergence needs well under 20 sweeps for any matrix; the cap only bounds pathological input.
const MAX_SWEEPS = 60;

/** SVD of a (m × n): a is overwritten by g. */
export function jacobiSvd(a: ColMat): JacobiSvd {
  const { m, n, data: g } = a;
  const v = new Float64Array(n * n);
  for (let j = 0; j < n; j++) v[j * n + j] = 1;
  for (let sweep = 0; sweep < MAX_SWEEPS; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        const po = p * m, qo = q * m;
        const alpha = dot(g, po, g, po, m);
        const beta = dot(g, qo, g, qo, m);
        const gamma = dot(g, po, g, qo, m);
        if (gamma === 0 || Math.abs(gamma) <= TOL * Math.sqrt(alpha) * Math.sqrt(beta)) continue;
        rotated = true;
        // The rotation that zeroes the (p, q) entry of gᵀg (Rutishauser's formulas, the smaller angle).
        const zeta = (beta - alpha) / (2 * gamma);
        const t = Math.abs(zeta) > 1e150 ? 1 / (2 * zeta) : Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        rotate(g, po, qo, m, c, s);
        rotate(v, p * n, q * n, n, c, s);
      }
    }
    if (!rotated) break;
  }
  const s = new Float64Array(n);
  for (let j = 0; j < n; j++) s[j] = Math.sqrt(dot(g, j * m, g, j * m, m));
  const order = Int32Array.from({ length: n }, (_, j) => j).sort((x, y) => s[y] - s[x] || x - y);
  return { g: a, v: { m: n, n, data: v }, s, order };
}

function rotate(x: Float64Array, po: number, qo: number, len: number, c: number, s: number): void {
  for (let i = 0; i < len; i++) {
    const xp = x[po + i], xq = x[qo + i];
    x[po + i] = c * xp - s * xq;
    x[qo + i] = s * xp + c * xq;
  }
}
