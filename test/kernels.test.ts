// The elementwise / NN kernels of lib/functional.ts against float64 references, finite differences,
// thread-count determinism and every bad input.
import { afterEach, describe, expect, it } from "vitest";
import { PeftError, Tensor, backend } from "../lib/index.js";
import * as F from "../lib/kernels.js";
import { logSoftmaxRef,
  FLOATS, ISAS, SIZES, UNIT, centralDiff, forEachIsa, expectClose, expectError, expectSameBits, normCdf, normPdf, numericGrad,
  philoxUniforms, roundTo, tensorOf, tolIn, uniform,
} from "./helpers/numeric.js";

// The device checks need a cuda device: the emulated one unless a real GPU is asked for. The addon decides
// what "cuda" is at its first use, which comes after this line.
if (process.env.NODE_PEFT_CUDA === undefined && !process.env.NODE_PEFT_CUDA_REAL) process.env.NODE_PEFT_CUDA = "emu";

const E = UNIT.f32;
const threads = backend.threads;
afterEach(() => backend.setNumThreads(threads));

// ---- activation references in float64 ----
const K = Math.sqrt(2 / Math.PI), KAPPA = 0.044715;
const sigmoid = (z: number) => (z >= 0 ? 1 / (1 + Math.exp(-z)) : Math.exp(z) / (1 + Math.exp(z)));
const tanhU = (x: number) => K * (x + KAPPA * x * x * x);
const ACTS = {
  relu: {
    f: (x: number) => (x < 0 ? 0 : x),
    df: (x: number) => (x > 0 ? 1 : 0),
    // exact: max(x, 0) involves no rounding
    rel: () => 0,
    mag: (x: number) => (x > 0 ? 1 : 0),
  },
  gelu: {
    f: (x: number) => x * normCdf(x),
    df: (x: number) => normCdf(x) + x * normPdf(x),
    // evaluated in double and rounded once: about half an f32 ulp
    rel: () => 3 * E,
    mag: (x: number) => normCdf(x) + Math.abs(x) * normPdf(x),
  },
  gelu_tanh: {
    // 0.5 x (1 + tanh u) written as x·sigmoid(2u) (the same function; checked against Math.tanh below)
    f: (x: number) => x * sigmoid(2 * tanhU(x)),
    df: (x: number) => {
      const s = sigmoid(2 * tanhU(x)), c = sigmoid(-2 * tanhU(x));
      return s + 2 * x * s * c * K * (1 + 3 * KAPPA * x * x);
    },
    // u carries a few roundings and e^{-2|u|} scales them by 2|u|
    rel: (x: number) => (8 + 8 * Math.abs(tanhU(x))) * E,
    mag: (x: number) => {
      const s = sigmoid(2 * tanhU(x)), c = sigmoid(-2 * tanhU(x));
      return s + Math.abs(2 * x * s * c * K * (1 + 3 * KAPPA * x * x));
    },
  },
  silu: {
    f: (x: number) => x * sigmoid(x),
    df: (x: number) => sigmoid(x) * (1 + x * sigmoid(-x)),
    // e^{-|x|} (1 ulp), 1 + e, the division and the products: a few roundings, independent of x
    rel: () => 8 * E,
    mag: (x: number) => sigmoid(x) * (1 + Math.abs(x * sigmoid(-x))),
  },
} as const;
const KINDS = Object.keys(ACTS) as F.Activation[];

