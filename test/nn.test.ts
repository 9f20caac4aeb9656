import { describe, expect, it } from "vitest";
import { AdamW, Conv1D, Dropout, Embedding, LogSoftmax, Linear, Module, ModuleDict, ModuleList, PeftError, ReLU, Sequential, Tensor, backend } from "../lib/index.js";
import { EPS, expectClose, numericGrad, mat, refLinear, refLinearAbs, values } from "./helpers/nn-reference.js";
import { errorCode } from "./helpers/errors.js";

const code = errorCode;

function fillLinear(l: Linear, seed: number) {
  l.weight.copyFrom(Tensor.fromArray(values(l.weight.numel, seed), l.weight.shape));
  l.bias?.copyFrom(Tensor.fromArray(values(l.bias.numel, seed + 1), l.bias.shape));
}

describe("Linear", () => {
  for (const [M, K, N] of [[1, 1, 1], [7, 17, 33], [33, 7, 17], [0, 5, 3], [17, 127, 7]] as const) {
    it(`forward and backward match float64 at M=${M} K=${K} N=${N}`, () => {
      const l = new Linear(K, N, { seed: 1 });
      fillLinear(l, 3);
      const x = Tensor.fromArray(values(M * K, 5), [M, K]);
      const y = l.forward(x);
      expect(y.shape).toEqual([M, N]);
      const xm = mat(x), wm = mat(l.weight), b = l.bias!.toFloat64Array();
      const want = refLinear(xm, wm, b), scale = refLinearAbs(xm, wm);
      expectClose(y.toFloat32Array(), want, (i) => (K + 2) * EPS.f32 * (scale[i] + Math.abs(want[i])) + 1e-30, "y");
      // dy = 1 everywhere: dx[m, k] = Σ_n W[n, k]; dW[n, k] = Σ_m x[m, k]; db[n] = M
      const dy = Tensor.fromArray(values(M * N, 9), [M, N]);
      const dx = l.backward(dy)!;
      const dyd = dy.toFloat64Array();
      const wantDx = new Float64Array(M * K), wantDw = new Float64Array(N * K), wantDb = new Float64Array(N);
      for (let m = 0; m < M; m++)
        for (let n = 0; n < N; n++) {
          wantDb[n] += dyd[m * N + n];
          for (let k = 0; k < K; k++) {
            wantDx[m * K + k] += dyd[m * N + n] * wm.data[n * K + k];
            wantDw[n * K + k] += dyd[m * N + n] * xm.data[m * K + k];
          }
        }
      const tol = (n: number) => () => (n + 2) * EPS.f32 * n + 1e-6;
      expectClose(dx.toFloat32Array(), wantDx, tol(N), "dx");
      expectClose(l.weight.grad!.toFloat32Array(), wantDw, tol(Math.max(M, 1)), "dW");
      expectClose(l.bias!.grad!.toFloat32Array(), wantDb, tol(Math.max(M, 1)), "db");
    });
  }

  it("gradients agree with finite differences of the float64 forward (loss = Σ y·c)", () => {
    const [M, K, N] = [3, 5, 4];
    const l = new Linear(K, N, { seed: 2 });
    fillLinear(l, 11);
    const xv = values(M * K, 12), c = values(M * N, 13);
    const x = Tensor.fromArray(xv, [M, K]);
    l.forward(x);
    l.backward(Tensor.fromArray(c, [M, N]));
    const wv = l.weight.toFloat64Array(), bv = l.bias!.toFloat64Array();
    const loss = (w: Float64Array) => {
      const y = refLinear({ data: xv, rows: M, cols: K }, { data: w, rows: N, cols: K }, bv);
      return y.reduce((s, v, i) => s + v * c[i], 0);
    };
    expectClose(l.weight.grad!.toFloat32Array(), numericGrad(loss, wv), () => 1e-5, "dW vs finite differences");
  });

  it("accumulates gradients over two backwards until zeroGrad", () => {
    const l = new Linear(3, 2, { seed: 4 });
    const x = Tensor.fromArray([1, 2, 3], [1, 3]), dy = Tensor.fromArray([1, 1], [1, 2]);
    l.forward(x);
    l.backward(dy);
    const once = l.weight.grad!.toArray();
    l.forward(x);
    l.backward(dy);
    expect(l.weight.grad!.toArray()).toEqual(once.map((v) => 2 * v));
    l.zeroGrad();
    expect(l.weight.grad).toBeNull();
  });

  it("frozen parameters get no gradient; backward without a training forward is ERR_STATE naming the module", () => {
    const l = new Linear(4, 3, { seed: 5 });
    l.weight.requiresGrad = false;
    l.forward(Tensor.zeros([2, 4]));
    l.backward(Tensor.zeros([2, 3]));
    expect(l.weight.grad).toBeNull();
    expect(l.bias!.grad).not.toBeNull();
    const m = new Linear(4, 3);
    expect(code(() => m.backward(Tensor.zeros([2, 3])))).toBe("ERR_STATE");
    expect(() => m.backward(Tensor.zeros([2, 3]))).toThrow(/Linear\(in_features=4, out_features=3, bias=True\)\.backward/);
    m.eval();
    m.forward(Tensor.zeros([2, 4]));
    expect(code(() => m.backward(Tensor.zeros([2, 3])))).toBe("ERR_STATE");
  });

  it("uses PyTorch's init bounds and is reproducible by seed", () => {
    const a = new Linear(64, 32, { seed: 7 }), b = new Linear(64, 32, { seed: 7 });
    expect(a.weight.toArray()).toEqual(b.weight.toArray());
    const w = a.weight.toArray();
    expect(Math.max(...w.map(Math.abs))).toBeLessThanOrEqual(1 / 8);
    expect(a.bias!.toArray()).not.toEqual(w.slice(0, 32)); // weight and bias use different streams
    expect(new Linear(3, 2, { bias: false }).bias).toBeNull();
  });

  it("works with bf16 weights (y in x's dtype, dW in W's dtype)", () => {
    const l = new Linear(8, 4, { seed: 1, dtype: "bf16" });
    const y = l.forward(Tensor.randn([3, 8], { seed: 2 }));
    expect(y.dtype).toBe("f32");
    l.backward(Tensor.randn([3, 4], { seed: 3 }));
    expect(l.weight.grad!.dtype).toBe("bf16");
  });
});

