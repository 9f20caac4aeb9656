// F: every differentiable op's forward against a float64 reference and its backward through gradcheck, on
// odd shapes and broadcasting edge cases; plus a custom model (two inputs, a residual, a mean-pool) trained by
// autograd with LoRA and saved in PEFT's format.
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { AdamW, F, Linear, LoraConfig, Module, Tensor, getPeftModel, gradcheck, tidy } from "../lib/index.js";
import { errorCode } from "./helpers/errors.js";
import { distIndex, runNode } from "./helpers/child.js";

const code = errorCode;

/** positive: |x| + 0.5; awayFromZero: sign(x)·(|x| + 0.5) (finite differences must not straddle a kink). */
function leaf(shape: number[], seed: number, opts: { positive?: boolean; awayFromZero?: boolean } = {}): Tensor {
  let t = Tensor.randn(shape, { seed });
  if (opts.positive || opts.awayFromZero) {
    const v = t.toFloat32Array().map((x) => (opts.positive ? 1 : Math.sign(x)) * (Math.abs(x) + 0.5));
    t.dispose();
    t = Tensor.fromArray(v, shape);
  }
  t.requiresGrad = true;
  return t;
}

const f64 = (t: Tensor) => Array.from(t.toFloat64Array());

/** f32 forward against a float64 reference of the same inputs: a few roundings of the result's size. */
function expectForward(y: Tensor, ref: number[], ulps = 8) {
  const got = f64(y);
  expect(got.length).toBe(ref.length);
  for (let i = 0; i < ref.length; i++) {
    if (Number.isNaN(ref[i])) expect(Number.isNaN(got[i])).toBe(true);
    else expect(Math.abs(got[i] - ref[i])).toBeLessThanOrEqual(ulps * 2 ** -24 * Math.abs(ref[i]) + 1e-30);
  }
}

/** Broadcast index helper: the flat index into `shape` of the flat index i of `out` (trailing alignment). */
function bindex(i: number, out: number[], shape: number[]): number {
  let idx = 0, stride = 1, rem = i;
  const coords: number[] = [];
  for (let d = out.length - 1; d >= 0; d--) {
    coords[d] = rem % out[d];
    rem = Math.floor(rem / out[d]);
  }
  for (let d = shape.length - 1, o = out.length - 1; d >= 0; d--, o--) {
    idx += (shape[d] === 1 ? 0 : coords[o]) * stride;
    stride *= shape[d];
  }
  return idx;
}

const BROADCAST: [number[], number[], number[]][] = [
  [[7], [7], [7]],
  [[3, 1], [1, 5], [3, 5]],
  [[2, 3, 4], [4], [2, 3, 4]],
  [[1], [17], [17]],
  [[4, 1, 3], [2, 1], [4, 2, 3]],
  [[0, 3], [3], [0, 3]],
];

