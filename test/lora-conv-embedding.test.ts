// LoRA on Conv2d and on Embedding against float64 references of PEFT's definitions: forward (dropout on x
// with the same Philox masks), backward, merge/unmerge, injection rules, PEFT-format checkpoints, bad inputs.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  Conv2d, Embedding, Linear, LoraConfig, Module, PeftError, PeftModel, Tensor, getPeftModel, gradcheck, loadSafetensors,
} from "../lib/index.js";
import { manualSeed, takeRng } from "../lib/random.js";
import { LoraConv2d } from "../lib/tuners/lora/conv.js";
import { LoraEmbedding } from "../lib/tuners/lora/embedding.js";
import { UNIT, expectClose, expectError, philoxUniforms, tolIn, uniform } from "./helpers/numeric.js";
import { conv2dGradRef, conv2dRef, outSize, type ConvRefGeom } from "./helpers/conv-reference.js";

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

const f64 = (t: Tensor) => t.toFloat64Array();
function setValues(t: Tensor, seed: number, lo = -1, hi = 1): Float64Array {
  const v = Tensor.fromArray(uniform(t.numel, lo, hi, seed), t.shape, t.dtype);
  t.copyFrom(v);
  v.dispose();
  return f64(t);
}

function geomOf(base: Conv2d, x: readonly number[], over: Partial<ConvRefGeom> = {}): ConvRefGeom {
  return {
    N: x[0], C: x[1], H: x[2], W: x[3], OC: base.outChannels, KH: base.kernelSize[0], KW: base.kernelSize[1],
    sh: base.stride[0], sw: base.stride[1], ph: base.padding[0], pw: base.padding[1], dh: base.dilation[0], dw: base.dilation[1], G: base.groups,
    ...over,
  };
}

/** The PEFT forward in float64: base + s·B(A(drop(x))), with T = A(drop(x)) and the rest backward needs. */
function loraConvRef(base: Conv2d, layer: LoraConv2d, name: string, x: Float64Array, xShape: number[], keep: Float64Array | null, p: number) {
  const g = geomOf(base, xShape);
  const { A, B } = layer.loraFactors(name);
  const r = A.shape[0];
  const xd = keep ? x.map((v, i) => (keep[i] ? v / (1 - p) : 0)) : x;
  const gA = geomOf(base, xShape, { OC: r, dh: 1, dw: 1, G: 1 });
  const T = conv2dRef(gA, xd, f64(A), null);
  const [OH, OW] = outSize(g);
  const gB: ConvRefGeom = { N: g.N, C: r, H: OH, W: OW, OC: base.outChannels, KH: 1, KW: 1, sh: 1, sw: 1, ph: 0, pw: 0, dh: 1, dw: 1, G: base.groups };
  const U = conv2dRef(gB, T.y, f64(B), null);
  return { g, gA, gB, xd, T, U, s: layer.scaling[name] };
}

function convCase(opts: { groups?: number; stride?: number; kernel?: number; padding?: number; r?: number; p?: number; bias?: boolean }) {
  const { groups = 1, stride = 1, kernel = 3, padding = 1, r = 4, p = 0, bias = true } = opts;
  const base = new Conv2d(6, 10, kernel, { stride, padding, groups, bias, seed: 1 });
  const layer = new LoraConv2d(base, { r, loraAlpha: 8, loraDropout: p, initLoraWeights: false });
  base.weight.requiresGrad = false; // frozen, as getPeftModel leaves it
  if (base.bias) base.bias.requiresGrad = false;
  const { A, B } = layer.loraFactors("default");
  setValues(A, 3);
  setValues(B, 4);
  return { base, layer };
}

