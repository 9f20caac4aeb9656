import { describe, expect, it } from "vitest";
import { Tensor } from "../lib/index.js";
import { colMajorOf } from "../lib/linalg/dense.js";
import { exactSvd, lowRankSvd, type TruncatedSvd } from "../lib/linalg/low-rank-svd.js";
import { randomizedSvd } from "../lib/linalg/randomized-svd.js";
import { knownSvd, maxAbsDiff, orthonormal, product, usvh, type KnownSvd } from "./helpers/svd-reference.js";

const EPS = Number.EPSILON;

/**
 * Δ = B·A with B (m × p), A (p × n) and B·A = U·diag(σ)·Vᵀ: B = U·diag(σ)·G and A = Gᵀ·Vᵀ for a random
 * orthogonal G, so neither factor is orthogonal itself. Extra columns of B repeat earlier ones with A's
 * rows negated, which leaves B·A unchanged and makes both factors rank-deficient.
 */
function factorsOf(s: KnownSvd, repeat = 0, seed = 9) {
  const r = s.sigma.length;
  const g = orthonormal(r, r, seed);
  const p = r + repeat;
  const B = new Float64Array(s.m * p), A = new Float64Array(p * s.n);
  for (let i = 0; i < s.m; i++)
    for (let c = 0; c < r; c++) {
      let acc = 0;
      for (let t = 0; t < r; t++) acc += s.u[t * s.m + i] * s.sigma[t] * g[c * r + t];
      B[i * p + c] = acc;
    }
  for (let c = 0; c < r; c++)
    for (let j = 0; j < s.n; j++) {
      let acc = 0;
      for (let t = 0; t < r; t++) acc += g[c * r + t] * s.v[t * s.n + j];
      A[c * s.n + j] = acc;
    }
  // Repeats: B gets column c again, A gets +row c and −row c split so the sum is unchanged: (½, ½).
  for (let e = 0; e < repeat; e++) {
    const c = e % r;
    for (let i = 0; i < s.m; i++) B[i * p + r + e] = B[i * p + c];
    for (let j = 0; j < s.n; j++) {
      A[(r + e) * s.n + j] = A[c * s.n + j] / 2;
      A[c * s.n + j] /= 2;
    }
  }
  return { B, A, p };
}

function factored(s: KnownSvd, k: number, repeat = 0): TruncatedSvd {
  const { B, A, p } = factorsOf(s, repeat);
  return lowRankSvd(colMajorOf(B, s.m, p), { m: s.n, n: p, data: A }, k);
}

/** The result against the construction: singular values, U·S·Vh, orthonormal V, the sign convention. */
function expectMatches(got: TruncatedSvd, s: KnownSvd, k: number, tol: number) {
  const kk = Math.min(k, s.sigma.length);
  expect(got.s.length).toBeGreaterThanOrEqual(kk);
  for (let j = 0; j < kk; j++) expect(Math.abs(got.s[j] - s.sigma[j])).toBeLessThanOrEqual(tol);
  for (let j = kk; j < got.s.length; j++) expect(got.s[j]).toBeLessThanOrEqual(tol); // beyond the rank: zero
  expect(maxAbsDiff(usvh(got.us.data, got.v.data, s.m, s.n, kk), product(s, kk))).toBeLessThanOrEqual(tol);
  for (let a = 0; a < got.v.n; a++)
    for (let b = 0; b <= a; b++) {
      let d = 0;
      for (let i = 0; i < s.n; i++) d += got.v.data[a * s.n + i] * got.v.data[b * s.n + i];
      expect(Math.abs(d - (a === b ? 1 : 0))).toBeLessThanOrEqual(s.n * 16 * EPS);
    }
  for (let j = 0; j < got.us.n; j++) {
    const col = got.us.data.subarray(j * s.m, (j + 1) * s.m);
    const big = col.reduce((best, x) => (Math.abs(x) > Math.abs(best) ? x : best), 0);
    expect(big).toBeGreaterThanOrEqual(0);
  }
}

// Householder QR and one-sided Jacobi are backward stable: each result is the exact SVD of a matrix within
// c·dim·ε·‖Δ‖ of the input (Weyl bounds the singular values by that too). c = 8 covers the constants of the
// two QRs, the core product and the lift; the construction itself rounds at the same scale.
const stableTol = (s: KnownSvd, p: number) => 8 * (s.m + s.n + p) * EPS * s.sigma[0];