describe("elementwise ops", () => {
  const binaries: [string, (a: Tensor, b: Tensor) => Tensor, (a: number, b: number) => number, boolean?][] = [
    ["add", F.add, (a, b) => a + b],
    ["sub", F.sub, (a, b) => a - b],
    ["mul", F.mul, (a, b) => a * b],
    ["div", F.div, (a, b) => a / b, true],
    ["pow", F.pow as (a: Tensor, b: Tensor) => Tensor, (a, b) => a ** b, true],
  ];
  for (const [name, op, ref, positive] of binaries) {
    it.each(BROADCAST)(`${name}: [%j] with [%j] -> [%j], forward and gradcheck`, (sa, sb, out) => {
      const a = leaf(sa, 1, { positive }), b = leaf(sb, 2, { positive });
      const y = op(a, b);
      expect([...y.shape]).toEqual(out);
      const av = f64(a), bv = f64(b);
      const n = out.reduce((p, d) => p * d, 1);
      expectForward(y, Array.from({ length: n }, (_, i) => Math.fround(ref(av[bindex(i, out, sa)], bv[bindex(i, out, sb)]))), name === "pow" ? 16 : 2);
      if (n > 0) expect(gradcheck(op, [a, b])).toBe(true);
    });
  }

  it("tensor-scalar forms in either order", () => {
    const x = leaf([3, 5], 3, { positive: true });
    expect(gradcheck((v) => F.add(v, 2.5), [x])).toBe(true);
    expect(gradcheck((v) => F.sub(1, v), [x])).toBe(true);
    expect(gradcheck((v) => F.mul(-3, v), [x])).toBe(true);
    expect(gradcheck((v) => F.div(v, 4), [x])).toBe(true);
    expect(gradcheck((v) => F.div(2, v), [x])).toBe(true);
    expect(gradcheck((v) => F.pow(v, 3), [x])).toBe(true);
    expectForward(F.div(2, x), f64(x).map((v) => Math.fround(2 / v)), 4);
    expect(code(() => F.add(1 as never, 2 as never))).toBe("ERR_INVALID_ARG_TYPE");
  });

  const unaries: [string, (x: Tensor) => Tensor, (x: number) => number, ("positive" | "awayFromZero")?][] = [
    ["neg", F.neg, (x) => -x],
    ["exp", F.exp, Math.exp],
    ["log", F.log, Math.log, "positive"],
    ["sqrt", F.sqrt, Math.sqrt, "positive"],
    ["rsqrt", F.rsqrt, (x) => 1 / Math.sqrt(x), "positive"],
    ["reciprocal", F.reciprocal, (x) => 1 / x, "awayFromZero"],
    ["abs", F.abs, Math.abs, "awayFromZero"],
    ["tanh", F.tanh, Math.tanh],
    ["sigmoid", F.sigmoid, (x) => 1 / (1 + Math.exp(-x))],
  ];
  for (const [name, op, ref, domain] of unaries) {
    it(`${name}: forward on 1, 7, 33 and 127 elements, gradcheck`, () => {
      for (const n of [1, 7, 33, 127]) {
        const x = leaf([n], n, domain ? { [domain]: true } : {});
        expectForward(op(x), f64(x).map((v) => Math.fround(ref(v))), 8);
        if (n <= 33) expect(gradcheck(op, [x])).toBe(true);
      }
      expect(op(Tensor.zeros([0, 3])).shape).toEqual([0, 3]);
    });
  }

  it("clamp passes the gradient where lo <= x <= hi; where routes it by the condition", () => {
    const x = leaf([4, 5], 4);
    expect(gradcheck((v) => F.clamp(v, { min: -0.5, max: 0.7 }), [x])).toBe(true);
    expectForward(F.clamp(x, { min: -0.5 }), f64(x).map((v) => Math.fround(Math.max(v, -0.5))), 1);
    const cond = Tensor.fromArray([1, 0, 1, 0, 0], [5]);
    const b = leaf([4, 1], 5);
    expect(gradcheck((p, q) => F.where(cond, p, q), [x, b])).toBe(true);
  });

  it("f16 and bf16 inputs compute in f32 and round once; mixed dtypes promote to f32", () => {
    for (const dtype of ["f16", "bf16"] as const) {
      const a = Tensor.randn([33], { seed: 7, dtype }), b = Tensor.randn([33], { seed: 8, dtype });
      const y = F.mul(a, b);
      expect(y.dtype).toBe(dtype);
      const ref = f64(a).map((v, i) => v * f64(b)[i]);
      const u = dtype === "f16" ? 2 ** -11 : 2 ** -8;
      f64(y).forEach((v, i) => expect(Math.abs(v - ref[i])).toBeLessThanOrEqual(u * Math.abs(ref[i]) + 2 ** -24));
      expect(F.add(a, Tensor.randn([33], { seed: 9 })).dtype).toBe("f32");
    }
  });
});

describe("shape ops", () => {
  it("permute/transpose/expand/narrow/cat/stack/split/indexSelect/gather pass gradcheck on odd shapes", () => {
    const x = leaf([3, 7, 2], 1);
    expect(gradcheck((v) => F.permute(v, [2, 0, 1]), [x])).toBe(true);
    expect(gradcheck((v) => F.transpose(v, 0, -1), [x])).toBe(true);
    expect(gradcheck((v) => F.narrow(v, 1, 2, 4), [x])).toBe(true);
    const y = leaf([3, 1, 2], 2);
    expect(gradcheck((v) => F.expand(v, [5, 3, 7, 2]), [y])).toBe(true);
    const z = leaf([3, 4, 2], 3);
    expect(gradcheck((p, q) => F.cat([p, q], 1), [x, z])).toBe(true);
    expect(gradcheck((p, q) => F.stack([p, q], 1), [x, leaf([3, 7, 2], 4)])).toBe(true);
    expect(gradcheck((p) => F.cat(F.split(p, 3, 1).reverse(), 1), [x])).toBe(true);
    const idx = Tensor.fromArray([6, 0, 6, 3], [4], "i64");
    expect(gradcheck((p) => F.indexSelect(p, 1, idx), [x])).toBe(true);
    const gi = Tensor.fromArray([0, 2, 1, 2, 0, 0], [3, 2, 1], "i32");
    expect(gradcheck((p) => F.gather(F.narrow(p, 1, 0, 3), 1, F.expand(gi, [3, 2, 2])), [x])).toBe(true);
  });

  it("transpose moves the right elements; reshape infers -1; errors name the op", () => {
    const x = Tensor.fromArray([1, 2, 3, 4, 5, 6], [2, 3]);
    expect(F.transpose(x, 0, 1).toArray()).toEqual([1, 4, 2, 5, 3, 6]);
    expect(F.reshape(x, [-1]).shape).toEqual([6]);
    expect(F.reshape(x, [3, -1]).shape).toEqual([3, 2]);
    expect(F.narrow(x, 1, 1, 2).toArray()).toEqual([2, 3, 5, 6]);
    expect(F.cat([x, x], 0).toArray()).toEqual([1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6]);
    expect(F.split(x, [1, 2], 1).map((t) => t.toArray())).toEqual([[1, 4], [2, 3, 5, 6]]);
    expect(code(() => F.narrow(x, 1, 2, 2))).toBe("ERR_SHAPE");
    expect(code(() => F.cat([x, Tensor.zeros([2, 2])], 0))).toBe("ERR_SHAPE");
    expect(code(() => F.permute(x, [0, 0]))).toBe("ERR_SHAPE");
    expect(code(() => F.expand(x, [3, 3]))).toBe("ERR_SHAPE");
    expect(code(() => x.reshape([-1, -1]))).toBe("ERR_OUT_OF_RANGE");
    expect(code(() => F.indexSelect(x, 1, Tensor.fromArray([3], [1], "i32")))).toBe("ERR_OUT_OF_RANGE");
  });
});

