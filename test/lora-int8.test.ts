// LoRA on the int8 base (PEFT's lora/bnb.py Linear8bitLt): forward and backward against float64 references
// of bitsandbytes' pipeline (x quantised per row, CB, SCB, outlier columns in floating point) plus the f32
// adapters, dispatch through getPeftModel, merge into int8 with PEFT's lossy unmerge and the exact one,
// safeMerge, mergeAndUnload to an int8 model, adapters moving between int8 and f32 bases, bad input.
import { describe, expect, it } from "vitest";
import { Linear, Linear8bitLt, LoraConfig, LoraLinear, LoraLinear8bitLt, Module, PeftError, Tensor, getPeftModel, getPeftModelStateDict, getRngState, int8Dequantize, noGrad, setPeftModelStateDict, tidy } from "../lib/index.js";
import { int8Quantize } from "../lib/ops.js";
import { UNIT, expectClose, expectError, philoxUniforms, roundTo, uniform } from "./helpers/numeric.js";
import { dequant, dequantWeight, int32Product, outlierColumns, quantRows } from "./helpers/int8-ref.js";

const t = (shape: number[], seed: number, lo = -1, hi = 1, dtype: "f32" | "bf16" = "f32") => Tensor.fromArray(uniform(shape.reduce((a, b) => a * b, 1), lo, hi, seed), shape, dtype);

class Net extends Module {
  proj: Module;
  constructor(proj: Module) {
    super();
    this.proj = this.registerModule("proj", proj);
  }
  forward(x: Tensor): Tensor {
    return (this.proj as Linear).forward(x);
  }
}

/** An int8 layer (K -> N) with a random adapter of rank r (B not zero, so the adapter changes the output). */
function int8Lora(K: number, N: number, r: number, seed: number, threshold = 0) {
  const q = Linear8bitLt.fromLinear(new Linear(K, N, { seed }), { threshold });
  const layer = new LoraLinear8bitLt(q, { r, loraAlpha: 2 * r, initLoraWeights: false });
  return { q, layer, ...layer.loraFactors("default"), s: 2 };
}

/** bitsandbytes' forward of the int8 base in float64 (outlier columns against dequantised CB columns). */
function baseRef(x: Float64Array, cb: ArrayLike<number>, scb: ArrayLike<number>, bias: ArrayLike<number> | null, M: number, K: number, N: number, threshold: number) {
  const cols = outlierColumns(x, M, K, threshold);
  const { q, s } = quantRows(x, M, K, threshold, cols);
  const y = dequant(int32Product(q, cb, M, K, N), s, scb, bias, M, N);
  const w = dequantWeight(cb, scb, N, K);
  const x16 = roundTo(x, "f16");
  for (const k of cols) for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) y[m * N + n] += x16[m * K + k] * w[n * K + k];
  return { y, cols };
}

/** s·(x·Aᵀ)·Bᵀ in float64 and the sum of |terms| each output element adds up. */
function loraRef(x: Float64Array, A: Float64Array, B: Float64Array, s: number, M: number, K: number, N: number, r: number) {
  const T = new Float64Array(M * r), Ta = new Float64Array(M * r);
  for (let m = 0; m < M; m++)
    for (let j = 0; j < r; j++)
      for (let k = 0; k < K; k++) (T[m * r + j] += x[m * K + k] * A[j * K + k]), (Ta[m * r + j] += Math.abs(x[m * K + k] * A[j * K + k]));
  const y = new Float64Array(M * N), mag = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++)
      for (let j = 0; j < r; j++) (y[m * N + n] += s * T[m * r + j] * B[n * r + j]), (mag[m * N + n] += s * Ta[m * r + j] * Math.abs(B[n * r + j]));
  return { y, mag, T, Tm: Ta };
}

/**
 * One training forward and backward of LoRA on an int8 layer against the float64 reference: y, dx, dA, dB.
 * With dropout p the mask is the one the layer draws next (Philox at the global generator's next stream).
 */
