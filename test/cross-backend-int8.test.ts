// LLM.int8 and IA3 rows of the cross-backend table (test/helpers/cross-backend.ts): each op on the cpu and on the
// cuda device (the emulator without a GPU) with the same inputs. The cuda kernels do the CPU's operations in
// its order (native/cuda/int8_matmul.cu): quantised values, scales and int32 products must be equal bit for
// bit, and so must the dequantised outputs (the same f32 products and sums, unfused, rounded once). Only the
// input gradient, a float GEMM summed in another order, gets a bound from the arithmetic.
import { describe, expect, it } from "vitest";

if (process.env.NODE_PEFT_CUDA === undefined && !process.env.NODE_PEFT_CUDA_REAL) process.env.NODE_PEFT_CUDA = "emu";
const { Tensor, backend, Linear, Linear8bitLt, LoraLinear8bitLt, LoraConfig, IA3Config, Module, F, getPeftModel, int8Dequantize, manualSeed } = await import("../lib/index.js");
const { Gpt2Like } = await import("./helpers/ia3-models.js");
const ops = await import("../lib/ops.js");
const { native } = await import("../lib/native.js");
import type { Tensor as TensorT } from "../lib/index.js";
import { FLOATS, UNIT, type FloatDType } from "./helpers/numeric.js";
import { values } from "./helpers/nn-reference.js";
import { errorCode } from "./helpers/errors.js";
import { EXACT, F32, absDot, compare, dotTol, f, orderTest, rowTests, tolOut, type Row } from "./helpers/cross-backend.js";
import { adamwSteps } from "./helpers/device-training.js";


// Threshold of the outlier rows, and x with planted outlier columns: every 5th column from 2 holds values up to
// 4 in every 3rd row (|x| >= 2 makes the column an outlier), the rest lie in [-1, 1].
const THRESHOLD = 2;
function xWithOutliers(M: number, Kd: number, seed: number, dt: FloatDType): TensorT {
  const v = values(M * Kd, seed);
  for (let m = 0; m < M; m += 3) for (let k = 2; k < Kd; k += 5) v[m * Kd + k] *= 4;
  return Tensor.fromArray(v, [M, Kd], dt);
}

// [M, K, N]: M 1 and 7 take the __dp4a kernel, 17 and more the tensor-core one; K 127 crosses a 64-wide k-tile
// with a ragged end, K 16 and 64 take the 16-byte vector loads.
const SHAPES = [[1, 1, 1], [7, 17, 33], [17, 33, 7], [33, 127, 17], [127, 64, 16], [0, 16, 5], [3, 0, 4]] as const;

