// One table of op × dtype × shape, each run on the cpu and on the cuda device (the emulator without a GPU)
// with the same inputs, results and gradients compared element by element. Tolerances come from the
// arithmetic: both backends compute in f32 and round once into the output dtype, so the difference is the
// two f32 evaluation orders' error (bounded from the operands' magnitudes) plus one ulp of the output
// dtype; ops whose two implementations do the same f32 operations in the same order must agree bit for bit.
// Every op that gains a cuda kernel adds its rows here; ops without one are ERR_NOT_ON_DEVICE naming it.
import { describe, expect, it } from "vitest";

if (process.env.NODE_PEFT_CUDA === undefined && !process.env.NODE_PEFT_CUDA_REAL) process.env.NODE_PEFT_CUDA = "emu";
const { Tensor, backend, F: Fn } = await import("../lib/index.js");
const K = await import("../lib/kernels.js");
const ops = await import("../lib/ops.js");
import { FLOATS, type FloatDType } from "./helpers/numeric.js";
import { values } from "./helpers/nn-reference.js";
import { errorCode } from "./helpers/errors.js";
import { EXACT, F32, absDot, compare, dotTol, f, ids, orderTest, prod, rowTests, tolOut, type Row } from "./helpers/cross-backend.js";

// Activation terms: both backends evaluate the same formula with f32 (or double) transcendental
// functions a few ulps apart; the error is relative to the sum of the magnitudes of the formula's terms.
// A sigmoid's argument z carries a few roundings (|z|·u each, and the backends may fuse them differently),
// which exp turns into a relative error of the same size: the factor (1 + |z|).
function actScale(kind: string, x: number, dy: number, backward: boolean): number {
  const sig = (z: number) => 1 / (1 + Math.exp(-z));
  if (kind === "silu") return (1 + Math.abs(x)) * (backward ? Math.abs(dy) * (sig(x) + Math.abs(x * sig(x) * sig(-x))) : Math.abs(x * sig(x)));
  if (kind === "gelu_tanh") {
    const z = 2 * 0.7978845608028654 * (x + 0.044715 * x ** 3), s = sig(z), du = 0.7978845608028654 * (1 + 3 * 0.044715 * x * x);
    return (1 + Math.abs(z)) * (backward ? Math.abs(dy) * (s + Math.abs(2 * x * s * (1 - s) * du)) : Math.abs(x * s));
  }
  return backward ? Math.abs(dy) * (1 + Math.abs(x)) : Math.abs(x);  // gelu (erf form, in double) and relu
}

const ACT_SHAPES = [[0], [1], [7], [17, 33], [127]] as const;
const ROW_SHAPES = [[1, 1], [7, 17], [33, 7], [3, 127], [0, 5]] as const;

