// IA3Layer on Linear, Conv1D and Conv2d against float64 references written as the definition:
// y = base(x ⊙ s_in) ⊙ s_out with s the product of the active adapters' vectors; backward, merge and unmerge.
import { afterEach, beforeEach, describe, expect, it, vi, type MockInstance } from "vitest";
import { Conv1D, Conv2d, Embedding, IA3Layer, Linear, PeftError, Tensor } from "../lib/index.js";
import { UNIT, expectClose, expectError } from "./helpers/numeric.js";
import { values } from "./helpers/nn-reference.js";
import { conv2dGradRef, conv2dRef, outSize, type ConvRefGeom } from "./helpers/conv-reference.js";

type Kind = "linear" | "conv1d" | "conv2d";

let warn: MockInstance<typeof process.emitWarning>;
// Every warning of the file: PEFT's warnings are shown once per process, so later tests look here.
const warnings: string[] = [];
beforeEach(() => {
  warn = vi.spyOn(process, "emitWarning").mockImplementation((w) => void warnings.push(String(w)));
});
afterEach(() => warn.mockRestore());

/** A layer's geometry: dense (M rows of K → N) or a 3x3 convolution (stride 2, padding 1) of an N·C·H·W batch. */
interface Case {
  kind: Kind;
  M: number;
  K: number;
  N: number;
  ff: boolean;
}

const geom = (c: Case): ConvRefGeom => ({ N: c.M, C: c.K, H: 5, W: 4, OC: c.N, KH: 3, KW: 3, sh: 2, sw: 1, ph: 1, pw: 1, dh: 1, dw: 1, G: 1 });

function makeBase(c: Case, seed: number): Linear | Conv1D | Conv2d {
  const base = c.kind === "linear" ? new Linear(c.K, c.N, { seed }) : c.kind === "conv1d" ? new Conv1D(c.N, c.K, { seed }) : new Conv2d(c.K, c.N, 3, { stride: [2, 1], padding: 1, seed });
  base.weight.copyFrom(Tensor.fromArray(values(base.weight.numel, seed + 1), base.weight.shape));
  base.bias!.copyFrom(Tensor.fromArray(values(c.N, seed + 2), [c.N]));
  return base;
}

function setVector(l: IA3Layer, name: string, v: ArrayLike<number>): void {
  const t = l.ia3Vector(name);
  t.copyFrom(Tensor.fromArray(Array.from(v), t.shape));
}

function xShape(c: Case): number[] {
  return c.kind === "conv2d" ? [c.M, c.K, 5, 4] : [c.M, c.K];
}

/** The channel an element of a dense (…, C) or NCHW tensor belongs to. */
function channelOf(kind: Kind, C: number, HW: number) {
  return kind === "conv2d" ? (i: number) => Math.floor(i / HW) % C : (i: number) => i % C;
}

function scaled(v: ArrayLike<number>, s: ArrayLike<number> | null, ch: (i: number) => number): Float64Array {
  return Float64Array.from(v, (x, i) => (s ? x * s[ch(i)] : x));
}

function channelSums(a: ArrayLike<number>, b: ArrayLike<number>, C: number, ch: (i: number) => number): Float64Array {
  const out = new Float64Array(C);
  for (let i = 0; i < a.length; i++) out[ch(i)] += a[i] * b[i];
  return out;
}

/**
 * The layer in float64: forward and every gradient for dy. Run on absolute values it gives the magnitudes the
 * f32 roundings act on (each result's error is bounded relative to the same sum of |terms|).
 */
