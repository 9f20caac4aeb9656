// DoRA merge / unmerge (PEFT's DoraLinearVariant.merge_safe/merge_unsafe/unmerge, bnb's DoRA merge on int8),
// safeMerge, mergeAndUnload and a base that only offers dequantizeWeight() (the contract of a 4-bit base).
import { describe, expect, it } from "vitest";
import { Linear, Linear8bitLt, LoraConfig, LoraLinear, Module, Sequential, Tensor, getPeftModel, noGrad } from "../lib/index.js";
import { FusedLoraLayer, type FusedResult, type NativeAdapter } from "../lib/tuners/lora/layer.js";
import { baseWeightF32 } from "../lib/tuners/lora/dora-weight.js";
import { linear } from "../lib/ops.js";
import { EPS, expectClose, values } from "./helpers/nn-reference.js";
import { errorCode } from "./helpers/errors.js";
import { makeLayer, randomize, refAdapters, refDoraForward, refNorms, weightOf, type Dense, type RefAdapter } from "./dora-reference.js";

const eps = EPS.f32;

/** PEFT's merges in order on W (N, K): W ← m/‖W + ΔW‖ ⊙ (W + ΔW) (DoRA), W ← W + ΔW (LoRA). */
function refMerge(W: Float64Array, N: number, K: number, ads: RefAdapter[]): Float64Array {
  let w = Float64Array.from(W);
  for (const a of ads) {
    const n = refNorms(w, N, K, a);
    const next = new Float64Array(N * K);
    for (let i = 0; i < N; i++)
      for (let k = 0; k < K; k++) {
        let d = 0;
        for (let j = 0; j < a.r; j++) d += a.B[i * a.r + j] * a.A[j * K + k];
        const v = w[i * K + k] + a.s * d;
        next[i * K + k] = a.m ? (a.m[i] / n[i]) * v : v;
      }
    w = next;
  }
  return w;
}