describe("reductions", () => {
  it("sum/mean/var/max/min over dims with keepdim match float64 and pass gradcheck", () => {
    const x = leaf([3, 7, 5], 11);
    const xs = f64(x);
    const at = (i: number, j: number, k: number) => xs[(i * 7 + j) * 5 + k];
    const s = F.sum(x, { dim: 1 });
    expect(s.shape).toEqual([3, 5]);
    const ref: number[] = [];
    for (let i = 0; i < 3; i++) for (let k = 0; k < 5; k++) { let a = 0; for (let j = 0; j < 7; j++) a += at(i, j, k); ref.push(a); }
    f64(s).forEach((v, i) => expect(Math.abs(v - ref[i])).toBeLessThan(8 * 2 ** -24 * 7 * 4));
    expect(F.mean(x, { dim: [0, 2], keepdim: true }).shape).toEqual([1, 7, 1]);
    expect(F.sum(x).shape).toEqual([]);
    for (const opts of [{ dim: 1 }, { dim: [0, 2] }, { dim: -1, keepdim: true }, {}]) {
      expect(gradcheck((v) => F.sum(v, opts), [x])).toBe(true);
      expect(gradcheck((v) => F.mean(v, opts), [x])).toBe(true);
      expect(gradcheck((v) => F.var(v, opts), [x])).toBe(true);
      expect(gradcheck((v) => F.var(v, { ...opts, correction: 0 }), [x])).toBe(true);
      expect(gradcheck((v) => F.max(v, opts), [x])).toBe(true);
      expect(gradcheck((v) => F.min(v, opts), [x])).toBe(true);
    }
    expect(F.argmax(Tensor.fromArray([1, 5, 5, 2], [4]), 0).toArray()).toEqual([1]);
  });
});

describe("matmul, softmax, normalisation", () => {
  it("matmul follows torch.matmul: vectors, batches and broadcast batches", () => {
    const cases: [number[], number[], number[]][] = [
      [[3, 4], [4, 5], [3, 5]],
      [[4], [4, 5], [5]],
      [[3, 4], [4], [3]],
      [[2, 3, 4], [4, 5], [2, 3, 5]],
      [[2, 1, 3, 4], [7, 4, 5], [2, 7, 3, 5]],
      [[1, 4], [4, 1], [1, 1]],
    ];
    for (const [sa, sb, out] of cases) {
      const a = leaf(sa, 1), b = leaf(sb, 2);
      const y = F.matmul(a, b);
      expect([...y.shape]).toEqual(out);
      expect(gradcheck(F.matmul, [a, b])).toBe(true);
    }
    expect(code(() => F.matmul(Tensor.zeros([3, 4]), Tensor.zeros([5, 6])))).toBe("ERR_SHAPE");
  });

  it("softmax and logSoftmax over any dim, layerNorm and rmsNorm pass gradcheck", () => {
    const x = leaf([3, 5, 4], 21);
    for (const dim of [-1, 0, 1]) {
      expect(gradcheck((v) => F.softmax(v, dim), [x])).toBe(true);
      expect(gradcheck((v) => F.logSoftmax(v, dim), [x])).toBe(true);
    }
    const rows = F.sum(F.softmax(x, 1), { dim: 1 });
    f64(rows).forEach((v) => expect(v).toBeCloseTo(1, 6));
    const w = leaf([4], 22), b = leaf([4], 23);
    expect(gradcheck((v, p, q) => F.layerNorm(v, [4], { weight: p, bias: q }), [x, w, b])).toBe(true);
    expect(gradcheck((v, p) => F.rmsNorm(v, p), [x, w])).toBe(true);
    // layerNorm output rows have mean 0 and (population) variance 1
    const ln = F.layerNorm(x.detach(), [5, 4]);
    const m = f64(F.mean(ln, { dim: [1, 2] })), v = f64(F.var(ln, { dim: [1, 2], correction: 0 }));
    m.forEach((a) => expect(Math.abs(a)).toBeLessThan(1e-6));
    v.forEach((a) => expect(a).toBeCloseTo(1, 3));
  });
});

