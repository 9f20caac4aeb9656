// DoRA on dense bases (Linear, Conv1D, int8, a dequantizeWeight() base) against float64 references of PEFT's
// forward, backward (norm detached), magnitude init, merge and unmerge.
import { describe, expect, it } from "vitest";
import { Linear, Linear8bitLt, LoraConfig, LoraLinear, Module, Sequential, Tensor, getPeftModel, getPeftModelStateDict, noGrad, setPeftModelStateDict } from "../lib/index.js";
import { LoraLayer, type LoraLayerOptions } from "../lib/tuners/lora/layer.js";
import { doraBackward, doraForward, type DoraRun } from "../lib/tuners/lora/dora.js";
import { denseDoraOps } from "../lib/tuners/lora/dora-ops.js";
import { dropoutMask } from "../lib/kernels.js";
import { EPS, expectClose, numericGrad, values } from "./helpers/nn-reference.js";
import { errorCode } from "./helpers/errors.js";
import { makeLayer, randomize, refAdapters, refDoraForward, refNorms, weightOf, type Dense, type RefAdapter } from "./dora-reference.js";

const eps = EPS.f32;

/** Σ|terms| of each output (the scale of f32 rounding): the reference on absolute values. */
function absScale(x: Float64Array, M: number, K: number, W: Float64Array, N: number, b: Float64Array | null, ads: RefAdapter[]): Float64Array {
  const abs = (v: Float64Array) => v.map(Math.abs);
  const fixed = ads.map((a) => ({ ...a, A: abs(a.A), B: abs(a.B), m: a.m ? abs(a.m) : null, n: a.m ? refNorms(W, N, K, a) : undefined, mask: a.mask ? abs(a.mask) : null }));
  // (c − 1)·zd is bounded by (|c| + 1)·|zd|: count |zd| once more through a plain adapter of the base itself.
  return refDoraForward(abs(x), M, K, abs(W), N, b ? abs(b) : null, fixed).map((v, i) => v + Math.abs(refDoraForward(abs(x), M, K, abs(W), N, null, [])[i]));
}

// A dot product of K terms in f32 is within K·eps of Σ|terms| (γ_K); the norm (an f32 sum of K squares,
// combined in float64) adds K·eps relatively, and r-term products r·eps: (2K + r + 8)·eps·Σ|terms| bounds it.
const tolFor = (K: number, r: number, scale: Float64Array) => (i: number) => (2 * K + r + 8) * eps * scale[i] + 1e-30;

describe("DoRA magnitude init (PEFT's update_layer)", () => {
  it.each([
    ["linear", 7, 5, 3],
    ["conv1d", 17, 9, 4],
    ["int8", 33, 7, 2],
  ] as const)("%s: m = ‖W + s·B·A‖ per output feature with the initial A, B (K=%i, N=%i, r=%i)", (kind, K, N, r) => {
    const l = makeLayer(kind, K, N, r, 3);
    const { A, B } = l.loraFactors("default");
    // Recompute with the current factors (randomize set them after init) through a fresh adapter.
    l.updateLayer({ adapterName: "fresh", r, loraAlpha: 5, useDora: true, initLoraWeights: false });
    const f = l.loraFactors("fresh");
    const W = weightOf(l.baseLayer as Dense);
    const want = refNorms(W, N, K, { A: f.A.toFloat64Array(), B: f.B.toFloat64Array(), r, s: l.scaling.fresh, m: null });
    const got = l.doraMagnitude("fresh")!;
    expect(got.shape).toEqual([N]);
    // Each squared norm is an f32 sum of K squares (and r-term products): relative error (K + r + 4)·eps.
    expectClose(got.toFloat64Array(), want, (i) => (K + r + 4) * eps * want[i], "magnitude");
    expect(A.shape).toEqual([r, K]);
    expect(B.shape).toEqual([N, r]);
    l.dispose();
  });

  it("default init (B = 0): m is the base weight's row norm, and the layer computes the base output", () => {
    const base = new Linear(9, 6, { seed: 5 });
    const l = new LoraLinear(base, { r: 2, useDora: true });
    const W = base.weight.toFloat64Array();
    const want = Array.from({ length: 6 }, (_, i) => Math.hypot(...W.slice(i * 9, i * 9 + 9)));
    expectClose(l.doraMagnitude("default")!.toFloat64Array(), want, (i) => 16 * eps * want[i], "‖W‖");
    using x = Tensor.fromArray(values(4 * 9, 7), [4, 9]);
    using y = l.forward(x);
    using yb = base.forward(x);
    expectClose(y.toFloat64Array(), yb.toFloat64Array(), () => 64 * eps * 10, "identity at init");
    l.dispose();
  });
});

