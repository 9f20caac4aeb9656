// The cross-backend tables' machinery (test/cross-backend*.test.ts): a row is an op × dtypes × shapes run on
// the cpu and on the cuda device with the same inputs, every output compared element by element within a
// bound derived from the arithmetic (0: the bytes must be equal).
import { afterAll, expect, it } from "vitest";
import { Tensor, backend, type Tensor as TensorT } from "../../lib/index.js";
import { ABS, UNIT, type FloatDType } from "./numeric.js";
import { values } from "./nn-reference.js";

export type Out = TensorT | number;
/** Bound on |cuda - cpu| for element i of output o (0: the bytes must be equal). */
export type Tol = (o: number, i: number, ref: Float64Array, inputs: Float64Array[]) => number;
export interface Row {
  op: string;
  dtypes: readonly FloatDType[];
  shapes: readonly (readonly number[])[];
  /** Inputs on the cpu for a dtype and shape (copied to the device for the cuda run). */
  inputs: (dt: FloatDType, shape: readonly number[]) => TensorT[];
  /** The op on inputs of one device; in-place ops return the tensors they changed. */
  run: (x: TensorT[], shape: readonly number[]) => Out[];
  tol: (dt: FloatDType, shape: readonly number[]) => Tol;
}

export const EXACT: Tol = () => 0;
export const f = (n: number, seed: number, dt: FloatDType, shape: readonly number[], scale = 1) =>
  Tensor.fromArray(values(n, seed).map((v) => v * scale), shape, dt);
export const ids = (n: number, vocab: number, seed: number, shape: readonly number[] = [n]) =>
  Tensor.fromArray(values(n, seed).map((v) => Math.floor(((v + 1) / 2) * vocab)), shape, "i64");
export const prod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
export const F32 = UNIT.f32;

// Σ_k |a(m,k)| |b(k,n)| for C = A·B with A [M,K] and B [K,N] given as accessors: the scale of a dot
// product's rounding error (each order of summation is within K·u of it).
export function absDot(M: number, N: number, Kd: number, a: (m: number, k: number) => number, b: (k: number, n: number) => number) {
  const out = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < Kd; k++) s += Math.abs(a(m, k) * b(k, n));
      out[m * N + n] = s;
    }
  return out;
}
// Two f32 results that differ by at most `err`, each rounded once into dt: at most err plus one ulp of dt
// (two unit roundoffs) apart, or the dtype's subnormal spacing near zero.
export const tolOut = (dt: FloatDType, ref: number, err: number) => err + 2 * UNIT[dt] * (Math.abs(ref) + err) + ABS[dt];
// Two f32 dot products of length K differ by at most 2·K·u·Σ|a||b| (plus the epilogue's few roundings on
// the bias, of size ≤ `extra`). Σ|a||b| is computed once per case, from the inputs.
export function dotTol(dt: FloatDType, Kd: number, extra: number, abs: (inputs: Float64Array[]) => Float64Array): Tol {
  let a: Float64Array | undefined;
  return (_o, i, ref, inputs) => {
    a ??= abs(inputs);
    return tolOut(dt, ref[i], 2 * (Kd + 4) * F32 * (a[i] + extra));
  };
}

/** Runs the row on both devices for one dtype and shape and compares every output. */
export function compare(row: Row, dt: FloatDType, shape: readonly number[]) {
  const cpuIn = row.inputs(dt, shape);
  const devIn = cpuIn.map((t) => t.to("cuda"));
  const refIn = cpuIn.map((t) => t.toFloat64Array());
  const want = row.run(cpuIn, shape);
  const got = row.run(devIn, shape);
  const tol = row.tol(dt, shape);
  const label = `${row.op} ${dt} [${shape.join(", ")}]`;
  expect(got.length).toBe(want.length);
  want.forEach((w, o) => {
    const g = got[o];
    if (typeof w === "number") {
      expect(typeof g, label).toBe("number");
      if (Number.isNaN(w)) expect(g, `${label} loss`).toBeNaN();
      else expect(Math.abs((g as number) - w), `${label} loss ${g} vs ${w}`).toBeLessThanOrEqual(tol(o, 0, Float64Array.of(w), refIn));
      return;
    }
    const gt = g as TensorT;
    expect(gt.device, label).toBe(devIn.length ? "cuda" : "cpu");
    expect(gt.dtype, label).toBe(w.dtype);
    expect(gt.shape, label).toEqual(w.shape);
    const host = gt.to("cpu");
    if (tol(o, 0, w.toFloat64Array(), refIn) === 0) {
      expect(Array.from(host.bytes()), `${label} output ${o} bytes`).toEqual(Array.from(w.bytes()));
      return;
    }
    const ref = w.toFloat64Array(), dev = host.toFloat64Array();
    for (let i = 0; i < ref.length; i++) {
      const t = tol(o, i, ref, refIn);
      const ok = Object.is(dev[i], ref[i]) || (Number.isNaN(ref[i]) ? Number.isNaN(dev[i]) : Math.abs(dev[i] - ref[i]) <= t);
      if (!ok) expect.fail(`${label} output ${o}[${i}]: cuda ${dev[i]} vs cpu ${ref[i]} (tolerance ${t})`);
    }
  });
}

/** One test per row of the table, each comparing every dtype and shape; the emulator's order is forward after. */
export function rowTests(table: readonly Row[]) {
  afterAll(() => {
    if (backend.cuda.emulated) backend.setCudaEmulationOrder("forward");
  });
  for (const row of table)
    it(row.op, () => {
      for (const dt of row.dtypes) for (const shape of row.shapes) compare(row, dt, shape);
    });
}

/**
 * A test (emulated device only) running `cases` again in the emulator's reverse and random thread orders: a
 * correct kernel gives the same results whichever order threads and blocks run in.
 */
export function orderTest(name: string, cases: () => void) {
  it.runIf(backend.cuda.emulated)(name, () => {
    for (const order of ["reverse", "random"] as const) {
      backend.setCudaEmulationOrder(order);
      cases();
    }
    backend.setCudaEmulationOrder("forward");
  });
}