describe("Conv1D", () => {
  it("takes (nf, nx) like transformers' Conv1D and stores the weight (nx, nf)", () => {
    const c = new Conv1D(7, 2);
    expect([c.nf, c.nx]).toEqual([7, 2]);
    expect(c.weight.shape).toEqual([2, 7]);
    expect(c.bias.shape).toEqual([7]);
    expect(c.forward(Tensor.zeros([3, 2])).shape).toEqual([3, 7]);
    expect(c.clone().weight.shape).toEqual([2, 7]);
  });

  it("equals a Linear with the transposed weight, forward and backward", () => {
    const c = new Conv1D(3, 5, { seed: 1 });
    c.bias.copyFrom(Tensor.fromArray([0.5, -1, 2], [3]));
    const wT = c.weight.toFloat64Array(); // (5, 3)
    const l = new Linear(5, 3);
    const w = new Float64Array(15);
    for (let k = 0; k < 5; k++) for (let n = 0; n < 3; n++) w[n * 5 + k] = wT[k * 3 + n];
    l.weight.copyFrom(Tensor.fromArray(w, [3, 5]));
    l.bias!.copyFrom(c.bias);
    const x = Tensor.randn([4, 5], { seed: 8 }), dy = Tensor.randn([4, 3], { seed: 9 });
    expectClose(c.forward(x).toFloat32Array(), l.forward(x).toFloat32Array(), () => 1e-6, "y");
    expectClose(c.backward(dy)!.toFloat32Array(), l.backward(dy)!.toFloat32Array(), () => 1e-6, "dx");
    const gc = c.weight.grad!.toFloat64Array(), gl = l.weight.grad!.toFloat64Array();
    for (let k = 0; k < 5; k++) for (let n = 0; n < 3; n++) expect(Math.abs(gc[k * 3 + n] - gl[n * 5 + k])).toBeLessThan(1e-6);
  });
});

