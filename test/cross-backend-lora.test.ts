// The cross-backend table's LoRA rows: the fused forward (y and T), backward (dx, dA, dB) and in-place
// merge/unmerge run on the cpu and on the cuda device (the emulator without a GPU) with the same inputs,
// for every base dtype, odd shapes, one or two adapters (the second with dropout: the same Philox masks on
// both), Linear's (out, in) and Conv1D's (in, out) weight layouts.
//
// Bounds from the arithmetic: every output is a chain of f32 sums of products of total length L ≤ K + N +
// M + R (the rank terms, T and G = dy·sB feed later products). Each backend's f32 evaluation of such a
// chain is within L·u of the exact value, relative to the same chain evaluated on absolute values (|x|,
// |W|, |A|, |B|, dropout masks replaced by their scale 1/(1-p)), so the two are within 2·(L + 8)·u of each
// other in those units (8: the bias, the scales and the final additions), plus one rounding into the
// output dtype each (tolOut).
import { describe, expect, it } from "vitest";

if (process.env.NODE_PEFT_CUDA === undefined && !process.env.NODE_PEFT_CUDA_REAL) process.env.NODE_PEFT_CUDA = "emu";
const { Tensor, backend } = await import("../lib/index.js");
const { native } = await import("../lib/native.js");
import type { Tensor as TensorT } from "../lib/index.js";
import { FLOATS, UNIT, type FloatDType } from "./helpers/numeric.js";
import { F32, compare, f, orderTest, rowTests, tolOut, type Row, type Tol } from "./helpers/cross-backend.js";
import { errorCode } from "./helpers/errors.js";

// [M, K, N, r1, r2]: r2 = 0 runs one adapter (the backward's rank-term path), else two (dropout on the
// second: the backward's masked path).
const SHAPES = [[1, 1, 1, 1, 0], [7, 17, 33, 3, 2], [33, 127, 7, 5, 0], [17, 129, 127, 4, 3], [0, 16, 16, 4, 2], [127, 7, 17, 2, 1]] as const;
const SCALES = [0.5, 2], P2 = 0.25, SEED = 7, STREAM = 3;
const h = (t: TensorT) => Tensor.handle(t);

// Inputs: x, W, bias, A1, B1, A2, B2, dy, dA1, dB1, dA2, dB2 (the base in dt; adapters, bias and gradients f32).
function loraInputs(dt: FloatDType, [M, K, N, r1, r2]: readonly number[], inOut: boolean): TensorT[] {
  const r2n = Math.max(r2, 1);  // an unused placeholder when r2 = 0
  return [f(M * K, 1, dt, [M, K]), f(N * K, 2, dt, inOut ? [K, N] : [N, K]), f(N, 3, "f32", [N]),
    f(r1 * K, 4, "f32", [r1, K]), f(N * r1, 5, "f32", [N, r1]), f(r2n * K, 6, "f32", [r2n, K]), f(N * r2n, 7, "f32", [N, r2n]),
    f(M * N, 8, dt, [M, N]), f(r1 * K, 9, "f32", [r1, K]), f(N * r1, 10, "f32", [N, r1]), f(r2n * K, 11, "f32", [r2n, K]), f(N * r2n, 12, "f32", [N, r2n])];
}

function adapters(t: TensorT[], r2: number, grads: boolean) {
  const one = (i: number) => ({
    A: h(t[3 + 2 * i]), B: h(t[4 + 2 * i]), scale: SCALES[i], p: i === 1 ? P2 : 0, seed: SEED, stream: STREAM,
    ...(grads ? { dA: h(t[8 + 2 * i]), dB: h(t[9 + 2 * i]) } : {}),
  });
  return r2 > 0 ? [one(0), one(1)] : [one(0)];
}

function forward(t: TensorT[], r2: number, inOut: boolean): [TensorT, TensorT] {
  const [y, T] = native.loraForward(h(t[0]), h(t[1]), h(t[2]), inOut, adapters(t, r2, false));
  return [new Tensor(y), new Tensor(T)];
}