function checkForwardBackward(M: number, K: number, N: number, r: number, threshold: number, p = 0) {
  const q = Linear8bitLt.fromLinear(new Linear(K, N, { seed: M + K + N }), { threshold });
  const layer = new LoraLinear8bitLt(q, { r, loraAlpha: 2 * r, loraDropout: p, initLoraWeights: false });
  const { A, B } = layer.loraFactors("default");
  const s = 2;
  const xs = t([M, K], 3, -2, 2);
  const xv = xs.toFloat64Array(), Av = A.toFloat64Array(), Bv = B.toFloat64Array();
  const { seed, stream } = getRngState();
  const u = philoxUniforms(M * K, seed, stream + 1);
  const mask = Float64Array.from(u, (v) => (p === 0 ? 1 : v >= p ? 1 / (1 - p) : 0));
  const xd = xv.map((v, i) => v * mask[i]);
  xs.requiresGrad = true;
  const y = layer.train().forward(xs);
  expect(y.gradFn?.name).toBe("LoraLinear8bitLtBackward");
  const base = baseRef(xv, q.weight.toArray(), q.SCB.toArray(), q.bias!.toArray(), M, K, N, threshold);
  if (threshold > 0 && M > 1) expect(base.cols.size).toBeGreaterThan(0);
  const lora = loraRef(xd, Av, Bv, s, M, K, N, r);
  const want = base.y.map((v, i) => v + lora.y[i]);
  // The int8 part is exact up to its f32 dequantisation (a few ulps of y); the adapter is two f32 GEMMs
  // (2·(K + r) roundings of the |terms|); outlier columns run in f16-rounded x against f32 W (2^-10 of each).
  const outl = (i: number) => (base.cols.size ? 2 ** -10 * base.cols.size * 8 : 0) * (1 + Math.abs(want[i]));
  expectClose(y.toFloat64Array(), want, (i) => 8 * UNIT.f32 * Math.abs(want[i]) + 2 * (K + r) * UNIT.f32 * lora.mag[i] + outl(i) + 1e-6, "y");
  const dy = t([M, N], 4);
  const dyv = dy.toFloat64Array();
  y.backward(dy);
  // dx = dy·dequant(CB) + drop(s·(dy·B)·A); dA = s·(dy·B)ᵀ·drop(x); dB = s·dyᵀ·T
  const W = dequantWeight(q.weight.toArray(), q.SCB.toArray(), N, K);
  const dx = new Float64Array(M * K), dxm = new Float64Array(M * K), G = new Float64Array(M * r), Gm = new Float64Array(M * r);
  for (let m = 0; m < M; m++)
    for (let j = 0; j < r; j++) for (let n = 0; n < N; n++) (G[m * r + j] += s * dyv[m * N + n] * Bv[n * r + j]), (Gm[m * r + j] += Math.abs(s * dyv[m * N + n] * Bv[n * r + j]));
  for (let m = 0; m < M; m++)
    for (let k = 0; k < K; k++) {
      for (let n = 0; n < N; n++) (dx[m * K + k] += dyv[m * N + n] * W[n * K + k]), (dxm[m * K + k] += Math.abs(dyv[m * N + n] * W[n * K + k]));
      for (let j = 0; j < r; j++) (dx[m * K + k] += G[m * r + j] * Av[j * K + k] * mask[m * K + k]), (dxm[m * K + k] += Gm[m * r + j] * Math.abs(Av[j * K + k] * mask[m * K + k]));
    }
  // each element a sum of N + r f32 products, the adapter's through G (itself N terms) and a mask
  expectClose(xs.grad!.toFloat64Array(), dx, (i) => 2 * (N + r + 2) * UNIT.f32 * dxm[i] + 1e-6, "dx");
  const dA = new Float64Array(r * K), dAm = new Float64Array(r * K), dB = new Float64Array(N * r), dBm = new Float64Array(N * r);
  for (let m = 0; m < M; m++)
    for (let j = 0; j < r; j++) for (let k = 0; k < K; k++) (dA[j * K + k] += G[m * r + j] * xd[m * K + k]), (dAm[j * K + k] += Gm[m * r + j] * Math.abs(xd[m * K + k]));
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) for (let j = 0; j < r; j++) (dB[n * r + j] += s * dyv[m * N + n] * lora.T[m * r + j]), (dBm[n * r + j] += Math.abs(s * dyv[m * N + n]) * lora.Tm[m * r + j]);
  // dA: M products of G (N terms each) and x; dB: M products of dy and T (K terms each)
  expectClose(A.grad!.toFloat64Array(), dA, (i) => 2 * (M + N + 2) * UNIT.f32 * dAm[i] + 1e-6, "dA");
  expectClose(B.grad!.toFloat64Array(), dB, (i) => 2 * (M + K + 2) * UNIT.f32 * dBm[i] + 1e-6, "dB");
  expect(q.weight.grad).toBeNull();
}