function reference(c: Case, x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number>, s: ArrayLike<number>, dy: ArrayLike<number>) {
  const sIn = c.ff ? s : null, sOut = c.ff ? null : s;
  const g = geom(c);
  const [OH, OW] = outSize(g);
  const chIn = channelOf(c.kind, c.K, 20), chOut = channelOf(c.kind, c.N, OH * OW);
  const xs = scaled(x, sIn, chIn);
  const W = (n: number, k: number) => (c.kind === "conv1d" ? w[k * c.N + n] : w[n * c.K + k]);
  let u: Float64Array;
  if (c.kind === "conv2d") u = conv2dRef(g, xs, w, b).y;
  else {
    u = new Float64Array(c.M * c.N);
    for (let m = 0; m < c.M; m++)
      for (let n = 0; n < c.N; n++) {
        let acc = b[n];
        for (let k = 0; k < c.K; k++) acc += xs[m * c.K + k] * W(n, k);
        u[m * c.N + n] = acc;
      }
  }
  const y = scaled(u, sOut, chOut);
  const du = scaled(dy, sOut, chOut);
  let dxs: Float64Array, dW: Float64Array, db: Float64Array;
  if (c.kind === "conv2d") ({ dx: dxs, dW, db } = conv2dGradRef(g, xs, w, du));
  else {
    dxs = new Float64Array(c.M * c.K);
    dW = new Float64Array(c.K * c.N);
    db = new Float64Array(c.N);
    for (let m = 0; m < c.M; m++)
      for (let n = 0; n < c.N; n++) {
        const d = du[m * c.N + n];
        db[n] += d;
        for (let k = 0; k < c.K; k++) {
          dxs[m * c.K + k] += d * W(n, k);
          dW[c.kind === "conv1d" ? k * c.N + n : n * c.K + k] += d * xs[m * c.K + k];
        }
      }
  }
  const ds = c.ff ? channelSums(dxs, x, c.K, chIn) : channelSums(dy, u, c.N, chOut);
  return { y, dx: scaled(dxs, sIn, chIn), dW, db, ds };
}

/** Steps of f32 accumulation in each result (terms per sum, plus the scalings). */
const steps = (c: Case) => (c.kind === "conv2d" ? 9 * Math.max(c.K, c.N) * c.M * 20 : Math.max(c.K, c.N, c.M)) + 8;
const tol = (c: Case, mag: Float64Array) => (i: number) => 2 * steps(c) * UNIT.f32 * mag[i] + 1e-30;
const abs = (v: ArrayLike<number>) => Float64Array.from(v, Math.abs);

const CASES: Case[] = [];
for (const kind of ["linear", "conv1d", "conv2d"] as const)
  for (const ff of [false, true])
    for (const [M, K, N] of kind === "conv2d" ? [[2, 3, 5], [1, 7, 4], [0, 3, 2]] : [[7, 17, 33], [33, 7, 1], [0, 5, 3], [1, 1, 1]])
      CASES.push({ kind, M, K, N, ff });

const label = (c: Case) => `${c.kind} ${c.ff ? "feed-forward" : "output"} M=${c.M} K=${c.K} N=${c.N}`;

describe("IA3Layer: PEFT's vectors", () => {
  it("shapes (1, in) / (out, 1), Conv2d (1, C, 1, 1); ones by default, N(0, 1) with initIa3Weights false", () => {
    const shape = (base: Linear | Conv1D | Conv2d, isFeedforward: boolean, init = true) => new IA3Layer(base, { isFeedforward, initIa3Weights: init }).ia3Vector("default");
    expect(shape(new Linear(3, 5), true).shape).toEqual([1, 3]);
    expect(shape(new Linear(3, 5), false).shape).toEqual([5, 1]);
    expect(shape(new Conv1D(5, 3), true).shape).toEqual([1, 3]); // Conv1D(nf = 5 out, nx = 3 in)
    expect(shape(new Conv1D(5, 3), false).shape).toEqual([5, 1]);
    expect(shape(new Conv2d(3, 4, 3), true).shape).toEqual([1, 3, 1, 1]);
    expect(shape(new Conv2d(3, 4, 3), false).shape).toEqual([1, 4, 1, 1]);
    expect([...shape(new Linear(3, 5), false).toFloat32Array()]).toEqual([1, 1, 1, 1, 1]);
    const r = [...shape(new Linear(300, 5), true, false).toFloat32Array()];
    const mean = r.reduce((a, b) => a + b, 0) / r.length, sd = Math.sqrt(r.reduce((a, b) => a + (b - mean) ** 2, 0) / r.length);
    expect(Math.abs(mean)).toBeLessThan(0.2);
    expect(Math.abs(sd - 1)).toBeLessThan(0.2);
  });

  it("in-memory names ia3_l.<adapter>; a Conv1D layer is fan_in_fan_out whatever was asked (PEFT's warning)", () => {
    const l = new IA3Layer(new Conv1D(4, 3), { isFeedforward: false, fanInFanOut: false });
    expect(l.fanInFanOut).toBe(true);
    expect(warnings.some((w) => w.includes("Setting fan_in_fan_out to True"))).toBe(true);
    expect([...l.namedParameters()].map(([n]) => n)).toEqual(["base_layer.weight", "base_layer.bias", "ia3_l.default"]);
    expect(l.adapterStateEntries("default")[0][0]).toBe("ia3_l");
  });
});