describe("DoRA forward (PEFT's DoraLinearVariant.forward)", () => {
  it.each([
    ["linear", 1, 7, 5, 3],
    ["linear", 17, 33, 7, 4],
    ["conv1d", 7, 17, 9, 2],
    ["int8", 7, 33, 17, 3],
    ["linear", 0, 7, 5, 3],
  ] as const)("%s M=%i K=%i N=%i r=%i, eval, against float64", (kind, M, K, N, r) => {
    const l = makeLayer(kind, K, N, r, 11);
    l.eval();
    const xv = values(M * K, 13);
    using x = Tensor.fromArray(xv, [M, K]);
    using y = l.forward(x);
    expect(y.shape).toEqual([M, N]);
    const W = weightOf(l.baseLayer as Dense);
    const b = l.baseLayer.bias?.toFloat64Array() ?? null;
    let base: Float64Array | undefined;
    if (kind === "int8") {
      // PEFT's no-dropout path rescales the base layer's own (int8) result minus its bias.
      const b8 = l.baseLayer as Linear8bitLt;
      using yb = noGrad(() => b8.forward(x));
      base = yb.toFloat64Array().map((v, i) => v - (b ? b[i % N] : 0));
    }
    const ads = refAdapters(l);
    const want = refDoraForward(xv, M, K, W, N, b, ads, base);
    expectClose(y.toFloat64Array(), want, tolFor(K, r, absScale(xv, M, K, W, N, b, ads)), `${kind} y`);
    l.dispose();
  });

  it("leading dimensions and bf16 x: y has x's shape and dtype", () => {
    const l = makeLayer("linear", 7, 5, 2, 17);
    const xv = values(2 * 3 * 7, 19, true);
    using x = Tensor.fromArray(xv, [2, 3, 7], "bf16");
    using y = l.forward(x);
    expect(y.shape).toEqual([2, 3, 5]);
    expect(y.dtype).toBe("bf16");
    const W = weightOf(l.baseLayer), b = l.baseLayer.bias!.toFloat64Array(), ads = refAdapters(l);
    const want = refDoraForward(xv, 6, 7, W, 5, b, ads);
    // bf16 output: one rounding (2^-8 relative) over the f32 computation.
    expectClose(y.toFloat64Array(), want, (i) => EPS.bf16 * Math.abs(want[i]) + tolFor(7, 2, absScale(xv, 6, 7, W, 5, b, ads))(i), "bf16 y");
    l.dispose();
  });

  it("several adapters: PEFT's order (a DoRA adapter rescales the adapters before it), plain LoRA mixed in", () => {
    const K = 17, N = 7, M = 5;
    const l = makeLayer("linear", K, N, 3, 23);
    l.updateLayer({ adapterName: "plain", r: 2, loraAlpha: 3, initLoraWeights: false });
    l.updateLayer({ adapterName: "second", r: 4, loraAlpha: 4, useDora: true, initLoraWeights: false });
    randomize(l, "plain", 29);
    randomize(l, "second", 31);
    l.setAdapter(["plain", "default", "second"]);
    l.eval();
    const xv = values(M * K, 37);
    using x = Tensor.fromArray(xv, [M, K]);
    using y = l.forward(x);
    const W = weightOf(l.baseLayer), b = l.baseLayer.bias!.toFloat64Array(), ads = refAdapters(l);
    expect(ads.map((a) => a.m !== null)).toEqual([false, true, true]);
    const want = refDoraForward(xv, M, K, W, N, b, ads);
    expectClose(y.toFloat64Array(), want, tolFor(K, 4, absScale(xv, M, K, W, N, b, ads)), "mixed y");
    l.dispose();
  });
});

/** Σ y ⊙ G as a function of flat parameters, with the norms held at their forward values (PEFT detaches them). */
function lossOf(M: number, K: number, N: number, G: Float64Array, build: (v: Float64Array) => { x: Float64Array; W: Float64Array; b: Float64Array | null; ads: RefAdapter[]; base?: Float64Array }) {
  return (v: Float64Array) => {
    const { x, W, b, ads, base } = build(v);
    const y = refDoraForward(x, M, K, W, N, b, ads, base);
    let s = 0;
    for (let i = 0; i < y.length; i++) s += y[i] * G[i];
    return s;
  };
}