describe("DoRA merge and unmerge", () => {
  it.each(["linear", "conv1d"] as const)("%s: W' = m/‖W + ΔW‖ ⊙ (W + ΔW); the merged base gives the DoRA output; unmerge restores W", (kind) => {
    const K = 17, N = 9, M = 5;
    const l = makeLayer(kind, K, N, 3, 5);
    l.eval();
    const W0 = weightOf(l.baseLayer as Dense);
    const ads = refAdapters(l);
    using x = Tensor.fromArray(values(M * K, 7), [M, K]);
    using y0 = l.forward(x);
    l.merge();
    expect(l.merged).toBe(true);
    const want = refMerge(W0, N, K, ads);
    // (W + ΔW) has r + 1 terms, the norm a K-term f32 sum: (K + r + 8)·eps relative to |W| + |ΔW| (≤ 4 here).
    expectClose(weightOf(l.baseLayer as Dense), want, () => (K + 3 + 8) * eps * 4, "merged W");
    using y1 = l.forward(x);
    expectClose(y1.toFloat64Array(), y0.toFloat64Array(), (i) => 1e-5 * (1 + Math.abs(y0.toFloat64Array()[i])), "merged output");
    l.unmerge();
    expectClose(weightOf(l.baseLayer as Dense), W0, () => 2e-6 * 4, "W after unmerge");
    l.dispose();
  });

  it("several adapters merge in order (each norm over the weight merged so far) and unmerge latest first", () => {
    const K = 7, N = 5;
    const l = makeLayer("linear", K, N, 2, 9);
    l.updateLayer({ adapterName: "plain", r: 3, loraAlpha: 2, initLoraWeights: false });
    l.updateLayer({ adapterName: "two", r: 2, loraAlpha: 5, useDora: true, initLoraWeights: false });
    randomize(l, "plain", 11);
    randomize(l, "two", 13);
    const names = ["default", "plain", "two"];
    const W0 = weightOf(l.baseLayer);
    l.merge({ adapterNames: names });
    expectClose(weightOf(l.baseLayer), refMerge(W0, N, K, refAdapters(l, names)), () => 32 * eps * 8, "merged W");
    l.unmerge();
    expectClose(weightOf(l.baseLayer), W0, () => 1e-5, "W after unmerge");
    l.dispose();
  });

  it("safeMerge refuses a broken DoRA adapter (ERR_STATE) and leaves W as it was", () => {
    const l = makeLayer("linear", 5, 4, 2, 15);
    const W0 = l.baseLayer.weight.toFloat64Array();
    const m = l.doraMagnitude("default")!;
    m.copyFrom(Tensor.fromArray([NaN, 1, 1, 1], [4]));
    expect(errorCode(() => l.merge({ safeMerge: true }))).toBe("ERR_STATE");
    expect(l.merged).toBe(false);
    expect(Array.from(l.baseLayer.weight.toFloat64Array())).toEqual(Array.from(W0));
    l.dispose();
  });

  it("int8 base: dequantise, DoRA merge, requantise (as PEFT's bnb merge), and back on unmerge", () => {
    const K = 33, N = 7;
    const l = makeLayer("int8", K, N, 3, 17);
    const base = l.baseLayer as Linear8bitLt;
    const W0 = weightOf(base);
    const want = refMerge(W0, N, K, refAdapters(l));
    l.merge();
    // Requantised: within one int8 step (row absmax / 127) plus the f16 rounding bitsandbytes applies first.
    const rowMax = (w: Float64Array, i: number) => Math.max(...w.slice(i * K, i * K + K).map(Math.abs));
    const got = weightOf(base);
    expectClose(got, want, (i) => rowMax(want, Math.floor(i / K)) * (1 / 127 + 2 ** -10), "merged int8 W");
    l.unmerge();
    // Unmerge divides the requantised weight by c = m/n (scaling its error by n/|m|), then requantises again.
    const [ad] = refAdapters(l);
    const n = refNorms(W0, N, K, ad);
    const step = (w: Float64Array, row: number) => rowMax(w, row) * (1 / 127 + 2 ** -10);
    expectClose(weightOf(base), W0, (i) => { const row = Math.floor(i / K); return step(want, row) * (n[row] / Math.abs(ad.m![row])) + step(W0, row); }, "int8 W after unmerge");
    l.dispose();
  });

  it("int8 with exactUnmerge: unmerge restores CB/SCB bit for bit", () => {
    const l = makeLayer("int8", 9, 5, 2, 19);
    const base = l.baseLayer as Linear8bitLt;
    const cb = Array.from(base.weight.view() as Int8Array), scb = Array.from(base.SCB.toFloat32Array());
    l.merge({ exactUnmerge: true });
    l.unmerge();
    expect(Array.from(base.weight.view() as Int8Array)).toEqual(cb);
    expect(Array.from(base.SCB.toFloat32Array())).toEqual(scb);
    l.dispose();
  });

  it("mergeAndUnload of a DoRA PeftModel gives a plain model with the adapted output", () => {
    const model = new Sequential(new Linear(6, 8, { seed: 1 }), new Linear(8, 3, { seed: 2 }));
    const pm = getPeftModel(model, new LoraConfig({ r: 2, targetModules: ["0", "1"], useDora: true, initLoraWeights: false }));
    pm.eval();
    for (const [, mod] of pm.namedModules()) if (mod instanceof LoraLinear) {
      const m = mod.doraMagnitude("default")!;
      m.copyFrom(Tensor.fromArray(values(m.numel, 3).map((v) => 1 + 0.4 * v), m.shape));
    }
    using x = Tensor.fromArray(values(4 * 6, 5), [4, 6]);
    using y0 = noGrad(() => pm.forward(x));
    const merged = pm.mergeAndUnload();
    using y1 = noGrad(() => merged.forward(x));
    expectClose(y1.toFloat64Array(), y0.toFloat64Array(), (i) => 1e-5 * (1 + Math.abs(y0.toFloat64Array()[i])), "mergeAndUnload output");
    expect([...merged.namedModules()].some(([, m]) => m instanceof LoraLinear)).toBe(false);
    merged.dispose();
  });
});

