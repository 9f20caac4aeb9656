// Float64 references and comparison helpers for the numeric kernel tests.
import { expect } from "vitest";
import { Tensor, backend, type DType } from "../../lib/index.js";
import { mulberry32 } from "../../scripts/fuzz/rng.mjs";

/** Unit roundoff of each float dtype (half an ulp at 1): the relative error of one rounding. */
export const UNIT: Record<"f32" | "bf16" | "f16", number> = { f32: 2 ** -24, bf16: 2 ** -8, f16: 2 ** -11 };
export const FLOATS = ["f32", "bf16", "f16"] as const;
export type FloatDType = (typeof FLOATS)[number];
/** Absolute floor of one rounding into each dtype (subnormal spacing, with margin). */
export const ABS: Record<FloatDType, number> = { f32: 2 ** -126, bf16: 2 ** -126, f16: 2 ** -24 };

/**
 * Error bound of a value computed in f32 with relative error `rel` (relative to `mag`, the magnitude the
 * roundings act on; |ref| by default) and then rounded once into `dt`.
 */
export function tolIn(dt: FloatDType, ref: number, rel: number, mag = Math.abs(ref)): number {
  return rel * mag + UNIT[dt] * (Math.abs(ref) + rel * mag) + ABS[dt];
}

/** Odd sizes that divide no tile or block size, and empty. */
export const SIZES = [0, 1, 7, 17, 33, 127];

/** Every kernel path this CPU can run (the baseline build always; AVX2 and AVX-512 where present). */
export const ISAS = (["scalar", "avx2", "avx512"] as const).filter(
  (isa) => isa === "scalar" || backend.features.includes(isa === "avx2" ? "avx2" : "avx512f"),
);

/** Runs fn once per kernel path, restoring the active one afterwards. */
export function forEachIsa(fn: (isa: string) => void): void {
  const was = backend.isa;
  try {
    for (const isa of ISAS) {
      backend.setIsa(isa);
      fn(isa);
    }
  } finally {
    backend.setIsa(was);
  }
}

/** A seeded generator (mulberry32, the fuzzers' own), so failures reproduce. */
export const rng: (seed: number) => () => number = mulberry32;

export function uniform(n: number, lo: number, hi: number, seed: number): number[] {
  const r = rng(seed);
  return Array.from({ length: n }, () => lo + (hi - lo) * r());
}

/** A tensor of `dtype` and the exact values it holds (so references start from the same inputs). */
export function tensorOf(values: number[], shape: readonly number[], dtype: DType): { t: Tensor; v: Float64Array } {
  const t = Tensor.fromArray(values, shape, dtype);
  return { t, v: t.toFloat64Array() };
}

/** Rounds doubles through a dtype (the library's own round-to-nearest-even conversion). */
export function roundTo(values: ArrayLike<number>, dtype: DType): Float64Array {
  return Tensor.fromArray(Float64Array.from(values), [values.length], dtype).toFloat64Array();
}

/** erfc in double precision: the Maclaurin series of erf for |x| < 2, a continued fraction beyond. */
export function erfc(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x < 0) return 2 - erfc(-x);
  if (x < 2) {
    let term = x, sum = x;
    for (let n = 1; n < 80; n++) {
      term *= (-x * x) / n;
      sum += term / (2 * n + 1);
    }
    return 1 - (2 / Math.sqrt(Math.PI)) * sum;
  }
  if (x > 27) return 0;
  // erfc(x) = exp(-x²)/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))), evaluated from the tail.
  let f = x;
  for (let k = 200; k >= 1; k--) f = x + k / 2 / f;
  return Math.exp(-x * x) / Math.sqrt(Math.PI) / f;
}

/** Standard normal cdf and pdf. */
export const normCdf = (x: number) => 0.5 * erfc(-x / Math.SQRT2);
export const normPdf = (x: number) => Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI);

/** Central difference of f at x (h relative to |x|): error ~h² f''' + ulp(f)/h, about 1e-10 for smooth f. */
export function centralDiff(f: (x: number) => number, x: number, h = 1e-5 * Math.max(1, Math.abs(x))): number {
  return (f(x + h) - f(x - h)) / (2 * h);
}

/**
 * Checks an analytic gradient `got` of `loss` against central differences in about `samples` evenly spread
 * coordinates of `w` (the float64 weights `loss` reads, perturbed in place and restored): |got - fd| must
 * stay within atol + rtol·|fd|. Returns how many coordinates were checked.
 */
export function expectGradSampled(name: string, w: Float64Array, got: ArrayLike<number>, loss: () => number, opts: { h: number; atol: number; rtol: number; samples: number }): number {
  expect(got.length, `${name}: length`).toBe(w.length);
  let checked = 0;
  for (let i = 0; i < w.length; i += Math.max(1, Math.floor(w.length / opts.samples))) {
    const old = w[i];
    const fd = centralDiff((v) => ((w[i] = v), loss()), old, opts.h);
    w[i] = old;
    expect(Math.abs(got[i] - fd), `${name}[${i}]: ${got[i]} vs ${fd}`).toBeLessThan(opts.atol + opts.rtol * Math.abs(fd));
    checked++;
  }
  return checked;
}

