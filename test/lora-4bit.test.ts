// LoRA on the 4-bit base (QLoRA; PEFT's lora/bnb.py Linear4bit): forward and backward against float64
// references over the dequantised weight plus the f32 adapters, dispatch through getPeftModel, PEFT's merge
// (dequantise, add, requantise) and lossy unmerge, safeMerge, mergeAndUnload to a 4-bit model,
// prepareModelForKbitTraining, and a tiny Llama loaded with quantize: "nf4" training with LoRA.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  Linear, Linear4bit, LlamaForCausalLM, LoraConfig, LoraLinear, LoraLinear4bit, PeftError, Sequential, Tensor, getPeftModel, noGrad, prepareModelForKbitTraining,
} from "../lib/index.js";
import { UNIT, expectClose, expectError, uniform } from "./helpers/numeric.js";
import { tinyLlama, trainCausalLm, writeLlama } from "./helpers/llama-models.js";
import { gradInputRef, linearRef } from "./helpers/nf4-ref.js";

const dir = mkdtempSync(join(tmpdir(), "lora-4bit-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const rnd = (shape: number[], seed: number, dtype: "f32" | "bf16" = "f32", lo = -1, hi = 1) =>
  Tensor.fromArray(uniform(shape.reduce((a, b) => a * b, 1), lo, hi, seed), shape, dtype);

/** A 4-bit layer (K -> N) with a random adapter of rank r (B not zero). */
function lora4(K: number, N: number, r: number, seed: number, quantType: "nf4" | "fp4" = "nf4") {
  const q = Linear4bit.fromLinear(new Linear(K, N, { seed }), { quantType });
  const layer = new LoraLinear4bit(q, { r, loraAlpha: 2 * r, initLoraWeights: false });
  return { q, layer, ...layer.loraFactors("default"), s: 2 };
}

/** W_eff = dequant(W) + s·B·A in float64, (N, K). */
function effective(wd: Float64Array, A: Float64Array, B: Float64Array, s: number, N: number, K: number, r: number): Float64Array {
  const w = Float64Array.from(wd);
  for (let n = 0; n < N; n++) for (let j = 0; j < r; j++) for (let k = 0; k < K; k++) w[n * K + k] += s * B[n * r + j] * A[j * K + k];
  return w;
}

describe("LoraLinear4bit forward and backward", () => {
  for (const [M, K, N, r] of [[1, 7, 17, 2], [7, 33, 9, 4], [17, 64, 40, 8]] as const)
    it(`(${M}, ${K}, ${N}) r=${r}: 4-bit base + f32 adapter; dx, dA, dB`, () => {
      const { q, layer, A, B, s } = lora4(K, N, r, M + K);
      const x = rnd([M, K], 3);
      x.requiresGrad = true;
      const y = layer.forward(x);
      expect(y.gradFn).toBeTruthy();
      const wd = q.dequantizeWeight().toFloat64Array();
      const weff = effective(wd, A.toFloat64Array(), B.toFloat64Array(), s, N, K, r);
      const ref = linearRef(x.toFloat64Array(), weff, q.bias!.toFloat64Array(), M, K, N);
      // Base and adapter are separate f32 sums (K + r + 2 roundings) of at most Σ|x||W_eff| + the adapter's magnitude.
      expectClose(y.toFloat64Array(), ref.y, (i) => 4 * (K + r + 4) * UNIT.f32 * (ref.mag[i] + 1), "y");
      const dy = rnd([M, N], 4);
      y.backward(dy);
      const dref = gradInputRef(dy.toFloat64Array(), weff, M, K, N);
      expectClose(x.grad!.toFloat64Array(), dref.dx, (i) => 4 * (N + r + 4) * UNIT.f32 * (dref.mag[i] + 1), "dx");
      // dB = s·dyᵀ·(x·Aᵀ), dA = s·Bᵀ·dyᵀ·x
      const xv = x.toFloat64Array(), dyv = dy.toFloat64Array(), Av = A.toFloat64Array(), Bv = B.toFloat64Array();
      const T = new Float64Array(M * r);
      for (let m = 0; m < M; m++) for (let j = 0; j < r; j++) for (let k = 0; k < K; k++) T[m * r + j] += xv[m * K + k] * Av[j * K + k];
      const dB = new Float64Array(N * r), G = new Float64Array(M * r), dA = new Float64Array(r * K);
      for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) for (let j = 0; j < r; j++) (dB[n * r + j] += s * dyv[m * N + n] * T[m * r + j]), (G[m * r + j] += s * dyv[m * N + n] * Bv[n * r + j]);
      for (let m = 0; m < M; m++) for (let j = 0; j < r; j++) for (let k = 0; k < K; k++) dA[j * K + k] += G[m * r + j] * xv[m * K + k];
      const tol = (v: Float64Array, n: number) => (i: number) => 8 * (n + 4) * UNIT.f32 * (Math.abs(v[i]) + 1);
      expectClose(B.grad!.toFloat64Array(), dB, tol(dB, M * K), "dB");
      expectClose(A.grad!.toFloat64Array(), dA, tol(dA, M * N), "dA");
      expect(q.weight.grad).toBeNull();
    });

  it("bf16 x gives bf16 y (the base in bf16 compute, the adapter in f32, y rounded once)", () => {
    const { layer } = lora4(64, 24, 4, 5);
    const y = layer.forward(rnd([3, 64], 6, "bf16"));
    expect(y.dtype).toBe("bf16");
    expect(y.shape).toEqual([3, 24]);
  });

  it("getPeftModel wraps Linear4bit targets with LoraLinear4bit; only the adapter trains", () => {
    const net = new Sequential(Linear4bit.fromLinear(new Linear(17, 9, { seed: 1 }), { quantType: "nf4" }));
    const peft = getPeftModel(net, new LoraConfig({ r: 4, targetModules: ["0"] }));
    expect(peft.baseModel.model.getSubmodule("0")).toBeInstanceOf(LoraLinear4bit);
    const trainable = [...peft.namedParameters()].filter(([, p]) => p.requiresGrad).map(([n]) => n);
    expect(trainable.sort()).toEqual(["base_model.model.0.lora_A.default.weight", "base_model.model.0.lora_B.default.weight"]);
    const all = getPeftModel(new Sequential(Linear4bit.fromLinear(new Linear(17, 9, { seed: 1 })), new Linear(9, 3)), new LoraConfig({ r: 2, targetModules: "all-linear" }));
    expect(all.targetedModuleNames).toEqual(["0", "1"]);
    peft.dispose(), all.dispose();
  });

  it("refuses a base that is not 4-bit", () => {
    expectError(() => new LoraLinear4bit(new Linear(4, 4) as unknown as Linear4bit, { r: 2 }), TypeError, "ERR_INVALID_ARG_TYPE", /base layer must be a Linear4bit/);
  });
});

describe("merge into 4 bits (PEFT: dequantise, add, requantise)", () => {
  it("merge requantises dequant(W) + s·B·A with the layer's quant type and statistics; unmerge subtracts and requantises", () => {
    for (const quantType of ["nf4", "fp4"] as const) {
      const { q, layer, A, B, s } = lora4(64, 24, 4, 11, quantType);
      const wd = q.dequantizeWeight().toFloat64Array();
      const weff = effective(wd, A.toFloat64Array(), B.toFloat64Array(), s, 24, 64, 4);
      const x = rnd([5, 64], 12);
      const before = noGrad(() => layer.eval().forward(x).toFloat64Array());
      layer.merge();
      expect(layer.merged).toBe(true);
      // The merged codes are quantize_4bit(dequant(W) + s·B·A): against the float64 sum requantised by the library's
      // quantiser, codes may differ only where the f32 sum sits on a code boundary (none expected here, 1 % allowed).
      const want = Linear4bit.fromLinear(new Linear(64, 24, { bias: false }), { quantType });
      want.requantize(Tensor.fromArray(weff, [24, 64]));
      const got = q.weight.view() as Uint8Array, exp = want.weight.view() as Uint8Array;
      let differ = 0;
      for (let i = 0; i < got.length; i++) differ += got[i] !== exp[i] ? 1 : 0;
      expect(differ).toBeLessThanOrEqual(Math.ceil(0.01 * got.length));
      expect(q.quantState.nested).not.toBeNull();
      // The merged 4-bit forward is the adapted function up to the requantisation (a code step of each block's absmax).
      const after = noGrad(() => layer.forward(x).toFloat64Array());
      const amax = Math.max(...before.map(Math.abs));
      for (let i = 0; i < after.length; i++) expect(Math.abs(after[i] - before[i])).toBeLessThan(0.25 * amax);
      layer.unmerge();
      expect(layer.merged).toBe(false);
      const back = q.dequantizeWeight().toFloat64Array();
      // Two requantisations from the original: each value within a code step (<= 0.33 of its block's absmax for NF4/FP4).
      const bmax = Math.max(...wd.map(Math.abs));
      for (let i = 0; i < back.length; i++) expect(Math.abs(back[i] - wd[i])).toBeLessThan(0.7 * bmax);
    }
  });

  it("safeMerge refuses a NaN adapter and leaves the codes as they were; mergeAndUnload returns 4-bit layers", () => {
    const net = new Sequential(Linear4bit.fromLinear(new Linear(32, 16, { seed: 3 }), { quantType: "nf4" }));
    const peft = getPeftModel(net, new LoraConfig({ r: 2, targetModules: ["0"], initLoraWeights: false }));
    const layer = peft.baseModel.model.getSubmodule("0") as LoraLinear4bit;
    const codes = Array.from(layer.baseLayer.weight.view() as Uint8Array);
    const B = layer.loraFactors("default").B;
    const saved = B.toFloat32Array();
    B.view()[0] = NaN;
    expectError(() => peft.mergeAdapter({ safeMerge: true }), PeftError, "ERR_STATE", /NaNs detected in the merged weights. The adapter default seems to be broken/);
    expect(Array.from(layer.baseLayer.weight.view() as Uint8Array)).toEqual(codes);
    B.copyFrom(Tensor.fromArray(saved, B.shape));
    const merged = peft.mergeAndUnload();
    const base = merged.getSubmodule("0") as Linear4bit;
    expect(base).toBeInstanceOf(Linear4bit);
    expect(base.weight.requiresGrad).toBe(false);
    expect(base.forward(rnd([2, 32], 4)).shape).toEqual([2, 16]);
  });
});

describe("QLoRA on a tiny Llama loaded with quantize: \"nf4\"", () => {
  const V = 40;
  const CONFIG = { vocabSize: V, hiddenSize: 64, intermediateSize: 128, numHiddenLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2 };
  writeLlama(tinyLlama(CONFIG, 3, "bf16"), join(dir, "bf16"));

  it("every projection is 4-bit under LoraLinear4bit after prepareModelForKbitTraining; only adapters train; the loss falls", async () => {
    const model = prepareModelForKbitTraining(await LlamaForCausalLM.fromPretrained(join(dir, "bf16"), { quantize: "nf4", dtype: "bf16", compressStatistics: true }));
    for (const [name, p] of model.namedParameters()) {
      expect(p.requiresGrad, name).toBe(false);
      if (p.dtype !== "u8") expect(p.dtype, name).toBe("f32");
    }
    const targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    const peft = getPeftModel(model, new LoraConfig({ r: 8, loraAlpha: 16, targetModules: targets }));
    const layers = [...peft.baseModel.loraLayers()];
    expect(layers.length).toBe(14);
    expect(layers.every((l) => l instanceof LoraLinear4bit)).toBe(true);
    expect((layers[0].baseLayer as Linear4bit).quantDtype).toBe("bf16");
    const ids = Tensor.fromArray([1, 5, 12, 7, 30, 22, 9, 14, 3, 2, 4, 6, 25, 33, 8, 11, 17, 5, 36, 2], [2, 10], "i64");
    const { first, last } = trainCausalLm(peft, ids, 40);
    expect(last).toBeLessThan(0.7 * first);
    peft.dispose();
  });
});

describe("parameter counts of a quantized base (PEFT's get_nb_trainable_parameters)", () => {
  it("a 4-bit weight counts twice its packed bytes, scales and quant states not at all: totals equal the f32 model's", async () => {
    const path = join(dir, "bf16");
    const config = new LoraConfig({ r: 4, loraAlpha: 8, targetModules: ["q_proj", "v_proj", "down_proj"] });
    const f32 = getPeftModel(await LlamaForCausalLM.fromPretrained(path), config);
    const want = f32.getNbTrainableParameters();
    // 2 layers of q (64x64), v (32x64), down (64x128) adapters at r = 4, and every weight of the model.
    expect(want[0]).toBe(2 * 4 * (64 + 64 + 64 + 32 + 128 + 64));
    let all = 0;
    for (const p of f32.parameters()) all += p.numel;
    expect(want[1]).toBe(all);
    for (const quantize of ["nf4", "fp4", "int8"] as const) {
      const q = getPeftModel(await LlamaForCausalLM.fromPretrained(path, { quantize, ...(quantize === "int8" ? {} : { compressStatistics: true }) }), config);
      expect(q.getNbTrainableParameters(), quantize).toEqual(want);
      expect(q.printTrainableParameters()).toBe(f32.printTrainableParameters());
      q.dispose();
    }
    f32.dispose();
  });
});

describe("DoRA over the 4-bit base", () => {
  it("forward equals DoRA on a dense layer holding the dequantised weight; merge requantises that layer's merged weight", () => {
    const [K, N, r] = [33, 17, 4];
    const q = Linear4bit.fromLinear(new Linear(K, N, { seed: 5 }), { quantType: "nf4" });
    const dense = new Linear(K, N, { seed: 6 });
    noGrad(() => {
      dense.weight.copyFrom(q.dequantizeWeight());
      dense.bias!.copyFrom(q.bias!);
    });
    const opts = { r, loraAlpha: 2 * r, initLoraWeights: false, useDora: true };
    const l4 = new LoraLinear4bit(q, opts), ld = new LoraLinear(dense, opts);
    const f4 = l4.loraFactors("default"), fd = ld.loraFactors("default");
    noGrad(() => {
      fd.A.copyFrom(f4.A);
      fd.B.copyFrom(f4.B);
      ld.doraMagnitude("default")!.copyFrom(l4.doraMagnitude("default")!);
    });
    const x = rnd([7, K], 9);
    const y4 = noGrad(() => l4.eval().forward(x)).toFloat64Array(), yd = noGrad(() => ld.eval().forward(x)).toFloat64Array();
    // The same f32 weight and the same f32 ops; the 4-bit GEMM unpacks W as it packs it (same values).
    expectClose(y4, yd, (i) => 64 * UNIT.f32 * (1 + Math.abs(yd[i])), "DoRA forward");
    l4.merge();
    ld.merge();
    const requantised = Linear4bit.fromLinear(dense, { quantType: "nf4" }).dequantizeWeight();
    expect(Array.from(q.dequantizeWeight().toFloat32Array())).toEqual(Array.from(requantised.toFloat32Array()));
    expect(l4.merged).toBe(true);
    l4.unmerge();
    expect(l4.merged).toBe(false);
  });
});
