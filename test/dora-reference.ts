// Float64 references for DoRA (PEFT's dora.py / variants.py), on dense weights W (N, K) as (out, in).

export interface RefAdapter {
  A: Float64Array; // (r, K)
  B: Float64Array; // (N, r)
  r: number;
  s: number;
  /** The magnitude (N), or null for a plain LoRA adapter. */
  m: Float64Array | null;
  /** Dropout's multiplier per element of x (keep / (1 − p)), or null for none. */
  mask?: Float64Array | null;
  /** The norm to use (held fixed: PEFT detaches it); default computed from W, A, B. */
  n?: Float64Array;
}

/** ‖W_i + s·(B·A)_i‖ per output row i. */
export function refNorms(W: Float64Array, N: number, K: number, a: RefAdapter): Float64Array {
  const n = new Float64Array(N);
  for (let i = 0; i < N; i++) {
    let acc = 0;
    for (let k = 0; k < K; k++) {
      let d = 0;
      for (let j = 0; j < a.r; j++) d += a.B[i * a.r + j] * a.A[j * K + k];
      const v = W[i * K + k] + a.s * d;
      acc += v * v;
    }
    n[i] = Math.sqrt(acc);
  }
  return n;
}

/** x (M, K) through W (N, K): (M, N). */
function mm(x: Float64Array, M: number, K: number, W: Float64Array, N: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[m * K + k] * W[n * K + k];
      y[m * N + n] = s;
    }
  return y;
}

/** s·B·A·x per row (M, N). */
function loraTerm(x: Float64Array, M: number, K: number, a: RefAdapter, N: number): Float64Array {
  const T = mm(x, M, K, a.A, a.r);
  const u = mm(T, M, a.r, a.B, N);
  return u.map((v) => v * a.s);
}

/**
 * PEFT's forward over the adapters in order: LoRA q += u; DoRA without dropout q = c ⊙ (q + u); DoRA with
 * dropout q += (c − 1) ⊙ (xd·Wᵀ) + c ⊙ u; y = q + b. `base` replaces x·Wᵀ (an int8 base's own result).
 */
export function refDoraForward(
  x: Float64Array, M: number, K: number, W: Float64Array, N: number, b: Float64Array | null, adapters: RefAdapter[], base?: Float64Array,
): Float64Array {
  const q = base ? Float64Array.from(base) : mm(x, M, K, W, N);
  for (const a of adapters) {
    const xd = a.mask ? x.map((v, i) => v * a.mask![i]) : x;
    const u = loraTerm(xd, M, K, a, N);
    if (!a.m) {
      for (let i = 0; i < q.length; i++) q[i] += u[i];
      continue;
    }
    const n = a.n ?? refNorms(W, N, K, a);
    const c = Array.from({ length: N }, (_, i) => a.m![i] / n[i]);
    if (!a.mask) for (let i = 0; i < q.length; i++) q[i] = c[i % N] * (q[i] + u[i]);
    else {
      const zd = mm(xd, M, K, W, N);
      for (let i = 0; i < q.length; i++) q[i] += (c[i % N] - 1) * zd[i] + c[i % N] * u[i];
    }
  }
  if (b) for (let i = 0; i < q.length; i++) q[i] += b[i % N];
  return q;
}
