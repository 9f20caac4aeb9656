import { afterEach, describe, expect, it, vi } from "vitest";
import { AdamW, Conv1D, Linear, LoraLinear, Tensor, backend, manualSeed } from "../lib/index.js";
import { EPS, expectClose, numericGrad, values } from "./helpers/nn-reference.js";
import { errorCode } from "./helpers/errors.js";

const code = errorCode;

/** A LoRA layer with deterministic non-zero A and B (B is zero after PEFT's init). */
function layer(K: number, N: number, opts: { r?: number; alpha?: number; seed?: number; rslora?: boolean; conv1d?: boolean; dropout?: number } = {}) {
  const seed = opts.seed ?? 1;
  const base = opts.conv1d ? new Conv1D(N, K, { seed }) : new Linear(K, N, { seed });
  base.bias!.copyFrom(Tensor.fromArray(values(N, seed + 10), [N]));
  const l = new LoraLinear(base, { r: opts.r ?? 4, loraAlpha: opts.alpha ?? 8, useRslora: opts.rslora, loraDropout: opts.dropout });
  randomizeAdapter(l, "default", seed);
  return l;
}

function randomizeAdapter(l: LoraLinear, name: string, seed: number) {
  const A = (l.loraA.get(name) as Linear).weight, B = (l.loraB.get(name) as Linear).weight;
  A.copyFrom(Tensor.fromArray(values(A.numel, seed + 20), A.shape));
  B.copyFrom(Tensor.fromArray(values(B.numel, seed + 30), B.shape));
}

/** float64 reference of LoRA forward: y = x·Wᵀ + b + Σ s·(x·Aᵀ)·Bᵀ, W as (N, K). */
function refForward(l: LoraLinear, x: Float64Array, M: number, adapters = l.activeAdapters, weights: Record<string, Float64Array> = {}) {
  const base = l.baseLayer;
  const conv = base instanceof Conv1D;
  const [K, N] = conv ? [base.nx, base.nf] : [(base as Linear).inFeatures, (base as Linear).outFeatures];
  const w = base.weight.toFloat64Array(), b = base.bias!.toFloat64Array();
  const W = (n: number, k: number) => (conv ? w[k * N + n] : w[n * K + k]);
  const y = new Float64Array(M * N), scale = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = b[n], a = Math.abs(b[n]);
      for (let k = 0; k < K; k++) (s += x[m * K + k] * W(n, k)), (a += Math.abs(x[m * K + k] * W(n, k)));
      y[m * N + n] = s;
      scale[m * N + n] = a;
    }
  for (const name of adapters) {
    const A = weights[`${name}.A`] ?? (l.loraA.get(name) as Linear).weight.toFloat64Array();
    const B = weights[`${name}.B`] ?? (l.loraB.get(name) as Linear).weight.toFloat64Array();
    const r = l.r[name], s = l.scaling[name];
    for (let m = 0; m < M; m++)
      for (let j = 0; j < r; j++) {
        let t = 0, ta = 0;
        for (let k = 0; k < K; k++) (t += x[m * K + k] * A[j * K + k]), (ta += Math.abs(x[m * K + k] * A[j * K + k]));
        for (let n = 0; n < N; n++) {
          y[m * N + n] += s * t * B[n * r + j];
          scale[m * N + n] += Math.abs(s * B[n * r + j]) * ta;
        }
      }
  }
  return { y, scale };
}

/** s·B·A in float64 (out, in), and Σ_j |s·B_nj·A_jk| (the scale of f32 accumulation error). */
function refDelta(l: LoraLinear, name: string): { delta: Float64Array; abs: Float64Array } {
  const A = (l.loraA.get(name) as Linear).weight, B = (l.loraB.get(name) as Linear).weight;
  const [r, K] = A.shape, N = B.shape[0], s = l.scaling[name];
  const a = A.toFloat64Array(), b = B.toFloat64Array();
  const delta = new Float64Array(N * K), abs = new Float64Array(N * K);
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++)
      for (let j = 0; j < r; j++) {
        const t = s * b[n * r + j] * a[j * K + k];
        delta[n * K + k] += t;
        abs[n * K + k] += Math.abs(t);
      }
  return { delta, abs };
}