describe("LoRA on Linear8bitLt: forward and backward", () => {
  for (const [M, K, N, r, threshold] of [[1, 7, 17, 3, 0], [7, 33, 17, 4, 0], [17, 127, 33, 5, 0], [33, 17, 7, 1, 1.5], [0, 7, 5, 2, 0]] as const)
    it(`(${M}, ${K}, ${N}) r=${r} threshold ${threshold}: int8 base + f32 adapter; dx, dA, dB`, () => checkForwardBackward(M, K, N, r, threshold));

  it("two active adapters: the first fused into the int8 epilogue, the second accumulated; y, dA and dB of both", () => {
    const [M, K, N] = [17, 33, 7];
    const q = Linear8bitLt.fromLinear(new Linear(K, N, { seed: 11 }));
    const layer = new LoraLinear8bitLt(q, { r: 3, loraAlpha: 6, initLoraWeights: false });
    layer.updateLayer({ adapterName: "other", r: 5, loraAlpha: 5, initLoraWeights: false });
    layer.setAdapter(["default", "other"]);
    const xs = t([M, K], 5, -2, 2), xv = xs.toFloat64Array();
    const y = layer.train().forward(xs);
    const base = baseRef(xv, q.weight.toArray(), q.SCB.toArray(), q.bias!.toArray(), M, K, N, 0);
    const refs = ([["default", 3, 2], ["other", 5, 1]] as const).map(([name, r, sc]) => {
      const { A, B } = layer.loraFactors(name);
      return { A, B, r, ...loraRef(xv, A.toFloat64Array(), B.toFloat64Array(), sc, M, K, N, r) };
    });
    const want = base.y.map((v, i) => v + refs[0].y[i] + refs[1].y[i]);
    expectClose(y.toFloat64Array(), want, (i) => 8 * UNIT.f32 * Math.abs(want[i]) + 2 * (K + 5) * UNIT.f32 * (refs[0].mag[i] + refs[1].mag[i]) + 1e-6, "y");
    y.backward(t([M, N], 6));
    for (const ref of refs) {
      expect(ref.A.grad, "dA").not.toBeNull();
      expect(ref.B.grad!.toFloat64Array().some((v) => v !== 0), "dB").toBe(true);
    }
  });

  it("dropout 0.3: the mask PEFT's lora_dropout draws applies to x in forward and to dx, dA in backward", () => checkForwardBackward(17, 33, 7, 4, 0, 0.3));

  it("bf16 x gives bf16 y: the adapter in f32 added before y is rounded once", () => {
    const { layer } = int8Lora(33, 17, 4, 9);
    const xb = t([7, 33], 5, -2, 2, "bf16");
    const y = layer.forward(xb);
    expect(y.dtype).toBe("bf16");
    const yf = layer.forward(xb.to("f32"));
    // The same sum as for f32 x holding the same values, rounded once to bf16
    const want = yf.toFloat64Array();
    expect(Array.from(y.toFloat64Array())).toEqual(Array.from(roundTo(want, "bf16")));
  });

  it("dropout: eval runs no dropout (deterministic), training draws a new mask per call", () => {
    const q = Linear8bitLt.fromLinear(new Linear(17, 9, { seed: 2 }));
    const layer = new LoraLinear8bitLt(q, { r: 3, loraAlpha: 3, loraDropout: 0.5, initLoraWeights: false });
    const xs = t([7, 17], 6);
    layer.train();
    expect(Array.from(layer.forward(xs).toFloat64Array())).not.toEqual(Array.from(layer.forward(xs).toFloat64Array()));
    layer.eval();
    expect(Array.from(layer.forward(xs).toFloat64Array())).toEqual(Array.from(layer.forward(xs).toFloat64Array()));
  });
});

describe("getPeftModel on int8 targets", () => {
  it("wraps Linear8bitLt targets with LoraLinear8bitLt; only the adapter trains", () => {
    const net = new Net(Linear8bitLt.fromLinear(new Linear(17, 9, { seed: 1 })));
    const peft = getPeftModel(net, new LoraConfig({ r: 4, targetModules: ["proj"] }));
    expect(peft.baseModel.model.proj).toBeInstanceOf(LoraLinear8bitLt);
    const trainable = [...peft.namedParameters()].filter(([, p]) => p.requiresGrad).map(([n]) => n);
    expect(trainable.sort()).toEqual(["base_model.model.proj.lora_A.default.weight", "base_model.model.proj.lora_B.default.weight"]);
    peft.dispose();
  });
});

