// The functional ops' native kernels (elementwise, reduce, copyStrided, indexSelect/indexAdd, gather/
// scatterAdd, matmulBatched), called through `native` directly, against float64 references computed here
// from the exact values the input tensors hold, on odd and empty sizes, every float dtype, broadcasting
// edge cases, every kernel path, and every bad input.
//
// Tolerances: `tolIn(dt, ref, rel, mag)` is the error of a value computed in f32 with relative error `rel`
// (of `mag`) and then rounded once into dt. E = 2^-24 is one f32 rounding. Per op, `rel` is:
//  - E for the correctly rounded f32 ops (+, -, *, /, sqrt, neg, abs, square, reciprocal, min/max, clamp):
//    the f32 result is exact-rounded (checked bit for bit in f32); E covers its double rounding into f16/bf16;
//  - E for log, sin, cos and pow, which are evaluated in double (~1e-15) and rounded once;
//  - 2E (one f32 ulp) for exp (Cody–Waite reduction + the Cephes polynomial, measured 0.97 ulp worst) and
//    tanh (Cephes polynomial below 0.625, double formula above; measured 0.74 ulp worst);
//  - 3E for rsqrt (a square root, then a division: two roundings);
//  - 5E for sigmoid (e^-|x| to ~1 ulp, 1 + e, a division and a product: measured 2.07 ulps worst);
//  - 2E of |a·x| + |b| for affine and axpby (two products and a sum, each rounded);
//  - the activation tests' own bounds for silu, gelu and gelu_tanh (the same kernels as F.activation).
// Reductions accumulate in f64, so sums are checked to n·2^-50·Σ|x| plus the final rounding into dt, far
// inside the n·2^-24·Σ|x| an f32 accumulation would need.
import { afterEach, describe, expect, it } from "vitest";
import { native, type NativeTensor } from "../lib/native.js";
import { Tensor } from "../lib/tensor.js";
import { PeftError, backend } from "../lib/index.js";
import {
  ABS, FLOATS, SIZES, UNIT, expectClose, expectError, expectSameBits, forEachIsa, normCdf, roundTo, tensorOf, tolIn, uniform,
  type FloatDType,
} from "./helpers/numeric.js";

// The device checks need a cuda device: the emulated one unless a real GPU is asked for. The addon decides
// what "cuda" is at its first use, which comes after this line.
if (process.env.NODE_PEFT_CUDA === undefined && !process.env.NODE_PEFT_CUDA_REAL) process.env.NODE_PEFT_CUDA = "emu";

const E = UNIT.f32;
const threads = backend.threads;
afterEach(() => backend.setNumThreads(threads));

type DT = "f32" | "f16" | "bf16" | "i8" | "u8" | "i32" | "i64";
const H = (t: Tensor): NativeTensor => Tensor.handle(t);
const T = (h: NativeTensor): Tensor => new Tensor(h);
const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

function ew(op: string, inputs: Tensor[], out: DT = "f32", scalars: number[] = []): Tensor {
  return T(native.elementwise(op, inputs.map(H), out, scalars));
}

// ---- broadcasting reference ----

function broadcastShape(shapes: (readonly number[])[]): number[] {
  const nd = Math.max(0, ...shapes.map((s) => s.length));
  const out = new Array<number>(nd).fill(1);
  for (const s of shapes)
    for (let i = 0; i < s.length; i++) {
      const d = nd - s.length + i;
      if (s[i] !== 1) out[d] = s[i];
    }
  return out;
}

/** For an input of `shape` broadcast to `out`: the input's flat index of each output element. */
function broadcastIndex(shape: readonly number[], out: readonly number[]): Int32Array {
  const n = numel(out), idx = new Int32Array(n), nd = out.length, off = nd - shape.length;
  for (let f = 0; f < n; f++) {
    let rem = f, pos = 0, stride = 1;
    for (let d = nd - 1; d >= 0; d--) {
      const c = rem % out[d];
      rem = Math.floor(rem / out[d]);
      if (d >= off) {
        const s = shape[d - off];
        if (s !== 1) pos += c * stride;
        stride *= s;
      }
    }
    idx[f] = pos;
  }
  return idx;
}

/** f64 reference of an elementwise op over broadcast inputs. */
function refEw(f: (...x: number[]) => number, ins: { v: Float64Array; shape: readonly number[] }[]): { want: Float64Array; shape: number[] } {
  const shape = broadcastShape(ins.map((i) => i.shape));
  const maps = ins.map((i) => broadcastIndex(i.shape, shape));
  const want = new Float64Array(numel(shape));
  for (let k = 0; k < want.length; k++) want[k] = f(...ins.map((i, j) => i.v[maps[j][k]]));
  return { want, shape };
}

/** The reference as the output dtype holds it where it over- or underflows there (so inf compares to inf). */
function inDtype(want: Float64Array, dt: FloatDType): Float64Array {
  const r = roundTo(want, dt);
  return want.map((w, i) => (Number.isFinite(r[i]) ? w : r[i]));
}

// ---- unary references and bounds ----

const sigmoid = (z: number) => (z >= 0 ? 1 / (1 + Math.exp(-z)) : Math.exp(z) / (1 + Math.exp(z)));
const tanhU = (x: number) => Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x);
const signOf = (x: number) => (x > 0 ? 1 : x < 0 ? -1 : Number.isNaN(x) ? NaN : 0);
const clampRef = (x: number, lo: number, hi: number) => {
  if (Number.isNaN(x)) return NaN;
  let v = !Number.isNaN(lo) && x < lo ? lo : x;
  v = !Number.isNaN(hi) && v > hi ? hi : v;
  return v;
};

/** C99 pow (what std::pow and PyTorch follow), where it differs from JS's Math.pow. */
function powRef(x: number, p: number): number {
  if (p === 0 || x === 1) return 1;
  if (x === -1 && !Number.isFinite(p) && !Number.isNaN(p)) return 1;
  return Math.pow(x, p);
}

interface Unary {
  f: (x: number, s: number[]) => number;
  rel: (x: number, s: number[]) => number;
  mag?: (x: number, s: number[]) => number;
  dom: [number, number];
  scalars?: number[][];
  exact?: boolean; // correctly rounded in f32: checked bit for bit
}
const UNARY: Record<string, Unary> = {
  neg: { f: (x) => -x, rel: () => E, dom: [-10, 10], exact: true },
  exp: { f: Math.exp, rel: () => 2 * E, dom: [-15, 11] },
  log: { f: Math.log, rel: () => E, dom: [1e-3, 1e3] },
  sqrt: { f: Math.sqrt, rel: () => E, dom: [0, 100], exact: true },
  rsqrt: { f: (x) => 1 / Math.sqrt(x), rel: () => 3 * E, dom: [1e-3, 100] },
  abs: { f: Math.abs, rel: () => E, dom: [-10, 10], exact: true },
  sign: { f: signOf, rel: () => 0, dom: [-2, 2], exact: true },
  reciprocal: { f: (x) => 1 / x, rel: () => E, dom: [0.01, 10], exact: true },
  square: { f: (x) => x * x, rel: () => E, dom: [-100, 100], exact: true },
  tanh: { f: Math.tanh, rel: () => 2 * E, dom: [-6, 6] },
  sigmoid: { f: sigmoid, rel: () => 5 * E, dom: [-20, 20] },
  relu: { f: (x) => (x < 0 ? 0 : x), rel: () => 0, dom: [-5, 5], exact: true },
  silu: { f: (x) => x * sigmoid(x), rel: () => 8 * E, dom: [-8, 8], mag: (x) => sigmoid(x) * (1 + Math.abs(x * sigmoid(-x))) * Math.abs(x) },
  gelu: { f: (x) => x * normCdf(x), rel: () => 3 * E, dom: [-8, 8] },
  gelu_tanh: { f: (x) => x * sigmoid(2 * tanhU(x)), rel: (x) => (8 + 8 * Math.abs(tanhU(x))) * E, dom: [-8, 8] },
  sin: { f: Math.sin, rel: () => E, dom: [-100, 100] },
  cos: { f: Math.cos, rel: () => E, dom: [-100, 100] },
  clamp: { f: (x, s) => clampRef(x, s[0], s[1]), rel: () => 0, dom: [-3, 3], scalars: [[-1, 2], [NaN, 0.5], [-0.5, NaN], [NaN, NaN], [2, 1]], exact: true },
  pow_scalar: {
    f: (x, s) => powRef(x, Math.fround(s[0])),
    rel: (_x, s) => (s[0] === -0.5 ? 3 * E : E),
    dom: [0.01, 10],
    scalars: [[2], [0.5], [-0.5], [-1], [3], [0.3], [-2.5], [0], [1]],
  },
  affine: {
    f: (x, s) => Math.fround(s[0]) * x + Math.fround(s[1]),
    rel: () => 2 * E,
    mag: (x, s) => Math.abs(Math.fround(s[0]) * x) + Math.abs(Math.fround(s[1])),
    dom: [-10, 10],
    scalars: [[2, -1], [-0.5, 3], [1e-3, 0]],
  },
  step: { f: (x) => (x > 0 ? 1 : 0), rel: () => 0, dom: [-2, 2], exact: true },
};

/** Checks out (f32 / f16 / bf16) against the f64 reference with the op's bound; f32 exact ops bit for bit. */
function checkUnary(name: string, u: Unary, s: number[], xv: Float64Array, got: Tensor, dt: FloatDType, what: string) {
  const ref = Float64Array.from(xv, (x) => u.f(x, s));
  const want = inDtype(ref, dt);
  expectClose(got.toFloat64Array(), want, (i) => tolIn(dt, ref[i], u.rel(xv[i], s), u.mag ? u.mag(xv[i], s) : Math.abs(ref[i])), what);
  if (dt === "f32" && u.exact && !(name === "pow_scalar")) {
    const g = got.toFloat64Array();
    for (let i = 0; i < ref.length; i++)
      if (!Number.isNaN(ref[i])) expect(g[i], `${what}: element ${i} correctly rounded`).toBe(Math.fround(ref[i]));
  }
}

