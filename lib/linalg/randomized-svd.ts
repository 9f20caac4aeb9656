// Truncated SVD of a large f32 matrix by randomized subspace iteration (Halko, Martinsson & Tropp 2011,
// algorithm 4.4): the products with Δ, the only O(m·n) work, run as native f32 GEMMs; the thin
// orthonormalizations in between and the final small SVD run in float64.
import { Tensor } from "../tensor.js";
import { matmul } from "../ops.js";
import { householderQr, applyQ } from "./householder.js";
import { exactSvd, lowRankSvd, orient, type TruncatedSvd } from "./low-rank-svd.js";
import { axpy, type ColMat } from "./dense.js";

export interface RandomizedSvdOptions {
  /** Extra sample directions beyond k: the range found is that much wider than needed. */
  oversamples?: number;
  /** Power iterations: each sharpens the decay of the sampled spectrum by another factor σᵢ/σⱼ squared. */
  powerIterations?: number;
  /** The Philox (seed, stream) of the Gaussian test matrix. */
  rng: { seed: number; stream: number };
}

// Ten oversamples and two power iterations bring the spectral error within a few percent of σₖ₊₁ for
// spectra that decay (the tests check ≤ 1.05·σₖ₊₁); each further iteration costs two more passes over Δ.
const OVERSAMPLES = 10;
const POWER_ITERATIONS = 2;

/**
 * The leading k singular triplets of the f32 matrix delta (m × n). When k + oversamples reaches min(m, n)
 * sampling saves nothing, and the exact SVD runs instead.
 */
export function randomizedSvd(delta: Tensor, k: number, opts: RandomizedSvdOptions): TruncatedSvd {
  const [m, n] = delta.shape;
  const l = k + (opts.oversamples ?? OVERSAMPLES);
  if (l >= Math.min(m, n)) return exactSvd(delta.toFloat64Array(), m, n, k);
  // Row-major (l × dim) tensors hold the sampled vectors as rows: column-major dim × l matrices for the QR.
  using omega = Tensor.randn([l, n], { seed: opts.rng.seed, stream: opts.rng.stream });
  let q = orthonormalRows(matmul(omega, delta, { transB: true }), m, l); // Q ⊂ range(Δ·Ω)
  for (let it = 0; it < (opts.powerIterations ?? POWER_ITERATIONS); it++) {
    const p = orthonormalRows(consume(q, (t) => matmul(t, delta)), n, l); // range(Δᵀ·Q)
    q = orthonormalRows(consume(p, (t) => matmul(t, delta, { transB: true })), m, l); // range(Δ·P)
  }
  // Δ ≈ Q·(Qᵀ·Δ): the exact SVD of that product, Q taken as orthonormal (it is, to f32 rounding).
  using qt = q;
  using bt = matmul(qt, delta); // (Qᵀ·Δ) as l × n rows: (Qᵀ·Δ)ᵀ column-major
  const svd = lowRankSvd(l, { m: n, n: l, data: bt.toFloat64Array() }, k);
  const us = liftRows(qt, svd.us, m, l);
  orient(us, svd.v); // the convention holds for the vectors of Δ, not for their coordinates in Q
  return { us, v: svd.v, s: svd.s };
}

function consume(t: Tensor, f: (t: Tensor) => Tensor): Tensor {
  try {
    return f(t);
  } finally {
    t.dispose();
  }
}

/** An orthonormal basis of the rows of y (l × dim), as an f32 l × dim tensor; y is disposed. */
function orthonormalRows(y: Tensor, dim: number, l: number): Tensor {
  let data: Float64Array;
  try {
    data = y.toFloat64Array();
  } finally {
    y.dispose();
  }
  const qr = householderQr({ m: dim, n: l, data });
  const q = { m: dim, n: l, data: new Float64Array(dim * l) };
  for (let j = 0; j < l; j++) q.data[j * dim + j] = 1;
  applyQ(qr, q);
  return Tensor.fromArray(q.data, [l, dim]);
}

/** Q·X for Q given as the f32 rows of qt (l × m) and X column-major (l × k): an m × k column-major result. */
function liftRows(qt: Tensor, x: ColMat, m: number, l: number): ColMat {
  const q = qt.toFloat64Array();
  const out = new Float64Array(m * x.n);
  for (let j = 0; j < x.n; j++) for (let t = 0; t < l; t++) axpy(x.data[j * l + t], q, t * m, out, j * m, m);
  return { m, n: x.n, data: out };
}