describe("a custom model trained by autograd with LoRA", () => {
  // Two inputs (tokens and a side feature), a residual, a mean-pool over the sequence: no hand-written backward.
  class Pooler extends Module {
    embed = this.registerModule("embed", new Linear(6, 16, { seed: 1 }));
    side = this.registerModule("side", new Linear(3, 16, { seed: 2 }));
    mix = this.registerModule("mix", new Linear(16, 16, { seed: 3 }));
    head = this.registerModule("head", new Linear(16, 2, { seed: 4 }));
    forward(tokens: Tensor, feature: Tensor): Tensor {
      return tidy(() => {
        const h = this.embed.forward(tokens); // (B, T, 16)
        const r = F.add(h, F.silu(this.mix.forward(h))); // residual
        const pooled = F.mean(r, { dim: 1 }); // (B, 16)
        return F.logSoftmax(this.head.forward(F.add(pooled, this.side.forward(feature))));
      });
    }
  }

  it("the loss falls and the adapter saves in PEFT's format", async () => {
    const model = getPeftModel(new Pooler(), new LoraConfig({ r: 4, loraAlpha: 8, targetModules: ["embed", "mix", "head"] }));
    const tokens = Tensor.randn([8, 5, 6], { seed: 10 });
    const feature = Tensor.randn([8, 3], { seed: 11 });
    const labels = Tensor.fromArray([0, 1, 1, 0, 1, 0, 0, 1], [8], "i64");
    const opt = new AdamW([...model.parameters()].filter((p) => p.requiresGrad), { lr: 2e-2 });
    const losses: number[] = [];
    for (let step = 0; step < 60; step++) {
      const loss = tidy(() => F.nllLoss(model.forward(tokens, feature), labels));
      losses.push(loss.toFloat32Array()[0]);
      loss.backward();
      opt.step();
      opt.zeroGrad();
      loss.dispose();
    }
    expect(losses[59]).toBeLessThan(losses[0] * 0.5);
    const dir = mkdtempSync(join(tmpdir(), "peft-autograd-"));
    try {
      await model.savePretrained(dir);
      expect(existsSync(join(dir, "adapter_model.safetensors"))).toBe(true);
      expect(existsSync(join(dir, "adapter_config.json"))).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("F on the cuda device", () => {
  it("every op without a cuda kernel is ERR_NOT_ON_DEVICE naming the op (emulated device, child process)", () => {
    const r = runNode(`
      import { F, Tensor } from ${JSON.stringify(distIndex)};
      const a = Tensor.zeros([2, 3], { device: "cuda" });
      const idx = Tensor.zeros([1], { dtype: "i32", device: "cuda" });
      const calls = {
        add: () => F.add(a, a), exp: () => F.exp(a), sum: () => F.sum(a), permute: () => F.permute(a, [1, 0]),
        matmul: () => F.matmul(a, F.transpose(a, 0, 1)), softmax: () => F.softmax(a), indexSelect: () => F.indexSelect(a, 0, idx),
        layerNorm: () => F.layerNorm(a, [3]), rmsNorm: () => F.rmsNorm(a, null),
      };
      const out = {};
      for (const [k, f] of Object.entries(calls)) { try { f(); out[k] = "ok"; } catch (e) { out[k] = e.code + " " + e.message; } }
      console.log(JSON.stringify(out));`, { NODE_PEFT_CUDA: "emu" });
    expect(r.stderr).toBe("");
    const out = JSON.parse(r.stdout) as Record<string, string>;
    for (const [op, msg] of Object.entries(out)) {
      expect(msg.startsWith("ERR_NOT_ON_DEVICE"), `${op}: ${msg}`).toBe(true);
      expect(msg).toMatch(/cuda/);
    }
    expect(out.add).toMatch(/add/);
    expect(out.sum).toMatch(/sum/);
  });
});