describe("DoRA backward (norm detached) and training", () => {
  it.each(["linear", "conv1d", "int8"] as const)("%s: dA, dB, dm and dx against finite differences of the float64 forward", (kind) => {
    const M = 6, K = 9, N = 7, r = 3;
    const l = makeLayer(kind, K, N, r, 41);
    l.train();
    const xv = values(M * K, 43);
    using x = Tensor.fromArray(xv, [M, K]);
    x.requiresGrad = true;
    const y = l.forward(x);
    const G = values(M * N, 47);
    using g = Tensor.fromArray(G, [M, N]);
    y.backward(g);
    y.dispose();
    const { A, B } = l.loraFactors("default");
    const m = l.doraMagnitude("default")!;
    const W = weightOf(l.baseLayer as Dense), b = l.baseLayer.bias?.toFloat64Array() ?? null;
    const [ad] = refAdapters(l);
    const n = refNorms(W, N, K, ad);
    const sizes = [A.numel, B.numel, m.numel, M * K];
    const at = new Float64Array([...ad.A, ...ad.B, ...ad.m!, ...xv]);
    const split = (v: Float64Array) => {
      let o = 0;
      const take = (k: number) => v.subarray(o, (o += k));
      return [take(sizes[0]), take(sizes[1]), take(sizes[2]), take(sizes[3])];
    };
    // An int8 base's own result (activation quantisation included) is what DoRA rescales: held at this x for
    // the adapter gradients; dx is checked against the dequantised weight's linear map.
    let base8: Float64Array | undefined;
    if (kind === "int8") {
      using yb = noGrad(() => (l.baseLayer as Linear8bitLt).forward(x));
      base8 = yb.toFloat64Array().map((v, i) => v - b![i % N]);
    }
    const f = (fixedBase: boolean) =>
      lossOf(M, K, N, G, (v) => {
        const [a, bb, mm, xx] = split(v);
        return { x: xx, W, b, ads: [{ ...ad, A: a, B: bb, m: mm, n }], base: fixedBase ? base8 : undefined };
      });
    const [wA, wB, wm] = split(numericGrad(f(true), at));
    const wx = split(numericGrad(f(false), at))[3];
    // Finite differences of the float64 loss are exact to ~1e-8; the f32 gradients carry K-term sums.
    const tol = (ref: Float64Array) => (i: number) => 1e-4 * (1 + Math.abs(ref[i]));
    expectClose(A.grad!.toFloat64Array(), wA, tol(wA), "dA");
    expectClose(B.grad!.toFloat64Array(), wB, tol(wB), "dB");
    expectClose(m.grad!.toFloat64Array(), wm, tol(wm), "dm");
    if (kind !== "int8") expectClose(x.grad!.toFloat64Array(), wx, tol(wx), "dx");
    else {
      // int8: dx goes through the dequantised weight (as bitsandbytes' backward), the base result through the int8 kernel.
      expectClose(x.grad!.toFloat64Array(), wx, (i) => 2e-2 * (1 + Math.abs(wx[i])), "dx");
    }
    l.dispose();
  });

  it("the tape-free backward matches the graph's", () => {
    const M = 5, K = 7, N = 6;
    const grads = (tapeFree: boolean) => {
      const l = makeLayer("linear", K, N, 2, 53);
      l.train();
      using x = Tensor.fromArray(values(M * K, 59), [M, K]);
      using g = Tensor.fromArray(values(M * N, 61), [M, N]);
      let dx: Tensor | null;
      if (tapeFree) {
        using y = noGrad(() => l.forward(x));
        dx = l.backward(g);
      } else {
        x.requiresGrad = true;
        const y = l.forward(x);
        y.backward(g);
        y.dispose();
        dx = x.grad;
      }
      const out = [dx!.toFloat64Array(), l.doraMagnitude("default")!.grad!.toFloat64Array(), l.loraFactors("default").A.grad!.toFloat64Array()];
      l.dispose();
      return out;
    };
    const [a, b] = [grads(true), grads(false)];
    for (let i = 0; i < a.length; i++) expect(Array.from(a[i])).toEqual(Array.from(b[i]));
  });

  it("training lowers the loss (AdamW-free plain SGD on A, B, m)", () => {
    const l = makeLayer("linear", 8, 4, 2, 67);
    l.train();
    using x = Tensor.fromArray(values(16 * 8, 71), [16, 8]);
    const target = values(16 * 4, 73);
    const loss = () => {
      using y = noGrad(() => l.forward(x));
      const v = y.toFloat64Array();
      return v.reduce((s, e, i) => s + (e - target[i]) ** 2, 0);
    };
    const first = loss();
    for (let step = 0; step < 30; step++) {
      const y = l.forward(x);
      const yv = y.toFloat64Array();
      using g = Tensor.fromArray(yv.map((e, i) => 2 * (e - target[i])), y.shape);
      l.backward(g);
      y.dispose();
      for (const p of [l.loraFactors("default").A, l.loraFactors("default").B, l.doraMagnitude("default")!]) {
        using upd = Tensor.fromArray(p.toFloat64Array().map((v, i) => v - 0.01 * p.grad!.toFloat64Array()[i]), p.shape);
        p.copyFrom(upd);
        p.grad = null;
      }
    }
    expect(loss()).toBeLessThan(first * 0.8);
    l.dispose();
  });
});