describe("elementwise: unary ops", () => {
  for (const [name, u] of Object.entries(UNARY))
    it(`${name}: f32, f16, bf16 in and out, odd sizes and empty, every kernel path`, () => forEachIsa((isa) => {
      for (const s of u.scalars ?? [[]])
        for (const dt of FLOATS)
          for (const n of [...SIZES, 1000]) {
            const { t: x, v: xv } = tensorOf(uniform(n, u.dom[0], u.dom[1], n + 3), [n], dt);
            const y = ew(name, [x], dt, s);
            expect(y.dtype).toBe(dt);
            expect(y.shape).toEqual([n]);
            checkUnary(name, u, s, xv, y, dt, `${name}(${s}) ${dt} n=${n} ${isa}`);
          }
    }));

  it("reads each input in its dtype and writes any float out dtype (f16 -> f32, f32 -> bf16, bf16 -> f16)", () => {
    for (const [inDt, outDt] of [["f16", "f32"], ["f32", "bf16"], ["bf16", "f16"], ["f32", "f16"]] as const)
      for (const name of ["exp", "sqrt", "sin", "tanh", "neg"]) {
        const u = UNARY[name];
        const { t: x, v: xv } = tensorOf(uniform(129, u.dom[0], u.dom[1], 5), [3, 43], inDt);
        const y = ew(name, [x], outDt);
        expect(y.dtype).toBe(outDt);
        expect(y.shape).toEqual([3, 43]);
        checkUnary(name, u, [], xv, y, outDt, `${name} ${inDt}->${outDt}`);
      }
  });

  it("keeps shapes: 0-d, multi-dimensional and empty tensors", () => {
    for (const shape of [[], [1], [2, 3, 4], [0], [3, 0, 2], [1, 1, 1]]) {
      const { t: x, v: xv } = tensorOf(uniform(numel(shape), -1, 1, 9), shape, "f32");
      const y = ew("exp", [x]);
      expect(y.shape).toEqual(shape);
      checkUnary("exp", UNARY.exp, [], xv, y, "f32", `exp shape [${shape}]`);
    }
  });

  it("large inputs take the parallel path and give the same bits for any thread count", () => {
    const n = (1 << 17) + 37;
    const { t: x, v: xv } = tensorOf(uniform(n, -20, 20, 11), [n], "f32");
    for (const name of ["exp", "tanh", "sin", "gelu", "sigmoid", "log"]) {
      const u = UNARY[name];
      backend.setNumThreads(1);
      const one = ew(name, [x]).toFloat32Array();
      backend.setNumThreads(2);
      const y = ew(name, [x]);
      expectSameBits(one, y.toFloat32Array(), `${name} 1 vs 2 threads`);
      if (name !== "log") checkUnary(name, u, [], xv, y, "f32", `${name} n=${n}`);
    }
  });

  it("special values (f32): NaN, ±inf, ±0, subnormals and huge arguments, every kernel path", () => forEachIsa((isa) => {
    const xs = [NaN, Infinity, -Infinity, 0, -0, 1e-40, -1e-40, 1, -1, 0.5, 1e30, -1e30, 3.4e38, -3.4e38, 1e6, 2e6, -3.3e7, 1e20];
    const { t: x, v: xv } = tensorOf(xs, [xs.length], "f32");
    const ieee: Record<string, (x: number) => number> = {
      neg: (v) => -v, exp: Math.exp, log: Math.log, sqrt: Math.sqrt, rsqrt: (v) => 1 / Math.sqrt(v), abs: Math.abs, sign: signOf,
      reciprocal: (v) => 1 / v, square: (v) => v * v, tanh: Math.tanh, sigmoid, sin: Math.sin, cos: Math.cos, relu: (v) => (v < 0 ? 0 : Number.isNaN(v) ? NaN : v),
      step: (v) => (v > 0 ? 1 : 0),
    };
    for (const [name, f] of Object.entries(ieee)) {
      const got = ew(name, [x]).toFloat64Array();
      const ref = Float64Array.from(xv, f);
      const want = inDtype(ref, "f32");
      // rel 5E: the loosest bound above; what matters here is the class of each result (NaN, ±inf, ±0, finite)
      expectClose(got, want, (i) => tolIn("f32", ref[i], 5 * E), `${name} specials ${isa}`);
      for (let i = 0; i < xs.length; i++)
        if (want[i] === 0) expect(Object.is(got[i], want[i]) || name === "sign" || name === "relu", `${name}(${xs[i]}) sign of zero ${isa}`).toBe(true);
    }
    // sin/cos far from zero (double argument reduction there) are within one rounding
    const big = [1.5e6, 1.6e6, -7.7e7, 1e10, 3.4e38, 12345678, 2 ** 20, 2 ** 21 + 1];
    const { t: xb, v: bv } = tensorOf(big, [big.length], "f32");
    for (const [name, f] of [["sin", Math.sin], ["cos", Math.cos]] as const) {
      const ref = Float64Array.from(bv, f);
      expectClose(ew(name, [xb]).toFloat64Array(), ref, (i) => tolIn("f32", ref[i], E), `${name} large ${isa}`);
    }
  }));

  it("pow and pow_scalar follow C99 pow at zeros, infinities, NaN and negative bases", () => forEachIsa((isa) => {
    const cases: [number, number, number][] = [
      [2, 0.5, Math.SQRT2], [-8, 0.5, NaN], [-2, 3, -8], [-2, 2, 4], [-0, -1, -Infinity], [0, -2, Infinity], [-0, 3, -0],
      [0, 3, 0], [-0, 2, 0], [NaN, 0, 1], [1, NaN, 1], [-1, Infinity, 1], [-1, -Infinity, 1], [0.5, Infinity, 0],
      [2, Infinity, Infinity], [2, -Infinity, 0], [0.5, -Infinity, Infinity], [-Infinity, 3, -Infinity],
      [-Infinity, 0.5, Infinity], [-Infinity, -3, -0], [-Infinity, -2, 0], [Infinity, -1, 0], [Infinity, 2, Infinity],
      [NaN, 2, NaN], [2, NaN, NaN], [-1, 8388609, -1], [-1, 16777216, 1], [-1, 4194304.5, NaN], [10, 38, 1e38],
      [10, 39, Infinity], [10, -39, 1e-39], [10, -45, 1e-45], [10, -46, 0], [-2, -1.5, NaN], [-2, -3, -0.125],
      [1.0000001, 1e7, Math.pow(Math.fround(1.0000001), 1e7)], [3, 0, 1], [-0, 0, 1], [Infinity, 0, 1],
    ];
    const { t: x, v: xv } = tensorOf(cases.map((c) => c[0]), [cases.length], "f32");
    const { t: p, v: pv } = tensorOf(cases.map((c) => c[1]), [cases.length], "f32");
    const got = ew("pow", [x, p]).toFloat64Array();
    for (let i = 0; i < cases.length; i++) {
      const want = cases[i][2], ref = powRef(xv[i], pv[i]);
      if (Number.isNaN(want)) expect(got[i], `pow(${xv[i]}, ${pv[i]}) ${isa}`).toBeNaN();
      else if (want === 0 || !Number.isFinite(want)) expect(Object.is(got[i], want), `pow(${xv[i]}, ${pv[i]}) = ${got[i]}, want ${want} ${isa}`).toBe(true);
      else expect(Math.abs(got[i] - ref), `pow(${xv[i]}, ${pv[i]}) = ${got[i]} ${isa}`).toBeLessThanOrEqual(tolIn("f32", ref, E));
    }
    // pow_scalar agrees, except for the exponents PyTorch computes as sqrt / rsqrt / reciprocal / square
    for (let i = 0; i < cases.length; i++) {
      if ([0.5, -0.5, -1, 2].includes(pv[i])) continue;
      const g = ew("pow_scalar", [x], "f32", [pv[i]]).toFloat64Array()[i];
      expect(Object.is(g, got[i]) || Math.abs(g - got[i]) <= tolIn("f32", got[i], 2 * E), `pow_scalar(${xv[i]}, ${pv[i]}) = ${g} vs pow ${got[i]} ${isa}`).toBe(true);
    }
  }));
});

// ---- binary ops ----

interface Binary {
  f: (a: number, b: number, s: number[]) => number;
  rel: number;
  mag?: (a: number, b: number, s: number[]) => number;
  dom: [number, number];
  domB?: [number, number];
  scalars?: number[];
  exact?: boolean;
}
const cmp = (f: (a: number, b: number) => boolean) => (a: number, b: number) => (f(a, b) ? 1 : 0);
const BINARY: Record<string, Binary> = {
  add: { f: (a, b) => a + b, rel: E, dom: [-10, 10], exact: true },
  sub: { f: (a, b) => a - b, rel: E, dom: [-10, 10], exact: true },
  mul: { f: (a, b) => a * b, rel: E, dom: [-10, 10], exact: true },
  div: { f: (a, b) => a / b, rel: E, dom: [-10, 10], domB: [0.1, 10], exact: true },
  pow: { f: (a, b) => powRef(a, b), rel: E, dom: [0.01, 10], domB: [-3, 3] },
  maximum: { f: (a, b) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.max(a, b)), rel: 0, dom: [-3, 3], exact: true },
  minimum: { f: (a, b) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.min(a, b)), rel: 0, dom: [-3, 3], exact: true },
  eq: { f: cmp((a, b) => a === b), rel: 0, dom: [-2, 2], exact: true },
  ne: { f: cmp((a, b) => a !== b), rel: 0, dom: [-2, 2], exact: true },
  gt: { f: cmp((a, b) => a > b), rel: 0, dom: [-2, 2], exact: true },
  ge: { f: cmp((a, b) => a >= b), rel: 0, dom: [-2, 2], exact: true },
  lt: { f: cmp((a, b) => a < b), rel: 0, dom: [-2, 2], exact: true },
  le: { f: cmp((a, b) => a <= b), rel: 0, dom: [-2, 2], exact: true },
  axpby: {
    f: (a, b, s) => Math.fround(s[0]) * a + Math.fround(s[1]) * b,
    rel: 2 * E,
    mag: (a, b, s) => Math.abs(Math.fround(s[0]) * a) + Math.abs(Math.fround(s[1]) * b),
    dom: [-10, 10],
    scalars: [0.75, -2.5],
  },
};