describe("lowRankSvd: exact truncated SVD of a product of factors", () => {
  const cases: [string, number, number, number[], number, number][] = [
    ["odd sizes, tall", 37, 11, [5, 3, 2.5, 1, 0.25], 3, 0],
    ["odd sizes, wide", 9, 41, [2, 1.5, 1.25, 0.5], 4, 0],
    ["k above the rank", 13, 17, [3, 2, 1], 6, 0],
    ["ill-conditioned (σ from 1 to 1e-12)", 50, 40, [1, 1e-2, 1e-4, 1e-6, 1e-9, 1e-12], 6, 0],
    ["rank-deficient factors (repeated columns)", 33, 29, [4, 2, 1, 0.5], 3, 4],
    ["rank-deficient delta (zero singular values)", 21, 19, [1, 0.5, 0, 0], 4, 0],
  ];
  for (const [name, m, n, sigma, k, repeat] of cases)
    it(name, () => {
      const s = knownSvd(m, n, sigma, m * 31 + n);
      expectMatches(factored(s, k, repeat), s, k, stableTol(s, sigma.length + repeat));
    });

  it("an all-zero product gives zero factors", () => {
    const got = lowRankSvd({ m: 6, n: 2, data: new Float64Array(12) }, { m: 5, n: 2, data: new Float64Array(10) }, 2);
    expect(Array.from(got.s)).toEqual([0, 0]);
    expect(got.us.data.every((x) => x === 0)).toBe(true);
  });

  it("agrees with the SVD of the formed product (the full-matrix route)", () => {
    const s = knownSvd(24, 18, [3, 2, 1.5, 1, 0.7, 0.2], 5);
    const { B, A, p } = factorsOf(s, 2);
    const dense = new Float64Array(s.m * s.n);
    for (let i = 0; i < s.m; i++) for (let t = 0; t < p; t++) for (let j = 0; j < s.n; j++) dense[i * s.n + j] += B[i * p + t] * A[t * s.n + j];
    const f = lowRankSvd(colMajorOf(B, s.m, p), { m: s.n, n: p, data: A }, 4);
    const e = exactSvd(dense, s.m, s.n, 4);
    const tol = stableTol(s, p);
    expect(maxAbsDiff(f.s, e.s)).toBeLessThanOrEqual(tol);
    expect(maxAbsDiff(usvh(f.us.data, f.v.data, s.m, s.n, 4), usvh(e.us.data, e.v.data, s.m, s.n, 4))).toBeLessThanOrEqual(tol);
  });
});

describe("exactSvd of a dense matrix", () => {
  for (const [m, n] of [[23, 7], [7, 23], [16, 16]] as const)
    it(`${m} × ${n}, full rank and spread singular values`, () => {
      const sigma = Array.from({ length: Math.min(m, n) }, (_, i) => 10 ** (-i / 2));
      const s = knownSvd(m, n, sigma, m + 100 * n);
      expectMatches(exactSvd(product(s), m, n, 5), s, 5, stableTol(s, sigma.length));
    });
});

describe("randomizedSvd on an f32 matrix", () => {
  // ‖Δ − Δₖ‖₂ ≤ 1.05·σₖ₊₁ plus what f32 costs: Δ is rounded to f32 once (≤ √(mn)·2⁻²⁴·max|Δᵢⱼ| in ‖·‖₂) and each
  // native product rounds at c·√dim·2⁻²⁴·σ₁; 64·√(m + n)·2⁻²⁴·σ₁ bounds both with margin.
  const spectra: [string, (i: number) => number][] = [
    ["geometric 0.8ⁱ", (i) => 0.8 ** i],
    ["polynomial 1/(i+1)²", (i) => 1 / (i + 1) ** 2],
    ["a cliff after 20", (i) => (i < 20 ? 1 - i / 40 : 1e-3 * 0.9 ** i)],
  ];
  for (const [name, f] of spectra)
    for (const k of [8, 16])
      it(`${name}, k = ${k}: the error is within 1.05·σₖ₊₁`, () => {
        const m = 301, n = 203;
        const s = knownSvd(m, n, Array.from({ length: 120 }, (_, i) => f(i)), 77 + k);
        const dense = product(s);
        using t = Tensor.fromArray(dense, [m, n]);
        const deltaF32 = t.toFloat64Array();
        const got = randomizedSvd(t, k, { rng: { seed: 3, stream: 0 } });
        const residual = usvh(got.us.data, got.v.data, m, n, k).map((x, i) => deltaF32[i] - x);
        const err = exactSvd(residual, m, n, 1).s[0];
        const f32 = 64 * Math.sqrt(m + n) * 2 ** -24 * s.sigma[0];
        expect(err).toBeLessThanOrEqual(1.05 * s.sigma[k] + f32);
        for (let j = 0; j < k; j++) expect(Math.abs(got.s[j] - s.sigma[j])).toBeLessThanOrEqual(0.05 * s.sigma[k] + f32);
      });

  it("the same seed gives the same factors; a small matrix takes the exact route", () => {
    const s = knownSvd(40, 30, [1, 0.5, 0.25, 0.1], 4);
    using t = Tensor.fromArray(product(s), [40, 30]);
    const a = randomizedSvd(t, 2, { rng: { seed: 1, stream: 0 } });
    const b = randomizedSvd(t, 2, { rng: { seed: 1, stream: 0 } });
    expect(Array.from(a.us.data)).toEqual(Array.from(b.us.data));
    const small = randomizedSvd(t, 25, { rng: { seed: 1, stream: 0 } }); // 25 + 10 ≥ 30: exact
    expectMatches(small, s, 4, 64 * Math.sqrt(70) * 2 ** -24);
  });
});