describe("IA3Layer forward and backward against float64", () => {
  for (const c of CASES) {
    it(label(c), () => {
      const l = new IA3Layer(makeBase(c, 3), { isFeedforward: c.ff });
      const n = l.ia3Vector("default").numel;
      // A zero entry: its gradient must still come out right (no division by the vector).
      const s = Float64Array.from(values(n, 5), (v, i) => (i === 0 ? 0 : 0.5 + v));
      setVector(l, "default", s);
      const base = l.baseLayer;
      const w = base.weight.toFloat64Array(), b = base.bias!.toFloat64Array();
      const x = Tensor.fromArray(values(xShape(c).reduce((a, d) => a * d, 1), 7), xShape(c));
      const y = l.forward(x);
      const dy = Tensor.fromArray(values(y.numel, 9), y.shape);
      const xv = x.toFloat64Array(), dyv = dy.toFloat64Array();
      const ref = reference(c, xv, w, b, s, dyv);
      const mag = reference(c, abs(xv), abs(w), abs(b), abs(s), abs(dyv));
      expectClose(y.toFloat64Array(), ref.y, tol(c, mag.y), "y");
      const dx = l.backward(dy)!;
      expectClose(dx.toFloat64Array(), ref.dx, tol(c, mag.dx), "dx");
      expectClose(l.ia3Vector("default").grad!.toFloat64Array(), ref.ds, tol(c, mag.ds), "dl");
      expectClose(base.weight.grad!.toFloat64Array(), ref.dW, tol(c, mag.dW), "dW");
      expectClose(base.bias!.grad!.toFloat64Array(), ref.db, tol(c, mag.db), "db");
    });
  }

  it("a frozen base gets no gradients; inputGrad false returns no dx but still the vector's gradient", () => {
    const c: Case = { kind: "linear", M: 4, K: 6, N: 3, ff: true };
    const l = new IA3Layer(makeBase(c, 1), { isFeedforward: true });
    for (const p of l.baseLayer.parameters()) p.requiresGrad = false;
    l.forward(Tensor.fromArray(values(24, 2), [4, 6]));
    expect(l.backward(Tensor.fromArray(values(12, 3), [4, 3]), { inputGrad: false })).toBeNull();
    expect(l.baseLayer.weight.grad).toBeNull();
    expect(l.ia3Vector("default").grad!.shape).toEqual([1, 6]);
  });

  it("x with leading dimensions (batch, seq, features)", () => {
    const l = new IA3Layer(makeBase({ kind: "linear", M: 0, K: 5, N: 4, ff: false }, 2), { isFeedforward: false });
    setVector(l, "default", values(4, 4));
    const x = Tensor.fromArray(values(2 * 3 * 5, 6), [2, 3, 5]);
    l.eval(); // the same path for both calls (training keeps the unscaled output and scales it separately)
    const y = l.forward(x);
    expect(y.shape).toEqual([2, 3, 4]);
    using flat = x.reshape([6, 5]);
    const y2 = l.forward(flat);
    expect([...y.toFloat32Array()]).toEqual([...y2.toFloat32Array()]);
  });
});

describe("bf16 mode", () => {
  for (const ff of [false, true])
    it(`${ff ? "feed-forward" : "output"}: bf16 base and x with an f32 vector; y near the f32 layer's, gradients in each parameter's dtype`, () => {
      const make = (dtype: "f32" | "bf16") => {
        const base = new Linear(16, 8, { seed: 1 });
        base.weight.copyFrom(Tensor.fromArray(values(128, 2, true), [8, 16]));
        base.bias!.copyFrom(Tensor.fromArray(values(8, 3, true), [8]));
        const l = new IA3Layer(dtype === "bf16" ? base.to("bf16") : base, { isFeedforward: ff });
        setVector(l, "default", values(l.ia3Vector("default").numel, 4));
        return l;
      };
      const x = Tensor.fromArray(values(5 * 16, 5, true), [5, 16]);
      const dy = Tensor.fromArray(values(5 * 8, 6, true), [5, 8]);
      const [l32, l16] = [make("f32"), make("bf16")];
      const want = l32.forward(x).toFloat64Array();
      const y = l16.forward(x.to("bf16"));
      expect(y.dtype).toBe("bf16");
      // Two bf16 roundings on the way (x ⊙ l or the unscaled output, then y), relative to the sum of |terms|.
      expectClose(y.toFloat64Array(), want, (i) => 4 * UNIT.bf16 * (16 + Math.abs(want[i])), "y");
      const dx = l16.backward(dy.to("bf16"))!;
      expect([dx.dtype, l16.ia3Vector("default").grad!.dtype, l16.baseLayer.weight.grad!.dtype]).toEqual(["bf16", "f32", "bf16"]);
    });
});