describe("activation", () => {
  it("the float64 references are the PyTorch formulas", () => {
    for (const x of uniform(200, -6, 6, 1)) {
      expect(ACTS.gelu_tanh.f(x)).toBeCloseTo(0.5 * x * (1 + Math.tanh(tanhU(x))), 14);
      expect(ACTS.silu.f(x)).toBeCloseTo(x / (1 + Math.exp(-x)), 14);
    }
    // GELU(1) = Φ(1) = 0.8413447460685429, GELU(-1) = -0.15865525393145707
    expect(ACTS.gelu.f(1)).toBeCloseTo(0.8413447460685429, 15);
    expect(ACTS.gelu.f(-1)).toBeCloseTo(-0.15865525393145707, 15);
    // and the analytic derivatives are the derivatives of the forward references
    for (const kind of KINDS)
      for (const x of uniform(100, -9, 9, 2)) {
        const a = ACTS[kind];
        if (Math.abs(x) < 1e-3) continue;
        expect(Math.abs(centralDiff(a.f, x) - a.df(x))).toBeLessThan(1e-8 * (1 + a.mag(x)));
      }
  });

  for (const kind of KINDS)
    for (const dt of FLOATS)
      it(`${kind} forward and backward, ${dt}, odd sizes and empty, every kernel path (${ISAS.join(", ")})`, () => forEachIsa((isa) => {
        const a = ACTS[kind];
        for (const n of [...SIZES, 1000]) {
          const { t: x, v: xv } = tensorOf(uniform(n, -8, 8, n + 10), [n], dt);
          const { t: dy, v: dyv } = tensorOf(uniform(n, -2, 2, n + 20), [n], dt);
          const y = F.activation(kind, x);
          expect(y.dtype).toBe(dt);
          expect(y.shape).toEqual([n]);
          const want = Array.from(xv, a.f);
          expectClose(y.toFloat64Array(), want, (i) => tolIn(dt, want[i], a.rel(xv[i])), `${kind} ${dt} n=${n} ${isa}`);
          const dx = F.activationBackward(kind, x, dy);
          expect(dx.dtype).toBe(dt);
          const dwant = Array.from(xv, (xi, i) => a.df(xi) * dyv[i]);
          const dtol = (i: number) => tolIn(dt, dwant[i], a.rel(xv[i]) + 2 * E, a.mag(xv[i]) * Math.abs(dyv[i]));
          expectClose(dx.toFloat64Array(), dwant, dtol, `${kind}' ${dt} n=${n} ${isa}`);
          // and against central differences of the float64 forward, independently of df
          const fd = Array.from(xv, (xi, i) => centralDiff(a.f, xi) * dyv[i]);
          expectClose(dx.toFloat64Array(), fd, (i) => dtol(i) + 1e-8 * Math.abs(dyv[i]) * (1 + a.mag(xv[i])), `${kind}' vs FD ${isa}`);
        }
      }));

  it("keeps accuracy in the tails, at zeros and for special values (f32), every kernel path", () => forEachIsa((isa) => {
    const xs = [0, -0, 1e-30, -1e-30, 1e-7, -1e-7, 5, -5, 10, -10, 13, -13, 30, -30, 88, -88, -0.7517915, -1.2784645, 3.4e38, -3.4e38];
    const { t: x, v: xv } = tensorOf(xs, [xs.length], "f32");
    const dy = Tensor.fromArray(xs.map(() => 1), [xs.length]);
    for (const kind of KINDS) {
      const a = ACTS[kind];
      const y = F.activation(kind, x).toFloat64Array();
      const want = Array.from(xv, (v) => (Math.abs(v) > 1e30 ? (kind === "relu" || v > 0 ? Math.max(v, 0) : -0) : a.f(v)));
      expectClose(y, want, (i) => (Math.abs(xv[i]) > 1e30 ? 0 : tolIn("f32", want[i], a.rel(xv[i]))), `${kind} specials ${isa}`);
      const dx = F.activationBackward(kind, x, dy).toFloat64Array();
      for (let i = 0; i < xs.length; i++) {
        if (Math.abs(xv[i]) > 1e30) continue;
        const w = a.df(xv[i]);
        expect(Math.abs(dx[i] - w), `${kind}'(${xv[i]}) ${isa}`).toBeLessThanOrEqual(tolIn("f32", w, a.rel(xv[i]) + 2 * E, a.mag(xv[i])));
      }
    }
    // GELU in the lower tail keeps full relative accuracy (1 + erf would have cancelled to 0 or noise)
    const g = F.activation("gelu", Tensor.fromArray([-10, -13], [2])).toFloat64Array();
    expect(Math.abs(g[0] / ACTS.gelu.f(-10) - 1)).toBeLessThan(2 * E);
    expect(Math.abs(g[1] / ACTS.gelu.f(-13) - 1)).toBeLessThan(2 * E);
    // NaN propagates
    for (const kind of KINDS) expect(F.activation(kind, Tensor.fromArray([NaN], [1])).toArray()[0], `${kind} ${isa}`).toBeNaN();
    for (const kind of KINDS) expect(F.activationBackward(kind, Tensor.fromArray([NaN], [1]), Tensor.fromArray([1], [1])).toArray()[0], `${kind}' ${isa}`).toBe(kind === "relu" ? 0 : NaN);
  }));

  it("keeps the input shape and leaves the input untouched", () => {
    const x = Tensor.randn([3, 5, 7], { seed: 3 });
    const before = x.toFloat32Array();
    const y = F.activation("silu", x);
    expect(y.shape).toEqual([3, 5, 7]);
    expectSameBits(x.toFloat32Array(), before, "input");
    expect(F.activationBackward("silu", x, y).shape).toEqual([3, 5, 7]);
  });

  it("the gradient comes in dy's dtype", () => {
    const x = Tensor.randn([17], { seed: 4, dtype: "bf16" });
    const dy = Tensor.randn([17], { seed: 5 });
    const dx = F.activationBackward("gelu", x, dy);
    expect(dx.dtype).toBe("f32");
    const xv = x.toFloat64Array(), dyv = dy.toFloat64Array();
    const want = Array.from(xv, (v, i) => ACTS.gelu.df(v) * dyv[i]);
    expectClose(dx.toFloat64Array(), want, (i) => tolIn("f32", want[i], ACTS.gelu.rel(xv[i]) + 2 * E, ACTS.gelu.mag(xv[i]) * Math.abs(dyv[i])));
  });

  it("rejects bad input", () => {
    const x = Tensor.zeros([3]);
    expectError(() => F.activation("tanh" as F.Activation, x), TypeError, "ERR_INVALID_ARG_TYPE", /activation: kind must be/, /"tanh"/);
    expectError(() => F.activation(1 as unknown as F.Activation, x), TypeError, "ERR_INVALID_ARG_TYPE", /activation: kind/);
    expectError(() => F.activation("relu", [1, 2] as unknown as Tensor), TypeError, "ERR_INVALID_ARG_TYPE", /activation: x must be a Tensor/);
    expectError(() => F.activation("relu", Tensor.zeros([3], { dtype: "i32" })), PeftError, "ERR_DTYPE", /activation: x must be f32, f16 or bf16, got i32/);
    expectError(() => F.activationBackward("relu", x, Tensor.zeros([4])), PeftError, "ERR_SHAPE", /activationBackward: dy has shape \[4\] but x has shape \[3\]/);
    expectError(() => F.activationBackward("gelu", x, Tensor.zeros([3], { dtype: "i8" })), PeftError, "ERR_DTYPE", /activationBackward: dy/);
    expectError(() => F.activationBackward("gelu", x, null as unknown as Tensor), TypeError, "ERR_INVALID_ARG_TYPE", /activationBackward: dy must be a Tensor/);
    const d = Tensor.zeros([3]);
    d.dispose();
    expectError(() => F.activation("relu", d), PeftError, "ERR_DISPOSED", /activation: x has been disposed/);
  });
});