// Pairs of shapes: equal, scalar, 0-d, trailing-dim alignment, both sides broadcasting, size-1 dims
// everywhere, empty dims (0 against 1), and a large pair for the parallel path.
const PAIRS: [number[], number[]][] = [
  [[1], [1]], [[7], [7]], [[17], [1]], [[1], [33]], [[], [127]], [[5, 7], []], [[3, 17], [17]], [[33], [2, 33]],
  [[7, 1], [1, 17]], [[2, 1, 5], [3, 1]], [[5, 1, 3], [1, 4, 1]], [[1, 1, 7], [7]], [[2, 3, 4, 5], [3, 1, 5]],
  [[0], [1]], [[2, 0], [1]], [[0, 3], [3]], [[4, 1, 0], [1, 5, 1]], [[127, 3], [127, 1]],
];
// Large enough for the parallel path (checked on the active kernel path only: the loops are the same).
const LARGE_PAIRS: [number[], number[]][] = [[[300, 257], [257]], [[257, 300], [257, 1]]];
const ACTIVE_ISA = backend.isa;

function pairValues(op: string, b: Binary, sa: number[], sb: number[], dtA: DT, dtB: DT, seed: number) {
  let av = uniform(numel(sa), b.dom[0], b.dom[1], seed), bv = uniform(numel(sb), ...(b.domB ?? b.dom), seed + 1);
  if (["eq", "ne", "ge", "le", "maximum", "minimum"].includes(op)) {
    // coarse values so ties occur
    av = av.map((v) => Math.round(v * 2) / 2);
    bv = bv.map((v) => Math.round(v * 2) / 2);
  }
  return { A: tensorOf(av, sa, dtA), B: tensorOf(bv, sb, dtB) };
}

describe("elementwise: binary ops and broadcasting", () => {
  for (const [name, b] of Object.entries(BINARY))
    it(`${name}: every float dtype, broadcasting pairs, every kernel path`, () => forEachIsa((isa) => {
      const s = b.scalars ?? [];
      for (const dt of FLOATS)
        for (const [k, [sa, sb]] of [...PAIRS, ...(isa === ACTIVE_ISA && dt !== "f16" ? LARGE_PAIRS : [])].entries()) {
          const { A, B } = pairValues(name, b, sa, sb, dt, dt, k * 7 + 1);
          const y = ew(name, [A.t, B.t], dt, s);
          const { want: ref, shape } = refEw((x, z) => b.f(x, z, s), [{ v: A.v, shape: sa }, { v: B.v, shape: sb }]);
          expect(y.shape).toEqual(shape);
          expect(y.dtype).toBe(dt);
          const want = inDtype(ref, dt);
          const ma = broadcastIndex(sa, shape), mb = broadcastIndex(sb, shape);
          const what = `${name} ${dt} [${sa}] x [${sb}] ${isa}`;
          expectClose(y.toFloat64Array(), want, (i) => tolIn(dt, ref[i], b.rel, b.mag ? b.mag(A.v[ma[i]], B.v[mb[i]], s) : Math.abs(ref[i])), what);
          if (dt === "f32" && b.exact) {
            // bit for bit, but for the sign of a zero maximum/minimum of ±0
            const g = y.toFloat64Array();
            for (let i = 0; i < g.length; i++) if (g[i] !== Math.fround(ref[i]) && !Number.isNaN(ref[i])) expect(g[i], `${what} element ${i}`).toBe(Math.fround(ref[i]));
          }
        }
    }));

  it("inputs of different float dtypes are each read in their own dtype", () => {
    const sa = [3, 17], sb = [17];
    for (const [da, db, out] of [["f16", "bf16", "f32"], ["f32", "f16", "bf16"], ["bf16", "f32", "f16"]] as const)
      for (const name of ["add", "mul", "div", "pow", "maximum", "axpby"]) {
        const b = BINARY[name], s = b.scalars ?? [];
        const { A, B } = pairValues(name, b, sa, sb, da, db, 3);
        const { want: ref } = refEw((x, z) => b.f(x, z, s), [{ v: A.v, shape: sa }, { v: B.v, shape: sb }]);
        const y = ew(name, [A.t, B.t], out, s);
        expect(y.dtype).toBe(out);
        const ma = broadcastIndex(sa, [3, 17]), mb = broadcastIndex(sb, [3, 17]);
        expectClose(y.toFloat64Array(), inDtype(ref, out), (i) => tolIn(out, ref[i], b.rel, b.mag ? b.mag(A.v[ma[i]], B.v[mb[i]], s) : Math.abs(ref[i])),
          `${name} ${da} x ${db} -> ${out}`);
      }
  });

  it("NaN propagates through maximum/minimum; comparisons with NaN are false except ne", () => {
    const a = Tensor.fromArray([NaN, 1, NaN, -0, 0, Infinity], [6]);
    const b = Tensor.fromArray([1, NaN, NaN, 0, -0, -Infinity], [6]);
    expect(ew("maximum", [a, b]).toArray().slice(0, 3)).toEqual([NaN, NaN, NaN]);
    expect(ew("minimum", [a, b]).toArray().slice(0, 3)).toEqual([NaN, NaN, NaN]);
    expect(ew("maximum", [a, b]).toArray()[5]).toBe(Infinity);
    expect(ew("minimum", [a, b]).toArray()[5]).toBe(-Infinity);
    expect(ew("eq", [a, b]).toArray()).toEqual([0, 0, 0, 1, 1, 0]);
    expect(ew("ne", [a, b]).toArray()).toEqual([1, 1, 1, 0, 0, 1]);
    for (const op of ["gt", "ge", "lt", "le"]) expect(ew(op, [a, b]).toArray().slice(0, 3), op).toEqual([0, 0, 0]);
    expect(ew("clamp", [a], "f32", [-1, 1]).toArray()).toEqual([NaN, 1, NaN, -0, 0, 1]);
  });

  it("comparisons take integer inputs: exact between integers (i64 beyond 2^53 too), in double against floats, any out dtype", () => {
    const big = Tensor.fromArray(new BigInt64Array([2n ** 60n, -(2n ** 60n), 5n, 7n]), [4], "i64");
    const big1 = Tensor.fromArray(new BigInt64Array([2n ** 60n + 1n, -(2n ** 60n), 5n, 6n]), [4], "i64");
    expect(ew("eq", [big, big1]).toArray()).toEqual([0, 1, 1, 0]);
    expect(ew("lt", [big, big1]).toArray()).toEqual([1, 0, 0, 0]);
    const i32 = Tensor.fromArray([2147483647, -2147483648, 3, 0], [4], "i32");
    const i32b = Tensor.fromArray([2147483646, -2147483648, 4, 0], [4], "i32");
    expect(ew("gt", [i32, i32b]).toArray()).toEqual([1, 0, 0, 0]);
    expect(ew("ge", [i32, big]).toArray()).toEqual([0, 1, 0, 0]);
    // 16777217 is not an f32: compared in double it differs from the f32 16777216
    const f = Tensor.fromArray([16777216, 2.5, -1, NaN], [4], "f32");
    const iv = Tensor.fromArray([16777217, 2, -1, 0], [4], "i32");
    expect(ew("eq", [f, iv]).toArray()).toEqual([0, 0, 1, 0]);
    expect(ew("lt", [f, iv]).toArray()).toEqual([1, 0, 0, 0]);
    for (const out of ["u8", "i8", "i32", "i64", "f16", "bf16"] as const) {
      const y = ew("le", [iv, Tensor.fromArray([3], [1], "i64")], out);
      expect(y.dtype).toBe(out);
      expect(y.toArray()).toEqual([0, 1, 1, 1]);
    }
    // broadcasting with integer inputs
    const col = Tensor.fromArray([1, 2, 3], [3, 1], "i32"), row = Tensor.fromArray([2, 2], [1, 2], "u8");
    expect(ew("eq", [col, row]).toArray()).toEqual([0, 0, 1, 1, 0, 0]);
  });
});

describe("elementwise: where", () => {
  const conds: [DT, number[]][] = [["f32", [1, 0, NaN, -0, 0.5]], ["f16", [0, 1, 1, 0, 0]], ["u8", [1, 0, 255, 0, 2]], ["i8", [-1, 0, 1, 0, 0]],
    ["i32", [0, 7, 0, -5, 1]], ["i64", [1, 0, 0, 0, 3]]];
  for (const [cdt, cv] of conds)
    it(`cond ${cdt}: cond != 0 picks a, broadcast over a and b of other dtypes`, () => forEachIsa((isa) => {
      const c = Tensor.fromArray(cv, [5, 1], cdt);
      const a = tensorOf(uniform(7, -3, 3, 1), [1, 7], "f16"), b = tensorOf(uniform(1, -3, 3, 2), [], "bf16");
      for (const out of FLOATS) {
        const y = ew("where", [c, a.t, b.t], out);
        expect(y.shape).toEqual([5, 7]);
        const { want } = refEw((ci, ai, bi) => (ci !== 0 ? ai : bi), [{ v: c.toFloat64Array(), shape: [5, 1] }, { v: a.v, shape: [1, 7] }, { v: b.v, shape: [] }]);
        expectClose(y.toFloat64Array(), want, (i) => tolIn(out, want[i], 0), `where ${cdt} -> ${out} ${isa}`);
      }
    }));

  it("all three full-shape inputs, odd sizes, empty, and the parallel path", () => {
    for (const n of [...SIZES, 70001]) {
      const c = tensorOf(uniform(n, -1, 1, n).map((v) => (v > 0 ? 1 : 0)), [n], "f32");
      const a = tensorOf(uniform(n, -5, 5, n + 1), [n], "f32"), b = tensorOf(uniform(n, -5, 5, n + 2), [n], "f32");
      const y = ew("where", [c.t, a.t, b.t]).toFloat64Array();
      for (let i = 0; i < n; i++) if (y[i] !== (c.v[i] ? a.v[i] : b.v[i])) expect.fail(`where n=${n} element ${i}`);
    }
  });
});

