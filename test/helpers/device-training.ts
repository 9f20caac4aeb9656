// Training runs on a device for the cpu-vs-cuda training tests: AdamW steps on a given loss, or on a fixed batch
// of a 12-feature, 3-class task, each step's loss recorded, every trainable parameter and gradient checked to be
// on the device.
import { expect } from "vitest";
import { AdamW, F, Tensor, tidy, type Module } from "../../lib/index.js";
import { values } from "./nn-reference.js";

/**
 * AdamW steps on `loss()` (recorded anew each step) over the model's trainable parameters, every parameter and
 * gradient checked to be on `device`; each step's loss.
 */
export function adamwSteps(model: Module, device: "cpu" | "cuda", steps: number, opts: { lr: number; weightDecay?: number }, loss: () => Tensor): number[] {
  const params = [...model.parameters()].filter((p) => p.requiresGrad);
  for (const p of params) expect(p.device).toBe(device);
  const opt = new AdamW(params, opts);
  const losses: number[] = [];
  for (let s = 0; s < steps; s++) {
    const l = tidy(loss);
    l.backward();
    for (const p of params) expect(p.grad?.device).toBe(device);
    opt.step();
    opt.zeroGrad();
    losses.push(l.toFloat64Array()[0]);
    l.dispose();
  }
  return losses;
}

/** adamwSteps' losses on the fixed batch of the 12-feature, 3-class task (nll loss). */
export function adamwLosses(model: Module, device: "cpu" | "cuda", steps: number, lr: number): number[] {
  const x = Tensor.fromArray(values(33 * 12, 5), [33, 12]).to(device);
  const y = Tensor.fromArray(values(33, 6).map((v) => Math.floor((v + 1) * 1.5)), [33], "i64").to(device);
  const net = model as Module & { forward(x: Tensor): Tensor };
  const losses = adamwSteps(model, device, steps, { lr, weightDecay: 0.01 }, () => F.nllLoss(net.forward(x), y));
  x.dispose();
  y.dispose();
  return losses;
}