/** A base that stores W only as something to dequantise (what a 4-bit base offers): f32 (out, in) on request. */
class StubQuantized extends Module {
  readonly inFeatures: number;
  readonly outFeatures: number;
  bias: Tensor | null = null;
  /** A frozen placeholder for a 4-bit base's packed weight. */
  weight: Tensor;
  #w: Tensor;

  constructor(w: Tensor) {
    super();
    [this.outFeatures, this.inFeatures] = w.shape;
    this.weight = this.registerBuffer("weight", Tensor.zeros([1], { dtype: "u8" }));
    this.#w = this.registerBuffer("stored", w);
  }

  dequantizeWeight(): Tensor {
    return this.#w.to("f32");
  }

  store(w: Tensor): void {
    this.#w.copyFrom(w);
  }

  forward(x: Tensor): Tensor {
    using w = this.dequantizeWeight();
    return linear(x, w);
  }
}

/** A LoRA layer over the stub, as a 4-bit LoRA layer would be (plain LoRA not needed here). */
class StubLora extends FusedLoraLayer {
  declare baseLayer: StubQuantized & { weight: Tensor; bias: Tensor | null };
  constructor(base: StubQuantized, opts: ConstructorParameters<typeof LoraLinear>[1]) {
    super(base);
    this.updateLayer(opts);
  }
  protected features(): [number, number] {
    return [this.baseLayer.inFeatures, this.baseLayer.outFeatures];
  }
  protected runForward(_x: Tensor, _a: NativeAdapter[]): FusedResult {
    throw new Error("plain LoRA is not run in this test");
  }
  protected runBackward(): Tensor | null {
    throw new Error("plain LoRA is not run in this test");
  }
  protected override writeMergeWeight(w: Tensor): void {
    this.baseLayer.store(w);
  }
}

describe("DoRA over a base with dequantizeWeight() (the 4-bit contract)", () => {
  it("baseWeightF32 takes dequantizeWeight(); magnitude, forward, backward and merge follow the dequantised W", () => {
    const K = 9, N = 6, M = 4, r = 2;
    const Wv = values(N * K, 23);
    const stub = new StubQuantized(Tensor.fromArray(Wv, [N, K]));
    const bw = baseWeightF32(stub);
    expect([bw.owned, bw.inOut, bw.weight.shape]).toEqual([true, false, [N, K]]);
    bw.weight.dispose();
    const l = new StubLora(stub, { r, loraAlpha: 4, useDora: true, initLoraWeights: false });
    const { A, B } = l.loraFactors("default");
    const ad: RefAdapter = { A: A.toFloat64Array(), B: B.toFloat64Array(), r, s: l.scaling.default, m: null };
    const n = refNorms(Wv, N, K, ad);
    expectClose(l.doraMagnitude("default")!.toFloat64Array(), n, (i) => (K + r + 4) * eps * n[i], "magnitude from the dequantised W");
    const m = l.doraMagnitude("default")!;
    m.copyFrom(Tensor.fromArray(values(N, 29).map((v) => 1 + 0.5 * v), [N]));
    l.eval();
    const xv = values(M * K, 31);
    using x = Tensor.fromArray(xv, [M, K]);
    using y = l.forward(x);
    const ads = [{ ...ad, m: m.toFloat64Array() }];
    const want = refDoraForward(xv, M, K, Wv, N, null, ads);
    expectClose(y.toFloat64Array(), want, (i) => 1e-5 * (1 + Math.abs(want[i])), "y");
    l.merge();
    using w = stub.dequantizeWeight();
    expectClose(w.toFloat64Array(), refMerge(Wv, N, K, ads), () => 1e-5, "merged through writeMergeWeight");
    l.unmerge();
    using w2 = stub.dequantizeWeight();
    expectClose(w2.toFloat64Array(), Wv, () => 1e-5, "unmerged");
    l.dispose();
  });
});