describe("several adapters and disabling", () => {
  for (const kind of ["linear", "conv2d"] as const)
    for (const ff of [false, true])
      it(`${kind} ${ff ? "feed-forward" : "output"}: active vectors multiply; each gets the product of the others times dl (zeros included)`, () => {
        const c: Case = { kind, M: 3, K: 4, N: 5, ff };
        const l = new IA3Layer(makeBase(c, 11), { isFeedforward: ff });
        l.updateLayer({ adapterName: "b" });
        l.updateLayer({ adapterName: "c" });
        const n = l.ia3Vector("default").numel;
        const vs: Record<string, Float64Array> = {
          default: Float64Array.from(values(n, 1), (v) => 1 + v / 2),
          b: Float64Array.from(values(n, 2), (v, i) => (i === 1 ? 0 : v)),
          c: Float64Array.from(values(n, 3), (v, i) => (i === 1 ? 0 : v)), // two zeros in one entry
        };
        for (const [k, v] of Object.entries(vs)) setVector(l, k, v);
        l.setAdapter(["default", "b", "c"]);
        const s = vs.default.map((v, i) => v * vs.b[i] * vs.c[i]);
        const x = Tensor.fromArray(values(xShape(c).reduce((a, d) => a * d, 1), 4), xShape(c));
        const y = l.forward(x);
        const dy = Tensor.fromArray(values(y.numel, 5), y.shape);
        const base = l.baseLayer, w = base.weight.toFloat64Array(), b = base.bias!.toFloat64Array();
        const ref = reference(c, x.toFloat64Array(), w, b, s, dy.toFloat64Array());
        const mag = reference(c, abs(x.toFloat64Array()), abs(w), abs(b), abs(s), abs(dy.toFloat64Array()));
        expectClose(y.toFloat64Array(), ref.y, tol(c, mag.y), "y");
        l.backward(dy);
        for (const k of Object.keys(vs)) {
          const others = Object.keys(vs).filter((o) => o !== k);
          const want = ref.ds.map((d, i) => d * vs[others[0]][i] * vs[others[1]][i]);
          const wantMag = mag.ds.map((d, i) => d * Math.abs(vs[others[0]][i] * vs[others[1]][i]));
          expectClose(l.ia3Vector(k).grad!.toFloat64Array(), want, tol(c, wantMag), `dl ${k}`);
        }
      });

  it("disabled (and no active adapter here) gives exactly the base output; a frozen adapter gets no gradient", () => {
    const c: Case = { kind: "linear", M: 5, K: 6, N: 7, ff: false };
    const l = new IA3Layer(makeBase(c, 21), { isFeedforward: false });
    setVector(l, "default", values(7, 8));
    const x = Tensor.fromArray(values(30, 9), [5, 6]);
    const baseY = [...l.baseLayer.forward(x).toFloat32Array()];
    l.enableAdapters(false);
    expect([...l.forward(x).toFloat32Array()]).toEqual(baseY);
    expect(l.ia3Vector("default").requiresGrad).toBe(false);
    l.enableAdapters(true);
    expect([...l.forward(x).toFloat32Array()]).not.toEqual(baseY);
    l.setAdapter("other", { allowMissing: true });
    expect([...l.forward(x).toFloat32Array()]).toEqual(baseY);
  });
});