/** The chain of every output on absolute values (see the header), from the inputs as float64. */
function absChain([M, K, N, r1, r2]: readonly number[], v: Float64Array[], inOut: boolean) {
  const [x, W, b, , , , , dy, dA1, dB1, dA2, dB2] = v.map((a) => a.map(Math.abs));
  const w = (n: number, k: number) => (inOut ? W[k * N + n] : W[n * K + k]);
  const ad = [{ r: r1, A: v[3], B: v[4], dA: dA1, dB: dB1, s: SCALES[0], ds: 1 }];
  if (r2 > 0) ad.push({ r: r2, A: v[5], B: v[6], dA: dA2, dB: dB2, s: SCALES[1], ds: 1 / (1 - P2) });
  const y = new Float64Array(M * N), dx = new Float64Array(M * K);
  const out: { T: Float64Array[]; G: Float64Array[]; dA: Float64Array[]; dB: Float64Array[] } = { T: [], G: [], dA: [], dB: [] };
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = b[n];
      for (let k = 0; k < K; k++) s += x[m * K + k] * w(n, k);
      y[m * N + n] = s;
    }
    for (let k = 0; k < K; k++) {
      let s = 0;
      for (let n = 0; n < N; n++) s += dy[m * N + n] * w(n, k);
      dx[m * K + k] = s;
    }
  }
  for (const a of ad) {
    const T = new Float64Array(M * a.r), G = new Float64Array(M * a.r);
    for (let m = 0; m < M; m++)
      for (let j = 0; j < a.r; j++) {
        let t = 0, g = 0;
        for (let k = 0; k < K; k++) t += x[m * K + k] * Math.abs(a.A[j * K + k]) * a.ds;
        for (let n = 0; n < N; n++) g += dy[m * N + n] * Math.abs(a.B[n * a.r + j]) * a.s;
        T[m * a.r + j] = t, G[m * a.r + j] = g;
        for (let n = 0; n < N; n++) y[m * N + n] += a.s * t * Math.abs(a.B[n * a.r + j]);
        for (let k = 0; k < K; k++) dx[m * K + k] += g * Math.abs(a.A[j * K + k]) * a.ds;
      }
    const dA = Float64Array.from(a.dA.subarray(0, a.r * K)), dB = Float64Array.from(a.dB.subarray(0, N * a.r));
    for (let m = 0; m < M; m++)
      for (let j = 0; j < a.r; j++) {
        for (let k = 0; k < K; k++) dA[j * K + k] += G[m * a.r + j] * x[m * K + k] * a.ds;
        for (let n = 0; n < N; n++) dB[n * a.r + j] += a.s * dy[m * N + n] * T[m * a.r + j];
      }
    out.T.push(T), out.G.push(G), out.dA.push(dA), out.dB.push(dB);
  }
  return { y, dx, ...out };
}

// The tolerance of output o from the chain's magnitudes: outputs[o] = [its dtype, its magnitudes].
function chainTol(shape: readonly number[], inOut: boolean, outputs: (c: ReturnType<typeof absChain>) => [FloatDType, Float64Array][]): Tol {
  const [M, K, N, r1, r2] = shape, L = M + K + N + r1 + r2 + 8;
  let mags: [FloatDType, Float64Array][] | undefined;
  return (o, i, ref, inputs) => {
    mags ??= outputs(absChain(shape, inputs, inOut));
    const [dt, mag] = mags[o];
    return tolOut(dt, ref[i], 2 * L * F32 * mag[i]);
  };
}

// The T output interleaves the adapters' columns: (M, r1 + r2).
function interleave(parts: Float64Array[], rs: number[], M: number): Float64Array {
  const R = rs.reduce((a, b) => a + b, 0), out = new Float64Array(M * R);
  for (let m = 0; m < M; m++) {
    let off = 0;
    parts.forEach((p, a) => {
      for (let j = 0; j < rs[a]; j++) out[m * R + off + j] = p[m * rs[a] + j];
      off += rs[a];
    });
  }
  return out;
}