describe("dora.ts directly: the dropout path with a known mask", () => {
  it("forward and backward with dropout against float64 (xd = x ⊙ mask)", () => {
    const M = 5, K = 9, N = 7, r = 3, p = 0.4, seed = 7, stream = 3;
    const base = new Linear(K, N, { seed: 79 });
    const A = Tensor.fromArray(values(r * K, 83), [r, K]);
    const B = Tensor.fromArray(values(N * r, 89), [N, r]);
    const m = Tensor.fromArray(values(N, 97).map((v) => 1 + v * 0.5), [N]);
    for (const t of [A, B, m]) t.requiresGrad = true;
    const W = base.weight.toFloat64Array();
    const ad: RefAdapter = { A: A.toFloat64Array(), B: B.toFloat64Array(), r, s: 1.5, m: m.toFloat64Array() };
    const n = refNorms(W, N, K, ad);
    using nT = Tensor.fromArray(n, [N]);
    using maskT = dropoutMask([M, K], p, seed, stream);
    const mask = maskT.toFloat64Array();
    const run: DoraRun = { A, B, scale: 1.5, p, seed, stream, magnitude: m, norm: nT };
    const xv = values(M * K, 101);
    using x = Tensor.fromArray(xv, [M, K]);
    using ops = denseDoraOps(base);
    const { q, saved } = doraForward(ops, x, [run]);
    const want = refDoraForward(xv, M, K, W, N, null, [{ ...ad, mask, n }]);
    expectClose(q.toFloat64Array(), want, (i) => 1e-5 * (1 + Math.abs(want[i])), "q with dropout");
    const G = values(M * N, 103);
    using g = Tensor.fromArray(G, [M, N]);
    using dx = doraBackward(ops, g, x, saved, [run], true)!;
    const f = (v: Float64Array) => refDoraForward(v, M, K, W, N, null, [{ ...ad, mask, n }]).reduce((s, e, i) => s + e * G[i], 0);
    const wx = numericGrad(f, xv);
    expectClose(dx.toFloat64Array(), wx, (i) => 1e-4 * (1 + Math.abs(wx[i])), "dx with dropout");
    const fm = (v: Float64Array) => refDoraForward(xv, M, K, W, N, null, [{ ...ad, m: v, mask, n }]).reduce((s, e, i) => s + e * G[i], 0);
    const wm = numericGrad(fm, ad.m!);
    expectClose(m.grad!.toFloat64Array(), wm, (i) => 1e-4 * (1 + Math.abs(wm[i])), "dm with dropout");
    q.dispose();
    saved.forEach((t) => t.dispose());
    for (const t of [A, B, m]) t.dispose();
    base.dispose();
  });
});