describe("merge into int8", () => {
  const setup = () => {
    const { q, layer } = int8Lora(33, 17, 4, 11);
    return { q, layer, cb0: q.weight.toArray(), scb0: q.SCB.toArray() };
  };

  it("merge = requantise(dequant(CB)·SCB/127 + s·B·A) with the layer's quantiser; the merged forward follows", () => {
    const { q, layer, cb0, scb0 } = setup();
    const xs = t([7, 33], 12);
    const before = noGrad(() => layer.eval().forward(xs).toFloat64Array());
    const delta = layer.getDeltaWeight("default");
    const w = int8Dequantize(q.weight, q.SCB);
    // PEFT: w = dequant(CB, SCB) (f32, as int8_vectorwise_dequant) + s·B·A, then Int8Params requantises it
    expect(Array.from(w.toFloat64Array())).toEqual(Array.from(dequantWeight(cb0, scb0, 17, 33)));
    const dv = delta.toFloat32Array();
    const merged = Tensor.fromArray(w.toFloat32Array().map((v, i) => Math.fround(v + dv[i])), [17, 33]);
    layer.merge();
    expect(layer.merged).toBe(true);
    const [cb, scb] = int8Quantize(merged);
    expect(q.weight.toArray()).toEqual(cb.toArray());
    expect(q.SCB.toArray()).toEqual(scb.toArray());
    expect(q.weight.toArray()).not.toEqual(cb0);
    const after = noGrad(() => layer.forward(xs).toFloat64Array());
    // One requantisation step: each weight moves by at most SCB/254, times Σ|x| over K
    expectClose(after, before, () => 33 * 2 * Math.max(...scb.toArray()) / 254 + 1e-3, "merged forward");
  });

  it("unmerge as PEFT requantises (within the requantisation bound); exactUnmerge restores CB/SCB bit for bit", () => {
    const a = setup();
    a.layer.merge();
    const scbM = a.q.SCB.toArray();
    a.layer.unmerge();
    expect(a.layer.merged).toBe(false);
    const w0 = dequantWeight(a.cb0, a.scb0, 17, 33), w1 = dequantWeight(a.q.weight.toArray(), a.q.SCB.toArray(), 17, 33);
    // dequant(unmerged) - dequant(original): the merge's rounding (SCB_merged/254) and the unmerge's
    // (SCB_unmerged/254) per row, plus the f16 cast of W before quantising (2^-11 relative)
    const scb1 = a.q.SCB.toArray();
    expectClose(w1, w0, (i) => {
      const n = Math.floor(i / 33);
      return (scbM[n] + scb1[n]) / 254 + 2 * UNIT.f16 * (Math.abs(w0[i]) + scbM[n]) + 1e-7;
    }, "lossy unmerge");

    const b = setup();
    b.layer.merge({ exactUnmerge: true });
    expect(b.layer.keepsOriginal).toBe(true);
    expect(b.q.weight.toArray()).not.toEqual(b.cb0);
    b.layer.unmerge();
    expect(b.layer.keepsOriginal).toBe(false);
    expect(b.q.weight.toArray()).toEqual(b.cb0);
    expect(Array.from(b.q.SCB.toFloat32Array())).toEqual(Array.from(Float32Array.from(b.scb0)));
  });

  it("exactUnmerge through the model; mergeAndUnload returns an int8 model that runs", () => {
    const net = new Net(Linear8bitLt.fromLinear(new Linear(17, 9, { seed: 4 })));
    const cb0 = (net.proj as Linear8bitLt).weight.toArray();
    const peft = getPeftModel(net, new LoraConfig({ r: 4, targetModules: ["proj"], initLoraWeights: false }));
    const xs = t([5, 17], 13);
    const before = noGrad(() => peft.eval().forward(xs).toFloat64Array());
    peft.baseModel.mergeAdapter({ exactUnmerge: true });
    peft.baseModel.unmergeAdapter();
    expect((net.proj as LoraLinear8bitLt).baseLayer.weight.toArray()).toEqual(cb0);
    const plain = peft.mergeAndUnload<Net>();
    expect(plain.proj).toBeInstanceOf(Linear8bitLt);
    const p = plain.proj as Linear8bitLt;
    expect(p.weight.dtype).toBe("i8");
    expect(p.weight.requiresGrad).toBe(false);
    expect(Object.keys(plain.stateDict()).sort()).toEqual(["proj.SCB", "proj.bias", "proj.weight", "proj.weight_format"]);
    const after = plain.forward(xs).toFloat64Array();
    expectClose(after, before, () => 17 * 2 * Math.max(...p.SCB.toArray()) / 254 + 1e-3, "unloaded");
    plain.dispose();
  });

  it("safeMerge refuses a NaN adapter and leaves CB/SCB as they were", () => {
    const { q, layer, cb0, scb0 } = setup();
    const { A } = layer.loraFactors("default");
    const bad = A.toFloat32Array();
    bad[3] = NaN;
    using nb = Tensor.fromArray(bad, A.shape);
    A.copyFrom(nb);
    expectError(() => layer.merge({ safeMerge: true }), PeftError, "ERR_STATE", /NaNs detected/);
    expect(layer.merged).toBe(false);
    expect(q.weight.toArray()).toEqual(cb0);
    expect(q.SCB.toArray()).toEqual(scb0);
  });
});