// ---- log-softmax ----
function rowMaxAbs(x: ArrayLike<number>, C: number, i: number): number {
  const r = Math.floor(i / C);
  let m = 0;
  for (let c = 0; c < C; c++) m = Math.max(m, Math.abs(x[r * C + c]));
  return m;
}

describe("logSoftmax", () => {
  const shapes = [[1], [7], [127], [0], [1, 1], [7, 17], [33, 7], [3, 1000], [2, 3, 17], [0, 5], [3, 0]];
  for (const dt of FLOATS)
    it(`matches the float64 reference, ${dt}, every kernel path`, () => forEachIsa((isa) => {
      for (const shape of shapes) {
        const n = shape.reduce((a, b) => a * b, 1), C = shape[shape.length - 1], rows = C ? n / C : 0;
        const { t: x, v: xv } = tensorOf(uniform(n, -6, 6, n + C), shape, dt);
        const y = F.logSoftmax(x);
        expect(y.dtype).toBe(dt);
        expect(y.shape).toEqual(shape);
        const want = logSoftmaxRef(xv, rows, C);
        // the value depends on every input of its row: condition ~ |y| + 2 max|x|
        expectClose(y.toFloat64Array(), want, (i) => tolIn(dt, want[i], 8 * E, Math.abs(want[i]) + 2 * rowMaxAbs(xv, C, i)), `${dt} ${shape} ${isa}`);
      }
    }));

  it("is stable for large logits (max-subtracted) and exact-ish for a large common offset", () => {
    const { t: x, v: xv } = tensorOf([1000, 1001, 1002, -1000, 88, 89], [2, 3], "f32");
    const y = F.logSoftmax(x).toFloat64Array();
    expect(y.every(Number.isFinite)).toBe(true);
    const want = logSoftmaxRef(xv, 2, 3);
    expectClose(y, want, (i) => 8 * E * (Math.abs(want[i]) + 2 * rowMaxAbs(xv, 3, i)));
    // a row of -inf with one finite value: that value gets log-prob 0, the others -inf
    expect(F.logSoftmax(Tensor.fromArray([-Infinity, 3, -Infinity], [3])).toArray()).toEqual([-Infinity, 0, -Infinity]);
  });

  for (const dt of FLOATS)
    it(`backward from the output matches the analytic reference and finite differences, ${dt}, every kernel path`, () => forEachIsa((isa) => {
      for (const [rows, C] of [[1, 1], [1, 7], [3, 17], [5, 33], [2, 127], [0, 3]]) {
        const { t: x, v: xv } = tensorOf(uniform(rows * C, -4, 4, rows * 31 + C), [rows, C], dt);
        const { t: dy, v: dyv } = tensorOf(uniform(rows * C, -1, 1, rows * 37 + C), [rows, C], dt);
        const y = F.logSoftmax(x);
        const yv = y.toFloat64Array();
        const dx = F.logSoftmaxBackward(y, dy);
        expect(dx.dtype).toBe(dt);
        // analytic, from the y it was given
        const want = new Float64Array(rows * C), mag = new Float64Array(rows * C);
        for (let r = 0; r < rows; r++) {
          let s = 0, sa = 0;
          for (let c = 0; c < C; c++) (s += dyv[r * C + c]), (sa += Math.abs(dyv[r * C + c]));
          for (let c = 0; c < C; c++) {
            want[r * C + c] = dyv[r * C + c] - Math.exp(yv[r * C + c]) * s;
            mag[r * C + c] = Math.abs(dyv[r * C + c]) + Math.exp(yv[r * C + c]) * sa;
          }
        }
        expectClose(dx.toFloat64Array(), want, (i) => tolIn(dt, want[i], 8 * E, mag[i]), `analytic ${dt} ${rows}x${C}`);
        // central differences of L(x) = sum(dy * logSoftmax(x)) in float64 (y itself carries the forward's error)
        if (rows * C <= 200) {
          const fd = numericGrad((v) => logSoftmaxRef(v, rows, C).reduce((a, yi, i) => a + yi * dyv[i], 0), xv);
          const yErr = (i: number) => 8 * E * (Math.abs(yv[i]) + 2 * rowMaxAbs(xv, C, i)) + UNIT[dt] * Math.abs(yv[i]);
          expectClose(dx.toFloat64Array(), fd, (i) => tolIn(dt, fd[i], 8 * E, mag[i]) + mag[i] * 2 * yErr(i) + 1e-8, `FD ${dt} ${rows}x${C} ${isa}`);
        }
      }
    }));

  it("is the same for any thread count", () => {
    const x = Tensor.randn([300, 257], { seed: 8 });
    backend.setNumThreads(1);
    const a = F.logSoftmax(x), da = F.logSoftmaxBackward(a, x);
    backend.setNumThreads(2);
    const b = F.logSoftmax(x), db = F.logSoftmaxBackward(b, x);
    expectSameBits(a.toFloat32Array(), b.toFloat32Array(), "forward");
    expectSameBits(da.toFloat32Array(), db.toFloat32Array(), "backward");
  });

  it("rejects bad input", () => {
    expectError(() => F.logSoftmax(Tensor.zeros([], {})), PeftError, "ERR_SHAPE", /logSoftmax: x must have 1 to 16 dimensions, got shape \[\]/);
    expectError(() => F.logSoftmax(Tensor.zeros([3], { dtype: "i64" })), PeftError, "ERR_DTYPE", /logSoftmax: x must be f32/);
    expectError(() => F.logSoftmax({} as Tensor), TypeError, "ERR_INVALID_ARG_TYPE", /logSoftmax: x must be a Tensor/);
    expectError(() => F.logSoftmaxBackward(Tensor.zeros([2, 3]), Tensor.zeros([3, 2])), PeftError, "ERR_SHAPE",
      /logSoftmaxBackward: dy has shape \[3, 2\] but y has shape \[2, 3\]/);
    expectError(() => F.logSoftmaxBackward(Tensor.zeros([2, 3]), Tensor.zeros([2, 3], { dtype: "u8" })), PeftError, "ERR_DTYPE", /logSoftmaxBackward: dy/);
  });
});