describe("DoRA: norm reuse, dtypes, dropout through the layer", () => {
  it("the kept norm follows writes to B (an optimizer step) and to the base weight", () => {
    const K = 7, N = 5, M = 3;
    const l = makeLayer("linear", K, N, 2, 107);
    l.eval();
    const xv = values(M * K, 109);
    using x = Tensor.fromArray(xv, [M, K]);
    const check = (what: string) => {
      using y = l.forward(x);
      const W = weightOf(l.baseLayer), b = l.baseLayer.bias!.toFloat64Array(), ads = refAdapters(l);
      const want = refDoraForward(xv, M, K, W, N, b, ads);
      expectClose(y.toFloat64Array(), want, tolFor(K, 2, absScale(xv, M, K, W, N, b, ads)), what);
    };
    check("first");
    const B = l.loraFactors("default").B;
    B.copyFrom(Tensor.fromArray(values(B.numel, 113), B.shape));
    check("after B changed");
    const W = l.baseLayer.weight;
    W.copyFrom(Tensor.fromArray(values(W.numel, 127), W.shape));
    check("after W changed");
    l.dispose();
  });

  it("a bf16 base weight: the norm and products use it widened to f32", () => {
    const K = 9, N = 6, M = 4;
    const lin = new Linear(K, N, { seed: 131 });
    lin.weight.copyFrom(Tensor.fromArray(values(K * N, 137, true), [N, K]));
    lin.to("bf16");
    const l = new LoraLinear(lin, { r: 2, loraAlpha: 3, useDora: true, initLoraWeights: false });
    randomize(l, "default", 139);
    l.eval();
    const xv = values(M * K, 149);
    using x = Tensor.fromArray(xv, [M, K]);
    using y = l.forward(x);
    const W = lin.weight.toFloat64Array(), b = lin.bias!.toFloat64Array(), ads = refAdapters(l);
    const want = refDoraForward(xv, M, K, W, N, b, ads);
    expectClose(y.toFloat64Array(), want, tolFor(K, 2, absScale(xv, M, K, W, N, b, ads)), "y over bf16 W");
    l.dispose();
  });

  it("dropout through the layer: training output differs from eval's, backward runs, eval ignores dropout", () => {
    const K = 8, N = 6, M = 5;
    const l = makeLayer("linear", K, N, 2, 151, { dropout: 0.5 });
    using x = Tensor.fromArray(values(M * K, 157), [M, K]);
    l.eval();
    using ye = l.forward(x);
    const W = weightOf(l.baseLayer), b = l.baseLayer.bias!.toFloat64Array(), ads = refAdapters(l);
    const want = refDoraForward(values(M * K, 157), M, K, W, N, b, ads);
    expectClose(ye.toFloat64Array(), want, (i) => 1e-5 * (1 + Math.abs(want[i])), "eval y");
    l.train();
    using yt = l.forward(x);
    expect(Array.from(yt.toFloat32Array())).not.toEqual(Array.from(ye.toFloat32Array()));
    using g = Tensor.fromArray(values(M * N, 163), [M, N]);
    using dx = l.backward(g)!;
    expect(dx.shape).toEqual([M, K]);
    expect(l.doraMagnitude("default")!.grad!.shape).toEqual([N]);
    l.dispose();
  });
});

describe("DoRA bad inputs", () => {
  it("useDora must be a boolean", () => {
    const base = new Linear(4, 3);
    expect(() => new LoraLinear(base, { r: 2, useDora: "yes" as never })).toThrow(TypeError);
    base.dispose();
  });

  it("a custom LoRA layer that does not implement DoRA refuses it (ERR_UNSUPPORTED), naming the layer", () => {
    class MyLora extends LoraLayer {
      constructor(base: Module, opts: LoraLayerOptions) {
        super(base);
        this.updateLayer(opts);
      }
      protected features(): [number, number] {
        return [4, 3];
      }
      forward(x: Tensor): Tensor {
        return x;
      }
    }
    const base = new Linear(4, 3);
    expect(errorCode(() => new MyLora(base, { r: 2, useDora: true }))).toBe("ERR_UNSUPPORTED");
    expect(() => new MyLora(base, { r: 2, useDora: true })).toThrow(/MyLora does not support DoRA/);
    new MyLora(base, { r: 2 }).dispose();
  });

  it("a checkpoint magnitude of the wrong shape is ERR_CHECKPOINT (nothing copied)", () => {
    const model = new Sequential(new Linear(4, 3, { seed: 1 }));
    const pm = getPeftModel(model, new LoraConfig({ r: 2, targetModules: ["0"], useDora: true }));
    const sd = getPeftModelStateDict(pm);
    const key = "base_model.model.0.lora_magnitude_vector";
    expect(sd[key].shape).toEqual([3]);
    const before = sd[key].toFloat64Array();
    const bad = { ...sd, [key]: Tensor.fromArray([1, 2], [2]) };
    expect(errorCode(() => setPeftModelStateDict(pm, bad))).toBe("ERR_CHECKPOINT");
    expect(Array.from(sd[key].toFloat64Array())).toEqual(Array.from(before));
    pm.dispose();
  });
});