describe("elementwise: bad inputs", () => {
  const x = Tensor.fromArray([1, 2, 3], [3]), y = Tensor.fromArray([1, 2], [2]);
  it("refuses unknown ops, wrong arity, wrong argument types and shapes that do not broadcast", () => {
    expectError(() => native.elementwise("nope", [H(x)], "f32", []), TypeError, "ERR_INVALID_ARG_TYPE", /elementwise: op must be one of .*add.*; got "nope"/);
    expectError(() => native.elementwise(3 as unknown as string, [H(x)], "f32", []), TypeError, "ERR_INVALID_ARG_TYPE", /elementwise: op must be a string/);
    expectError(() => native.elementwise("add", [H(x)], "f32", []), TypeError, "ERR_INVALID_ARG_TYPE", /elementwise add: takes 2 inputs, got 1/);
    expectError(() => native.elementwise("exp", [H(x), H(x)], "f32", []), TypeError, "ERR_INVALID_ARG_TYPE", /elementwise exp: takes 1 input, got 2/);
    expectError(() => native.elementwise("exp", H(x) as unknown as NativeTensor[], "f32", []), TypeError, "ERR_INVALID_ARG_TYPE", /inputs must be an array/);
    expectError(() => native.elementwise("add", [H(x), {} as NativeTensor], "f32", []), TypeError, "ERR_INVALID_ARG_TYPE", /elementwise add: inputs\[1\]/);
    expectError(() => native.elementwise("exp", [H(x)], "f64", []), TypeError, "ERR_INVALID_ARG_TYPE", /elementwise exp: outDtype/);
    expectError(() => native.elementwise("clamp", [H(x)], "f32", [1]), TypeError, "ERR_INVALID_ARG_TYPE", /elementwise clamp: takes 2 scalars, got 1/);
    expectError(() => native.elementwise("exp", [H(x)], "f32", [1]), TypeError, "ERR_INVALID_ARG_TYPE", /takes 0 scalars, got 1/);
    expectError(() => native.elementwise("affine", [H(x)], "f32", [1, "2" as unknown as number]), TypeError, "ERR_INVALID_ARG_TYPE", /elementwise affine: scalars\[1\] must be a number/);
    expectError(() => native.elementwise("affine", [H(x)], "f32", null as unknown as number[]), TypeError, "ERR_INVALID_ARG_TYPE", /scalars must be an array/);
    expectError(() => ew("add", [x, y]), PeftError, "ERR_SHAPE", /elementwise add: inputs\[0\] of shape \[3\] and inputs\[1\] of shape \[2\] do not broadcast \(dimension -1: 3 vs 2\)/);
    expectError(() => ew("where", [Tensor.zeros([2, 1]), Tensor.zeros([1, 3]), Tensor.zeros([4, 1, 1, 5])]), PeftError, "ERR_SHAPE",
      /inputs\[1\] of shape \[1, 3\] and inputs\[2\] of shape \[4, 1, 1, 5\] do not broadcast \(dimension -1: 3 vs 5\)/);
    expectError(() => ew("add", [Tensor.zeros([0]), Tensor.zeros([2])]), PeftError, "ERR_SHAPE", /do not broadcast/);
  });

  it("refuses integer operands and outputs where floats are required", () => {
    const i = Tensor.fromArray([1, 2, 3], [3], "i32");
    expectError(() => ew("add", [x, i]), PeftError, "ERR_DTYPE", /elementwise add: inputs\[1\] must be f32, f16 or bf16, got i32/);
    expectError(() => ew("exp", [i]), PeftError, "ERR_DTYPE", /elementwise exp: inputs\[0\] must be f32, f16 or bf16, got i32/);
    expectError(() => ew("exp", [x], "i32"), PeftError, "ERR_DTYPE", /elementwise exp: outDtype must be f32, f16 or bf16, got i32/);
    expectError(() => ew("where", [i, x, i]), PeftError, "ERR_DTYPE", /elementwise where: inputs\[2\] must be f32, f16 or bf16, got i32/);
    expectError(() => ew("where", [i, x, x], "u8"), PeftError, "ERR_DTYPE", /outDtype must be f32, f16 or bf16/);
  });

  it("disposed inputs are ERR_DISPOSED; cuda operands are ERR_NOT_ON_DEVICE; mixed devices ERR_DEVICE", () => {
    const d = Tensor.zeros([3]);
    d.dispose();
    expectError(() => native.elementwise("exp", [H(d)], "f32", []), PeftError, "ERR_DISPOSED");
    expect(backend.cuda.available).toBe(true);
    const g = Tensor.zeros([3], { device: "cuda" });
    expectError(() => ew("exp", [g]), PeftError, "ERR_NOT_ON_DEVICE", /^elementwise exp: no cuda kernel/);
    expectError(() => ew("where", [g, g, g]), PeftError, "ERR_NOT_ON_DEVICE", /^elementwise where: no cuda kernel/);
    expectError(() => ew("add", [x, g]), PeftError, "ERR_DEVICE", /elementwise add: inputs\[0\] is on cpu but inputs\[1\] is on cuda/);
  });

  it("arguments are read before any data: a getter that disposes an input runs before the kernel", () => {
    const a = Tensor.fromArray([1, 2, 3], [3]);
    const scalars = [2, 0];
    Object.defineProperty(scalars, 1, { get: () => (a.dispose(), 1), enumerable: true });
    // a was read before the getter ran: the call holds it, so it computes on the data a held
    expect(T(native.elementwise("affine", [H(a)], "f32", scalars)).toArray()).toEqual([3, 5, 7]);
  });
});

// ---- reductions ----

const ROPS = ["sum", "mean", "max", "min", "var"] as const;
type ROp = (typeof ROPS)[number];

/** f64 reference: values (and first-occurrence indices for max/min) over the reduced axes. */
function refReduce(op: ROp, v: Float64Array, shape: number[], red: boolean[], correction: number) {
  const nd = shape.length;
  const outShape = shape.filter((_, d) => !red[d]);
  const nOut = numel(outShape);
  const groups: { vals: number[]; abs: number }[] = Array.from({ length: nOut }, () => ({ vals: [], abs: 0 }));
  for (let f = 0; f < v.length; f++) {
    let rem = f, o = 0, os = 1;
    for (let d = nd - 1; d >= 0; d--) {
      const c = rem % shape[d];
      rem = Math.floor(rem / shape[d]);
      if (!red[d]) o += c * os, (os *= shape[d]);
    }
    groups[o].vals.push(v[f]);
    groups[o].abs += Math.abs(v[f]);
  }
  const vals = new Float64Array(nOut), idx = new Float64Array(nOut), scale = new Float64Array(nOut);
  groups.forEach((g, o) => {
    const n = g.vals.length;
    scale[o] = g.abs;
    const s = g.vals.reduce((a, b) => a + b, 0);
    if (op === "sum") vals[o] = s;
    else if (op === "mean") vals[o] = s / n;
    else if (op === "var") {
      const m = s / n;
      const ss = g.vals.reduce((a, b) => a + (b - m) * (b - m), 0);
      vals[o] = ss / Math.max(0, n - correction);
      scale[o] = g.vals.reduce((a, b) => a + b * b, 0) / Math.max(1e-300, Math.max(0, n - correction));
    } else {
      let best = g.vals[0], at = 0;
      for (let i = 1; i < n; i++) {
        const x = g.vals[i];
        const better = op === "max" ? x > best : x < best;
        if ((better || (Number.isNaN(x) && !Number.isNaN(best)))) (best = x), (at = i);
      }
      vals[o] = best;
      idx[o] = at;
    }
  });
  return { vals, idx, scale, n: groups[0]?.vals.length ?? 0 };
}

function reduced(shape: number[], dims: number[]): boolean[] {
  const nd = shape.length;
  return shape.map((_, d) => dims.length === 0 || dims.some((x) => (x < 0 ? x + nd : x) === d));
}

function checkReduce(op: ROp, x: { t: Tensor; v: Float64Array }, shape: number[], dims: number[], keepdim: boolean, correction: number, out: FloatDType, what: string) {
  const r = native.reduce(op, H(x.t), dims, keepdim, correction, out);
  const red = reduced(shape, dims);
  const want = refReduce(op, x.v, shape, red, correction);
  const vals = T(r.values);
  const ws = keepdim ? shape.map((s, d) => (red[d] ? 1 : s)) : shape.filter((_, d) => !red[d]);
  expect(vals.shape, what).toEqual(ws);
  expect(vals.dtype).toBe(out);
  const n = Math.max(1, want.n);
  if (op === "max" || op === "min") {
    expectClose(vals.toFloat64Array(), roundTo(want.vals, out), () => 0, what);
    if (dims.length === 1) {
      expect(r.indices, what).not.toBeNull();
      const it = T(r.indices!);
      expect(it.dtype).toBe("i64");
      expect(it.shape).toEqual(ws);
      expect(Array.from(it.toFloat64Array()), `${what} indices`).toEqual(Array.from(want.idx));
    } else {
      expect(r.indices, what).toBeNull();
    }
  } else {
    expect(r.indices).toBeNull();
    const ref = want.vals;
    expectClose(vals.toFloat64Array(), inDtype(ref, out), (i) => UNIT[out] * Math.abs(ref[i]) + n * 2 ** -50 * want.scale[i] / (op === "mean" ? n : 1) + ABS[out], what);
  }
}

function subsets(nd: number): number[][] {
  const out: number[][] = [];
  for (let m = 1; m < 1 << nd; m++) out.push(Array.from({ length: nd }, (_, d) => d).filter((d) => m & (1 << d)));
  return out;
}