// ---- dropout ----
describe("dropout", () => {
  const scaleOf = (p: number) => Math.fround(1 / (1 - p));

  it("the mask is keep / (1 - p) with keep = (u >= p), u the Philox(seed, stream) uniform of each element, every kernel path", () => forEachIsa((isa) => {
    for (const [n, p, seed, stream] of [[127, 0.3, 7, 0], [33, 0.5, 0, 5], [17, 0.9, 123456789, 2 ** 40 + 3], [1, 0.1, 1, 1], [0, 0.5, 1, 1], [1037, 0.2, 3, 3]]) {
      const u = philoxUniforms(n, seed, stream);
      const want = Array.from(u, (ui) => (ui >= p ? scaleOf(p) : 0));
      const mask = F.dropoutMask([n], p, seed, stream);
      expect(mask.dtype).toBe("f32");
      expect(mask.toArray(), `${isa} n=${n}`).toEqual(want);
      // and dropout multiplies by exactly that mask
      const x = Tensor.fromArray(uniform(n, -2, 2, n), [n]);
      expect(F.dropout(x, p, seed, stream).toArray(), isa).toEqual(F.mul(x, mask).toArray());
    }
  }));

  it("dropout(x) is x * mask for every dtype, computed once in f32", () => {
    for (const dt of FLOATS)
      for (const n of SIZES) {
        const { t: x, v: xv } = tensorOf(uniform(n, -3, 3, n), [n], dt);
        const y = F.dropout(x, 0.25, 11, 3);
        expect(y.dtype).toBe(dt);
        const m = F.dropoutMask([n], 0.25, 11, 3).toFloat64Array();
        const want = roundTo(Array.from(xv, (v, i) => Math.fround(v * m[i])), dt);
        expect(Array.from(y.toFloat64Array())).toEqual(Array.from(want));
        expect(Array.from(F.mul(x, F.dropoutMask([n], 0.25, 11, 3)).toFloat64Array())).toEqual(Array.from(want));
      }
  });

  it("applied to dy with the same (seed, stream) is the backward (finite differences of the float64 forward)", () => {
    const n = 33, p = 0.4;
    const { t: x, v: xv } = tensorOf(uniform(n, -1, 1, 5), [n], "f32");
    const { t: dy, v: dyv } = tensorOf(uniform(n, -1, 1, 6), [n], "f32");
    const u = philoxUniforms(n, 9, 4);
    const forward = (v: Float64Array) => v.reduce((a, vi, i) => a + dyv[i] * vi * (u[i] >= p ? 1 / (1 - p) : 0), 0);
    const fd = numericGrad(forward, xv);
    const dx = F.dropout(dy, p, 9, 4).toFloat64Array();
    expectClose(dx, fd, (i) => 1e-9 + 2 * E * Math.abs(fd[i]), "dropout backward");
    expect(F.dropout(x, p, 9, 4).shape).toEqual([n]);
  });

  it("does not depend on the thread count, the shape or the length drawn (counter = element index)", () => {
    const n = 1 << 18;
    const x = Tensor.randn([n], { seed: 1, dtype: "bf16" });
    backend.setNumThreads(1);
    const a = F.dropout(x, 0.1, 3, 9).view() as Uint16Array;
    const ma = F.dropoutMask([n], 0.1, 3, 9).toFloat32Array();
    backend.setNumThreads(2);
    const b = F.dropout(x, 0.1, 3, 9).view() as Uint16Array;
    const mb = F.dropoutMask([n], 0.1, 3, 9).toFloat32Array();
    expect(Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength))).toBe(true);
    expectSameBits(ma, mb, "mask");
    expect(F.dropoutMask([3, 5], 0.5, 2, 2).toArray()).toEqual(F.dropoutMask([15], 0.5, 2, 2).toArray());
    expect(F.dropoutMask([7], 0.5, 2, 2).toArray()).toEqual(F.dropoutMask([33], 0.5, 2, 2).toArray().slice(0, 7));
  });

  it("mask statistics: kept fraction 1 - p, mean 1, different streams and seeds independent", () => {
    const n = 1 << 20;
    for (const p of [0.1, 0.5, 0.9]) {
      const m = F.dropoutMask([n], p, 42, 7).toFloat64Array();
      let kept = 0, sum = 0;
      for (const v of m) (kept += v !== 0 ? 1 : 0), (sum += v);
      const sd = Math.sqrt(p * (1 - p) / n);
      expect(Math.abs(kept / n - (1 - p))).toBeLessThan(5 * sd);
      expect(Math.abs(sum / n - 1)).toBeLessThan((5 * sd) / (1 - p));
      expect(new Set(m).size).toBe(2);
    }
    const a = F.dropoutMask([4096], 0.5, 1, 1).toFloat64Array(), b = F.dropoutMask([4096], 0.5, 1, 2).toFloat64Array();
    const c = F.dropoutMask([4096], 0.5, 2, 1).toFloat64Array();
    const agree = (x: Float64Array, y: Float64Array) => x.reduce((s, v, i) => s + (v === y[i] ? 1 : 0), 0) / x.length;
    // independent masks agree on about half the elements (sd 0.008)
    expect(Math.abs(agree(a, b) - 0.5)).toBeLessThan(0.05);
    expect(Math.abs(agree(a, c) - 0.5)).toBeLessThan(0.05);
  });

  it("p == 0 returns a copy; NaN and inf propagate through dropped elements like x * 0", () => {
    const x = Tensor.fromArray([1, -2, 3.5], [3], "f16");
    const y = F.dropout(x, 0, 1, 1);
    expect(y.sharesStorage(x)).toBe(false);
    expect(y.dtype).toBe("f16");
    expect(y.toArray()).toEqual([1, -2, 3.5]);
    const m = F.dropoutMask([64], 0.5, 5, 5).toFloat64Array();
    const z = F.dropout(Tensor.fromArray(new Array(64).fill(Infinity), [64]), 0.5, 5, 5).toFloat64Array();
    for (let i = 0; i < 64; i++) expect(z[i]).toBe(m[i] === 0 ? NaN : Infinity);
  });

  it("rejects bad input", () => {
    const x = Tensor.zeros([4]);
    for (const p of [1, -0.1, 1.5, NaN, Infinity])
      expectError(() => F.dropout(x, p, 1, 1), RangeError, "ERR_OUT_OF_RANGE", /dropout: p must be in \[0, 1\)/);
    expectError(() => F.dropoutMask([4], 1, 1, 1), RangeError, "ERR_OUT_OF_RANGE", /dropoutMask: p must be in \[0, 1\)/);
    expectError(() => F.dropout(x, "0.5" as unknown as number, 1, 1), TypeError, "ERR_INVALID_ARG_TYPE", /dropout: p must be a number/);
    expectError(() => F.dropout(x, 0.5, -1, 1), RangeError, "ERR_OUT_OF_RANGE", /dropout: seed must be an integer/);
    expectError(() => F.dropout(x, 0.5, 1, 1.5), RangeError, "ERR_OUT_OF_RANGE", /dropout: stream must be an integer/);
    expectError(() => F.dropout(x, 0.5, 2 ** 53, 1), RangeError, "ERR_OUT_OF_RANGE", /dropout: seed/);
    expectError(() => F.dropout(Tensor.zeros([4], { dtype: "i32" }), 0.5, 1, 1), PeftError, "ERR_DTYPE", /dropout: x must be f32/);
    expectError(() => F.dropout(undefined as unknown as Tensor, 0.5, 1, 1), TypeError, "ERR_INVALID_ARG_TYPE", /dropout: x must be a Tensor/);
    expectError(() => F.dropoutMask([-1], 0.5, 1, 1), RangeError, "ERR_OUT_OF_RANGE", /dropoutMask: shape\[0\]/);
    expectError(() => F.dropoutMask("4" as unknown as number[], 0.5, 1, 1), TypeError, "ERR_INVALID_ARG_TYPE", /dropoutMask: shape must be an array/);
  });
});