const table: Row[] = [
  {
    op: "int8Quantize",
    dtypes: FLOATS,
    shapes: [[1, 1], [7, 17], [33, 127], [127, 7], [0, 5]],
    // Row 0 is zero (SCB 0, CB 0); the others span [-3, 3], ties of the round-half-even included.
    inputs: (dt, [N, Kd]) => [Tensor.fromArray(values(N * Kd, 1).map((v, i) => (i < Kd ? 0 : v * 3)), [N, Kd], dt)],
    run: ([w]) => ops.int8Quantize(w),
    tol: () => EXACT,
  },
  ...[0, THRESHOLD].map((threshold): Row => ({
    op: `_int8Test (raw int32 products, threshold ${threshold})`,
    dtypes: FLOATS,
    shapes: SHAPES,
    inputs: (dt, [M, Kd, N]) => [xWithOutliers(M, Kd, 2, dt), f(N * Kd, 3, "f32", [N, Kd])],
    run: ([x, w]) => {
      const [cb, scb] = ops.int8Quantize(w);
      return [new Tensor(native._int8Test(Tensor.handle(x), Tensor.handle(cb), Tensor.handle(scb), threshold))];
    },
    tol: () => EXACT,
  })),
  ...[0, THRESHOLD].map((threshold): Row => ({
    op: `int8Linear (bias, threshold ${threshold})`,
    dtypes: FLOATS,
    shapes: SHAPES,
    inputs: (dt, [M, Kd, N]) => [xWithOutliers(M, Kd, 4, dt), f(N * Kd, 5, "f32", [N, Kd]), f(N, 6, dt, [N])],
    run: ([x, w, b]) => {
      const [cb, scb] = ops.int8Quantize(w);
      return [ops.int8Linear(x, cb, scb, b, threshold)];
    },
    tol: () => EXACT,
  })),
  {
    op: "int8Linear (fused rank term u·bt, outliers)",
    dtypes: ["f32", "bf16"],
    shapes: [[7, 17, 33], [33, 127, 17]],
    inputs: (dt, [M, Kd, N]) => [xWithOutliers(M, Kd, 7, dt), f(N * Kd, 8, "f32", [N, Kd]), f(M * 3, 9, "f32", [M, 3]), f(3 * N, 10, "f32", [3, N])],
    run: ([x, w, u, bt]) => {
      const [cb, scb] = ops.int8Quantize(w);
      return [ops.int8Linear(x, cb, scb, null, THRESHOLD, { u, bt })];
    },
    tol: () => EXACT,
  },
  {
    op: "int8LinearGradInput",
    dtypes: FLOATS,
    shapes: [[1, 1, 1], [7, 17, 33], [33, 127, 7], [17, 33, 127], [0, 4, 4]],
    inputs: (dt, [M, Kd, N]) => [f(M * N, 11, dt, [M, N]), f(N * Kd, 12, "f32", [N, Kd])],
    run: ([dy, w]) => {
      const [cb, scb] = ops.int8Quantize(w);
      return [ops.int8LinearGradInput(dy, cb, scb)];
    },
    // dx = Σ_n dy·(SCB/127)·CB: the same f32 terms (|CB·SCB/127| <= the row's absmax <= 1), summed in two orders.
    tol: (dt, [M, Kd, N]) => dotTol(dt, N, 0, ([dy, w]) => absDot(M, Kd, N, (m, n) => dy[m * N + n], () => 1)),
  },
];

// IA3 (native ia3Forward / ia3Backward / ia3Scale; native/cuda/ia3_scale.cu): both sides × both weight layouts.
// [M, K, N]; l spans [0, 2].
const IA3_SHAPES = [[1, 1, 1], [7, 17, 33], [33, 127, 7], [0, 5, 3]] as const;
const h = Tensor.handle;
const ia3Case = (dt: FloatDType, [M, Kd, N]: readonly number[], input: boolean, inOut: boolean) => [
  f(M * Kd, 20, dt, [M, Kd]), f(N * Kd, 21, dt, inOut ? [Kd, N] : [N, Kd]), f(N, 22, dt, [N]),
  Tensor.fromArray(values(input ? Kd : N, 23).map((v) => v + 1), [input ? Kd : N], "f32"), f(M * N, 24, dt, [M, N]),
];
for (const input of [true, false])
  for (const inOut of [false, true])
    table.push({
      op: `ia3 ${input ? "input" : "output"} side (weight ${inOut ? "(in, out)" : "(out, in)"}): y, dx, dW, db, dl`,
      dtypes: FLOATS,
      shapes: IA3_SHAPES,
      inputs: (dt, shape) => ia3Case(dt, shape, input, inOut),
      run: ([x, w, b, l, dy]) => {
        const out = native.ia3Forward(h(x), h(w), h(b), inOut, h(l), input, !input);
        const [y, y0] = Array.isArray(out) ? out.map((t) => new Tensor(t)) : [new Tensor(out), null];
        const dW = Tensor.zeros(w.shape, { dtype: "f32", device: x.device }), db = Tensor.zeros([b.shape[0]], { device: x.device });
        const dl = Tensor.zeros(l.shape, { device: x.device });
        const dx = new Tensor(native.ia3Backward(h(dy), h(x), h(w), null, inOut, h(l), input, y0 ? h(y0) : null, true, h(dW), h(db), h(dl))!);
        return [y, dx, dW, db, dl];
      },
      // Each output is an f32 sum of `len` products of inputs (|x|, |W|, |b|, |dy| <= 1, l in [0, 2], so each term
      // <= 2) summed in two orders: at most 2·(len + 4)·u·2·len apart before one rounding (tolOut). The output side
      // rounds y0 into x's dtype before y = y0 ⊙ l and dl = Σ dy ⊙ y0, so there one ulp of y0 (<= K + 1) adds in.
      tol: (dt, [M, Kd, N]) => (o, i, ref) => {
        const sum = (len: number, mag: number) => 2 * (len + 4) * F32 * mag;
        const y0ulp = input ? 0 : 2 * UNIT[dt] * (Kd + 1);
        const err = [sum(Kd, 2 * (Kd + 1)) + 2 * y0ulp, sum(N, 2 * N), sum(M, 2 * M), sum(M, 2 * M),
          input ? M * sum(N, N) : M * (sum(Kd, Kd + 1) + y0ulp)][o];
        return tolOut(o < 2 ? dt : "f32", ref[i], err);
      },
    });