const table: Row[] = [
  // Dense products: the f32 SIMT kernel for every layout and dtype mix, the tensor-core kernel for f16/bf16 x·Wᵀ.
  ...(["f32", "bf16", "f16"] as const).map((wdt): Row => ({
    op: `linear (weight ${wdt})`,
    dtypes: FLOATS,
    shapes: [[1, 1, 1], [7, 17, 33], [33, 127, 7], [17, 33, 127], [0, 16, 16], [5, 0, 3]],
    inputs: (dt, [M, Kd, N]) => [f(M * Kd, 1, dt, [M, Kd]), f(N * Kd, 2, wdt, [N, Kd]), f(N, 3, "f32", [N])],
    run: ([x, w, b]) => [ops.linear(x, w, b)],
    tol: (dt, [M, Kd, N]) => dotTol(dt, Kd, 1, ([x, w]) => absDot(M, N, Kd, (m, k) => x[m * Kd + k], (k, n) => w[n * Kd + k])),
  })),
  {
    op: "linearGradInput",
    dtypes: FLOATS,
    shapes: [[1, 1, 1], [7, 17, 33], [33, 127, 7], [0, 4, 4]],
    inputs: (dt, [M, Kd, N]) => [f(M * N, 4, dt, [M, N]), f(N * Kd, 5, dt, [N, Kd])],
    run: ([dy, w]) => [ops.linearGradInput(dy, w)],
    tol: (dt, [M, Kd, N]) => dotTol(dt, N, 0, ([dy, w]) => absDot(M, Kd, N, (m, n) => dy[m * N + n], (n, k) => w[n * Kd + k])),
  },
  ...[false, true].map((accumulate): Row => ({
    op: `linearGradWeight (accumulate ${accumulate})`,
    dtypes: FLOATS,
    shapes: [[1, 1, 1], [7, 17, 33], [127, 7, 17], [0, 4, 4]],
    inputs: (dt, [M, Kd, N]) => [f(M * N, 6, dt, [M, N]), f(M * Kd, 7, dt, [M, Kd]), f(N * Kd, 8, dt, [N, Kd])],
    run: ([dy, x, dw]) => (ops.linearGradWeight(dy, x, dw, { accumulate }), [dw]),
    // The old dW (accumulated, or not read) is at most 1 in magnitude.
    tol: (dt, [M, Kd, N]) => dotTol(dt, M, 1, ([dy, x]) => absDot(N, Kd, M, (n, m) => dy[m * N + n], (m, k) => x[m * Kd + k])),
  })),
  {
    op: "matmul (transA, transB)",
    dtypes: ["f32", "bf16"],
    shapes: [[7, 17, 33], [1, 127, 1]],
    inputs: (dt, [M, Kd, N]) => [f(M * Kd, 9, dt, [Kd, M]), f(Kd * N, 10, dt, [N, Kd])],
    run: ([a, b]) => [ops.matmul(a, b, { transA: true, transB: true })],
    tol: (dt, [M, Kd, N]) => dotTol(dt, Kd, 0, ([a, b]) => absDot(M, N, Kd, (m, k) => a[k * M + m], (k, n) => b[n * Kd + k])),
  },
  {
    op: "sumRows (bias gradient, accumulating)",
    dtypes: FLOATS,
    shapes: ROW_SHAPES,
    inputs: (dt, [R, C]) => [f(R * C, 11, dt, [R, C]), f(C, 12, dt, [C])],
    run: ([dy, out]) => (K.sumRows(dy, out), [out]),
    tol: (dt, [R, C]) => (o, i, ref, [dy, out]) => {
      let s = Math.abs(out[i]);
      for (let r = 0; r < R; r++) s += Math.abs(dy[r * C + i]);
      return tolOut(dt, ref[i], 2 * (R + 2) * F32 * s);
    },
  },
  // Element-wise ops.
  ...(["relu", "gelu", "gelu_tanh", "silu"] as const).flatMap((kind): Row[] => [
    {
      op: `activation ${kind}`,
      dtypes: FLOATS,
      shapes: ACT_SHAPES,
      inputs: (dt, s) => [f(prod(s), 13, dt, s, 6)],
      run: ([x]) => [K.activation(kind, x)],
      tol: (dt) => (kind === "relu" ? EXACT : (o, i, ref, [x]) => tolOut(dt, ref[i], 16 * F32 * actScale(kind, x[i], 0, false))),
    },
    {
      op: `activationBackward ${kind}`,
      dtypes: FLOATS,
      shapes: ACT_SHAPES,
      inputs: (dt, s) => [f(prod(s), 14, dt, s, 6), f(prod(s), 15, dt, s)],
      run: ([x, dy]) => [K.activationBackward(kind, x, dy)],
      tol: (dt) => (kind === "relu" ? EXACT : (o, i, ref, [x, dy]) => tolOut(dt, ref[i], 32 * F32 * actScale(kind, x[i], dy[i], true))),
    },
  ]),
  {
    op: "dropout (the CPU's Philox masks)",
    dtypes: FLOATS,
    shapes: [[0], [1], [7], [17, 33], [4099]],
    inputs: (dt, s) => [f(prod(s), 16, dt, s)],
    run: ([x], s) => [K.dropout(x, 0.3, 11, 5), K.dropout(x, 0, 11, 5), K.dropout(x.to("f32"), 0.5, 2 ** 40, 3)],
    tol: () => EXACT,
  },
  {
    op: "addInPlace / scaleInPlace / mul",
    dtypes: FLOATS,
    shapes: ACT_SHAPES,
    inputs: (dt, s) => [f(prod(s), 17, dt, s), f(prod(s), 18, "f32", s), f(prod(s), 19, dt, s)],
    run: ([a, b, c]) => {
      K.addInPlace(a, b, 0.75);
      K.scaleInPlace(c, -1.5);
      return [a, c, K.mul(a, c)];
    },
    tol: (dt) => (o, i, ref) => tolOut(dt, ref[i], 4 * F32 * (Math.abs(ref[i]) + 2)),
  },
  {
    op: "fill / zeros",
    dtypes: FLOATS,
    shapes: ACT_SHAPES,
    inputs: (dt, s) => [f(prod(s), 20, dt, s)],
    run: ([a], s) => {
      K.fill(a, 1 / 3);
      return [a, Tensor.zeros(s, { dtype: a.dtype, device: a.device })];
    },
    tol: () => EXACT,
  },
  {
    // Operands of different float dtypes, as the CPU accepts them (each loaded as f32, the output in the
    // op's documented dtype).
    op: "mixed dtypes (activationBackward, logSoftmaxBackward, sumRows, addInPlace, mul)",
    dtypes: ["bf16", "f16"],
    shapes: [[1, 1], [7, 17], [33, 5]],
    inputs: (dt, s) => [f(prod(s), 40, dt, s, 3), f(prod(s), 41, "f32", s), K.logSoftmax(f(prod(s), 42, "f32", s)), f(s[1], 43, "f32", [s[1]])],
    run: ([x, dy, y, out]) => {
      const a = K.activationBackward("silu", x, dy), b = K.logSoftmaxBackward(y, x);
      K.sumRows(x, out);
      K.addInPlace(dy, x, -0.5);
      return [a, b, out, dy, K.mul(x, y)];
    },
    // |x| < 3, |dy|, |y|... < 1 (y = log-softmax of [-1, 1) values: |y| < 2 + log C): per output, the
    // bound of its row above with those magnitudes; outputs 1 and 4 are in x's dtype, the rest f32.
    tol: (dt, [R, C]) => (o, i, ref) => {
      const err = [64 * 4 * F32 * (Math.abs(ref[i]) + 1), (C + 8) * F32 * (3 + 3 * C), 2 * (R + 2) * F32 * (3 * R + 1),
        4 * F32 * (Math.abs(ref[i]) + 2), 4 * F32 * Math.abs(ref[i])][o];
      return tolOut(o === 1 || o === 4 ? dt : "f32", ref[i], err);
    },
  },
  // Row-wise ops.
  {
    op: "logSoftmax",
    dtypes: FLOATS,
    shapes: ROW_SHAPES,
    inputs: (dt, s) => [f(prod(s), 21, dt, s, 8)],
    run: ([x]) => [K.logSoftmax(x)],
    // log Σ exp(x - max) summed in two orders: within cols·u relative (the terms are positive), so within
    // (cols + 8)·u absolute after the log, plus exp's few ulps on each term.
    tol: (dt, [, C]) => (o, i, ref) => tolOut(dt, ref[i], (C + 8) * F32 * (1 + Math.abs(ref[i]))),
  },
  {
    op: "logSoftmaxBackward",
    dtypes: FLOATS,
    shapes: ROW_SHAPES,
    inputs: (dt, s) => [K.logSoftmax(f(prod(s), 22, dt, s, 4)), f(prod(s), 23, dt, s)],
    run: ([y, dy]) => [K.logSoftmaxBackward(y, dy)],
    tol: (dt, [, C]) => (o, i, ref, [y, dy]) => {
      const r = Math.floor(i / C);
      let s = 0;
      for (let c = 0; c < C; c++) s += Math.abs(dy[r * C + c]);
      return tolOut(dt, ref[i], (C + 8) * F32 * (Math.abs(dy[i]) + Math.exp(y[i]) * s));
    },
  },
  {
    op: "embedding / embeddingBackward",
    dtypes: FLOATS,
    shapes: [[1, 1, 1], [7, 5, 3], [33, 17, 7], [0, 4, 4], [127, 9, 33]],
    inputs: (dt, [n, V, D]) => [ids(n, V, 24), f(V * D, 25, dt, [V, D]), f(n * D, 26, dt, [n, D]), f(V * D, 27, dt, [V, D])],
    run: ([i, w, dy, dw]) => (K.embeddingBackward(i, dy, dw), [K.embedding(i, w), dw]),
    tol: () => EXACT,  // a gather, and each row's sources summed in index order in f32 on both backends
  },
  // Losses and their gradients (the loss is a number, compared with the tolerance of element 0's scale).
  ...[-100, 2].map((ignoreIndex): Row => ({
    op: `nllLoss (ignoreIndex ${ignoreIndex})`,
    dtypes: FLOATS,
    shapes: [[1, 1], [7, 5], [33, 17], [127, 3]],
    inputs: (dt, [R, C]) => [K.logSoftmax(f(R * C, 28, dt, [R, C], 3)), ids(R, C, 29)],
    run: ([lp, t]) => {
      const r = K.nllLoss(lp, t, { ignoreIndex });
      return [r.loss, r.grad];
    },
    tol: () => (o, i, ref) => (o === 0 ? 1e-12 * Math.abs(ref[0]) : 0),  // the same double sum; grad = -1/count
  })),
  ...[0, 0.1].map((labelSmoothing): Row => ({
    op: `crossEntropy (labelSmoothing ${labelSmoothing}, ignoreIndex 1)`,
    dtypes: FLOATS,
    shapes: [[1, 1], [7, 5], [33, 17], [3, 127]],
    inputs: (dt, [R, C]) => [f(R * C, 30, dt, [R, C], 5), ids(R, C, 31)],
    run: ([z, t]) => {
      const r = K.crossEntropy(z, t, { ignoreIndex: 1, labelSmoothing });
      return [r.loss, r.grad];
    },
    // Per row: log Σ exp within (C + 8)·u absolute; the smoothing term adds C·log Σ exp and an f32 sum of
    // C gaps of size ≤ 2·max|z| = 10, scaled by eps / C. The softmax gradient is within (C + 8)·u of 1/count.
    tol: (dt, [, C]) => (o, i, ref) =>
      o === 0 ? (C + 8) * F32 * (Math.abs(ref[0]) + 1 + labelSmoothing * 10 * C) : tolOut(dt, ref[i], (C + 8) * F32),
  })),
  {
    op: "mseLoss",
    dtypes: FLOATS,
    shapes: [[1], [7], [17, 33], [4099], [0]],
    inputs: (dt, s) => [f(prod(s), 32, dt, s), f(prod(s), 33, dt, s)],
    run: ([y, t]) => {
      const r = K.mseLoss(y, t);
      return [r.loss, r.grad];
    },
    tol: () => (o, i, ref) => (o === 0 ? 1e-12 * Math.abs(ref[0]) : 0),  // double partial sums; grad = d · 2/n exactly
  },
  {
    op: "adamwStep (f32 moments)",
    dtypes: FLOATS,
    shapes: [[1], [7], [17, 33], [0]],
    inputs: (dt, s) => [f(prod(s), 34, dt, s), f(prod(s), 35, dt, s), f(prod(s), 36, "f32", s, 0.1),
      Tensor.fromArray(values(prod(s), 37).map((v) => Math.abs(v) * 0.01), s, "f32")],
    run: ([p, g, m, v]) => {
      for (let step = 1; step <= 3; step++)
        K.adamwStep([p], [g], [m], [v], { step, lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 });
      return [p, m, v];
    },
    // A few f32 roundings per step on values of size |p| + lr·(update ≤ ~3): a handful of ulps each.
    tol: (dt) => (o, i, ref) => tolOut(dt, ref[i], 64 * F32 * (Math.abs(ref[i]) + 0.1)),
  },
];