// ---- embedding ----
describe("embedding", () => {
  for (const dt of FLOATS)
    for (const idt of ["i32", "i64"] as const)
      it(`forward copies rows exactly, ${dt} weight, ${idt} ids of any shape`, () => {
        for (const [V, D] of [[1, 1], [7, 17], [33, 7], [127, 33]]) {
          const w = Tensor.randn([V, D], { seed: V * D, dtype: dt });
          const wv = w.toFloat64Array();
          for (const shape of [[5], [2, 3], [], [0], [4, 0, 2]]) {
            const n = shape.reduce((a, b) => a * b, 1);
            const idv = uniform(n, 0, V, n + V).map(Math.floor);
            const ids = Tensor.fromArray(idv, shape, idt);
            const y = F.embedding(ids, w);
            expect(y.dtype).toBe(dt);
            expect(y.shape).toEqual([...shape, D]);
            const want = idv.flatMap((id) => Array.from(wv.subarray(id * D, (id + 1) * D)));
            expect(Array.from(y.toFloat64Array())).toEqual(want);
          }
        }
      });

  for (const dt of FLOATS)
    it(`backward accumulates dy rows into dW (analytic and finite differences), ${dt}`, () => {
      for (const [V, D, n] of [[1, 1, 1], [7, 17, 33], [33, 7, 127], [5, 3, 0], [127, 33, 17]]) {
        const idv = uniform(n, 0, V, V + n).map(Math.floor);
        if (n > 3) idv[1] = idv[2] = idv[0]; // repeated ids accumulate
        const ids = Tensor.fromArray(idv, [n], "i64");
        const { t: dy, v: dyv } = tensorOf(uniform(n * D, -1, 1, n), [n, D], dt);
        const { t: dW, v: w0 } = tensorOf(uniform(V * D, -1, 1, V), [V, D], dt);
        const version = dW.version;
        F.embeddingBackward(ids, dy, dW);
        expect(dW.version).toBeGreaterThan(version);
        const want = Float64Array.from(w0), mag = Float64Array.from(w0, Math.abs), cnt = new Float64Array(V * D);
        idv.forEach((id, i) => {
          for (let d = 0; d < D; d++) (want[id * D + d] += dyv[i * D + d]), (mag[id * D + d] += Math.abs(dyv[i * D + d])), cnt[id * D + d]++;
        });
        // f32 sums of cnt + 1 terms, rounded once into dW's dtype
        const tol = (i: number) => tolIn(dt, want[i], (cnt[i] + 1) * E, mag[i]);
        expectClose(dW.toFloat64Array(), want, tol, `${dt} V=${V} D=${D} n=${n}`);
        // d/dW of sum(dy * embedding(ids, W)) by central differences in float64 (linear: exact up to rounding)
        if (V * D <= 300) {
          const fd = numericGrad((wv) => idv.reduce((a, id, i) => {
            for (let d = 0; d < D; d++) a += dyv[i * D + d] * wv[id * D + d];
            return a;
          }, 0), new Float64Array(V * D));
          expectClose(dW.toFloat64Array(), Array.from(fd, (g, i) => g + w0[i]), (i) => tol(i) + 1e-9, "FD");
        }
      }
    });

  it("backward is the same for any thread count (rows partitioned by destination)", () => {
    const n = 8192, V = 17, D = 33;
    const ids = Tensor.fromArray(uniform(n, 0, V, 3).map(Math.floor), [n], "i32");
    const dy = Tensor.randn([n, D], { seed: 2 });
    const run = (t: number) => {
      backend.setNumThreads(t);
      const dW = Tensor.zeros([V, D]);
      F.embeddingBackward(ids, dy, dW);
      return dW.toFloat32Array();
    };
    expectSameBits(run(1), run(2), "dW");
  });

  it("an id outside [0, V) is a RangeError naming it and V, raised before anything is written", () => {
    const w = Tensor.randn([5, 3], { seed: 1 });
    for (const [bad, dt] of [[5, "i32"], [-1, "i64"], [2 ** 40, "i64"]] as const) {
      const ids = Tensor.fromArray([0, 4, bad, 1], [4], dt);
      expectError(() => F.embedding(ids, w), RangeError, "ERR_OUT_OF_RANGE", new RegExp(`embedding: ids\\[2\\] = ${bad} is out of range for 5 embeddings`));
      const dW = Tensor.fromArray(uniform(15, -1, 1, 2), [5, 3]);
      const before = dW.toFloat32Array(), version = dW.version;
      expectError(() => F.embeddingBackward(ids, Tensor.zeros([4, 3]), dW), RangeError, "ERR_OUT_OF_RANGE",
        new RegExp(`embeddingBackward: ids\\[2\\] = ${bad} is out of range for 5 embeddings`));
      expectSameBits(dW.toFloat32Array(), before, "dW untouched");
      expect(dW.version).toBe(version);
    }
  });

  it("rejects bad input", () => {
    const w = Tensor.zeros([5, 3]), ids = Tensor.fromArray([1, 2], [2], "i32");
    expectError(() => F.embedding(Tensor.fromArray([1, 2], [2]), w), PeftError, "ERR_DTYPE", /embedding: ids must be i32 or i64, got f32/);
    expectError(() => F.embedding(ids, Tensor.zeros([5, 3], { dtype: "i8" })), PeftError, "ERR_DTYPE", /embedding: weight must be f32/);
    expectError(() => F.embedding(ids, Tensor.zeros([15])), PeftError, "ERR_SHAPE", /embedding: weight must have 2 dimensions, got shape \[15\]/);
    expectError(() => F.embedding(ids, {} as Tensor), TypeError, "ERR_INVALID_ARG_TYPE", /embedding: weight must be a Tensor/);
    expectError(() => F.embeddingBackward(ids, Tensor.zeros([2, 4]), w), PeftError, "ERR_SHAPE",
      /embeddingBackward: dy has shape \[2, 4\] but ids \[2\] and dW \[5, 3\] need \[2, 3\]/);
    expectError(() => F.embeddingBackward(ids, Tensor.zeros([2, 3]), Tensor.zeros([5, 3], { dtype: "i32" })), PeftError, "ERR_DTYPE", /embeddingBackward: dW/);
    expectError(() => F.embeddingBackward(ids, Tensor.zeros([2, 3], { dtype: "u8" }), w), PeftError, "ERR_DTYPE", /embeddingBackward: dy/);
  });
});