describe("autograd: one graph node per call", () => {
  for (const kind of ["conv1d", "conv2d"] as const)
    it(`${kind}: Tensor.backward gives the tape-free gradients`, () => {
      const c: Case = { kind, M: 2, K: 3, N: 4, ff: kind === "conv1d" };
      const run = (graph: boolean) => {
        const l = new IA3Layer(makeBase(c, 31), { isFeedforward: c.ff });
        l.updateLayer({ adapterName: "two" });
        setVector(l, "default", values(l.ia3Vector("default").numel, 2));
        setVector(l, "two", values(l.ia3Vector("default").numel, 3));
        l.setAdapter(["default", "two"]);
        const x = Tensor.fromArray(values(xShape(c).reduce((a, d) => a * d, 1), 4), xShape(c));
        x.requiresGrad = graph;
        const y = l.forward(x);
        const dy = Tensor.fromArray(values(y.numel, 5), y.shape);
        let dx: Tensor;
        if (graph) {
          expect(y.gradFn!.name).toBe("IA3LayerBackward");
          y.backward(dy);
          dx = x.grad!;
        } else dx = l.backward(dy)!;
        return [dx, l.ia3Vector("default").grad!, l.ia3Vector("two").grad!, l.baseLayer.weight.grad!].map((t) => [...t.toFloat32Array()]);
      };
      expect(run(true)).toEqual(run(false));
    });
});

/** Float64 merge: W ⊙ l on the columns (input) or rows (output), bias ⊙ l for the output; unmerge ⊘ (l + 1e-8). */
function mergeRef(c: Case, w: Float64Array, b: Float64Array, s: ArrayLike<number>, divide: boolean) {
  const f = (v: number, k: number) => (divide ? v / Math.fround(s[k] + 1e-8) : v * s[k]);
  const per = c.kind === "conv2d" ? 9 : 1;
  const W = w.map((v, i) => {
    // Storage index -> (out n, in k).
    const [n, k] = c.kind === "conv1d" ? [i % c.N, Math.floor(i / c.N)] : [Math.floor(i / (c.K * per)), Math.floor(i / per) % c.K];
    return f(v, c.ff ? k : n);
  });
  const B = c.ff ? b : b.map((v, n) => f(v, n));
  return { W, B };
}