describe("reduce", () => {
  for (const op of ROPS)
    it(`${op}: every subset of axes, keepdim, odd sizes, every float dtype, every kernel path`, () => forEachIsa((isa) => {
      for (const dt of FLOATS) {
        for (const n of SIZES) {
          if (n === 0 && (op === "max" || op === "min")) continue;
          const x = tensorOf(uniform(n, -4, 4, n + 1).map((v) => (op === "max" || op === "min" ? Math.round(v * 2) / 2 : v)), [n], dt);
          for (const dims of [[], [0], [-1]]) checkReduce(op, x, [n], dims, false, 1, dt, `${op} ${dt} [${n}] dims [${dims}] ${isa}`);
        }
        for (const shape of [[7, 17], [3, 5, 7], [33, 1, 17], [2, 3, 4, 5], [1, 127], [127, 1]]) {
          const x = tensorOf(uniform(numel(shape), -4, 4, shape.length).map((v) => (op === "max" || op === "min" ? Math.round(v * 2) / 2 : v)), shape, dt);
          for (const dims of subsets(shape.length))
            for (const keepdim of [false, true]) checkReduce(op, x, shape, dims, keepdim, op === "var" ? 0 : 1, dt, `${op} ${dt} [${shape}] dims [${dims}] keepdim ${keepdim} ${isa}`);
        }
      }
    }));

  it("negative dims, out dtypes other than x's, and var's correction (0, 1, 2.5, more than n)", () => {
    const x = tensorOf(uniform(3 * 5 * 7, -2, 2, 4), [3, 5, 7], "f16");
    checkReduce("sum", x, [3, 5, 7], [-1, -3], true, 1, "f32", "sum dims [-1, -3]");
    checkReduce("mean", x, [3, 5, 7], [-2], false, 1, "bf16", "mean f16 -> bf16");
    checkReduce("max", x, [3, 5, 7], [-2], false, 1, "f32", "max f16 -> f32");
    for (const c of [0, 1, 2.5, 4]) checkReduce("var", x, [3, 5, 7], [1], false, c, "f32", `var correction ${c}`);
    // 5 elements, correction 5: divisor max(0, 0) -> inf for a positive sum of squares
    const v = T(native.reduce("var", H(x.t), [1], false, 5, "f32").values).toArray();
    expect(v.every((e) => e === Infinity)).toBe(true);
  });

  it("max/min: the first occurrence among ties and the first NaN, which wins", () => forEachIsa((isa) => {
    for (const n of [1, 7, 16, 17, 33, 127, 1000, 70000]) {
      const v = uniform(n, 0, 3, n).map(Math.floor); // many ties
      for (const nanAt of [-1, 0, Math.floor(n / 2), n - 1]) {
        const vals = [...v];
        if (nanAt >= 0) vals[nanAt] = NaN;
        if (nanAt >= 0 && n > 3) vals[n - 2] = NaN;
        const x = tensorOf(vals, [n], "f32");
        for (const op of ["max", "min"] as const) checkReduce(op, x, [n], [0], false, 1, "f32", `${op} n=${n} NaN at ${nanAt} ${isa}`);
        // the same along the first dim (column path) and the middle of a 3-D tensor
        const col = tensorOf(vals, [n, 1], "f32");
        for (const op of ["max", "min"] as const) checkReduce(op, col, [n, 1], [0], true, 1, "f32", `${op} [${n}, 1] dim 0 ${isa}`);
      }
    }
    const x = tensorOf(uniform(4 * 33 * 5, 0, 3, 1).map(Math.floor), [4, 33, 5], "bf16");
    for (const op of ["max", "min"] as const) for (const d of [0, 1, 2]) checkReduce(op, x, [4, 33, 5], [d], false, 1, "bf16", `${op} [4, 33, 5] dim ${d} ${isa}`);
    // columns over several row chunks (the first NaN of a column may sit in a later chunk)
    const cv = uniform(300 * 257, 0, 3, 2).map(Math.floor);
    for (const at of [5, 140 * 257 + 7, 299 * 257 + 256, 260 * 257 + 7]) cv[at] = NaN;
    for (const dt of ["f32", "f16"] as const) {
      const xc = tensorOf(cv, [300, 257], dt);
      for (const op of ["max", "min"] as const) checkReduce(op, xc, [300, 257], [0], false, 1, dt, `${op} [300, 257] dim 0 ${dt} ${isa}`);
    }
    const xs = tensorOf(uniform(300 * 257, -3, 3, 3), [300, 257], "f16");
    for (const op of ["sum", "mean", "var"] as const) checkReduce(op, xs, [300, 257], [0], true, 1, "f32", `${op} [300, 257] dim 0 f16 ${isa}`);
  }));

  it("empty reductions: sum 0, mean and var NaN, max/min ERR_SHAPE; empty outputs; 0-d inputs", () => {
    const e = Tensor.zeros([0, 3]);
    const r = (op: ROp, dims: number[], x = e, keep = false) => T(native.reduce(op, H(x), dims, keep, 1, "f32").values);
    expect(r("sum", [0]).toArray()).toEqual([0, 0, 0]);
    expect(r("mean", [0]).toArray()).toEqual([NaN, NaN, NaN]);
    expect(r("var", [0]).toArray()).toEqual([NaN, NaN, NaN]);
    expect(r("sum", []).toArray()).toEqual([0]);
    expect(r("sum", []).shape).toEqual([]);
    expect(r("sum", [], e, true).shape).toEqual([1, 1]);
    expect(r("max", [1]).shape).toEqual([0]); // reduces 3 elements per (no) output
    expectError(() => r("max", [0]), PeftError, "ERR_SHAPE", /reduce max: cannot take the maximum of an empty set: x has shape \[0, 3\] and dims \[0\]/);
    expectError(() => r("min", []), PeftError, "ERR_SHAPE", /reduce min: cannot take the minimum of an empty set/);
    const s = Tensor.fromArray([2.5], []);
    for (const dims of [[], [0], [-1]]) {
      expect(r("sum", dims, s).toArray()).toEqual([2.5]);
      expect(r("sum", dims, s).shape).toEqual([]);
      expect(r("var", dims, s).toArray()).toEqual([NaN]); // one element, correction 1
    }
    const m = native.reduce("max", H(s), [0], true, 1, "f32");
    expect(T(m.indices!).toArray()).toEqual([0]);
    expect(T(native.reduce("var", H(Tensor.fromArray([3], [1])), [0], false, 0, "f32").values).toArray()).toEqual([0]);
  });

  it("a 16M-element sum is accurate to far better than 1e-6 relative, over all, the last and the first dim, for any thread count", () => {
    const n = 1 << 24;
    const x = Tensor.rand([4096, 4096], { seed: 7, lo: 0, hi: 1 });
    const v = x.toFloat32Array();
    let total = 0, comp = 0; // Neumaier
    for (let i = 0; i < n; i++) {
      const t = total + v[i];
      comp += Math.abs(total) >= Math.abs(v[i]) ? total - t + v[i] : v[i] - t + total;
      total = t;
    }
    total += comp;
    const sums: Float32Array[] = [];
    for (const th of [1, 2]) {
      backend.setNumThreads(th);
      const all = T(native.reduce("sum", H(x), [], false, 1, "f32").values).toFloat64Array()[0];
      expect(Math.abs(all - total) / total).toBeLessThan(1e-7); // the final f32 rounding, 2^-24
      sums.push(T(native.reduce("sum", H(x), [], false, 1, "f32").values).toFloat32Array());
      sums.push(T(native.reduce("sum", H(x), [0], false, 1, "f32").values).toFloat32Array());
      sums.push(T(native.reduce("sum", H(x), [1], false, 1, "f32").values).toFloat32Array());
      sums.push(T(native.reduce("var", H(x), [0, 1], false, 1, "f32").values).toFloat32Array());
      sums.push(T(native.reduce("max", H(x), [0], false, 1, "f32").indices!).toFloat32Array());
    }
    for (let i = 0; i < 5; i++) expectSameBits(sums[i], sums[i + 5], `reduction ${i}, 1 vs 2 threads`);
    // columns and rows against float64
    const cols = sums[1], rows = sums[2];
    for (const c of [0, 1, 2047, 4095]) {
      let s = 0;
      for (let r = 0; r < 4096; r++) s += v[r * 4096 + c];
      expect(Math.abs(cols[c] - s)).toBeLessThanOrEqual(2 ** -24 * s + 4096 * 2 ** -50 * s);
    }
    for (const r of [0, 4095]) {
      let s = 0;
      for (let c = 0; c < 4096; c++) s += v[r * 4096 + c];
      expect(Math.abs(rows[r] - s)).toBeLessThanOrEqual(2 ** -24 * s + 4096 * 2 ** -50 * s);
    }
  });

  it("refuses bad ops, dims, dtypes and devices", () => {
    const x = Tensor.zeros([2, 3, 4]);
    const R = (op: string, dims: unknown, o: { x?: Tensor; out?: string; c?: number } = {}) =>
      native.reduce(op, H(o.x ?? x), dims as number[], false, o.c ?? 1, o.out ?? "f32");
    expectError(() => R("prod", []), TypeError, "ERR_INVALID_ARG_TYPE", /reduce: op must be "sum", "mean", "max", "min" or "var", got "prod"/);
    expectError(() => R("sum", [3]), PeftError, "ERR_SHAPE", /reduce sum: dim 3 is out of range for x of shape \[2, 3, 4\] \(expected -3 <= dim < 3\)/);
    expectError(() => R("sum", [-4]), PeftError, "ERR_SHAPE", /dim -4 is out of range/);
    expectError(() => R("mean", [1, -2]), PeftError, "ERR_SHAPE", /reduce mean: dims \[1, -2\] name dimension 1 twice/);
    expectError(() => R("sum", [0, 0]), PeftError, "ERR_SHAPE", /name dimension 0 twice/);
    expectError(() => R("sum", [1.5]), RangeError, "ERR_OUT_OF_RANGE", /reduce sum: dims\[0\] must be an integer/);
    expectError(() => R("sum", 1), TypeError, "ERR_INVALID_ARG_TYPE", /reduce sum: dims must be an array/);
    expectError(() => R("sum", [], { out: "i64" }), PeftError, "ERR_DTYPE", /reduce sum: outDtype must be f32, f16 or bf16, got i64/);
    expectError(() => R("sum", [], { x: Tensor.zeros([3], { dtype: "i32" }) }), PeftError, "ERR_DTYPE", /reduce sum: x must be f32, f16 or bf16, got i32/);
    expectError(() => R("var", [], { c: NaN }), RangeError, "ERR_OUT_OF_RANGE", /reduce var: correction must be a finite number/);
    expectError(() => native.reduce("sum", H(x), [], 1 as unknown as boolean, 1, "f32"), TypeError, "ERR_INVALID_ARG_TYPE", /keepdim must be a boolean/);
    expectError(() => R("sum", [], { x: Tensor.zeros([3], { device: "cuda" }) }), PeftError, "ERR_NOT_ON_DEVICE", /^reduce sum: no cuda kernel/);
  });
});

