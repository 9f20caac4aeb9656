// LoRA training on the cuda device (the emulator without a GPU): getPeftModel(model, cfg).to("cuda") with
// AdamW follows the cpu run's losses step by step (dropout on, the same Philox masks; trainable base
// biases), and merge / safeMerge / unmerge on the device give the cpu's weights and errors.
import { describe, expect, it } from "vitest";

if (process.env.NODE_PEFT_CUDA === undefined && !process.env.NODE_PEFT_CUDA_REAL) process.env.NODE_PEFT_CUDA = "emu";
const { Tensor, Module, Linear, ReLU, LogSoftmax, LoraConfig, LoraLinear, getPeftModel, manualSeed, backend, noGrad } = await import("../lib/index.js");
import type { Tensor as TensorT, PeftModel as PeftModelT } from "../lib/index.js";
import { UNIT } from "./helpers/numeric.js";
import { values } from "./helpers/nn-reference.js";
import { adamwLosses } from "./helpers/device-training.js";

class Net extends Module {
  fc1 = this.registerModule("fc1", new Linear(12, 32, { seed: 1 }));
  act = this.registerModule("act", new ReLU());
  fc2 = this.registerModule("fc2", new Linear(32, 3, { seed: 2 }));
  out = this.registerModule("out", new LogSoftmax());
  forward(x: TensorT): TensorT {
    return this.out.forward(this.fc2.forward(this.act.forward(this.fc1.forward(x))));
  }
}

function peftNet(device: "cpu" | "cuda"): PeftModelT {
  manualSeed(0);  // the adapters' A and the dropout draws: the same on both runs
  const cfg = new LoraConfig({ r: 4, loraAlpha: 8, loraDropout: 0.1, bias: "all", targetModules: ["fc1", "fc2"] });
  return getPeftModel(new Net(), cfg).to(device);
}

function trainLosses(device: "cpu" | "cuda", steps: number): { losses: number[]; model: PeftModelT } {
  const model = peftNet(device);
  return { losses: adamwLosses(model, device, steps, 2e-2), model };
}

const weightsOf = (m: PeftModelT) => [...m.parameters()].map((p) => p.to("cpu").toFloat64Array());

describe("LoRA training on cuda", () => {
  it("getPeftModel(…).to('cuda') + AdamW follows the cpu run's losses step by step, and merges as the cpu does", () => {
    const steps = 12;
    const cpu = trainLosses("cpu", steps), dev = trainLosses("cuda", steps);
    // The runs differ only in f32 summation orders (a few ulps per op; the dropout masks are equal), which
    // AdamW's normalised steps keep at the level of f32 noise: far below the loss's own change.
    for (let s = 0; s < steps; s++)
      expect(Math.abs(dev.losses[s] - cpu.losses[s]), `step ${s}: cuda ${dev.losses[s]} cpu ${cpu.losses[s]}`).toBeLessThan(1e-4 * (1 + cpu.losses[s]));
    expect(dev.losses[steps - 1]).toBeLessThan(0.8 * dev.losses[0]);

    // Merged in place on each device (safeMerge: the finite check runs on the device), then unmerged.
    const before = weightsOf(dev.model);
    for (const m of [cpu.model, dev.model]) m.mergeAdapter({ safeMerge: true });
    const mc = weightsOf(cpu.model), md = weightsOf(dev.model);
    // W + s·B·A with r = 4 terms: a few f32 roundings of values below 1 on both sides (trained weights
    // differ by the runs' f32 noise, well below 1e-4).
    mc.forEach((w, i) => w.forEach((v, j) => expect(Math.abs(md[i][j] - v)).toBeLessThan(1e-4)));
    dev.model.unmergeAdapter();
    weightsOf(dev.model).forEach((w, i) => w.forEach((v, j) => expect(Math.abs(v - before[i][j])).toBeLessThan(8 * UNIT.f32 * (1 + Math.abs(before[i][j])))));
    cpu.model.dispose();
    dev.model.dispose();
  });

  it("a broken adapter fails safeMerge on the device with the cpu's error, the weights untouched", () => {
    const msgs: string[] = [];
    for (const device of ["cpu", "cuda"] as const) {
      const model = peftNet(device);
      const lora = [...model.parameters()].find((p) => p.shape[0] === 32 && p.shape[1] === 4)!;  // fc1's lora_B
      lora.copyFrom(Tensor.fromArray(new Array(32 * 4).fill(Infinity), lora.shape));
      const w = weightsOf(model);
      try {
        model.mergeAdapter({ safeMerge: true });
      } catch (e) {
        msgs.push(`${(e as { code?: string }).code} ${(e as Error).message}`);
      }
      weightsOf(model).forEach((v, i) => expect(Array.from(v)).toEqual(Array.from(w[i])));
      model.dispose();
    }
    expect(msgs.length).toBe(2);
    expect(msgs[1]).toBe(msgs[0]);
    expect(msgs[0]).toMatch(/^ERR_STATE NaNs detected in the merged weights/);
  });

  it("an f32 base on TF32 tensor cores (backend.cuda.allowTf32): within the inputs' TF32 rounding of the cpu's, the adapters in f32", () => {
    const [M, K, N, r] = [17, 33, 65, 4];
    const layer = new LoraLinear(new Linear(K, N, { seed: 3 }), { r, loraAlpha: 8, initLoraWeights: false });
    const x = Tensor.fromArray(values(M * K, 9), [M, K]);
    const want = noGrad(() => layer.forward(x)).toFloat64Array();
    layer.to("cuda");
    backend.cuda.allowTf32 = true;
    let got: Float64Array;
    try {
      got = noGrad(() => layer.forward(x.to("cuda"))).to("cpu").toFloat64Array();
    } finally {
      backend.cuda.allowTf32 = false;
    }
    // Each base product within 2^-10 relative (both inputs rounded to TF32, 2^-11 each); the rank term and the
    // sums in f32 on both sides: 2·(K + r + 8)·u of the magnitudes. |x|, |W|, |A|, |B| < 1 and s = 2.
    expect(got.some((v, i) => Math.abs(v - want[i]) > 1e-5), "the base product ran on TF32").toBe(true);
    const xa = x.toFloat64Array().map(Math.abs);
    for (let m = 0; m < M; m++)
      for (let n = 0; n < N; n++) {
        let base = 1, rank = 0;
        for (let k = 0; k < K; k++) base += xa[m * K + k];
        for (let k = 0; k < K; k++) rank += xa[m * K + k] * r * 2;
        const i = m * N + n, tol = 2 ** -10 * base + 2 * (K + r + 8) * UNIT.f32 * (base + rank);
        if (!(Math.abs(got[i] - want[i]) <= tol)) expect.fail(`y[${m}, ${n}]: cuda ${got[i]} vs cpu ${want[i]} (tolerance ${tol})`);
      }
    layer.dispose();
  });
});