const tolF32 = (K: number, scale: Float64Array) => (i: number) => (K + 8) * EPS.f32 * scale[i] + 1e-30;

describe("LoraLinear forward", () => {
  const threads = backend.threads;
  afterEach(() => backend.setNumThreads(threads));

  for (const [M, K, N, r] of [[1, 1, 1, 1], [7, 17, 33, 4], [33, 7, 17, 16], [0, 9, 5, 2], [17, 127, 7, 3]] as const) {
    it(`matches float64 at M=${M} K=${K} N=${N} r=${r}`, () => {
      const l = layer(K, N, { r });
      const x = values(M * K, 3);
      const y = l.forward(Tensor.fromArray(x, [M, K]));
      const ref = refForward(l, x, M);
      expect(y.shape).toEqual([M, N]);
      expectClose(y.toFloat32Array(), ref.y, tolF32(K + r, ref.scale), "y");
    });
  }

  it("sums several active adapters and follows rslora scaling", () => {
    const l = layer(13, 11, { r: 4, alpha: 8, rslora: true });
    expect(l.scaling.default).toBeCloseTo(8 / 2);
    l.updateLayer({ adapterName: "other", r: 3, loraAlpha: 6 });
    randomizeAdapter(l, "other", 7);
    expect(l.activeAdapters).toEqual(["default"]);
    l.setAdapter(["default", "other"]);
    const x = values(5 * 13, 4);
    const y = l.forward(Tensor.fromArray(x, [5, 13]));
    const ref = refForward(l, x, 5, ["default", "other"]);
    expectClose(y.toFloat32Array(), ref.y, tolF32(20, ref.scale), "two adapters");
  });

  it("works on Conv1D (fan_in_fan_out) with a warning when the option disagrees", () => {
    const warn = vi.spyOn(process, "emitWarning").mockImplementation(() => {});
    const base = new Conv1D(6, 9, { seed: 2 });
    const l = new LoraLinear(base, { r: 2, fanInFanOut: false });
    expect(l.fanInFanOut).toBe(true);
    expect(warn.mock.calls.some((c) => String(c[0]).includes("Setting fan_in_fan_out to True"))).toBe(true);
    warn.mockRestore();
    randomizeAdapter(l, "default", 5);
    const x = values(4 * 9, 6);
    const ref = refForward(l, x, 4);
    expectClose(l.forward(Tensor.fromArray(x, [4, 9])).toFloat32Array(), ref.y, tolF32(11, ref.scale), "conv1d");
  });

  it("PEFT init: B = 0 so the output starts at the base; gaussian A has std 1/r; false keeps B random", () => {
    const base = new Linear(64, 32, { seed: 3 });
    const x = Tensor.randn([4, 64], { seed: 1 });
    const want = base.forward(x).toArray();
    const l = new LoraLinear(base, { r: 8 });
    expect(l.forward(x).toArray()).toEqual(want);
    const A = (l.loraA.get("default") as Linear).weight.toArray();
    expect(Math.max(...A.map(Math.abs))).toBeLessThanOrEqual(1 / 8); // kaiming-uniform bound 1/sqrt(64)
    const g = new LoraLinear(new Linear(256, 256), { r: 4, initLoraWeights: "gaussian" });
    const ga = (g.loraA.get("default") as Linear).weight.toFloat64Array();
    const sd = Math.sqrt(ga.reduce((s, v) => s + v * v, 0) / ga.length);
    expect(Math.abs(sd - 0.25)).toBeLessThan(0.02);
    const f = new LoraLinear(new Linear(8, 8), { r: 2, initLoraWeights: false });
    expect((f.loraB.get("default") as Linear).weight.toArray().some((v) => v !== 0)).toBe(true);
  });

  it("enableAdapters(false) gives exactly the base output", () => {
    const l = layer(10, 6);
    const x = Tensor.randn([3, 10], { seed: 2 });
    const base = l.baseLayer.forward(x).toArray();
    l.enableAdapters(false);
    expect(l.forward(x).toArray()).toEqual(base);
    expect((l.loraA.get("default") as Linear).weight.requiresGrad).toBe(false);
    l.enableAdapters(true);
    expect(l.forward(x).toArray()).not.toEqual(base);
  });

  it("dropout masks are the same for any thread count and regenerate in backward", () => {
    const run = (threads: number) => {
      backend.setNumThreads(threads);
      manualSeed(11);
      const l = layer(40, 30, { r: 4, dropout: 0.3 });
      const x = Tensor.fromArray(values(64 * 40, 8), [64, 40]);
      const y = l.forward(x).toArray();
      const dx = l.backward(Tensor.fromArray(values(64 * 30, 9), [64, 30]))!.toArray();
      return { y, dx, dA: (l.loraA.get("default") as Linear).weight.grad!.toArray() };
    };
    const one = run(1), two = run(2);
    expect(two.y).toEqual(one.y);
    expect(two.dx).toEqual(one.dx);
    expect(two.dA).toEqual(one.dA);
    // eval mode: no dropout
    const l = layer(40, 30, { r: 4, dropout: 0.3 });
    l.eval();
    const x = values(2 * 40, 8);
    expectClose(l.forward(Tensor.fromArray(x, [2, 40])).toFloat32Array(), refForward(l, x, 2).y, () => 1e-4, "eval");
  });
});

