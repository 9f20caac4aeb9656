// The autograd engine: module nodes over the fused kernels against the tape-free path, graph and lifetime
// errors, noGrad, tidy, retainGraph, a module used twice in one graph, and memory staying flat.
import { describe, expect, it } from "vitest";
import {
  F, Linear, LoraConfig, Module, Tensor, backend, getPeftModel, gradcheck, noGrad, nllLoss, tidy, type PeftModel,
} from "../lib/index.js";
import { MLP } from "./helpers/models.js";
import { errorCode } from "./helpers/errors.js";
import { distIndex, runNode } from "./helpers/child.js";

const code = errorCode;

function leaf(shape: number[], seed: number): Tensor {
  const t = Tensor.randn(shape, { seed });
  t.requiresGrad = true;
  return t;
}

const peftMlp = (seed = 0): PeftModel =>
  getPeftModel(new MLP(24, seed), new LoraConfig({ r: 4, targetModules: ["seq.0", "seq.2"], modulesToSave: ["seq.4"], initLoraWeights: false }));

describe("module nodes run the fused backward", () => {
  it("a PEFT model's gradients through autograd equal the tape-free ones exactly", () => {
    const x = Tensor.randn([9, 20], { seed: 1 });
    const y = Tensor.fromArray([0, 1, 1, 0, 1, 0, 0, 1, 1], [9], "i64");
    const a = peftMlp(), b = peftMlp();
    b.loadStateDict(a.stateDict());
    a.train();
    b.train();
    const out = a.forward(x);
    const { grad } = nllLoss(out, y);
    a.backward(grad, { inputGrad: false });
    const loss = F.nllLoss(b.forward(x), y);
    expect(loss.shape).toEqual([]);
    expect(loss.gradFn?.name).toBe("NllLossBackward");
    loss.backward();
    const pb = new Map(b.namedParameters());
    let checked = 0;
    for (const [n, p] of a.namedParameters()) {
      if (!p.requiresGrad) {
        expect(pb.get(n)!.grad).toBeNull();
        continue;
      }
      expect(Array.from(pb.get(n)!.grad!.toFloat32Array())).toEqual(Array.from(p.grad!.toFloat32Array()));
      checked++;
    }
    expect(checked).toBe(6); // A and B of two layers, weight and bias of the saved copy
  });

  it("a frozen first layer records nothing; a module used twice in one graph sums both uses", () => {
    const frozen = new Linear(3, 3, { seed: 1 });
    for (const p of frozen.parameters()) p.requiresGrad = false;
    expect(frozen.forward(Tensor.randn([2, 3])).gradFn).toBeNull();
    const lin = new Linear(4, 4, { seed: 2 });
    const x = leaf([3, 4], 3);
    expect(gradcheck((v) => lin.forward(F.silu(lin.forward(v))), [x])).toBe(true);
    // The weight's gradient gets both uses: check it against finite differences through the weight itself.
    expect(gradcheck((w) => F.linear(F.silu(F.linear(x, w)), w), [lin.weight])).toBe(true);
    lin.zeroGrad();
    const y = lin.forward(F.silu(lin.forward(x)));
    y.backward(Tensor.randn(y.shape, { seed: 4 }));
    expect(lin.weight.grad).not.toBeNull();
  });

  it("Embedding, activations, LogSoftmax and dropout pass gradcheck as module nodes", () => {
    const x = leaf([4, 6], 5);
    expect(gradcheck((v) => F.logSoftmax(F.gelu(v)), [x])).toBe(true);
    expect(gradcheck((v) => F.gelu(v, { approximate: "tanh" }), [x])).toBe(true);
    expect(gradcheck((v) => F.relu(v), [x])).toBe(true);
    const w = leaf([7, 3], 6);
    const ids = Tensor.fromArray([1, 6, 1, 0], [4], "i32");
    expect(gradcheck((v) => F.embedding(ids, v), [w])).toBe(true);
    // Dropout draws once per call; the same mask comes back in backward (checked against its own mask).
    const d = F.dropout(x, 0.5);
    const g = Tensor.randn(d.shape, { seed: 7 });
    d.backward(g);
    const kept = d.toFloat32Array(), xs = x.toFloat32Array(), gs = g.toFloat32Array(), dx = x.grad!.toFloat32Array();
    for (let i = 0; i < kept.length; i++) expect(dx[i]).toBeCloseTo(kept[i] === 0 && xs[i] !== 0 ? 0 : gs[i] * 2, 5);
  });

  it("losses are scalar tensors whose backward scales the fused gradient", () => {
    const logits = leaf([5, 3], 8);
    const target = Tensor.fromArray([0, 2, 1, 2, 0], [5], "i64");
    expect(gradcheck((v) => F.crossEntropy(v, target, { labelSmoothing: 0.1 }), [logits])).toBe(true);
    const t = Tensor.randn([5, 3], { seed: 9 });
    expect(gradcheck((v) => F.mseLoss(v, t), [logits])).toBe(true);
  });
});