table.push({
  op: "ia3Scale (merge, then the unmerge's 1 / (l + 1e-8)), each rounded once into W",
  dtypes: FLOATS,
  shapes: [[1, 1], [7, 17], [33, 4]],
  inputs: (dt, [N, Kd]) => [f(N * Kd, 25, dt, [N, Kd], 2), Tensor.fromArray(values(Kd, 26).map((v) => v + 1.5), [Kd], "f32")],
  run: ([w, l]) => {
    const v = [1, w.shape[0], w.shape[1]], merged = w.to(w.dtype);
    expect(native.ia3Scale(h(merged), [w.shape[0], w.shape[1], 1], [h(l.reshape([w.shape[1]]))], false, true, false)).toBe(-1);
    expect(native.ia3Scale(h(w), [v[0] * v[1], v[2], 1], [h(l)], true, false, false)).toBe(-1);
    return [merged, w];
  },
  // The factors are combined in f64 on the host and each product rounded once: the same bits.
  tol: () => EXACT,
});

describe("cpu vs cuda: LLM.int8", () => {
  it("the cuda device is available (emulated without a GPU)", () => expect(backend.cuda.available).toBe(true));
  rowTests(table);

  orderTest("the int8 and IA3 kernels give the same results in reverse and random thread order", () => {
    const subset = table.filter((r) => /^(_int8Test \(raw int32 products, threshold 2|int8Linear \(bias, threshold 2|ia3 input side \(weight \(out, in\)\))/.test(r.op));
    expect(subset.length).toBe(3);
    for (const row of subset) for (const shape of [[7, 17, 33], [33, 127, 17]]) compare(row, "f32", shape);
  });

  it("bad input on the device is a clear error", () => {
    const x = Tensor.zeros([2, 3], { device: "cuda" });
    const [cb, scb] = ops.int8Quantize(Tensor.zeros([4, 3], { device: "cuda" }));
    expect(cb.device).toBe("cuda");
    expect(() => ops.int8Linear(x.to("cpu"), cb, scb, null, 0)).toThrow(/int8Linear: x is on cpu but CB is on cuda/);
    expect(errorCode(() => ops.int8Linear(x, cb, scb, Tensor.zeros([4]), 0))).toBe("ERR_DEVICE");
    expect(() => ops.int8Linear(Tensor.zeros([2, 5], { device: "cuda" }), cb, scb, null, 0)).toThrow(/int8Linear: x has 5 features/);
    expect(() => ops.int8Quantize(Tensor.fromArray([0, Number.NaN, 1, 2], [2, 2]).to("cuda"))).toThrow(/int8Quantize: weight row 0 holds a value that is not finite/);
  });

  it("IA3 operands on two devices are ERR_DEVICE naming them", () => {
    const [x, w, b, l, dy] = ia3Case("f32", [2, 3, 4], true, false).map((t) => t.to("cuda"));
    expect(() => native.ia3Forward(h(x), h(w), h(b), false, h(l.to("cpu")), true, false)).toThrow(/ia3Forward: x is on cuda but l is on cpu/);
    expect(errorCode(() => native.ia3Forward(h(x), h(w.to("cpu")), h(b), false, h(l), true, false))).toBe("ERR_DEVICE");
    const dl = Tensor.zeros([3]);
    expect(() => native.ia3Backward(h(dy), h(x), h(w), null, false, h(l), true, null, true, null, null, h(dl))).toThrow(/ia3Backward: x is on cuda but dl is on cpu/);
  });
});

// A module wrapping one layer under the name LoRA targets.
class Net extends Module {
  proj: InstanceType<typeof Linear8bitLt>;
  constructor(proj: InstanceType<typeof Linear8bitLt>) {
    super();
    this.proj = this.registerModule("proj", proj);
  }
  forward(x: TensorT): TensorT {
    return this.proj.forward(x);
  }
}
/** AdamW losses of 4 steps of mse(model(x), target) over the model's trainable parameters (nParams of them), all on `device`. */
function trainLosses(model: InstanceType<typeof Module>, x: TensorT, target: TensorT, device: "cpu" | "cuda", nParams: number): number[] {
  expect([...model.parameters()].filter((p) => p.requiresGrad).length).toBe(nParams);
  const out = adamwSteps(model, device, 4, { lr: 1e-2 }, () => F.mseLoss(model.forward(x), target));
  model.dispose();
  return out;
}
// The same training on the cpu and on cuda: the loss falls, and each step's loss is the cpu run's within a few
// ulps per step (the f32 GEMMs sum in other orders on the device).
function expectSameTraining(losses: (device: "cpu" | "cuda") => number[]) {
  const cpu = losses("cpu"), dev = losses("cuda");
  expect(dev[3]).toBeLessThan(dev[0]);
  for (let s = 0; s < cpu.length; s++) expect(Math.abs(dev[s] - cpu[s]), `step ${s}`).toBeLessThan(1e-5 * (1 + cpu[s]));
}
const int8Layer = () => Linear8bitLt.fromLinear(new Linear(17, 9, { seed: 1 }), { threshold: THRESHOLD });

describe("int8 modules on cuda", () => {
  it("Linear8bitLt.to('cuda'): the forward's bytes and the backward's dx as on the cpu", () => {
    const run = (device: "cpu" | "cuda") => {
      const q = int8Layer().to(device);
      const x = xWithOutliers(7, 17, 13, "f32").to(device);
      x.requiresGrad = true;
      const y = q.forward(x);
      y.backward(f(7 * 9, 14, "f32", [7, 9]).to(device));
      expect([q.weight.device, y.device, x.grad?.device]).toEqual([device, device, device]);
      return { y: y.to("cpu").toFloat64Array(), dx: x.grad!.to("cpu").toFloat64Array() };
    };
    const cpu = run("cpu"), dev = run("cuda");
    expect(Array.from(dev.y)).toEqual(Array.from(cpu.y));
    // dx: 9 f32 terms dy·(SCB/127)·CB (each below 1 in magnitude) summed in two orders.
    for (let i = 0; i < cpu.dx.length; i++) expect(Math.abs(dev.dx[i] - cpu.dx[i])).toBeLessThanOrEqual(2 * 9 * 2 ** -24 * 9);
  });

  it("int8Dequantize (what merging into the int8 base reads) of device CB/SCB: the cpu's values, on the device", () => {
    const q = int8Layer();
    const host = int8Dequantize(q.weight, q.SCB), dev = int8Dequantize(q.weight.to("cuda"), q.SCB.to("cuda"));
    expect(dev.device).toBe("cuda");
    expect(Array.from(dev.to("cpu").bytes())).toEqual(Array.from(host.bytes()));
  });

  it("LoRA on the int8 base trains on cuda: AdamW's losses follow the cpu run's step for step", () =>
    expectSameTraining((device) => {
      manualSeed(0);
      const model = getPeftModel(new Net(int8Layer()), new LoraConfig({ r: 4, targetModules: ["proj"], initLoraWeights: false })).to(device);
      return trainLosses(model, xWithOutliers(7, 17, 15, "f32").to(device), f(7 * 9, 16, "f32", [7, 9]).to(device), device, 2);
    }));

  it("LoRA merges into the int8 base on cuda (dequantise, loraMerge, requantise there) as on the cpu; exactUnmerge restores CB/SCB", () => {
    const run = (device: "cpu" | "cuda") => {
      manualSeed(0);
      const net = new Net(int8Layer());
      const model = getPeftModel(net, new LoraConfig({ r: 4, targetModules: ["proj"], initLoraWeights: false })).to(device);
      const base = (net.proj as unknown as InstanceType<typeof LoraLinear8bitLt>).baseLayer;
      const cb0 = Array.from(base.weight.to("cpu").bytes());
      model.baseModel.mergeAdapter({ exactUnmerge: true });
      expect([base.weight.device, base.SCB.device]).toEqual([device, device]);
      const w = int8Dequantize(base.weight, base.SCB).to("cpu").toFloat64Array(), scb = base.SCB.to("cpu").toFloat64Array();
      model.baseModel.unmergeAdapter();
      expect(Array.from(base.weight.to("cpu").bytes())).toEqual(cb0);
      model.dispose();
      return { w, scb };
    };
    const cpu = run("cpu"), dev = run("cuda");
    // W + s·B·A (4 f32 terms) differs between the devices by a few f32 ulps of values below 10: SCB (a row's
    // largest |w|) by as much, and a code only where that moves w·127/SCB across a rounding boundary (one step,
    // SCB/127, apart).
    for (let i = 0; i < cpu.scb.length; i++) expect(Math.abs(dev.scb[i] - cpu.scb[i])).toBeLessThan(1e-5);
    for (let i = 0; i < cpu.w.length; i++) expect(Math.abs(dev.w[i] - cpu.w[i])).toBeLessThanOrEqual(cpu.scb[Math.floor(i / 17)] / 127 + 1e-5);
  });
});

describe("IA3 on cuda", () => {
  // A GPT-2-like stack: c_attn and c_proj (Conv1D, W (in, out)) scaled on the output and input side, head (Linear).
  const model = (device: "cpu" | "cuda") => {
    manualSeed(0);
    const m = getPeftModel(new Gpt2Like(), new IA3Config({ targetModules: ["c_attn", "c_proj", "head"], feedforwardModules: ["c_proj"], initIa3Weights: false }));
    return m.to(device);
  };
  const batch = (device: "cpu" | "cuda") => [f(7 * 8, 30, "f32", [7, 8]).to(device), f(7 * 3, 31, "f32", [7, 3]).to(device)];

  it("IA3 layers train on cuda: AdamW's losses follow the cpu run's step for step", () =>
    expectSameTraining((device) => {
      const [x, target] = batch(device);
      return trainLosses(model(device), x, target, device, 3);
    }));

  it("merge and unmerge on cuda scale the weights as on the cpu (same bits)", () => {
    const weights = (device: "cpu" | "cuda") => {
      const m = model(device);
      const [x] = batch(device);
      m.mergeAdapter();
      const merged = [...m.namedParameters()].map(([n, p]) => [n, Array.from(p.to("cpu").toFloat64Array())] as const);
      const y = m.forward(x).to("cpu").toFloat64Array();
      m.unmergeAdapter();
      const back = [...m.namedParameters()].map(([, p]) => Array.from(p.to("cpu").toFloat64Array()));
      m.dispose();
      return { merged, y, back };
    };
    const cpu = weights("cpu"), dev = weights("cuda");
    expect(dev.merged).toEqual(cpu.merged);
    expect(dev.back).toEqual(cpu.back);
    for (let i = 0; i < cpu.y.length; i++) expect(Math.abs(dev.y[i] - cpu.y[i])).toBeLessThan(1e-5 * (1 + Math.abs(cpu.y[i])));
  });
});