describe("LoraLinear backward", () => {
  for (const [M, K, N, r] of [[1, 1, 1, 1], [7, 17, 33, 4], [33, 7, 17, 16], [0, 5, 3, 2]] as const) {
    it(`dA, dB, dx match float64 at M=${M} K=${K} N=${N} r=${r}`, () => {
      const l = layer(K, N, { r });
      l.baseLayer.weight.requiresGrad = false; // as getPeftModel freezes it (the layer alone does not, as in PEFT)
      l.baseLayer.bias!.requiresGrad = false;
      const x = values(M * K, 3), dy = values(M * N, 4);
      l.forward(Tensor.fromArray(x, [M, K]));
      const dx = l.backward(Tensor.fromArray(dy, [M, N]))!;
      const A = (l.loraA.get("default") as Linear).weight, B = (l.loraB.get("default") as Linear).weight;
      const a = A.toFloat64Array(), b = B.toFloat64Array(), w = l.baseLayer.weight.toFloat64Array(), s = l.scaling.default;
      // T = x·Aᵀ, G = s·dy·B; dB = s·dyᵀ·T; dA = Gᵀ·x; dx = dy·W + G·A
      const T = new Float64Array(M * r), G = new Float64Array(M * r);
      for (let m = 0; m < M; m++)
        for (let j = 0; j < r; j++) {
          for (let k = 0; k < K; k++) T[m * r + j] += x[m * K + k] * a[j * K + k];
          for (let n = 0; n < N; n++) G[m * r + j] += s * dy[m * N + n] * b[n * r + j];
        }
      const dB = new Float64Array(N * r), dA = new Float64Array(r * K), dX = new Float64Array(M * K);
      for (let m = 0; m < M; m++) {
        for (let n = 0; n < N; n++) for (let j = 0; j < r; j++) dB[n * r + j] += s * dy[m * N + n] * T[m * r + j];
        for (let j = 0; j < r; j++) for (let k = 0; k < K; k++) dA[j * K + k] += G[m * r + j] * x[m * K + k];
        for (let k = 0; k < K; k++) {
          for (let n = 0; n < N; n++) dX[m * K + k] += dy[m * N + n] * w[n * K + k];
          for (let j = 0; j < r; j++) dX[m * K + k] += G[m * r + j] * a[j * K + k];
        }
      }
      const tol = (n: number) => () => (n + 8) * EPS.f32 * n * 4 + 1e-6;
      expectClose(B.grad ? B.grad.toFloat32Array() : new Float32Array(N * r), dB, tol(M * K), "dB");
      expectClose(A.grad ? A.grad.toFloat32Array() : new Float32Array(r * K), dA, tol(M * N), "dA");
      expectClose(dx.toFloat32Array(), dX, tol(N + r), "dx");
      expect(l.baseLayer.weight.grad).toBeNull(); // a frozen base costs no gradient work
    });
  }

  it("T = x·Aᵀ from the packed x (small batches) or as a product first (many rows and a long K; bf16 tiles): y and dB match float64", () => {
    // [300, 2500]: each thread's rows exceed what it packs with all of K at once, so T is a product of its own;
    // [12, 300]: T from the x the base GEMM packed. dB = s·dyᵀ·T checks the T kept for backward.
    for (const [M, K, N, r] of [[300, 2500, 40, 8], [12, 300, 40, 8]] as const) {
      const l = layer(K, N, { r });
      l.baseLayer.weight.requiresGrad = false;
      l.baseLayer.bias!.requiresGrad = false;
      const x = values(M * K, 3), dy = values(M * N, 4);
      const y = l.forward(Tensor.fromArray(x, [M, K]));
      const ref = refForward(l, x, M);
      expectClose(y.toFloat32Array(), ref.y, tolF32(K + r, ref.scale), `y ${M}x${K}`);
      l.backward(Tensor.fromArray(dy, [M, N]));
      const a = (l.loraA.get("default") as Linear).weight.toFloat64Array(), s = l.scaling.default;
      const dB = new Float64Array(N * r), dBabs = new Float64Array(N * r);
      for (let m = 0; m < M; m++)
        for (let j = 0; j < r; j++) {
          let t = 0, ta = 0;
          for (let k = 0; k < K; k++) (t += x[m * K + k] * a[j * K + k]), (ta += Math.abs(x[m * K + k] * a[j * K + k]));
          for (let n = 0; n < N; n++) (dB[n * r + j] += s * dy[m * N + n] * t), (dBabs[n * r + j] += Math.abs(s * dy[m * N + n]) * ta);
        }
      const grad = (l.loraB.get("default") as Linear).weight.grad!.toFloat32Array();
      expectClose(grad, dB, (i) => (M + K + 8) * EPS.f32 * dBabs[i] + 1e-30, `dB ${M}x${K}`);
    }
    // bf16 x and W: the bf16 kernels pack x in their own layout, so T is a product first; y rounded to bf16 once.
    const [M, K, N] = [24, 64, 40];
    const base = new Linear(K, N, { seed: 3, dtype: "bf16" });
    const l = new LoraLinear(base, { r: 4, loraAlpha: 8 });
    randomizeAdapter(l, "default", 3);
    const x = Tensor.fromArray(values(M * K, 5), [M, K], "bf16");
    const y = l.forward(x);
    expect(y.dtype).toBe("bf16");
    const ref = refForward(l, x.toFloat64Array(), M);
    expectClose(y.toFloat32Array(), ref.y, (i) => tolF32(K + 4, ref.scale)(i) + EPS.bf16 * Math.abs(ref.y[i]), "bf16 y");
  });

  it("the rank term from x follows every write to A (its packed form is kept with A between calls)", () => {
    const [M, K, N, r] = [12, 300, 40, 8];
    const l = layer(K, N, { r });
    const x = values(M * K, 3);
    const A = (l.loraA.get("default") as Linear).weight;
    const check = (what: string) => {
      const ref = refForward(l, x, M);
      expectClose(l.forward(Tensor.fromArray(x, [M, K])).toFloat32Array(), ref.y, tolF32(K + r, ref.scale), what);
    };
    check("first call");
    check("second call (the kept pack)");
    A.copyFrom(Tensor.fromArray(values(r * K, 9), [r, K]));
    check("after copyFrom");
    l.backward(Tensor.fromArray(values(M * N, 4), [M, N]));
    new AdamW([A], { lr: 0.1 }).step();
    check("after an AdamW step");
    const v = A.view() as Float32Array;
    v[0] += 1;
    check("after a write through view()");
  });

  it("two active adapters: gradients of both agree with finite differences of the float64 forward", () => {
    const [M, K, N] = [3, 7, 5];
    const l = layer(K, N, { r: 2 });
    l.updateLayer({ adapterName: "b", r: 3, loraAlpha: 6 });
    randomizeAdapter(l, "b", 4);
    l.setAdapter(["default", "b"]);
    l.baseLayer.weight.requiresGrad = false;
    l.baseLayer.bias!.requiresGrad = false;
    const x = values(M * K, 5), c = values(M * N, 6);
    l.forward(Tensor.fromArray(x, [M, K]));
    l.backward(Tensor.fromArray(c, [M, N]));
    for (const name of ["default", "b"]) {
      for (const which of ["A", "B"] as const) {
        const w = ((which === "A" ? l.loraA : l.loraB).get(name) as Linear).weight;
        // float64 all the way: the perturbed weights never pass through f32 storage
        const loss = (v: Float64Array) => refForward(l, x, M, ["default", "b"], { [`${name}.${which}`]: v }).y.reduce((s, yv, i) => s + yv * c[i], 0);
        const fd = numericGrad(loss, w.toFloat64Array());
        expectClose(w.grad!.toFloat64Array(), fd, (i) => 1e-5 * (1 + Math.abs(fd[i])), `${name}.${which}`);
      }
    }
  });

  it("the base gets gradients when trainable (bias all)", () => {
    const l = layer(6, 4);
    l.baseLayer.bias!.requiresGrad = true;
    l.baseLayer.weight.requiresGrad = false;
    l.forward(Tensor.randn([3, 6], { seed: 1 }));
    l.backward(Tensor.fromArray(new Array(12).fill(1), [3, 4]));
    expect(l.baseLayer.bias!.grad!.toArray()).toEqual([3, 3, 3, 3]);
  });
});

