// Small dense float64 matrices stored column by column, and the two vector kernels every factorization here
// is made of. Columns are contiguous so that Householder and Jacobi updates run over adjacent memory.

/** An m × n matrix, column-major: entry (i, j) is data[j * m + i]. */
export interface ColMat {
  m: number;
  n: number;
  data: Float64Array;
}

/** Σ x[xo + i] · y[yo + i] for i < len. Four partial sums, so the loop is not bound by one add's latency. */
export function dot(x: Float64Array, xo: number, y: Float64Array, yo: number, len: number): number {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  let i = 0;
  for (; i + 3 < len; i += 4) {
    s0 += x[xo + i] * y[yo + i];
    s1 += x[xo + i + 1] * y[yo + i + 1];
    s2 += x[xo + i + 2] * y[yo + i + 2];
    s3 += x[xo + i + 3] * y[yo + i + 3];
  }
  for (; i < len; i++) s0 += x[xo + i] * y[yo + i];
  return s0 + s1 + (s2 + s3);
}

/** y[yo + i] += a · x[xo + i] for i < len. */
export function axpy(a: number, x: Float64Array, xo: number, y: Float64Array, yo: number, len: number): void {
  for (let i = 0; i < len; i++) y[yo + i] += a * x[xo + i];
}

/** The transpose of a row-major r × c array, i.e. the same matrix column-major (as float64). */
export function colMajorOf(rowMajor: ArrayLike<number>, r: number, c: number): ColMat {
  const out = new Float64Array(r * c);
  for (let i = 0; i < r; i++) {
    const ro = i * c;
    for (let j = 0; j < c; j++) out[j * r + i] = rowMajor[ro + j];
  }
  return { m: r, n: c, data: out };
}