describe("graph errors", () => {
  it("a second backward through a freed graph is ERR_STATE; retainGraph keeps it and gradients accumulate", () => {
    const x = leaf([3, 4], 1);
    const w = leaf([2, 4], 2);
    const loss = F.mseLoss(F.linear(x, w), Tensor.zeros([3, 2]));
    loss.backward(undefined, { retainGraph: true });
    const once = Array.from(w.grad!.toFloat32Array());
    loss.backward();
    const twice = Array.from(w.grad!.toFloat32Array());
    twice.forEach((v, i) => expect(v).toBeCloseTo(2 * once[i], 5));
    expect(() => loss.backward()).toThrow(/second time/);
    expect(code(() => loss.backward())).toBe("ERR_STATE");
  });

  it("an in-place write to a tensor saved for backward is caught", () => {
    const x = leaf([3, 4], 1);
    const lin = new Linear(4, 2, { seed: 3 });
    const y = lin.forward(x);
    lin.weight.copyFrom(Tensor.zeros([2, 4]));
    expect(() => y.backward(Tensor.fromArray(new Array(6).fill(1), [3, 2]))).toThrow(/modified by an in-place operation/);
  });

  it("reading a saved tensor through view() is not an in-place change", () => {
    const x = leaf([2, 3], 4);
    const y = F.silu(x);
    void Array.from(x.view());
    y.backward(Tensor.fromArray(new Array(6).fill(1), [2, 3]));
    expect(x.grad).not.toBeNull();
  });

  it("backward needs a tensor that requires grad, a scalar or a grad of its shape, on its device", () => {
    expect(code(() => Tensor.randn([2]).backward())).toBe("ERR_STATE");
    const y = F.silu(leaf([2, 2], 1));
    expect(code(() => y.backward())).toBe("ERR_SHAPE");
    expect(code(() => y.backward(Tensor.zeros([3])))).toBe("ERR_SHAPE");
    const d = y.detach();
    expect(d.requiresGrad).toBe(false);
    expect(d.gradFn).toBeNull();
    expect(d.sharesStorage(y)).toBe(true);
    if (backend.cuda.available) expect(code(() => y.backward(Tensor.zeros([2, 2], { device: "cuda" })))).toBe("ERR_DEVICE");
  });

  it("a disposed output releases its graph at once", () => {
    const x = leaf([64, 64], 1);
    const before = backend.memory();
    const y = F.silu(x);
    const during = backend.memory();
    expect(during.tensors).toBeGreaterThan(before.tensors);
    y.dispose();
    expect(backend.memory()).toEqual(before);
    expect(code(() => y.backward())).toBe("ERR_DISPOSED");
  });
});