describe("merge and unmerge in place, as PEFT", () => {
  for (const kind of ["linear", "conv1d", "conv2d"] as const)
    for (const ff of [false, true])
      it(`${kind} ${ff ? "feed-forward (columns)" : "output (rows and bias)"}: merged forward equals the adapter's; unmerge divides by l + 1e-8`, () => {
        const c: Case = { kind, M: 3, K: 4, N: 5, ff };
        const l = new IA3Layer(makeBase(c, 41), { isFeedforward: ff });
        l.updateLayer({ adapterName: "b" });
        const n = l.ia3Vector("default").numel;
        const s1 = values(n, 1).map((v) => 1 + v / 2), s2 = values(n, 2).map((v) => 1 - v / 3);
        setVector(l, "default", s1);
        setVector(l, "b", s2);
        l.setAdapter(["default", "b"]);
        l.eval();
        const x = Tensor.fromArray(values(xShape(c).reduce((a, d) => a * d, 1), 4), xShape(c));
        const yAdapter = l.forward(x).toFloat64Array();
        const w0 = l.baseLayer.weight.toFloat64Array(), b0 = l.baseLayer.bias!.toFloat64Array();
        l.merge();
        expect(l.merged).toBe(true);
        const one = mergeRef(c, w0, b0, Array.from(s1, Math.fround), false);
        const two = mergeRef(c, Float64Array.from(one.W, Math.fround), Float64Array.from(one.B, Math.fround), Array.from(s2, Math.fround), false);
        expectClose(l.baseLayer.weight.toFloat64Array(), two.W, (i) => 3 * UNIT.f32 * Math.abs(two.W[i]), "merged W");
        expectClose(l.baseLayer.bias!.toFloat64Array(), two.B, (i) => 3 * UNIT.f32 * Math.abs(two.B[i]), "merged b");
        const yMerged = l.forward(x).toFloat64Array();
        expectClose(yMerged, yAdapter, (i) => 1e-5 * (1 + Math.abs(yAdapter[i])), "merged forward");
        l.unmerge();
        const back = mergeRef(c, Float64Array.from(two.W, Math.fround), Float64Array.from(two.B, Math.fround), Array.from(s2, Math.fround), true);
        const back2 = mergeRef(c, Float64Array.from(back.W, Math.fround), Float64Array.from(back.B, Math.fround), Array.from(s1, Math.fround), true);
        expectClose(l.baseLayer.weight.toFloat64Array(), back2.W, (i) => 6 * UNIT.f32 * Math.abs(back2.W[i]), "unmerged W");
        expectClose(l.baseLayer.weight.toFloat64Array(), w0, (i) => 8 * UNIT.f32 * Math.abs(w0[i]), "unmerged W vs the original");
      });

  it("the unmerge drift PEFT's 1e-8 leaves: W·l/(l + 1e-8), 1 % at l = 1e-6; a zero entry's row stays zero", () => {
    const base = new Linear(2, 3, { seed: 1 });
    base.weight.copyFrom(Tensor.fromArray([1, 2, 3, 4, 5, 6], [3, 2]));
    const l = new IA3Layer(base, { isFeedforward: false });
    setVector(l, "default", [1, 1e-6, 0]);
    const b0 = base.bias!.toFloat64Array();
    l.merge();
    l.unmerge();
    const w = base.weight.toFloat64Array();
    const drift = Math.fround(Math.fround(1e-6) / Math.fround(Math.fround(1e-6) + 1e-8));
    expect(w[0]).toBe(1); // l = 1: 1 / (1 + 1e-8) rounds to 1 in f32
    expect(w[2] / 3).toBeCloseTo(drift, 6);
    expect(drift).toBeLessThan(0.991);
    expect([w[4], w[5]]).toEqual([0, 0]);
    expect(base.bias!.toFloat64Array()[2] === 0).toBe(true);
    expect(warnings).toContain("Unmerge result can be inaccurate for (IA)^3.");
    expect(base.bias!.toFloat64Array()[0]).toBe(Math.fround(b0[0]));
  });

  it("safeMerge writes nothing when a result is not finite (weight or bias), and says which adapter", () => {
    const base = new Linear(2, 2, { seed: 1 });
    const l = new IA3Layer(base, { isFeedforward: false });
    base.bias!.copyFrom(Tensor.fromArray([3e38, 1], [2]));
    setVector(l, "default", [10, 1]); // the weight stays finite, the bias overflows
    const w0 = [...base.weight.toFloat32Array()], b0 = [...base.bias!.toFloat32Array()];
    expectError(() => l.merge({ safeMerge: true }), PeftError, "ERR_STATE", /NaNs detected in the merged weights\. The adapter default seems to be broken/);
    expect([...base.weight.toFloat32Array()]).toEqual(w0);
    expect([...base.bias!.toFloat32Array()]).toEqual(b0);
    expect(l.merged).toBe(false);
    setVector(l, "default", [NaN, 1]);
    expectError(() => l.merge({ safeMerge: true }), PeftError, "ERR_STATE");
    expect([...base.weight.toFloat32Array()]).toEqual(w0);
  });

  it("merged layers refuse backward; disabling a merged layer unmerges it; a grouped Conv2d refuses to merge an input scale", () => {
    const l = new IA3Layer(new Linear(3, 2, { seed: 2 }), { isFeedforward: true });
    l.merge();
    l.forward(Tensor.fromArray(values(6, 1), [2, 3]));
    expectError(() => l.backward(Tensor.zeros([2, 2])), PeftError, "ERR_STATE", /merged/);
    l.enableAdapters(false);
    l.forward(Tensor.fromArray(values(6, 1), [2, 3]));
    expect(l.merged).toBe(false);
    const g = new IA3Layer(new Conv2d(4, 4, 1, { groups: 2 }), { isFeedforward: true });
    expectError(() => g.merge(), PeftError, "ERR_UNSUPPORTED", /groups=2/);
    new IA3Layer(new Conv2d(4, 4, 1, { groups: 2 }), { isFeedforward: false }).merge();
  });
});

describe("bad inputs", () => {
  it("base types, options and adapter names", () => {
    expectError(() => new IA3Layer(new Embedding(3, 4) as never, { isFeedforward: false }), TypeError, "ERR_INVALID_ARG_TYPE", /Linear, Conv1D or Conv2d/);
    expectError(() => new IA3Layer(new Linear(2, 2), {} as never), TypeError, "ERR_INVALID_ARG_TYPE", /isFeedforward/);
    const l = new IA3Layer(new Linear(2, 2), { isFeedforward: false });
    expectError(() => l.updateLayer({ adapterName: "a.b" }), PeftError, "ERR_CONFIG", /without "\."/);
    expectError(() => l.updateLayer({ initIa3Weights: "yes" as never }), TypeError, "ERR_INVALID_ARG_TYPE");
    expectError(() => l.ia3Vector("nope"), PeftError, "ERR_CONFIG", /IA3: unknown adapter "nope"/);
    expectError(() => l.forward(Tensor.zeros([2, 3])), PeftError, "ERR_SHAPE");
    expectError(() => l.merge({ adapterNames: ["nope"] }), PeftError, "ERR_CONFIG");
  });
});