describe("merge and unmerge", () => {
  it("merged forward equals the adapter forward; W = W0 + s·B·A; unmerge restores W0 (f32)", () => {
    const l = layer(19, 23, { r: 4 });
    const x = Tensor.randn([5, 19], { seed: 3 });
    const want = l.forward(x).toFloat32Array();
    const w0 = l.baseLayer.weight.toFloat64Array();
    const { delta, abs } = refDelta(l, "default");
    // f32: r + 1 roundings of terms bounded by |W0| + Σ|s·B·A| (the rank-r sum and the add into W)
    const tol = (i: number) => (4 + 2) * EPS.f32 * (Math.abs(w0[i]) + abs[i]) + 1e-30;
    expectClose(l.getDeltaWeight("default").toFloat64Array(), delta, (i) => 6 * EPS.f32 * abs[i] + 1e-30, "getDeltaWeight");
    l.merge();
    expect(l.merged).toBe(true);
    const w1 = l.baseLayer.weight.toFloat64Array();
    expectClose(w1, w0.map((v, i) => v + delta[i]), tol, "merged W");
    expectClose(l.forward(x).toFloat32Array(), want, () => 1e-5, "merged forward");
    expect(code(() => l.backward(Tensor.zeros([5, 23])))).toBe("ERR_STATE");
    l.unmerge();
    expect(l.merged).toBe(false);
    expectClose(l.baseLayer.weight.toFloat64Array(), w0, (i) => 2 * tol(i), "unmerged W");
  });

  it("bf16 weights: unmerge drifts at most 2^-8·(|W0+Δ| + |W0|) per element (two roundings)", () => {
    const base = new Linear(64, 48, { seed: 5, dtype: "bf16" });
    const l = new LoraLinear(base, { r: 8, loraAlpha: 16 });
    randomizeAdapter(l, "default", 9);
    const w0 = base.weight.toFloat64Array();
    const { delta, abs } = refDelta(l, "default");
    // f32 accumulation (as for f32 weights), then one bf16 rounding per merge and per unmerge
    const acc = (i: number) => (8 + 2) * EPS.f32 * (Math.abs(w0[i]) + abs[i]);
    l.merge();
    const w1 = base.weight.toFloat64Array();
    expectClose(w1, w0.map((v, i) => v + delta[i]), (i) => EPS.bf16 * Math.abs(w0[i] + delta[i]) + acc(i) + 1e-30, "merged bf16 W");
    l.unmerge();
    const drift = base.weight.toFloat64Array();
    expectClose(drift, w0, (i) => EPS.bf16 * (Math.abs(w0[i] + delta[i]) * (1 + EPS.bf16) + Math.abs(w0[i])) + 2 * acc(i) + 1e-30, "bf16 drift");
  });

  it("merges chosen adapters, warns on merging twice, and keeps the base path while merged", () => {
    const warn = vi.spyOn(process, "emitWarning").mockImplementation(() => {});
    const l = layer(8, 8);
    l.updateLayer({ adapterName: "b", r: 2 });
    randomizeAdapter(l, "b", 3);
    l.merge({ adapterNames: ["default", "b"] });
    const w = l.baseLayer.weight.toArray();
    l.merge({ adapterNames: ["b"] });
    expect(l.baseLayer.weight.toArray()).toEqual(w);
    expect(warn.mock.calls.some((c) => String(c[0]).includes("Already following adapters were merged b"))).toBe(true);
    warn.mockRestore();
    const x = Tensor.randn([2, 8], { seed: 1 });
    expect(l.forward(x).toArray()).toEqual(l.baseLayer.forward(x).toArray());
  });

  it("safeMerge refuses a broken adapter by name and leaves W untouched", () => {
    const l = layer(6, 5);
    l.updateLayer({ adapterName: "bad", r: 2 });
    (l.loraB.get("bad") as Linear).weight.copyFrom(Tensor.fromArray(new Array(10).fill(NaN), [5, 2]));
    (l.loraA.get("bad") as Linear).weight.copyFrom(Tensor.fromArray(new Array(12).fill(1), [2, 6]));
    const w = l.baseLayer.weight.toArray();
    expect(() => l.merge({ adapterNames: ["default", "bad"], safeMerge: true })).toThrow(/adapter bad seems to be broken/);
    expect(l.baseLayer.weight.toArray()).toEqual(w);
    expect(l.merged).toBe(false);
  });

  it("getDeltaWeight is scale·B·A, transposed for Conv1D", () => {
    const l = layer(5, 3, { r: 2, conv1d: true });
    const d = l.getDeltaWeight("default");
    expect(d.shape).toEqual([5, 3]);
  });
});