class CustomModel extends Module {
  fc: Linear;
  act = new ReLU();
  head: Linear;
  constructor() {
    super();
    this.fc = this.registerModule("fc", new Linear(4, 8, { seed: 1 }));
    this.registerModule("act", this.act);
    this.head = this.registerModule("head", new Linear(8, 2, { seed: 2 }));
  }
  forward(x: Tensor): Tensor {
    return this.head.forward(this.act.forward(this.fc.forward(x)));
  }
}

class Doubled extends Module {
  constructor(readonly inner: Linear) {
    super();
    this.registerModule("inner", inner);
  }
  forward(x: Tensor): Tensor {
    const y = this.inner.forward(x);
    const v = y.view() as Float32Array;
    for (let i = 0; i < v.length; i++) v[i] *= 2;
    return y;
  }
}

describe("Module tree", () => {
  it("names modules and parameters with dotted paths", () => {
    const seq = new Sequential(new Linear(2, 3), new ReLU(), new Sequential(new Linear(3, 1)));
    expect([...seq.namedModules()].map(([n]) => n)).toEqual(["", "0", "1", "2", "2.0"]);
    expect([...seq.namedParameters()].map(([n]) => n)).toEqual(["0.weight", "0.bias", "2.0.weight", "2.0.bias"]);
    expect(seq.getSubmodule("2.0")).toBeInstanceOf(Linear);
    expect(code(() => seq.getSubmodule("2.5"))).toBe("ERR_TARGET_NOT_FOUND");
    expect(() => seq.getSubmodule("2.5")).toThrow(/2 \(Sequential\) has no child "5"; its children: 0/);
  });

  it("setSubmodule replaces the registry entry and every own property, so forward calls the new module", () => {
    const m = new CustomModel();
    const x = Tensor.randn([3, 4], { seed: 4 });
    const before = m.forward(x).toArray();
    const old = m.fc;
    m.setSubmodule("fc", new Doubled(old));
    expect(m.fc).toBeInstanceOf(Doubled);
    expect(m.getSubmodule("fc.inner")).toBe(old);
    expect(old.weight.disposed).toBe(false); // the new module wraps the old one: not disposed
    const after = m.forward(x).toArray();
    expect(after).not.toEqual(before);
    // replacing with an unrelated module disposes the old one
    const dropped = m.head;
    m.setSubmodule("head", new Linear(8, 2));
    expect(dropped.weight.disposed).toBe(true);
    expect(code(() => m.setSubmodule("nope", new ReLU()))).toBe("ERR_TARGET_NOT_FOUND");
  });

  it("stateDict shares live storage; disposing it never frees the weights; loadStateDict copies in place", () => {
    const a = new CustomModel(), b = new CustomModel();
    b.fc.weight.copyFrom(Tensor.randn(b.fc.weight.shape, { seed: 99 }));
    const sd = a.stateDict();
    expect(Object.keys(sd)).toEqual(["fc.weight", "fc.bias", "head.weight", "head.bias"]);
    expect(sd["fc.weight"].sharesStorage(a.fc.weight)).toBe(true);
    const wObj = b.fc.weight;
    b.loadStateDict(sd);
    expect(b.fc.weight).toBe(wObj); // in place
    expect(b.fc.weight.toArray()).toEqual(a.fc.weight.toArray());
    for (const t of Object.values(sd)) t.dispose();
    expect(a.fc.weight.disposed).toBe(false);
    expect(a.fc.weight.toArray().length).toBe(32);
  });

  it("loadStateDict lists missing and unexpected keys with shapes, and checks shapes before copying", () => {
    const m = new CustomModel();
    const sd = m.stateDict();
    delete sd["head.bias"];
    sd["extra.weight"] = Tensor.zeros([3, 3]);
    expect(() => m.loadStateDict(sd)).toThrow(/missing keys: head\.bias \[2\] f32; unexpected keys: extra\.weight \[3, 3\] f32/);
    expect(m.loadStateDict(sd, { strict: false })).toEqual({ missingKeys: ["head.bias"], unexpectedKeys: ["extra.weight"] });
    const before = m.fc.weight.toArray();
    const bad = m.stateDict();
    bad["fc.weight"] = Tensor.zeros([8, 4]).reshape([4, 8]);
    bad["fc.bias"] = Tensor.fromArray(new Array(8).fill(5), [8]);
    expect(code(() => m.loadStateDict(bad))).toBe("ERR_SHAPE");
    expect(m.fc.weight.toArray()).toEqual(before);
    expect(m.fc.bias!.toArray()).not.toEqual(new Array(8).fill(5)); // nothing copied
    bad["fc.weight"] = Tensor.zeros([8, 4], { dtype: "i32" });
    expect(code(() => m.loadStateDict(bad))).toBe("ERR_DTYPE");
  });

  it("train/eval, to(dtype) replaces parameters everywhere, dispose releases everything", () => {
    const m = new CustomModel();
    m.eval();
    expect([...m.namedModules()].every(([, x]) => !x.training)).toBe(true);
    m.train();
    const old = m.fc.weight;
    m.to("bf16");
    expect(m.fc.weight.dtype).toBe("bf16");
    expect(old.disposed).toBe(true);
    expect([...m.parameters()].every((p) => p.dtype === "bf16")).toBe(true);
    expect(m.forward(Tensor.randn([2, 4])).dtype).toBe("f32");
    m.dispose();
    expect([...m.parameters()].every((p) => p.disposed)).toBe(true);
  });

  it("rejects bad registrations with clear errors", () => {
    const m = new Sequential();
    expect(() => m.registerModule("a.b", new ReLU())).toThrow(/must be non-empty and contain no "\."/);
    expect(() => m.registerModule("x", {} as never)).toThrow(TypeError);
    expect(() => m.registerParameter("w", [1, 2] as never)).toThrow(TypeError);
  });

  it("prints a readable tree", () => {
    const s = new Sequential(new Linear(20, 2000), new ReLU(), new Linear(2000, 2), new LogSoftmax());
    expect(s.toString()).toBe(
      "Sequential(\n  (0): Linear(in_features=20, out_features=2000, bias=True)\n  (1): ReLU()\n" +
        "  (2): Linear(in_features=2000, out_features=2, bias=True)\n  (3): LogSoftmax(dim=-1)\n)",
    );
  });

  it("ModuleList and ModuleDict hold children", () => {
    const l = new ModuleList([new ReLU(), new Linear(2, 2)]);
    expect(l.length).toBe(2);
    expect([...l].map((m) => m.constructor.name)).toEqual(["ReLU", "Linear"]);
    const d = new ModuleDict({ a: new ReLU() });
    d.set("b", new Linear(1, 1));
    expect(d.keys()).toEqual(["a", "b"]);
    expect([...d.namedParameters()].map(([n]) => n)).toEqual(["b.weight", "b.bias"]);
    expect(code(() => l.forward(Tensor.zeros([1])))).toBe("ERR_UNSUPPORTED");
  });
});

