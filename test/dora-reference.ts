// Float64 references for DoRA (PEFT's dora.py / variants.py), on dense weights W (N, K) as (out, in), and the
// DoRA layers the tests build.
import { Conv1D, Linear, Linear8bitLt, LoraLinear, LoraLinear8bitLt, Tensor, int8Dequantize } from "../lib/index.js";
import { refLinear, values } from "./helpers/nn-reference.js";

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
  return refLinear({ data: x, rows: M, cols: K }, { data: W, rows: N, cols: K }, null);
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

export type Dense = Linear | Conv1D | Linear8bitLt;

export function dims(base: Dense): [number, number] {
  return base instanceof Conv1D ? [base.nx, base.nf] : [base.inFeatures, base.outFeatures];
}

/** The base weight as (N, K) float64 (Conv1D transposed, int8 dequantised). */
export function weightOf(base: Dense): Float64Array {
  const [K, N] = dims(base);
  if (base instanceof Linear8bitLt) {
    using w = int8Dequantize(base.weight, base.SCB);
    return w.toFloat64Array();
  }
  const w = base.weight.toFloat64Array();
  if (!(base instanceof Conv1D)) return w;
  const t = new Float64Array(N * K);
  for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) t[n * K + k] = w[k * N + n];
  return t;
}

/** Sets A, B and the magnitude to deterministic values. */
export function randomize(l: LoraLinear | LoraLinear8bitLt, name: string, seed: number, mag = true) {
  const { A, B } = l.loraFactors(name);
  A.copyFrom(Tensor.fromArray(values(A.numel, seed + 20), A.shape));
  B.copyFrom(Tensor.fromArray(values(B.numel, seed + 30).map((v) => v * 0.5), B.shape));
  const m = l.doraMagnitude(name);
  // Deterministic, and away from the norm so that c = m/‖…‖ ≠ 1 is exercised.
  if (m && mag) m.copyFrom(Tensor.fromArray(values(m.numel, seed + 40).map((v) => 1 + 0.5 * v), m.shape));
}

export function refAdapters(l: LoraLinear | LoraLinear8bitLt, names = l.activeAdapters): RefAdapter[] {
  return names.map((n) => {
    const { A, B } = l.loraFactors(n);
    const m = l.doraMagnitude(n);
    return { A: A.toFloat64Array(), B: B.toFloat64Array(), r: l.r[n], s: l.scaling[n], m: m ? m.toFloat64Array() : null };
  });
}

export function makeLayer(kind: "linear" | "conv1d" | "int8", K: number, N: number, r: number, seed: number, extra: { dropout?: number; rslora?: boolean } = {}) {
  let base: Dense;
  if (kind === "conv1d") base = new Conv1D(N, K, { seed });
  else {
    const lin = new Linear(K, N, { seed });
    lin.bias!.copyFrom(Tensor.fromArray(values(N, seed + 10), [N]));
    base = kind === "int8" ? Linear8bitLt.fromLinear(lin) : lin;
  }
  const opts = { r, loraAlpha: 2 * r + 1, useDora: true, initLoraWeights: false as const, loraDropout: extra.dropout, useRslora: extra.rslora };
  const l = kind === "int8" ? new LoraLinear8bitLt(base as Linear8bitLt, opts) : new LoraLinear(base as Linear | Conv1D, opts);
  randomize(l, "default", seed);
  return l;
}