// ---- sumRows ----
describe("sumRows", () => {
  for (const dt of FLOATS)
    it(`sums all leading rows in f32, rounded once into out (accumulating or not), ${dt} out`, () => {
      for (const shape of [[1, 1], [7, 17], [127, 33], [0, 7], [2, 3, 17], [33], [1000, 7], [5, 0]]) {
        const N = shape[shape.length - 1], n = shape.reduce((a, b) => a * b, 1), M = N ? n / N : 0;
        for (const dydt of ["f32", dt] as const) {
          const { t: dy, v: dyv } = tensorOf(uniform(n, -1, 1, n + N), shape, dydt);
          const sum = new Float64Array(N), mag = new Float64Array(N);
          for (let r = 0; r < M; r++) for (let c = 0; c < N; c++) (sum[c] += dyv[r * N + c]), (mag[c] += Math.abs(dyv[r * N + c]));
          for (const accumulate of [true, false]) {
            const { t: out, v: ov } = tensorOf(uniform(N, -1, 1, N), [N], dt);
            const version = out.version;
            F.sumRows(dy, out, { accumulate });
            expect(out.version).toBeGreaterThan(version);
            const want = Array.from(sum, (s, c) => s + (accumulate ? ov[c] : 0));
            // at most ~(chunk + 64) additions in f32 per column; mag bounds every partial sum
            const rel = (Math.min(M, 256 + M / 64) + 66) * E;
            expectClose(out.toFloat64Array(), want, (c) => tolIn(dt, want[c], rel, mag[c] + Math.abs(ov[c])), `${dt}/${dydt} ${shape} acc=${accumulate}`);
          }
        }
      }
    });

  it("accumulates by default, and is the bias gradient (finite differences of sum(dy * (x + b)))", () => {
    const { t: dy, v: dyv } = tensorOf(uniform(21, -1, 1, 9), [3, 7], "f32");
    const out = Tensor.fromArray([1, 1, 1, 1, 1, 1, 1], [7]);
    F.sumRows(dy, out);
    F.sumRows(dy, out);
    const fd = numericGrad((b) => dyv.reduce((a, d, i) => a + d * (0.5 + b[i % 7]), 0), new Float64Array(7));
    expectClose(out.toFloat64Array(), Array.from(fd, (g) => 1 + 2 * g), () => 1e-6);
  });

  it("is the same for any thread count", () => {
    const dy = Tensor.randn([70001, 5], { seed: 6 });
    const run = (t: number) => {
      backend.setNumThreads(t);
      const out = Tensor.zeros([5]);
      F.sumRows(dy, out);
      return out.toFloat32Array();
    };
    expectSameBits(run(1), run(2), "bias grad");
  });

  it("rejects bad input", () => {
    expectError(() => F.sumRows(Tensor.zeros([3, 4]), Tensor.zeros([3])), PeftError, "ERR_SHAPE", /sumRows: out must have shape \[4\] for dy of shape \[3, 4\], got \[3\]/);
    expectError(() => F.sumRows(Tensor.zeros([3, 4]), Tensor.zeros([1, 4])), PeftError, "ERR_SHAPE", /sumRows: out must have shape \[4\]/);
    expectError(() => F.sumRows(Tensor.zeros([]), Tensor.zeros([1])), PeftError, "ERR_SHAPE", /sumRows: dy must have 1 to 16 dimensions/);
    expectError(() => F.sumRows(Tensor.zeros([3, 4]), Tensor.zeros([4], { dtype: "i32" })), PeftError, "ERR_DTYPE", /sumRows: out must be f32/);
    expectError(() => F.sumRows(Tensor.zeros([3, 4]), Tensor.zeros([4]), { accumulate: 1 as unknown as boolean }), TypeError, "ERR_INVALID_ARG_TYPE", /sumRows: accumulate must be a boolean/);
    expectError(() => F.sumRows(Tensor.zeros([3, 4]), Tensor.zeros([4]), 5 as unknown as object), TypeError, "ERR_INVALID_ARG_TYPE", /sumRows: opts must be an object/);
  });
});