describe("Sequential training pieces", () => {
  it("backward through Sequential equals the layers' chained backward", () => {
    const seq = new Sequential(new Linear(5, 7, { seed: 1 }), new ReLU(), new Linear(7, 3, { seed: 2 }), new LogSoftmax());
    const x = Tensor.randn([4, 5], { seed: 3 });
    const y = seq.forward(x);
    expect(y.shape).toEqual([4, 3]);
    const dx = seq.backward(Tensor.randn([4, 3], { seed: 4 }));
    expect(dx!.shape).toEqual([4, 5]);
    expect(seq.backward.length).toBeGreaterThanOrEqual(0);
    const first = seq.at(0) as Linear;
    expect(first.weight.grad).not.toBeNull();
    // with inputGrad false the first layer skips dx
    seq.forward(x);
    expect(seq.backward(Tensor.randn([4, 3], { seed: 4 }), { inputGrad: false })).toBeNull();
  });

  it("Dropout regenerates its mask in backward and is the identity in eval", () => {
    const d = new Dropout(0.5);
    const x = Tensor.fromArray(new Array(1000).fill(1), [1000]);
    const y = d.forward(x).toArray();
    const g = d.backward(Tensor.fromArray(new Array(1000).fill(1), [1000]))!.toArray();
    expect(g).toEqual(y); // same mask, same scale
    const kept = y.filter((v) => v !== 0).length;
    expect(kept).toBeGreaterThan(400);
    expect(kept).toBeLessThan(600);
    expect(y.every((v) => v === 0 || v === 2)).toBe(true);
    d.eval();
    expect(d.forward(x).toArray()).toEqual(new Array(1000).fill(1));
    expect(() => new Dropout(1)).toThrow(PeftError);
    expect(() => new Dropout(-0.1)).toThrow(/\[0, 1\)/);
  });

  it("Embedding looks up rows and scatters gradients", () => {
    const e = new Embedding(5, 3, { seed: 1 });
    const ids = Tensor.fromArray([4, 0, 4], [3], "i32");
    const y = e.forward(ids);
    const w = e.weight.toArray();
    expect(y.toArray()).toEqual([...w.slice(12, 15), ...w.slice(0, 3), ...w.slice(12, 15)]);
    expect(e.backward(Tensor.fromArray(new Array(9).fill(1), [3, 3]))).toBeNull();
    expect(e.weight.grad!.toArray()).toEqual([1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2]);
    expect(() => e.forward(Tensor.fromArray([5], [1], "i64"))).toThrow(RangeError);
  });
});