// ---- copyStrided ----

/** Reference strided copy over flat arrays. */
function refStrided(src: ArrayLike<number>, shape: number[], st: number[], off: number): number[] {
  const n = numel(shape), out: number[] = [];
  for (let f = 0; f < n; f++) {
    let rem = f, pos = off;
    for (let d = shape.length - 1; d >= 0; d--) {
      pos += (rem % shape[d]) * st[d];
      rem = Math.floor(rem / shape[d]);
    }
    out.push(src[pos]);
  }
  return out;
}

const contiguous = (shape: number[]) => shape.map((_, d) => numel(shape.slice(d + 1)));

describe("copyStrided", () => {
  const DTS: DT[] = ["f32", "f16", "bf16", "i8", "u8", "i32", "i64"];
  const ints = (n: number, seed: number) => uniform(n, -100, 100, seed).map(Math.round);

  it("transposes (blocked path) of odd, tile-straddling and empty sizes, every element size", () => {
    for (const dt of DTS)
      for (const [r, c] of [[1, 1], [7, 17], [33, 127], [0, 5], [5, 0], [300, 65], [1, 100], [100, 1]]) {
        const x = Tensor.fromArray(ints(r * c, r + c), [r, c], dt), xv = x.toFloat64Array();
        const y = T(native.copyStrided(H(x), [c, r], [1, c], 0, null, [], 0));
        expect(y.shape).toEqual([c, r]);
        expect(y.dtype).toBe(dt);
        expect(Array.from(y.toFloat64Array()), `${dt} ${r}x${c}`).toEqual(refStrided(xv, [c, r], [1, c], 0));
      }
  });

  it("permutes, expands (stride 0), narrows with offsets, steps and flips (negative strides)", () => {
    const x = Tensor.fromArray(ints(2 * 3 * 4 * 5, 1), [2, 3, 4, 5], "f32"), xv = x.toFloat64Array();
    const cases: [number[], number[], number][] = [
      [[5, 2, 3, 4], [1, 60, 20, 5], 0], // permute (3, 0, 1, 2)
      [[4, 3, 5, 2], [5, 20, 1, 60], 0],
      [[2, 3, 7, 4, 5], [60, 20, 0, 5, 1], 0], // expand a new dim
      [[3, 3, 5], [0, 5, 1], 20], // expand + narrow
      [[2, 2, 4, 5], [60, 20, 5, 1], 20], // narrow dim 1 at 1
      [[2, 3, 2, 3], [60, 20, 10, 2], 0], // steps
      [[5], [-1], 4], // flip
      [[2, 3, 4, 5], [-60, -20, -5, -1], 119], // flip everything
      [[120], [1], 0],
      [[], [], 17], // one element
      [[4, 0, 3], [1, 1, 1], 0], // empty: nothing read
    ];
    for (const [shape, st, off] of cases) {
      const y = T(native.copyStrided(H(x), shape, st, off, null, [], 0));
      expect(y.shape).toEqual(shape);
      expect(Array.from(y.toFloat64Array()), `shape [${shape}] strides [${st}] offset ${off}`).toEqual(refStrided(xv, shape, st, off));
    }
    // a long contiguous run is split across threads; the same bytes for any thread count
    const big = Tensor.rand([1 << 20], { seed: 3 });
    for (const th of [1, 2]) {
      backend.setNumThreads(th);
      const y = T(native.copyStrided(H(big), [1 << 19], [2], 1, null, [], 0)).toFloat32Array();
      const bv = big.toFloat32Array();
      for (let i = 0; i < y.length; i += 9973) expect(y[i]).toBe(bv[2 * i + 1]);
    }
  });

  it("writes into dst in place (cat into a buffer, converting dtypes), returns dst and bumps its version", () => {
    const a = Tensor.fromArray(ints(6, 1), [2, 3]), b = Tensor.fromArray(ints(4, 2), [2, 2]);
    const dst = Tensor.zeros([2, 5], { dtype: "f16" });
    const v0 = dst.version;
    const h = native.copyStrided(H(a), [2, 3], [3, 1], 0, H(dst), [5, 1], 0);
    expect(h).toBe(H(dst));
    native.copyStrided(H(b), [2, 2], [2, 1], 0, H(dst), [5, 1], 3);
    expect(dst.version).toBeGreaterThan(v0);
    const av = a.toArray(), bv = b.toArray();
    expect(dst.toArray()).toEqual([av[0], av[1], av[2], bv[0], bv[1], av[3], av[4], av[5], bv[2], bv[3]]);
    // f32 -> i32 rounds half to even and saturates; f32 -> bf16 rounds to nearest even
    const f = Tensor.fromArray([2.5, -3.5, 1e10, -1e10, 0.4999], [5]);
    const di = Tensor.zeros([5], { dtype: "i32" });
    native.copyStrided(H(f), [5], [1], 0, H(di), [1], 0);
    expect(di.toArray()).toEqual([2, -4, 2147483647, -2147483648, 0]);
    const db = Tensor.zeros([5, 2], { dtype: "bf16" });
    native.copyStrided(H(f), [5], [1], 0, H(db), [2], 1); // every other column, converted
    expect(db.toArray()).toEqual([0, 2.5, 0, -3.5, 0, ...roundTo([1e10], "bf16"), 0, ...roundTo([-1e10], "bf16"), 0, ...roundTo([0.4999], "bf16")]);
    // transposed destination, same dtype (blocked path with dst-side contiguity)
    const s = Tensor.fromArray(ints(7 * 33, 4), [7, 33]), dT = Tensor.zeros([33, 7]);
    native.copyStrided(H(s), [7, 33], [33, 1], 0, H(dT), [1, 7], 0);
    expect(Array.from(dT.toFloat64Array())).toEqual(refStrided(s.toFloat64Array(), [33, 7], [1, 33], 0));
  });

  it("src and dst in one storage copy as if src were read first", () => {
    const x = Tensor.fromArray([0, 1, 2, 3, 4, 5, 6, 7], [8]);
    native.copyStrided(H(x), [6], [1], 0, H(x), [1], 2); // shift right by 2
    expect(x.toArray()).toEqual([0, 1, 0, 1, 2, 3, 4, 5]);
    const m = Tensor.fromArray([1, 2, 3, 4], [2, 2]);
    native.copyStrided(H(m), [2, 2], [1, 2], 0, H(m), [2, 1], 0); // in-place transpose
    expect(m.toArray()).toEqual([1, 3, 2, 4]);
  });

  it("refuses views outside either storage, overlapping destinations and bad arguments, writing nothing", () => {
    const x = Tensor.fromArray(ints(12, 5), [3, 4]);
    const dst = Tensor.zeros([3, 4]);
    const C = (shape: unknown, st: unknown, off: unknown, d: Tensor | null = null, dst_st: unknown = [], doff: unknown = 0) =>
      native.copyStrided(H(x), shape as number[], st as number[], off as number, d && H(d), dst_st as number[], doff as number);
    expectError(() => C([3, 5], [4, 1], 0), PeftError, "ERR_SHAPE",
      /copyStrided: the src view \(shape \[3, 5\], strides \[4, 1\], offset 0\) reaches elements 0 to 12 but src has 12 elements \(shape \[3, 4\]\)/);
    expectError(() => C([4], [1], 9), PeftError, "ERR_SHAPE", /reaches elements 9 to 12/);
    expectError(() => C([4], [-1], 2), PeftError, "ERR_SHAPE", /reaches elements -1 to 2/);
    expectError(() => C([3, 4], [2 ** 52, 2 ** 52], 0), PeftError, "ERR_SHAPE", /reaches elements/);
    expectError(() => C([2 ** 40, 2 ** 13], [1, 2 ** 40], 0), PeftError, "ERR_SHAPE", /reaches elements/);
    expectError(() => C([3, 4], [4, 1], 0, dst, [4, 1], 1), PeftError, "ERR_SHAPE", /the dst view .* reaches elements 1 to 12 but dst has 12 elements/);
    expectError(() => C([3, 4], [4, 1], 0, dst, [0, 1], 0), PeftError, "ERR_SHAPE", /copyStrided: dst strides \[0, 1\] over shape \[3, 4\] make several elements land on one position/);
    expectError(() => C([3, 4], [4, 1], 0, dst, [2, 1], 0), PeftError, "ERR_SHAPE", /make several elements land on one position/);
    expect(dst.toArray().every((v) => v === 0)).toBe(true);
    expectError(() => C([3, 4], [4], 0), PeftError, "ERR_SHAPE", /copyStrided: srcStrides has 1 entries but shape has 2 dimensions/);
    expectError(() => C([3, 4], [4, 1], 0, dst, [4], 0), PeftError, "ERR_SHAPE", /dstStrides has 1 entries/);
    expectError(() => C([3, 4], [4, 0.5], 0), RangeError, "ERR_OUT_OF_RANGE", /copyStrided: srcStrides\[1\] must be an integer/);
    expectError(() => C([3, 4], [4, 1], -1), RangeError, "ERR_OUT_OF_RANGE", /copyStrided: srcOffset must be an integer in \[0, /);
    expectError(() => C([3, -4], [4, 1], 0), RangeError, "ERR_OUT_OF_RANGE", /copyStrided: shape\[1\] must be a non-negative integer/);
    expectError(() => C([3, 4], "4,1", 0), TypeError, "ERR_INVALID_ARG_TYPE", /copyStrided: srcStrides must be an array of integers/);
    expectError(() => native.copyStrided(H(x), [3, 4], [4, 1], 0, {} as NativeTensor, [4, 1], 0), TypeError, "ERR_INVALID_ARG_TYPE", /copyStrided: dst/);
    const g = Tensor.zeros([3, 4], { device: "cuda" });
    expectError(() => native.copyStrided(H(g), [3, 4], [4, 1], 0, null, [], 0), PeftError, "ERR_NOT_ON_DEVICE", /^copyStrided: no cuda kernel/);
    expectError(() => C([3, 4], [4, 1], 0, g, [4, 1], 0), PeftError, "ERR_DEVICE", /copyStrided: src is on cpu but dst is on cuda/);
    // an empty view checks nothing and writes nothing
    expect(T(C([0, 4], [2 ** 50, 1], 0)).shape).toEqual([0, 4]);
  });
});

// ---- indexSelect / indexAdd ----

describe("indexSelect and indexAdd", () => {
  it("indexSelect along every dim, i32/i64 indices with repeats, odd and empty sizes, any dtype", () => {
    for (const dt of ["f32", "f16", "bf16", "i64", "u8"] as DT[])
      for (const shape of [[7, 17], [3, 5, 7], [33], [4, 0, 3]])
        for (let dim = -shape.length; dim < shape.length; dim++) {
          const d = dim < 0 ? dim + shape.length : dim;
          const x = Tensor.fromArray(uniform(numel(shape), 0, 100, 1).map(Math.round), shape, dt), xv = x.toFloat64Array();
          for (const idt of ["i32", "i64"] as const)
            for (const n of [0, 1, 5, 40]) {
              if (shape[d] === 0 && n > 0) continue;
              const iv = uniform(n, 0, shape[d], n + d).map(Math.floor);
              const y = T(native.indexSelect(H(x), dim, H(Tensor.fromArray(iv, [n], idt))));
              const os = [...shape];
              os[d] = n;
              expect(y.shape).toEqual(os);
              expect(y.dtype).toBe(dt);
              const st = contiguous(shape);
              const want = refStrided(xv, os, st, 0).map((_, f) => {
                let rem = f, pos = 0;
                for (let k = os.length - 1; k >= 0; k--) {
                  const c = rem % os[k];
                  rem = Math.floor(rem / os[k]);
                  pos += (k === d ? iv[c] : c) * st[k];
                }
                return xv[pos];
              });
              expect(Array.from(y.toFloat64Array()), `${dt} [${shape}] dim ${dim} n=${n}`).toEqual(want);
            }
        }
  });

  it("a 0-d x takes exactly one index and stays 0-d", () => {
    const s = Tensor.fromArray([4.5], []);
    const y = T(native.indexSelect(H(s), 0, H(Tensor.fromArray([0], [1], "i64"))));
    expect(y.shape).toEqual([]);
    expect(y.toArray()).toEqual([4.5]);
    expectError(() => native.indexSelect(H(s), -1, H(Tensor.fromArray([0, 0], [2], "i64"))), PeftError, "ERR_SHAPE", /indexSelect: x is 0-d, so index must hold exactly one value, got 2/);
    expectError(() => native.indexSelect(H(s), 0, H(Tensor.fromArray([1], [1], "i64"))), RangeError, "ERR_OUT_OF_RANGE", /index value 1 .* which has size 1/);
    const d = Tensor.fromArray([1], []);
    native.indexAdd(H(d), 0, H(Tensor.fromArray([0, 0], [2], "i32")), H(Tensor.fromArray([2, 3], [2])));
    expect(d.toArray()).toEqual([6]);
  });

  it("indexAdd accumulates repeated indices (one rounding per destination, any thread count)", () => {
    for (const [ddt, sdt] of [["f32", "f32"], ["f16", "f32"], ["bf16", "f16"], ["f32", "bf16"]] as const)
      for (const [shape, dim, n] of [[[7, 17], 0, 20], [[7, 17], 1, 5], [[3, 5, 7], 1, 9], [[33], 0, 100], [[5, 3], 0, 0], [[4, 0], 0, 3]] as const) {
        const D = shape[dim];
        const dst = tensorOf(uniform(numel(shape), -1, 1, 2), shape, ddt);
        const ss = [...shape];
        ss[dim] = n;
        const src = tensorOf(uniform(numel(ss), -1, 1, 3), ss, sdt);
        const iv = uniform(n, 0, D, 4).map(Math.floor);
        const want = Float64Array.from(dst.v), scale = Float64Array.from(dst.v, Math.abs);
        const dstt = contiguous([...shape]);
        for (let f = 0; f < src.v.length; f++) {
          let rem = f, pos = 0;
          for (let k = ss.length - 1; k >= 0; k--) {
            const c = rem % ss[k];
            rem = Math.floor(rem / ss[k]);
            pos += (k === dim ? iv[c] : c) * dstt[k];
          }
          want[pos] += src.v[f];
          scale[pos] += Math.abs(src.v[f]);
        }
        const v0 = dst.t.version;
        native.indexAdd(H(dst.t), dim, H(Tensor.fromArray(iv, [n], "i64")), H(src.t));
        expect(dst.t.version).toBeGreaterThan(v0);
        expectClose(dst.t.toFloat64Array(), want, (i) => tolIn(ddt, want[i], (n + 1) * E, scale[i]), `indexAdd ${ddt} += ${sdt} [${shape}] dim ${dim}`);
      }
    // many duplicates, large: the same bits for 1 and 2 threads
    const run = (th: number) => {
      backend.setNumThreads(th);
      const d = Tensor.zeros([64, 1000]);
      const iv = uniform(5000, 0, 64, 9).map(Math.floor);
      native.indexAdd(H(d), 0, H(Tensor.fromArray(iv, [5000], "i32")), H(Tensor.rand([5000, 1000], { seed: 5 })));
      return d.toFloat32Array();
    };
    expectSameBits(run(1), run(2), "indexAdd 1 vs 2 threads");
  });

  it("refuses out-of-range indices (RangeError naming value and bound, before writing), bad shapes and dtypes", () => {
    const x = Tensor.fromArray(uniform(12, 0, 1, 1), [3, 4]);
    const before = x.toArray();
    expectError(() => native.indexSelect(H(x), 1, H(Tensor.fromArray([0, 4], [2], "i64"))), RangeError, "ERR_OUT_OF_RANGE",
      /indexSelect: index value 4 \(element 1 of index\) is out of range for dimension 1 of x, which has size 4 \(expected 0 <= index < 4\)/);
    expectError(() => native.indexSelect(H(x), 0, H(Tensor.fromArray([-1], [1], "i32"))), RangeError, "ERR_OUT_OF_RANGE", /index value -1 .* dimension 0 of x, which has size 3/);
    expectError(() => native.indexAdd(H(x), 0, H(Tensor.fromArray([0, 1, 3], [3], "i64")), H(Tensor.zeros([3, 4]))), RangeError, "ERR_OUT_OF_RANGE",
      /indexAdd: index value 3 \(element 2 of index\) is out of range for dimension 0 of dst, which has size 3/);
    expect(x.toArray()).toEqual(before);
    expectError(() => native.indexSelect(H(x), 2, H(Tensor.fromArray([0], [1], "i64"))), PeftError, "ERR_SHAPE", /indexSelect: dim 2 is out of range for x of shape \[3, 4\]/);
    expectError(() => native.indexSelect(H(x), 0, H(Tensor.zeros([1, 1], { dtype: "i64" }))), PeftError, "ERR_SHAPE", /indexSelect: index must have 0 to 1 dimensions/);
    expectError(() => native.indexSelect(H(x), 0, H(Tensor.zeros([1]))), PeftError, "ERR_DTYPE", /indexSelect: index must be i32 or i64, got f32/);
    expectError(() => native.indexAdd(H(x), 0, H(Tensor.fromArray([0], [1], "i64")), H(Tensor.zeros([2, 4]))), PeftError, "ERR_SHAPE",
      /indexAdd: src has shape \[2, 4\] but dst \[3, 4\] with 1 indices along dim 0 needs \[1, 4\]/);
    expectError(() => native.indexAdd(H(Tensor.zeros([3], { dtype: "i32" })), 0, H(Tensor.fromArray([0], [1], "i64")), H(Tensor.zeros([1]))), PeftError, "ERR_DTYPE",
      /indexAdd: dst must be f32, f16 or bf16, got i32/);
    const g = Tensor.zeros([3], { device: "cuda" });
    expectError(() => native.indexSelect(H(g), 0, H(Tensor.fromArray([0], [1], "i64"))), PeftError, "ERR_DEVICE", /indexSelect: x is on cuda but index is on cpu/);
    expectError(() => native.indexSelect(H(g), 0, H(Tensor.zeros([1], { dtype: "i64", device: "cuda" }))), PeftError, "ERR_NOT_ON_DEVICE", /^indexSelect: no cuda kernel/);
  });
});

// ---- gather / scatterAdd ----

describe("gather and scatterAdd", () => {
  /** Flat offsets for coordinates `c` in a contiguous tensor of `shape`. */
  const flat = (c: number[], shape: readonly number[]) => c.reduce((a, ci, d) => a * shape[d] + ci, 0);
  const coords = (f: number, shape: readonly number[]) => {
    const c = new Array<number>(shape.length);
    for (let d = shape.length - 1; d >= 0; d--) (c[d] = f % shape[d]), (f = Math.floor(f / shape[d]));
    return c;
  };

  it("gather: index smaller than x off the gathered dim, every dim, any dtype, odd and empty", () => {
    for (const dt of ["f32", "bf16", "i64", "i8"] as DT[])
      for (const [xs, is] of [[[7, 17], [5, 9]], [[3, 5, 7], [3, 8, 2]], [[33], [40]], [[4, 6], [0, 3]], [[2, 3, 4], [2, 3, 4]]] as const)
        for (let dim = 0; dim < xs.length; dim++) {
          const ish = is.map((s, d) => (d === dim ? s : Math.min(s, xs[d])));
          const x = Tensor.fromArray(uniform(numel([...xs]), -50, 50, 2).map(Math.round), [...xs], dt), xv = x.toFloat64Array();
          const iv = uniform(numel(ish), 0, xs[dim], 3).map(Math.floor);
          for (const idt of ["i32", "i64"] as const) {
            const y = T(native.gather(H(x), dim - xs.length, H(Tensor.fromArray(iv, ish, idt))));
            expect(y.shape).toEqual(ish);
            expect(y.dtype).toBe(dt);
            const want = iv.map((v, f) => {
              const c = coords(f, ish);
              c[dim] = v;
              return xv[flat(c, xs)];
            });
            expect(Array.from(y.toFloat64Array()), `gather ${dt} [${xs}] [${ish}] dim ${dim}`).toEqual(want);
          }
        }
    expect(T(native.gather(H(Tensor.fromArray([4], [])), 0, H(Tensor.fromArray([0], [], "i64")))).toArray()).toEqual([4]);
  });

  it("scatterAdd: repeated targets accumulate in index order; src larger than index; every dim", () => {
    for (const [ddt, sdt] of [["f32", "f32"], ["bf16", "f32"], ["f16", "f16"]] as const)
      for (const [ds, is, ss] of [[[7, 17], [5, 9], [6, 10]], [[3, 5, 7], [3, 8, 2], [3, 9, 2]], [[33], [100], [100]], [[4, 6], [0, 3], [1, 3]]] as const)
        for (let dim = 0; dim < ds.length; dim++) {
          const ish = is.map((s, d) => (d === dim ? s : Math.min(s, ds[d])));
          const ssh = ss.map((s, d) => Math.max(s, ish[d]));
          const dst = tensorOf(uniform(numel([...ds]), -1, 1, 5), [...ds], ddt);
          const src = tensorOf(uniform(numel(ssh), -1, 1, 6), ssh, sdt);
          const iv = uniform(numel(ish), 0, ds[dim], 7).map(Math.floor);
          const want = Float64Array.from(dst.v), scale = Float64Array.from(dst.v, Math.abs), hits = new Float64Array(want.length);
          iv.forEach((v, f) => {
            const c = coords(f, ish);
            const sv = src.v[flat(c, ssh)];
            c[dim] = v;
            const p = flat(c, ds);
            want[p] += sv;
            scale[p] += Math.abs(sv);
            hits[p]++;
          });
          native.scatterAdd(H(dst.t), dim, H(Tensor.fromArray(iv, ish, "i64")), H(src.t));
          // each add rounds into dst's dtype (as PyTorch's scatter_add_ does)
          expectClose(dst.t.toFloat64Array(), want, (i) => (hits[i] + 1) * (UNIT[ddt] + E) * scale[i] + ABS[ddt],
            `scatterAdd ${ddt} += ${sdt} [${ds}] dim ${dim}`);
        }
  });

  it("refuses mismatched ranks and sizes, out-of-range indices (before writing), bad dtypes and devices", () => {
    const x = Tensor.zeros([3, 4]);
    const i64 = (v: number[], s: number[]) => Tensor.fromArray(v, s, "i64");
    expectError(() => native.gather(H(x), 0, H(i64([0], [1]))), PeftError, "ERR_SHAPE", /gather: index has 1 dimensions \(shape \[1\]\) but x has 2 \(shape \[3, 4\]\)/);
    expectError(() => native.gather(H(x), 0, H(i64([0, 0, 0, 0, 0], [1, 5]))), PeftError, "ERR_SHAPE",
      /gather: index of shape \[1, 5\] is larger than x of shape \[3, 4\] in dimension 1 \(only dim 0 may be\)/);
    expectError(() => native.gather(H(x), 1, H(i64([0, 4], [1, 2]))), RangeError, "ERR_OUT_OF_RANGE", /gather: index value 4 \(element 1 of index\) is out of range for dimension 1 of x, which has size 4/);
    expectError(() => native.gather(H(x), -3, H(i64([0], [1, 1]))), PeftError, "ERR_SHAPE", /gather: dim -3 is out of range/);
    expectError(() => native.gather(H(x), 0, H(Tensor.zeros([1, 1]))), PeftError, "ERR_DTYPE", /gather: index must be i32 or i64, got f32/);
    const before = x.toArray();
    expectError(() => native.scatterAdd(H(x), 0, H(i64([0, 3], [1, 2])), H(Tensor.zeros([1, 2]))), RangeError, "ERR_OUT_OF_RANGE",
      /scatterAdd: index value 3 \(element 1 of index\) is out of range for dimension 0 of dst, which has size 3/);
    expect(x.toArray()).toEqual(before);
    expectError(() => native.scatterAdd(H(x), 0, H(i64([0, 1], [1, 2])), H(Tensor.zeros([1, 1]))), PeftError, "ERR_SHAPE",
      /scatterAdd: index of shape \[1, 2\] is larger than src of shape \[1, 1\] in dimension 1/);
    expectError(() => native.scatterAdd(H(x), 1, H(i64([0], [1, 1])), H(Tensor.zeros([1, 1], { dtype: "i32" }))), PeftError, "ERR_DTYPE", /scatterAdd: src must be f32, f16 or bf16/);
    const g = Tensor.zeros([3, 4], { device: "cuda" });
    expectError(() => native.scatterAdd(H(g), 0, H(i64([0], [1, 1])), H(Tensor.zeros([1, 1]))), PeftError, "ERR_DEVICE", /scatterAdd: dst is on cuda but index is on cpu/);
    expectError(() => native.gather(H(g), 0, H(Tensor.zeros([1, 1], { dtype: "i64", device: "cuda" }))), PeftError, "ERR_NOT_ON_DEVICE", /^gather: no cuda kernel/);
  });
});

// ---- matmulBatched ----

describe("matmulBatched", () => {
  /** (batch..., M, N) reference with a's/b's batch dims broadcast; transA/transB read the stored layouts. */
  function refBmm(av: Float64Array, as: number[], bv: Float64Array, bs: number[], ta: boolean, tb: boolean) {
    const M = ta ? as.at(-1)! : as.at(-2)!, K = ta ? as.at(-2)! : as.at(-1)!, N = tb ? bs.at(-2)! : bs.at(-1)!;
    const batch = broadcastShape([as.slice(0, -2), bs.slice(0, -2)]);
    const ma = broadcastIndex(as.slice(0, -2), batch), mb = broadcastIndex(bs.slice(0, -2), batch);
    const nb = numel(batch), out = new Float64Array(nb * M * N), scale = new Float64Array(nb * M * N);
    for (let q = 0; q < nb; q++)
      for (let m = 0; m < M; m++)
        for (let n = 0; n < N; n++) {
          let s = 0, sa = 0;
          for (let k = 0; k < K; k++) {
            const x = av[ma[q] * M * K + (ta ? k * M + m : m * K + k)], y = bv[mb[q] * K * N + (tb ? n * K + k : k * N + n)];
            s += x * y;
            sa += Math.abs(x * y);
          }
          out[(q * M + m) * N + n] = s;
          scale[(q * M + m) * N + n] = sa;
        }
    return { out, scale, shape: [...batch, M, N], K };
  }

  const CASES: [number[], number[], boolean, boolean][] = [
    [[2, 3, 7, 17], [17, 5], false, false], // one b: batches stack into one product
    [[7, 17], [2, 17, 5], false, false], // a broadcast over b's batch
    [[2, 1, 5, 3], [1, 3, 3, 4], false, false], // both broadcast
    [[4, 9, 6], [4, 9, 6], true, false],
    [[4, 6, 9], [4, 5, 9], false, true],
    [[3, 9, 6], [5, 9], true, true],
    [[1, 1], [1, 1], false, false],
    [[33, 3, 4], [33, 4, 127], false, false], // many small slices: one per thread
    [[2, 0, 5], [5, 3], false, false], // M = 0
    [[2, 4, 0], [2, 0, 3], false, false], // K = 0: zeros
    [[0, 4, 5], [5, 3], false, false], // no batches
    [[3, 65, 130], [3, 130, 70], false, false],
  ];

  for (const [as, bs, ta, tb] of CASES)
    it(`a [${as}]${ta ? "ᵀ" : ""} x b [${bs}]${tb ? "ᵀ" : ""}, every dtype mix`, () => {
      for (const [adt, bdt] of [["f32", "f32"], ["f16", "f32"], ["bf16", "bf16"], ["f32", "f16"]] as const) {
        const a = tensorOf(uniform(numel(as), -1, 1, 1), as, adt), b = tensorOf(uniform(numel(bs), -1, 1, 2), bs, bdt);
        const c = T(native.matmulBatched(H(a.t), H(b.t), ta, tb));
        const r = refBmm(a.v, as, b.v, bs, ta, tb);
        expect(c.shape).toEqual(r.shape);
        expect(c.dtype).toBe(adt);
        expectClose(c.toFloat64Array(), r.out, (i) => tolIn(adt, r.out[i], (r.K + 2) * E, r.scale[i]), `bmm ${adt} x ${bdt}`);
      }
    });

  it("refuses mismatched inner and batch dimensions, vectors, integer operands and cuda operands", () => {
    const M = (a: number[], b: number[], o: { ta?: boolean; adt?: DT; dev?: "cuda" } = {}) =>
      native.matmulBatched(H(Tensor.zeros(a, { dtype: o.adt ?? "f32", device: o.dev ?? "cpu" })), H(Tensor.zeros(b, { device: o.dev ?? "cpu" })), o.ta ?? false, false);
    expectError(() => M([2, 3, 4], [5, 6]), PeftError, "ERR_SHAPE", /matmulBatched: inner dimensions differ: a is 3x4 \(shape \[2, 3, 4\]\), b is 5x6/);
    expectError(() => M([2, 3, 4], [3, 4, 6]), PeftError, "ERR_SHAPE", /matmulBatched: batch dimensions of a \[2, 3, 4\] and b \[3, 4, 6\] do not broadcast \(dimension -3: 2 vs 3\)/);
    expectError(() => M([4], [4, 2]), PeftError, "ERR_SHAPE", /matmulBatched: a must have 2 to 16 dimensions/);
    expectError(() => M([2, 4], [4, 2], { adt: "i32" }), PeftError, "ERR_DTYPE", /matmulBatched: a must be f32, f16 or bf16, got i32/);
    expectError(() => M([2, 4], [4, 2], { dev: "cuda" }), PeftError, "ERR_NOT_ON_DEVICE", /^matmulBatched: no cuda kernel/);
  });
});