describe("state kept across calls", () => {
  it("survives tidy(): the layer's cached Bᵀ and the CB/SCB an exactUnmerge merge keeps", () => {
    const { q, layer } = int8Lora(17, 9, 3, 31);
    const xs = t([5, 17], 32);
    const y0 = noGrad(() => layer.eval().forward(xs).toFloat64Array());
    const cb0 = q.weight.toArray();
    tidy(() => {
      layer.forward(xs);
      layer.merge({ exactUnmerge: true });
    });
    layer.unmerge();
    expect(q.weight.toArray()).toEqual(cb0);
    expect(Array.from(noGrad(() => layer.forward(xs).toFloat64Array()))).toEqual(Array.from(y0));
  });
});

describe("adapters move between int8 and f32 bases", () => {
  it("a PEFT-format adapter trained on the int8 base loads onto the f32 base and back (same keys, close outputs)", () => {
    const lin = new Linear(33, 17, { seed: 21 });
    const dense = new Net(lin.clone());
    const int8 = new Net(Linear8bitLt.fromLinear(lin));
    const cfg = () => new LoraConfig({ r: 4, targetModules: ["proj"], initLoraWeights: false });
    const p8 = getPeftModel(int8, cfg());
    const pf = getPeftModel(dense, new LoraConfig({ r: 4, targetModules: ["proj"] }));
    expect(pf.baseModel.model.proj).toBeInstanceOf(LoraLinear);
    const sd = getPeftModelStateDict(p8);
    expect(Object.keys(sd).sort()).toEqual(Object.keys(getPeftModelStateDict(pf)).sort());
    setPeftModelStateDict(pf, sd);
    const xs = t([7, 33], 22);
    const y8 = noGrad(() => p8.eval().forward(xs).toFloat64Array());
    const yf = noGrad(() => pf.eval().forward(xs).toFloat64Array());
    // The int8 base differs from f32 by its quantisation: x's row absmax/127 and W's SCB/127 per product
    const xa = Math.max(...xs.toArray().map(Math.abs)), wa = Math.max(...lin.weight.toArray().map(Math.abs));
    expectClose(y8, yf, () => 33 * (xa * wa / 127) + 1e-4, "int8 vs f32 base");
    // and back: the f32-trained adapter onto a fresh int8 base
    const p8b = getPeftModel(new Net(Linear8bitLt.fromLinear(lin)), new LoraConfig({ r: 4, targetModules: ["proj"] }));
    setPeftModelStateDict(p8b, getPeftModelStateDict(pf));
    expect(Array.from(noGrad(() => p8b.eval().forward(xs).toFloat64Array()))).toEqual(Array.from(y8));
    for (const m of [p8, pf, p8b]) m.dispose();
  });
});

describe("bad input", () => {
  it("refuses a non-int8 base, exactUnmerge on top of a lossy merge, non-boolean exactUnmerge", () => {
    expectError(() => new LoraLinear8bitLt(new Linear(3, 2) as never, { r: 1 }), TypeError, "ERR_INVALID_ARG_TYPE", /Linear8bitLt/);
    const { layer } = int8Lora(7, 5, 2, 3);
    expectError(() => layer.merge({ exactUnmerge: "yes" as never }), TypeError, "ERR_INVALID_ARG_TYPE", /exactUnmerge must be a boolean/);
    layer.merge();
    expectError(() => layer.merge({ exactUnmerge: true, adapterNames: ["default"] }), PeftError, "ERR_STATE", /already merged without it/);
    expectError(() => layer.backward(Tensor.zeros([1, 5])), PeftError, "ERR_STATE", /merged/);
    expectError(() => layer.eval() && (layer.unmerge(), layer.forward(Tensor.zeros([2, 6]))), Error, "ERR_SHAPE", /./);
  });
});