// ---- in-place elementwise ----
describe("addInPlace, scaleInPlace, mul, fill", () => {
  for (const dt of FLOATS)
    it(`match the float64 reference with one rounding, ${dt}`, () => {
      for (const n of SIZES) {
        for (const bdt of FLOATS) {
          const { t: a, v: av } = tensorOf(uniform(n, -4, 4, n), [n], dt);
          const { t: b, v: bv } = tensorOf(uniform(n, -4, 4, n + 1), [n], bdt);
          const version = a.version;
          F.addInPlace(a, b, -0.375);
          expect(a.version).toBeGreaterThan(version);
          const want = Array.from(av, (x, i) => x - 0.375 * bv[i]);
          expectClose(a.toFloat64Array(), want, (i) => tolIn(dt, want[i], 2 * E, Math.abs(av[i]) + Math.abs(0.375 * bv[i])), `add ${dt}+${bdt}`);
          const y = F.mul(b, a);
          expect(y.dtype).toBe(bdt);
          const av2 = a.toFloat64Array();
          const pw = Array.from(bv, (x, i) => x * av2[i]);
          expectClose(y.toFloat64Array(), pw, (i) => tolIn(bdt, pw[i], E), `mul ${bdt}*${dt}`);
        }
        const { t: a, v: av } = tensorOf(uniform(n, -4, 4, n), [n], dt);
        F.scaleInPlace(a, 3.3);
        const sw = Array.from(av, (x) => x * 3.3);
        expectClose(a.toFloat64Array(), sw, (i) => tolIn(dt, sw[i], 2 * E), `scale ${dt}`);
      }
    });

  it("a bf16 result rounds half to even and keeps NaN quiet, every kernel path (the staged narrowing)", () => forEachIsa((isa) => {
    // f32 sums that fall exactly between two bf16 values, with an odd and an even lower neighbour, and a NaN
    // whose low bits would carry into the payload if it were rounded like a number.
    const a = Tensor.fromBits(new Uint16Array([0x3f81, 0x3f80, 0xbf81, 0x0000]), [4], "bf16");
    const b = Tensor.fromArray(new Float32Array(new Uint32Array([0x3b800000, 0x3b800000, 0xbb800000, 0x7f80ffff]).buffer), [4]);
    F.addInPlace(a, b);
    expect(Array.from(a.view() as Uint16Array), isa).toEqual([0x3f82, 0x3f80, 0xbf82, 0x7fc0]);
  }));

  it("addInPlace defaults alpha to 1 and handles a aliased with b", () => {
    const a = Tensor.fromArray([1, 2, 3], [3]);
    F.addInPlace(a, Tensor.fromArray([10, 20, 30], [3]));
    expect(a.toArray()).toEqual([11, 22, 33]);
    F.addInPlace(a, a.reshape([3]), 1);
    expect(a.toArray()).toEqual([22, 44, 66]);
    F.scaleInPlace(a.reshape([1, 3]), 0.5);
    expect(a.toArray()).toEqual([11, 22, 33]);
  });

  it("fill converts like Tensor.fromArray for every dtype and bumps the version", () => {
    for (const [dt, v, want] of [["f32", 0.1, Math.fround(0.1)], ["bf16", 1 / 3, roundTo([1 / 3], "bf16")[0]], ["f16", 70000, Infinity],
      ["i8", 300, 127], ["u8", -3, 0], ["i32", 2.5, 2], ["i64", -7, -7]] as const) {
      const t = Tensor.zeros([17], { dtype: dt });
      const version = t.version;
      F.fill(t, v);
      expect(t.version).toBeGreaterThan(version);
      expect(Array.from(t.toFloat64Array())).toEqual(new Array(17).fill(want));
    }
    const e = Tensor.zeros([0]);
    F.fill(e, 1);
    expect(e.toArray()).toEqual([]);
  });

  it("rejects bad input", () => {
    const a = Tensor.zeros([3]);
    expectError(() => F.addInPlace(a, Tensor.zeros([4])), PeftError, "ERR_SHAPE", /addInPlace: b has shape \[4\] but a has shape \[3\]/);
    expectError(() => F.addInPlace(a, Tensor.zeros([3, 1])), PeftError, "ERR_SHAPE", /addInPlace: b has shape \[3, 1\]/);
    expectError(() => F.addInPlace(a, Tensor.zeros([3], { dtype: "i32" })), PeftError, "ERR_DTYPE", /addInPlace: b must be f32/);
    expectError(() => F.addInPlace(Tensor.zeros([3], { dtype: "i32" }), a), PeftError, "ERR_DTYPE", /addInPlace: a must be f32/);
    expectError(() => F.addInPlace(a, a, "2" as unknown as number), TypeError, "ERR_INVALID_ARG_TYPE", /addInPlace: alpha must be a number/);
    expectError(() => F.scaleInPlace(a, undefined as unknown as number), TypeError, "ERR_INVALID_ARG_TYPE", /scaleInPlace: alpha must be a number/);
    expectError(() => F.scaleInPlace(Tensor.zeros([3], { dtype: "u8" }), 2), PeftError, "ERR_DTYPE", /scaleInPlace: a must be f32/);
    expectError(() => F.mul(a, Tensor.zeros([2])), PeftError, "ERR_SHAPE", /mul: b has shape \[2\] but a has shape \[3\]/);
    expectError(() => F.mul(a, 2 as unknown as Tensor), TypeError, "ERR_INVALID_ARG_TYPE", /mul: b must be a Tensor/);
    expectError(() => F.fill(a, null as unknown as number), TypeError, "ERR_INVALID_ARG_TYPE", /fill: value must be a number/);
    expectError(() => F.fill(null as unknown as Tensor, 1), TypeError, "ERR_INVALID_ARG_TYPE", /fill: a must be a Tensor/);
  });
});

