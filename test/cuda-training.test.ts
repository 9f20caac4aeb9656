// Training on the cuda device (the emulator without a GPU): a plain MLP moved there with Module.to("cuda")
// and trained with autograd and AdamW follows the cpu run's losses step for step, and TF32 products
// (backend.cuda.allowTf32) round their inputs exactly as cvt.rna.tf32.f32 does.
import { afterEach, describe, expect, it } from "vitest";

if (process.env.NODE_PEFT_CUDA === undefined && !process.env.NODE_PEFT_CUDA_REAL) process.env.NODE_PEFT_CUDA = "emu";
const { Tensor, backend, linear, linearGradInput, linearGradWeight, manualSeed, Sequential, Linear, ReLU, GELU, LogSoftmax } =
  await import("../lib/index.js");
import type { Tensor as TensorT, Module as ModuleT } from "../lib/index.js";
import { values } from "./helpers/nn-reference.js";
import { UNIT } from "./helpers/numeric.js";
import { adamwLosses } from "./helpers/device-training.js";

afterEach(() => {
  backend.cuda.allowTf32 = false;
});

function mlp(): ModuleT {
  manualSeed(0);
  return new Sequential(new Linear(12, 32), new ReLU(), new Linear(32, 17), new GELU(), new Linear(17, 3), new LogSoftmax());
}

// Losses of `steps` AdamW steps on a fixed batch, the model on `device`.
function trainLosses(device: "cpu" | "cuda", steps: number): number[] {
  const model = mlp().to(device);
  const losses = adamwLosses(model, device, steps, 1e-2);
  model.dispose();
  return losses;
}

describe("training on cuda", () => {
  it("an MLP moved with Module.to('cuda') trains with AdamW to the cpu run's losses", () => {
    const steps = 15;
    const cpu = trainLosses("cpu", steps), dev = trainLosses("cuda", steps);
    // The two runs differ only in f32 summation orders (a few ulps per op); AdamW's normalised steps keep
    // that at the level of f32 noise over 15 steps, far below the loss's own change.
    for (let s = 0; s < steps; s++) expect(Math.abs(dev[s] - cpu[s]), `step ${s}: cuda ${dev[s]} cpu ${cpu[s]}`).toBeLessThan(1e-4 * (1 + cpu[s]));
    expect(dev[steps - 1]).toBeLessThan(0.7 * dev[0]);
  });

  it("Module.to('cuda') and back keeps every parameter's values", () => {
    const a = mlp(), b = mlp().to("cuda").to("cpu");
    const pa = [...a.parameters()], pb = [...b.parameters()];
    pa.forEach((p, i) => expect(Array.from(pb[i].bytes())).toEqual(Array.from(p.bytes())));
  });
});

describe("TF32 products (backend.cuda.allowTf32)", () => {
  const tf32Of = (x: TensorT) => {
    const one = Tensor.fromArray([1], [1, 1]).to("cuda");
    return linear(x.to("cuda"), one).to("cpu").toFloat64Array();  // y = x · 1: the input as the MMA read it
  };

  it("is off by default and takes booleans only", () => {
    expect(backend.cuda.allowTf32).toBe(false);
    expect(() => ((backend.cuda as { allowTf32: unknown }).allowTf32 = 1)).toThrow(TypeError);
  });

  it("rounds inputs to 10 mantissa bits, to nearest with ties away from zero (cvt.rna.tf32.f32)", () => {
    const u = 2 ** -10;  // TF32's ulp at 1
    const cases: [number, number][] = [
      [1 + u / 2, 1 + u],  // a tie: away from zero (nearest-even would give 1)
      [-(1 + u / 2), -(1 + u)],
      [1 + (3 * u) / 2, 1 + 2 * u],
      [1 + u / 2 - 2 ** -23, 1],  // just below the tie
      [1 + u / 2 + 2 ** -23, 1 + u],
      [3 + 3 * u, 3 + 4 * u],  // 1.5 ulp at 2 (ulp 2u): the tie rounds the magnitude up
      [2 ** -137, 2 ** -136],  // a subnormal tie (nearest-even would give 0)
      [1 + u, 1 + u],  // exact values stay
    ];
    const x = Tensor.fromArray(cases.map((c) => c[0]), [cases.length, 1]);
    expect(Array.from(x.toFloat64Array())).toEqual(cases.map((c) => c[0]));  // the inputs are f32 values
    expect(Array.from(tf32Of(x))).toEqual(cases.map((c) => c[0]));  // allowTf32 off: full f32
    backend.cuda.allowTf32 = true;
    expect(Array.from(tf32Of(x))).toEqual(cases.map((c) => c[1]));
  });

  it("matches the cpu within the TF32 input rounding on odd shapes and every transpose", () => {
    backend.cuda.allowTf32 = true;
    for (const [M, K, N] of [[1, 1, 1], [7, 17, 33], [33, 127, 7], [0, 8, 8], [5, 0, 3]]) {
      const x = Tensor.fromArray(values(M * K, 1), [M, K]), w = Tensor.fromArray(values(N * K, 2), [N, K]);
      const dy = Tensor.fromArray(values(M * N, 3), [M, N]);
      const absx = x.toFloat64Array().map(Math.abs), absw = w.toFloat64Array().map(Math.abs), absdy = dy.toFloat64Array().map(Math.abs);
      // Each TF32 input is within 2^-11 relative of the f32 one, so a product within 2^-10; then both
      // sides sum K products in f32 (2·K·u).
      const rel = 2 ** -10 + 2 * (K + M + 4) * UNIT.f32;
      const check = (got: Float64Array, want: Float64Array, scale: (i: number) => number, what: string) => {
        for (let i = 0; i < want.length; i++)
          if (Math.abs(got[i] - want[i]) > rel * scale(i) + 1e-30) expect.fail(`${what} [${M},${K},${N}] ${i}: ${got[i]} vs ${want[i]}`);
      };
      // Σ|a||b| of output i of C[rows, cols] = Σ_t a(r, t) b(t, c) over t < inner.
      const absDot = (cols: number, inner: number, a: (r: number, t: number) => number, b: (t: number, c: number) => number) => (i: number) => {
        const r = Math.floor(i / cols), c = i % cols;
        let s = 0;
        for (let t = 0; t < inner; t++) s += a(r, t) * b(t, c);
        return s;
      };
      check(linear(x.to("cuda"), w.to("cuda")).to("cpu").toFloat64Array(), linear(x, w).toFloat64Array(),
        absDot(N, K, (m, k) => absx[m * K + k], (k, n) => absw[n * K + k]), "y");
      check(linearGradInput(dy.to("cuda"), w.to("cuda")).to("cpu").toFloat64Array(), linearGradInput(dy, w).toFloat64Array(),
        absDot(K, N, (m, n) => absdy[m * N + n], (n, k) => absw[n * K + k]), "dx");
      const dwc = Tensor.zeros([N, K]), dwd = Tensor.zeros([N, K], { device: "cuda" });
      linearGradWeight(dy, x, dwc, { accumulate: false });
      linearGradWeight(dy.to("cuda"), x.to("cuda"), dwd, { accumulate: false });
      check(dwd.to("cpu").toFloat64Array(), dwc.toFloat64Array(), absDot(K, M, (n, m) => absdy[m * N + n], (m, k) => absx[m * K + k]), "dW");
    }
  });
});