describe("grad mode and scopes", () => {
  it("noGrad records nothing, in callback and Disposable form, and nests", () => {
    const x = leaf([2, 2], 1);
    expect(noGrad(() => F.silu(x)).gradFn).toBeNull();
    {
      using _ = noGrad();
      expect(F.silu(x).requiresGrad).toBe(false);
      expect(noGrad(() => F.silu(x)).requiresGrad).toBe(false);
      expect(F.silu(x).requiresGrad).toBe(false);
    }
    expect(F.silu(x).requiresGrad).toBe(true);
  });

  it("tidy disposes what fn made except its result; parameters, gradients and saved tensors survive", () => {
    const x = leaf([4, 4], 2);
    const before = backend.memory().tensors;
    let inner: Tensor | null = null;
    const { loss, model } = tidy(() => {
      const model = new Linear(4, 3, { seed: 5 });
      inner = F.silu(x);
      const loss = F.mseLoss(model.forward(inner), Tensor.zeros([4, 3]));
      return { loss, model };
    });
    expect(inner!.disposed).toBe(true);
    expect(loss.disposed).toBe(false);
    loss.backward();
    expect(model.weight.grad).not.toBeNull();
    expect(x.grad).not.toBeNull();
    loss.dispose();
    model.dispose();
    x.grad!.dispose();
    x.grad = null;
    expect(backend.memory().tensors).toBe(before);
    expect(() => tidy(() => Promise.resolve(1) as never)).toThrow(/synchronous/);
  });

  it("1,000 training steps through autograd that dispose only the loss keep memory flat (child process)", () => {
    const r = runNode(`
      import { Tensor, getPeftModel, LoraConfig, AdamW, F, Module, Sequential, Linear, ReLU, LogSoftmax, backend, tidy } from ${JSON.stringify(distIndex)};
      class MLP extends Module {
        constructor() { super(); this.seq = this.registerModule("seq", new Sequential(new Linear(20, 64), new ReLU(), new Linear(64, 64), new ReLU(), new Linear(64, 2), new LogSoftmax())); }
        forward(x) { return this.seq.forward(x); }
      }
      const model = getPeftModel(new MLP(), new LoraConfig({ r: 4, targetModules: ["seq.0", "seq.2"], modulesToSave: ["seq.4"] }));
      const opt = new AdamW([...model.parameters()].filter((p) => p.requiresGrad), { lr: 1e-3 });
      const x = Tensor.randn([16, 20], { seed: 1 });
      const y = Tensor.fromArray(Array.from({ length: 16 }, (_, i) => i % 2), [16], "i64");
      const step = () => {
        const loss = tidy(() => F.nllLoss(model.forward(x), y));
        loss.backward();
        opt.step();
        opt.zeroGrad();
        loss.dispose();
      };
      for (let i = 0; i < 100; i++) step();
      const m0 = backend.memory(), r0 = process.memoryUsage().rss;
      for (let i = 0; i < 1000; i++) step();
      const m1 = backend.memory();
      console.log(JSON.stringify({ tensors: m1.tensors - m0.tensors, bytes: m1.bytes - m0.bytes, rss: (process.memoryUsage().rss - r0) / 2 ** 20 }));`);
    expect(r.stderr).toBe("");
    const m = JSON.parse(r.stdout);
    expect(m.tensors).toBe(0);
    expect(m.bytes).toBe(0);
    if (process.env.NODE_PEFT_BUILD !== "asan") expect(m.rss).toBeLessThan(20);
  });
});

describe("devices", () => {
  it("mixed devices are ERR_DEVICE in ops and in backward (emulated cuda, child process)", () => {
    const r = runNode(`
      import { F, Tensor } from ${JSON.stringify(distIndex)};
      const x = Tensor.randn([2, 2]); x.requiresGrad = true;
      const y = F.silu(x);
      const out = {};
      const attempt = (k, f) => { try { f(); out[k] = "ok"; } catch (e) { out[k] = e.code; } };
      attempt("backward", () => y.backward(Tensor.zeros([2, 2], { device: "cuda" })));
      attempt("add", () => F.add(x, Tensor.zeros([2, 2], { device: "cuda" })));
      attempt("linear", () => F.linear(x, Tensor.zeros([3, 2], { device: "cuda" })));
      console.log(JSON.stringify(out));`, { NODE_PEFT_CUDA: "emu" });
    expect(r.stderr).toBe("");
    expect(JSON.parse(r.stdout)).toEqual({ backward: "ERR_DEVICE", add: "ERR_DEVICE", linear: "ERR_DEVICE" });
  });
});