describe("cpu vs cuda, op × dtype × shape", () => {
  it("the cuda device is available (emulated without a GPU)", () => expect(backend.cuda.available).toBe(true));
  rowTests(table);

  // The reductions and the GEMMs again in reverse and random order (a subset, to keep the emulator cheap).
  orderTest("reductions and products are the same in reverse and random thread order", () => {
    const subset = table.filter((r) => /^(linear \(weight f32\)|linearGradWeight \(accumulate true\)|sumRows|logSoftmax$|crossEntropy \(labelSmoothing 0.1|mseLoss|embedding)/.test(r.op));
    expect(subset.length).toBe(7);
    for (const row of subset) compare(row, "f32", row.shapes[Math.min(2, row.shapes.length - 1)]);
  });
});

describe("what has no cuda kernel", () => {
  it("is ERR_NOT_ON_DEVICE naming the op; mixed devices are ERR_DEVICE", () => {
    const g = Tensor.zeros([2, 3], { device: "cuda" }), c = Tensor.zeros([2, 3]);
    expect(errorCode(() => Fn.add(g, g))).toBe("ERR_NOT_ON_DEVICE");
    expect(() => Fn.add(g, g)).toThrow(/^elementwise add: no cuda kernel/);
    expect(() => Fn.sum(g)).toThrow(/no cuda kernel/);
    expect(errorCode(() => K.addInPlace(c, g))).toBe("ERR_DEVICE");
    expect(() => K.crossEntropy(c, Tensor.zeros([2], { dtype: "i64", device: "cuda" }))).toThrow(/crossEntropy: logits is on cpu but target is on cuda/);
    const opts = { step: 1, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 };
    expect(() => K.adamwStep([c], [g], [Tensor.zeros([2, 3])], [Tensor.zeros([2, 3])], opts)).toThrow(/adamwStep: params\[0\] is on cpu but grads\[0\] is on cuda/);
    expect(() => K.adamwStep([g, c], [g, c], [Tensor.zeros([2, 3], { device: "cuda" }), Tensor.zeros([2, 3])], [Tensor.zeros([2, 3], { device: "cuda" }), Tensor.zeros([2, 3])], opts)).toThrow(/adamwStep: params\[0\] is on cuda but params\[1\] is on cpu/);
  });

  it("out-of-range ids and targets on the device are RangeErrors naming the element, before anything is written", () => {
    const w = Tensor.zeros([4, 3], { device: "cuda" });
    expect(() => K.embedding(Tensor.fromArray([0, 4], [2], "i32").to("cuda"), w)).toThrow(/embedding: ids\[1\] = 4 is out of range for 4 embeddings/);
    const z = Tensor.zeros([2, 3], { device: "cuda" });
    expect(() => K.crossEntropy(z, Tensor.fromArray([0, -1], [2], "i64").to("cuda"))).toThrow(RangeError);
  });
});