function rows(inOut: boolean, shapes: readonly (readonly number[])[], dtypes: readonly FloatDType[]): Row[] {
  const layout = inOut ? " (weight in, out)" : "";
  const ranks = (s: readonly number[]) => (s[4] > 0 ? [s[3], s[4]] : [s[3]]);
  return [
    {
      op: `loraForward${layout}: y, T`,
      dtypes,
      shapes,
      inputs: (dt, s) => loraInputs(dt, s, inOut),
      run: (t, s) => forward(t, s[4], inOut),
      tol: (dt, s) => chainTol(s, inOut, (c) => [[dt, c.y], ["f32", interleave(c.T, ranks(s), s[0])]]),
    },
    {
      op: `loraBackward${layout}: dx, dA, dB (accumulated)`,
      dtypes,
      shapes,
      inputs: (dt, s) => loraInputs(dt, s, inOut),
      run: (t, s) => {
        const [y, T] = forward(t, s[4], inOut);
        y.dispose();
        const dx = new Tensor(native.loraBackward(h(t[7]), h(t[0]), h(t[1]), null, inOut, adapters(t, s[4], true), h(T), true)!);
        return s[4] > 0 ? [dx, t[8], t[9], t[10], t[11]] : [dx, t[8], t[9]];
      },
      tol: (dt, s) => chainTol(s, inOut, (c) => [[dt, c.dx], ...c.dA.flatMap((dA, a): [FloatDType, Float64Array][] => [["f32", dA], ["f32", c.dB[a]]])]),
    },
    {
      // Merge (unsafe), then unmerge through the safe path: W after each. The rank update adds R products
      // to W in f32 (R + 2 roundings on each side, relative to |W| + Σ|sB||A|), rounded once into W's dtype.
      op: `loraMerge / safe unmerge${layout}`,
      dtypes,
      shapes: shapes.filter((s) => s[0] > 0).map((s) => s),
      inputs: (dt, s) => loraInputs(dt, s, inOut),
      run: (t, s) => {
        const ad = adapters(t, s[4], false).map((a) => ({ ...a, p: 0 }));
        native.loraMerge(h(t[1]), inOut, ad, 1, false);
        const merged = t[1].to("f32");
        expect(native.loraMerge(h(t[1]), inOut, ad, -1, true)).toBe(-1);
        return [merged, t[1]];
      },
      tol: (dt, [, K, N, r1, r2]) => (o, i, ref, v) => {
        const n = inOut ? i % N : Math.floor(i / K), k = inOut ? Math.floor(i / N) : i % K;
        let mag = Math.abs(ref[i]) + Math.abs(v[1][i]);
        SCALES.slice(0, r2 > 0 ? 2 : 1).forEach((s, a) => {
          const r = a ? r2 : r1, A = v[3 + 2 * a], B = v[4 + 2 * a];
          for (let j = 0; j < r; j++) mag += Math.abs(s * B[n * r + j] * A[j * K + k]);
        });
        // The merged W is rounded into dt once per pass (the unmerge starts from the rounded merge).
        return tolOut(dt, ref[i], 2 * (r1 + r2 + 4) * F32 * mag) + (o === 1 ? 2 * UNIT[dt] * mag : 0);
      },
    },
  ];
}

const table: Row[] = [...rows(false, SHAPES, FLOATS), ...rows(true, [SHAPES[1], SHAPES[3]], ["f32", "bf16"])];

describe("LoRA: cpu vs cuda, op × dtype × shape", () => {
  rowTests(table);
  orderTest("the same results in the emulator's reverse and random thread orders", () => {
    for (const row of table.slice(0, 3)) compare(row, row.op.startsWith("loraMerge") ? "bf16" : "f32", SHAPES[1]);
  });
});

describe("LoRA on cuda: bad input", () => {
  it("mixed devices are ERR_DEVICE naming the tensor; nothing is written", () => {
    const x = Tensor.zeros([2, 3], { device: "cuda" }), w = Tensor.zeros([4, 3], { device: "cuda" });
    const A = Tensor.zeros([2, 3]), B = Tensor.zeros([4, 2], { device: "cuda" });
    const ad = [{ A: h(A), B: h(B), scale: 1, p: 0, seed: 0, stream: 0 }];
    expect(errorCode(() => native.loraForward(h(x), h(w), null, false, ad))).toBe("ERR_DEVICE");
    expect(() => native.loraForward(h(x), h(w), null, false, ad)).toThrow(/loraForward: adapters\[0\]\.A is on cpu but x is on cuda/);
    expect(() => native.loraForward(h(x), h(Tensor.zeros([4, 3])), null, false, ad)).toThrow(/loraForward: weight is on cpu but x is on cuda/);
    expect(() => native.loraForward(h(Tensor.zeros([2, 3])), h(w), null, false, ad)).toThrow(/loraForward: weight is on cuda but x is on cpu/);
    expect(() => native.loraMerge(h(w), false, ad, 1, true)).toThrow(/loraMerge: adapters\[0\]\.A is on cpu but weight is on cuda/);
  });

  it("safeMerge's finite check on the device names the same adapter as the cpu's and leaves W untouched", () => {
    // f16 W near its largest value: adapter 1 alone pushes it past 65504 (to inf in f16, finite in f32).
    const w = Tensor.fromArray([60000, 1, 2, 3], [2, 2], "f16");
    const mk = (dev: "cpu" | "cuda", v: number) => ({ A: h(Tensor.fromArray([v, 0], [1, 2]).to(dev)), B: h(Tensor.fromArray([1, 0], [2, 1]).to(dev)), scale: 1, p: 0, seed: 0, stream: 0 });
    for (const dev of ["cpu", "cuda"] as const) {
      const wd = w.to(dev);
      expect(native.loraMerge(h(wd), false, [mk(dev, 1), mk(dev, 8000)], 1, true), dev).toBe(1);
      expect(native.loraMerge(h(wd), false, [mk(dev, 3000), mk(dev, 3000)], 1, true), dev).toBe(0);  // only the sum overflows
      expect(Array.from(wd.to("cpu").bytes()), dev).toEqual(Array.from(w.bytes()));
    }
  });
});