describe("AdamW", () => {
  it("matches PyTorch's update by hand for three steps, with weight decay", () => {
    const p = Tensor.fromArray([1, -2], [2]);
    p.requiresGrad = true;
    const opt = new AdamW([p], { lr: 0.1, betas: [0.9, 0.99], eps: 1e-8, weightDecay: 0.01 });
    const grads = [[0.5, -1], [0.25, 2], [-1, 0.5]];
    let pv = [1, -2], m = [0, 0], v = [0, 0];
    grads.forEach((g, t) => {
      p.grad = Tensor.fromArray(g, [2]);
      opt.step();
      const step = t + 1, bc1 = 1 - 0.9 ** step, bc2 = 1 - 0.99 ** step;
      pv = pv.map((x, i) => {
        x *= 1 - 0.1 * 0.01;
        m[i] = 0.9 * m[i] + 0.1 * g[i];
        v[i] = 0.99 * v[i] + 0.01 * g[i] * g[i];
        return x - (0.1 / bc1) * (m[i] / (Math.sqrt(v[i]) / Math.sqrt(bc2) + 1e-8));
      });
      expectClose(p.toFloat32Array(), pv, () => 2e-6, `step ${step}`);
    });
  });

  it("skips parameters without a gradient and round-trips its state", () => {
    const a = Tensor.fromArray([1], [1]), b = Tensor.fromArray([1], [1]);
    const opt = new AdamW([a, b], { lr: 0.5 });
    a.grad = Tensor.fromArray([1], [1]);
    opt.step();
    expect(b.toArray()).toEqual([1]);
    expect(a.toArray()[0]).toBeLessThan(1);
    const sd = opt.stateDict();
    expect(Object.keys(sd).sort()).toEqual(["param_groups.0.lr", "state.0.exp_avg", "state.0.exp_avg_sq", "state.0.step"]);
    const a2 = Tensor.fromArray([a.toArray()[0]], [1]);
    const opt2 = new AdamW([a2, Tensor.fromArray([1], [1])], { lr: 0.5 });
    opt2.loadStateDict(sd);
    a.grad = Tensor.fromArray([0.3], [1]);
    a2.grad = Tensor.fromArray([0.3], [1]);
    opt.step();
    opt2.step();
    expect(a2.toArray()).toEqual(a.toArray());
    expect(() => new AdamW([a], { betas: [1, 0.9] })).toThrow(/betas\[0\] must be in \[0, 1\)/);
    expect(() => new AdamW([a, a])).toThrow(/appears twice/);
  });

  it("steps bf16 parameters with f32 moments", () => {
    const p = Tensor.fromArray([1, 2, 3], [3], "bf16");
    const opt = new AdamW([p], { lr: 0.25, weightDecay: 0 });
    p.grad = Tensor.fromArray([1, -1, 0], [3], "bf16");
    opt.step();
    expect(p.dtype).toBe("bf16");
    expectClose(p.toFloat32Array(), [0.75, 2.25, 3], () => 0.01, "bf16 step");
  });
});

void backend;