describe("bad inputs", () => {
  it("names what is wrong", () => {
    const l = layer(6, 4);
    expect(code(() => l.forward(Tensor.zeros([2, 7])))).toBe("ERR_SHAPE");
    expect(() => l.forward(Tensor.zeros([2, 7]))).toThrow(/x has 7 features/);
    expect(() => new LoraLinear(new Linear(3, 3), { r: 0 })).toThrow(/r must be a positive integer, got 0/);
    expect(() => new LoraLinear(new Linear(3, 3), { r: 2.5 })).toThrow(/positive integer/);
    expect(() => new LoraLinear(new Linear(3, 3), { r: 2, loraAlpha: -1 })).toThrow(/loraAlpha must be a finite number >= 0/);
    expect(() => new LoraLinear(new Linear(3, 3), { r: 2, loraDropout: 1 })).toThrow(/loraDropout must be in \[0, 1\)/);
    expect(() => new LoraLinear(new Linear(3, 3), { r: 2, loraDropout: -0.1 })).toThrow(/\[0, 1\)/);
    expect(() => l.setAdapter("nope")).toThrow(/unknown adapter "nope"; this layer has "default"/);
    expect(() => l.merge({ adapterNames: ["nope"] })).toThrow(/unknown adapter/);
    expect(() => new LoraLinear({} as never, { r: 2 })).toThrow(TypeError);
    expect(() => l.forward([1, 2] as never)).toThrow(TypeError);
    expect(() => new LoraLinear(new Linear(3, 3), { r: 2, initLoraWeights: "pissa" as never })).toThrow(/not supported/);
  });
});
