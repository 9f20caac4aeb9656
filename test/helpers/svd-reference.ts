// Float64 references for the SVD tests: matrices built from chosen singular values and random orthonormal
// vectors (so the exact SVD is known by construction, not computed by the code under test), and the
// best rank-k approximation they define.
import { mulberry32 } from "../../scripts/fuzz/rng.mjs";

/** n orthonormal columns of length m (m ≥ n) from Gaussian vectors, by Gram–Schmidt run twice; column-major. */
export function orthonormal(m: number, n: number, seed: number): Float64Array {
  const u = mulberry32(seed);
  const gauss = () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
  const q = new Float64Array(m * n);
  for (let j = 0; j < n; j++) {
    for (let i = 0; i < m; i++) q[j * m + i] = gauss();
    for (let pass = 0; pass < 2; pass++)
      for (let t = 0; t < j; t++) {
        let d = 0;
        for (let i = 0; i < m; i++) d += q[t * m + i] * q[j * m + i];
        for (let i = 0; i < m; i++) q[j * m + i] -= d * q[t * m + i];
      }
    let nrm = 0;
    for (let i = 0; i < m; i++) nrm += q[j * m + i] ** 2;
    nrm = Math.sqrt(nrm);
    for (let i = 0; i < m; i++) q[j * m + i] /= nrm;
  }
  return q;
}

export interface KnownSvd {
  m: number;
  n: number;
  /** Singular values as built (descending). */
  sigma: number[];
  /** U (m × p) and V (n × p) column-major, p = sigma.length. */
  u: Float64Array;
  v: Float64Array;
}

export function knownSvd(m: number, n: number, sigma: number[], seed: number): KnownSvd {
  return { m, n, sigma, u: orthonormal(m, sigma.length, seed), v: orthonormal(n, sigma.length, seed + 1) };
}

/** Σ_{j<k} σⱼ·uⱼ·vⱼᵀ as a row-major m × n array (k = all by default). */
export function product(s: KnownSvd, k = s.sigma.length): Float64Array {
  const out = new Float64Array(s.m * s.n);
  for (let j = 0; j < k; j++)
    for (let i = 0; i < s.m; i++) {
      const a = s.sigma[j] * s.u[j * s.m + i];
      for (let c = 0; c < s.n; c++) out[i * s.n + c] += a * s.v[j * s.n + c];
    }
  return out;
}

/** Row-major m × n product of U·S (m × k, column-major) and V (n × k, column-major): U·S·Vh. */
export function usvh(us: Float64Array, v: Float64Array, m: number, n: number, k: number): Float64Array {
  const usRows = new Float64Array(m * k);
  for (let j = 0; j < k; j++) for (let i = 0; i < m; i++) usRows[i * k + j] = us[j * m + i];
  return matmul64(usRows, v, m, k, n); // V column-major (n × k) is Vh row-major (k × n)
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

/** Row-major product of a (m × p) and b (p × n), float64. */
export function matmul64(a: ArrayLike<number>, b: ArrayLike<number>, m: number, p: number, n: number): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let t = 0; t < p; t++) {
      const x = a[i * p + t];
      for (let c = 0; c < n; c++) out[i * n + c] += x * b[t * n + c];
    }
  return out;
}