describe("LoraConv2d", () => {
  const shapes = [
    { name: "3x3 pad 1", groups: 1 },
    { name: "stride 2", groups: 1, stride: 2 },
    { name: "1x1", groups: 1, kernel: 1, padding: 0 },
    { name: "groups 2 (unfused)", groups: 2 },
    { name: "dropout 0.3", groups: 1, p: 0.3 },
    { name: "groups 2 with dropout", groups: 2, p: 0.3 },
  ];
  for (const c of shapes)
    it(`${c.name}: forward and backward equal PEFT's definition in float64`, () => {
      const { base, layer } = convCase(c);
      const xShape = [2, 6, 7, 9];
      const x = Tensor.fromArray(uniform(2 * 6 * 63, -1, 1, 7), xShape);
      const xv = f64(x);
      manualSeed(91);
      const rng = takeRng(undefined, "probe");
      manualSeed(91);
      const y = layer.forward(x);
      const p = c.p ?? 0;
      const keep = p > 0 ? philoxUniforms(xv.length, rng.seed, rng.stream).map((u) => (u >= p ? 1 : 0)) : null;
      const ref = loraConvRef(base, layer, "default", xv, xShape, keep, p);
      const by = conv2dRef(ref.g, xv, f64(base.weight), f64(base.bias!));
      const want = by.y.map((v, i) => v + ref.s * ref.U.y[i]);
      const kk = (6 / base.groups) * base.kernelSize[0] * base.kernelSize[1];
      const steps = 6 * base.kernelSize[0] * base.kernelSize[1] + 4 + 10;
      const mag = by.mag.map((m, i) => m + Math.abs(ref.s) * ref.U.mag[i] + 4 * Math.abs(ref.s * ref.U.y[i]));
      expectClose(f64(y), want, (i) => tolIn("f32", want[i], (steps + kk) * UNIT.f32, mag[i] + ref.T.mag.reduce((a, b) => Math.max(a, b), 0)), "y");

      const dy = Tensor.fromArray(uniform(y.numel, -1, 1, 8), y.shape);
      const dyv = f64(dy);
      const dx = layer.backward(dy)!;
      const { A, B } = layer.loraFactors("default");
      // dB = s·(dy ⋆ T), dT = s·Bᵀ(dy), dA = dT ⋆ drop(x), dx = base dx + drop'(Aᵀ(dT))
      const gBr = conv2dGradRef(ref.gB, ref.T.y, f64(B), dyv.map((v) => v * ref.s));
      const gAr = conv2dGradRef(ref.gA, ref.xd, f64(A), gBr.dx);
      const gBase = conv2dGradRef(ref.g, xv, f64(base.weight), dyv);
      const dxWant = gBase.dx.map((v, i) => v + (keep ? (keep[i] ? gAr.dx[i] / (1 - p) : 0) : gAr.dx[i]));
      const rel = 2000 * UNIT.f32; // sums of a few hundred products in f32, over two chained products
      const scale = (a: Float64Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      expectClose(f64(A.grad!), gAr.dW, () => rel * (scale(gAr.dWMag) + 1e-30), "dA");
      expectClose(f64(B.grad!), gBr.dW, () => rel * (scale(gBr.dWMag) + 1e-30), "dB");
      expectClose(f64(dx), dxWant, () => rel * (scale(gBase.dxMag) + scale(gAr.dxMag)), "dx");
      expect(base.weight.grad).toBeNull(); // frozen base: no dW work
    });

  it("a trainable base gets dW and db from the same pass; several adapters add up", () => {
    const { base, layer } = convCase({});
    layer.updateLayer({ adapterName: "second", r: 2, loraAlpha: 4, initLoraWeights: false });
    layer.setAdapter(["default", "second"]);
    base.weight.requiresGrad = true;
    base.bias!.requiresGrad = true;
    const x = Tensor.randn([1, 6, 5, 5], { seed: 2 });
    const y = layer.forward(x);
    const xv = f64(x);
    const r1 = loraConvRef(base, layer, "default", xv, x.shape, null, 0), r2 = loraConvRef(base, layer, "second", xv, x.shape, null, 0);
    const by = conv2dRef(r1.g, xv, f64(base.weight), f64(base.bias!));
    const want = by.y.map((v, i) => v + r1.s * r1.U.y[i] + r2.s * r2.U.y[i]);
    expectClose(f64(y), want, () => 1e-4, "y");
    const dy = Tensor.randn(y.shape, { seed: 3 });
    layer.backward(dy);
    const gb = conv2dGradRef(r1.g, xv, f64(base.weight), f64(dy));
    expectClose(f64(base.weight.grad!), gb.dW, () => 1e-4, "dW");
    expectClose(f64(base.bias!.grad!), gb.db, () => 1e-4, "db");
  });

  it("passes gradcheck for x, A and B through autograd (fused and grouped)", () => {
    for (const groups of [1, 2]) {
      const { layer } = convCase({ groups, r: 2 });
      const { A, B } = layer.loraFactors("default");
      // magnitudes like a trained adapter's, so f32 finite differences stay above their rounding noise
      setValues(A, 3, -0.2, 0.2);
      setValues(B, 4, -0.2, 0.2);
      const x = Tensor.randn([1, 6, 5, 4], { seed: 5 });
      x.requiresGrad = true;
      expect(gradcheck((v) => layer.forward(v), [x, A, B])).toBe(true);
    }
  });

  it("merge and unmerge in place with PEFT's delta; groups > 1 refuses as PEFT does", () => {
    const { base, layer } = convCase({});
    const x = Tensor.randn([2, 6, 6, 6], { seed: 9 });
    layer.eval();
    const y0 = f64(layer.forward(x));
    const w0 = f64(base.weight);
    const { A, B } = layer.loraFactors("default");
    const [out, r, inC, k] = [10, 4, 6, 9];
    const a = f64(A), b = f64(B), s = layer.scaling.default;
    const delta = new Float64Array(out * inC * k), dmag = new Float64Array(delta.length);
    for (let o = 0; o < out; o++)
      for (let j = 0; j < r; j++)
        for (let q = 0; q < inC * k; q++) {
          delta[o * inC * k + q] += s * b[o * r + j] * a[j * inC * k + q];
          dmag[o * inC * k + q] += Math.abs(s * b[o * r + j] * a[j * inC * k + q]);
        }
    expect(layer.getDeltaWeight("default").shape).toEqual([10, 6, 3, 3]);
    expectClose(f64(layer.getDeltaWeight("default")), delta, () => 1e-5, "delta");
    layer.merge({ safeMerge: true });
    // δ summed in f32 over r terms, then one rounding into W: (r + 4)·u of the terms' magnitude.
    expectClose(f64(base.weight), w0.map((v, i) => v + delta[i]), (i) => tolIn("f32", w0[i] + delta[i], (r + 4) * UNIT.f32, Math.abs(w0[i]) + dmag[i]), "merged W");
    expectClose(f64(layer.forward(x)), y0, () => 1e-4, "merged forward");
    layer.unmerge();
    expectClose(f64(base.weight), w0, (i) => 2 * (r + 4) * UNIT.f32 * (Math.abs(w0[i]) + dmag[i]), "unmerged W");
    const grouped = convCase({ groups: 2 }).layer;
    expectError(() => grouped.merge(), PeftError, "ERR_UNSUPPORTED", /groups > 1/);
    expectError(() => grouped.getDeltaWeight("default"), PeftError, "ERR_UNSUPPORTED", /groups > 1/);
  });

  it("merging into bf16 weights rounds once; a NaN adapter leaves W as it was under safeMerge", () => {
    const base = new Conv2d(4, 6, 3, { padding: 1, dtype: "bf16", seed: 2 });
    const layer = new LoraConv2d(base, { r: 2, initLoraWeights: false });
    const w0 = f64(base.weight);
    const delta = f64(layer.getDeltaWeight("default"));
    layer.merge();
    const got = f64(base.weight);
    for (let i = 0; i < got.length; i++) expect(Math.abs(got[i] - (w0[i] + delta[i]))).toBeLessThanOrEqual(UNIT.bf16 * Math.abs(w0[i] + delta[i]) + 1e-6);
    layer.unmerge();
    const bad = new LoraConv2d(new Conv2d(2, 2, 3, { seed: 1 }), { r: 1, initLoraWeights: false });
    const wBefore = f64(bad.baseLayer.weight);
    const A = bad.loraFactors("default").A;
    A.copyFrom(Tensor.fromArray(new Array(A.numel).fill(NaN), A.shape));
    expectError(() => bad.merge({ safeMerge: true }), PeftError, "ERR_STATE", /NaNs detected/);
    expect(f64(bad.baseLayer.weight)).toEqual(wBefore);
  });
});

describe("bf16 mode", () => {
  it("a bf16 base with bf16 activations and f32 adapters: y in bf16 within one rounding of the f32 result", () => {
    const base = new Conv2d(6, 8, 3, { padding: 1, dtype: "bf16", seed: 3 });
    base.weight.requiresGrad = false;
    base.bias!.requiresGrad = false;
    const layer = new LoraConv2d(base, { r: 4, initLoraWeights: false });
    const x = Tensor.randn([2, 6, 5, 5], { seed: 4, dtype: "bf16" });
    const y = layer.forward(x);
    expect(y.dtype).toBe("bf16");
    // the same computation with every operand widened to f32 (exact), rounded once at the end
    const w32 = base.weight.to("f32"), b32 = base.bias!.to("f32");
    const ref = new LoraConv2d(new Conv2d(6, 8, 3, { padding: 1 }), { r: 4 });
    ref.baseLayer.weight.copyFrom(w32);
    ref.baseLayer.bias!.copyFrom(b32);
    for (const k of ["A", "B"] as const) ref.loraFactors("default")[k].copyFrom(layer.loraFactors("default")[k]);
    const want = f64(ref.forward(x.to("f32")));
    expectClose(f64(y), want, (i) => UNIT.bf16 * Math.abs(want[i]) + 2e-5, "y");
    const dy = Tensor.randn(y.shape, { seed: 5, dtype: "bf16" });
    const dx = layer.backward(dy)!;
    expect(dx.dtype).toBe("bf16");
    expect(layer.loraFactors("default").A.grad!.dtype).toBe("f32");
  });
});

describe("LoraEmbedding", () => {
  function embCase(paddingIdx: number | null = null) {
    const base = new Embedding(11, 5, { paddingIdx, seed: 1 });
    const layer = new LoraEmbedding(base, { r: 3, loraAlpha: 6 });
    const { A, B } = layer.loraFactors("default");
    return { base, layer, A, B, a: setValues(A, 2), b: setValues(B, 3) };
  }

  it("PEFT's shapes and init: A zeros (r, num), B ~ N(0, 1) (dim, r); init false leaves A random", () => {
    const layer = new LoraEmbedding(new Embedding(9, 4), { r: 2 });
    const { A, B } = layer.loraFactors("default");
    expect(A.shape).toEqual([2, 9]);
    expect(B.shape).toEqual([4, 2]);
    expect([...f64(A)].every((v) => v === 0)).toBe(true);
    expect([...f64(B)].some((v) => v !== 0)).toBe(true);
    const rnd = new LoraEmbedding(new Embedding(9, 4), { r: 2, initLoraWeights: false }).loraFactors("default").A;
    expect([...f64(rnd)].some((v) => v !== 0)).toBe(true);
  });

  it("forward, backward (only the looked-up columns of A) and merge equal the definition", () => {
    const { base, layer, A, B, a, b } = embCase();
    const idList = [0, 10, 3, 3, 7, 10];
    const ids = Tensor.fromArray(idList, [2, 3], "i32");
    const y = layer.forward(ids);
    expect(y.shape).toEqual([2, 3, 5]);
    const W = f64(base.weight), s = layer.scaling.default;
    const want = new Float64Array(30);
    idList.forEach((id, m) => {
      for (let d = 0; d < 5; d++) {
        let lora = 0;
        for (let j = 0; j < 3; j++) lora += a[j * 11 + id] * b[d * 3 + j];
        want[m * 5 + d] = W[id * 5 + d] + s * lora;
      }
    });
    expectClose(f64(y), want, (i) => 1e-5 * (1 + Math.abs(want[i])), "y");
    const dy = Tensor.randn([2, 3, 5], { seed: 4 });
    const g = f64(dy);
    layer.backward(dy);
    const dA = new Float64Array(33), dB = new Float64Array(15);
    idList.forEach((id, m) => {
      for (let j = 0; j < 3; j++)
        for (let d = 0; d < 5; d++) {
          dA[j * 11 + id] += s * g[m * 5 + d] * b[d * 3 + j];
          dB[d * 3 + j] += s * g[m * 5 + d] * a[j * 11 + id];
        }
    });
    expectClose(f64(A.grad!), dA, () => 1e-5, "dA");
    expectClose(f64(B.grad!), dB, () => 1e-5, "dB");
    for (const col of [1, 2, 4, 5, 6, 8, 9]) for (let j = 0; j < 3; j++) expect(A.grad!.toFloat64Array()[j * 11 + col]).toBe(0);
    // merge: W += s·(B·A)ᵀ
    layer.eval();
    const y0 = f64(layer.forward(ids));
    layer.merge({ safeMerge: true });
    expectClose(f64(layer.forward(ids)), y0, () => 1e-5, "merged");
    expect(layer.getDeltaWeight("default").shape).toEqual([11, 5]);
    layer.unmerge();
    expectClose(f64(base.weight), W, () => 1e-6, "unmerged");
  });

  it("paddingIdx: the padding row and A's padding column get no gradient", () => {
    const { base, layer, A } = embCase(-2); // row 9
    expect(base.paddingIdx).toBe(9);
    expect([...f64(new Embedding(11, 5, { paddingIdx: 9 }).weight)].slice(45, 50)).toEqual([0, 0, 0, 0, 0]);
    base.weight.requiresGrad = true;
    const ids = Tensor.fromArray([9, 1, 9], [3], "i64");
    layer.forward(ids);
    layer.backward(Tensor.randn([3, 5], { seed: 1 }));
    const dW = f64(base.weight.grad!), dA = f64(A.grad!);
    expect([...dW.slice(45, 50)]).toEqual([0, 0, 0, 0, 0]);
    expect([...dW.slice(5, 10)].some((v) => v !== 0)).toBe(true);
    for (let j = 0; j < 3; j++) expect(dA[j * 11 + 9]).toBe(0);
  });

  it("autograd matches the tape-free backward; out-of-range ids are refused", () => {
    const { layer, A, B } = embCase();
    const ids = Tensor.fromArray([4, 0, 10], [3], "i32");
    const y = layer.forward(ids);
    const dy = Tensor.randn(y.shape, { seed: 6 });
    layer.backward(dy);
    const gA = f64(A.grad!), gB = f64(B.grad!);
    A.grad = null;
    B.grad = null;
    layer.forward(ids).backward(dy);
    expect(f64(A.grad!)).toEqual(gA);
    expect(f64(B.grad!)).toEqual(gB);
    expect(() => layer.forward(Tensor.fromArray([11], [1], "i32"))).toThrow(/11|range/);
    expect(() => layer.forward(Tensor.fromArray([-1], [1], "i32"))).toThrow(/-1|range/);
  });
});

class ConvNet extends Module {
  conv1 = this.registerModule("conv1", new Conv2d(3, 8, 3, { padding: 1, seed: 1 }));
  conv2 = this.registerModule("conv2", new Conv2d(8, 8, 3, { padding: 2, dilation: 2, seed: 2 }));
  dw = this.registerModule("dw", new Conv2d(8, 8, 3, { padding: 1, groups: 4, seed: 3 }));
  emb = this.registerModule("emb", new Embedding(20, 8, { seed: 4 }));
  head = this.registerModule("head", new Linear(8, 2, { seed: 5 }));
  forward(x: Tensor): Tensor {
    return this.conv1.forward(x);
  }
}

describe("getPeftModel with Conv2d and Embedding targets", () => {
  it("injects LoraConv2d / LoraEmbedding; all-linear keeps PEFT's meaning (Linear only)", () => {
    const m = getPeftModel(new ConvNet(), new LoraConfig({ r: 4, targetModules: ["conv1", "emb", "dw"] }));
    const inner = m.baseModel.model;
    expect(inner.getSubmodule("conv1")).toBeInstanceOf(LoraConv2d);
    expect(inner.getSubmodule("emb")).toBeInstanceOf(LoraEmbedding);
    expect(inner.getSubmodule("dw")).toBeInstanceOf(LoraConv2d);
    const all = getPeftModel(new ConvNet(), new LoraConfig({ r: 4, targetModules: "all-linear" }));
    expect(all.baseModel.model.getSubmodule("conv1")).toBeInstanceOf(Conv2d);
    expect(all.baseModel.model.getSubmodule("emb")).toBeInstanceOf(Embedding);
  });

  it("refuses a dilated kernel and a rank groups does not divide, naming the layer", () => {
    expectError(() => getPeftModel(new ConvNet(), new LoraConfig({ r: 4, targetModules: ["conv2"] })), PeftError, "ERR_UNSUPPORTED", /conv2/, /dilation/);
    expectError(() => getPeftModel(new ConvNet(), new LoraConfig({ r: 3, targetModules: ["dw"] })), PeftError, "ERR_CONFIG", /dw/, /groups=4 and rank 3/);
  });

  it("savePretrained writes PEFT's keys and shapes; fromPretrained gives the same outputs", async () => {
    const m = getPeftModel(new ConvNet(), new LoraConfig({ r: 4, targetModules: ["conv1", "emb"], initLoraWeights: false }));
    const dir = mkdtempSync(join(tmpdir(), "peft-conv-"));
    dirs.push(dir);
    await m.savePretrained(dir);
    const sd = await loadSafetensors(join(dir, "adapter_model.safetensors"));
    const shapes = Object.fromEntries(Object.entries(sd).map(([k, t]) => [k, t.shape]));
    expect(shapes).toEqual({
      "base_model.model.conv1.lora_A.weight": [4, 3, 3, 3],
      "base_model.model.conv1.lora_B.weight": [8, 4, 1, 1],
      "base_model.model.emb.lora_embedding_A": [4, 20],
      "base_model.model.emb.lora_embedding_B": [8, 4],
    });
    const loaded = await PeftModel.fromPretrained(new ConvNet(), dir);
    const x = Tensor.randn([1, 3, 6, 6], { seed: 3 });
    m.eval();
    loaded.eval();
    expect(f64(loaded.forward(x))).toEqual(f64(m.forward(x)));
    const ids = Tensor.fromArray([1, 19], [2], "i32");
    const e1 = m.baseModel.model.getSubmodule("emb").forward(ids), e2 = loaded.baseModel.model.getSubmodule("emb").forward(ids);
    expect(f64(e2)).toEqual(f64(e1));
  });
});

describe("bad inputs", () => {
  it("wrong base types and bad ids", () => {
    expectError(() => new LoraConv2d(new Linear(2, 2) as unknown as Conv2d, { r: 1 }), TypeError, "ERR_INVALID_ARG_TYPE", /Conv2d/);
    expectError(() => new LoraEmbedding(new Linear(2, 2) as unknown as Embedding, { r: 1 }), TypeError, "ERR_INVALID_ARG_TYPE", /Embedding/);
    const layer = new LoraEmbedding(new Embedding(4, 2), { r: 1 });
    expect(() => layer.forward(Tensor.zeros([2]))).toThrow(/i32|i64|ids/);
    expectError(() => new Embedding(4, 2, { paddingIdx: 4 }), PeftError, "ERR_CONFIG", /paddingIdx/);
    const conv = new LoraConv2d(new Conv2d(2, 2, 3), { r: 1 });
    expectError(() => conv.forward(Tensor.zeros([1, 3, 5, 5])), PeftError, "ERR_SHAPE", /channels/);
  });
});