describe("device checks", () => {
  // Each op runs on the cuda device too (test/cross-backend.test.ts compares it with the cpu); operands on
  // two devices are refused naming both.
  it("mixed devices are ERR_DEVICE", () => {
    expect(backend.cuda.available).toBe(true);
    const g = Tensor.zeros([2, 3], { device: "cuda" }), c = Tensor.zeros([2, 3]);
    const gi = Tensor.zeros([2], { dtype: "i64", device: "cuda" }), ci = Tensor.zeros([2], { dtype: "i64" });
    const opts = { step: 1, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 };
    expectError(() => F.addInPlace(c, g), PeftError, "ERR_DEVICE", /addInPlace: a is on cpu but b is on cuda/);
    expectError(() => F.crossEntropy(c, gi), PeftError, "ERR_DEVICE", /crossEntropy: logits is on cpu but target is on cuda/);
    expectError(() => F.embedding(ci, Tensor.zeros([4, 3], { device: "cuda" })), PeftError, "ERR_DEVICE", /embedding: ids is on cpu but weight is on cuda/);
    expectError(() => F.adamwStep([c], [g], [Tensor.zeros([2, 3])], [Tensor.zeros([2, 3])], opts), PeftError, "ERR_DEVICE", /adamwStep: params\[0\] is on cpu but grads\[0\] is on cuda/);
  });
});