/**
 * Gradient of a scalar function of many inputs by central differences (each coordinate perturbed alone).
 */
export function numericGrad(f: (v: Float64Array) => number, at: ArrayLike<number>, h = 1e-6): Float64Array {
  const v = Float64Array.from(at);
  const g = new Float64Array(v.length);
  for (let i = 0; i < v.length; i++) {
    const x = v[i], step = h * Math.max(1, Math.abs(x));
    v[i] = x + step;
    const up = f(v);
    v[i] = x - step;
    const down = f(v);
    v[i] = x;
    g[i] = (up - down) / (2 * step);
  }
  return g;
}

/**
 * Asserts |got[i] - want[i]| <= tol(i) for every i (NaN matches NaN; infinities must match exactly) and
 * reports the worst element.
 */
export function expectClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: (i: number) => number, what = ""): void {
  expect(got.length, `${what}: length`).toBe(want.length);
  let worst = -1, worstRatio = 1;
  for (let i = 0; i < want.length; i++) {
    const g = got[i], w = want[i];
    if (Number.isNaN(w) || !Number.isFinite(w)) {
      if (!Object.is(g, w) && !(Number.isNaN(g) && Number.isNaN(w))) {
        worst = i;
        worstRatio = Infinity;
        break;
      }
      continue;
    }
    const t = tol(i);
    const err = Math.abs(g - w);
    const ratio = Number.isNaN(g) ? Infinity : err === 0 ? 0 : err / t;
    if (!(ratio <= worstRatio)) (worst = i), (worstRatio = ratio);
  }
  if (worst >= 0)
    expect.fail(`${what}: element ${worst}: got ${got[worst]}, want ${want[worst]} (error ${Math.abs(got[worst] - want[worst])}, tolerance ${tol(worst)})`);
}

/** Bitwise equality of two float arrays (so thread-count and path comparisons are exact). */
export function expectSameBits(a: Float32Array | Float64Array, b: Float32Array | Float64Array, what = ""): void {
  expect(a.length, `${what}: length`).toBe(b.length);
  expect(Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength)), what).toBe(true);
}

/** Expects fn to throw an error of class `cls` with `code` and a message matching every pattern. */
export function expectError(fn: () => unknown, cls: new (...a: never[]) => Error, code: string, ...patterns: RegExp[]): void {
  let err: unknown = null;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${cls.name} ${code}`).toBeInstanceOf(cls);
  expect((err as { code?: string }).code).toBe(code);
  for (const p of patterns) expect((err as Error).message).toMatch(p);
}

// ---- Philox4x32-10 and the (seed, stream) key, as native/core/philox.h defines them ----

const M64 = (1n << 64n) - 1n;
const M32 = 0xffffffffn;

function philox(counter: bigint, k0: bigint, k1: bigint): bigint[] {
  let c0 = counter & M32, c1 = (counter >> 32n) & M32, c2 = 0n, c3 = 0n;
  for (let r = 0; r < 10; r++) {
    const p0 = 0xd2511f53n * c0, p1 = 0xcd9e8d57n * c2;
    const n0 = ((p1 >> 32n) ^ c1 ^ k0) & M32, n1 = p1 & M32;
    const n2 = ((p0 >> 32n) ^ c3 ^ k1) & M32, n3 = p0 & M32;
    (c0 = n0), (c1 = n1), (c2 = n2), (c3 = n3);
    k0 = (k0 + 0x9e3779b9n) & M32;
    k1 = (k1 + 0xbb67ae85n) & M32;
  }
  return [c0, c1, c2, c3];
}

/** The uniforms in (0, 1] of elements [0, n) for (seed, stream): element i from block i / 4, lane i % 4. */
export function philoxUniforms(n: number, seed: number, stream: number): Float64Array {
  const s = BigInt(seed), st = BigInt(stream);
  const mixed = (s ^ ((st * 0x9e3779b97f4a7c15n) & M64)) & M64;
  const k0 = (mixed & M32) ^ ((st >> 32n) & M32), k1 = ((mixed >> 32n) & M32) ^ (st & M32);
  const out = new Float64Array(n);
  for (let b = 0; b * 4 < n; b++) {
    const r = philox(BigInt(b), k0, k1);
    for (let j = 0; j < 4 && b * 4 + j < n; j++) out[b * 4 + j] = (Number(r[j] >> 8n) + 1) / 16777216;
  }
  return out;
}

/** Row-wise log-softmax in float64 (max-subtracted). */
export function logSoftmaxRef(x: ArrayLike<number>, rows: number, C: number): Float64Array {
  const y = new Float64Array(rows * C);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let c = 0; c < C; c++) m = Math.max(m, x[r * C + c]);
    let s = 0;
    for (let c = 0; c < C; c++) s += Math.exp(x[r * C + c] - m);
    for (let c = 0; c < C; c++) y[r * C + c] = x[r * C + c] - m - Math.log(s);
  }
  return y;
}
