// Training runs on a device for the cpu-vs-cuda training tests: AdamW on a fixed batch of a 12-feature,
// 3-class task, each step's loss recorded, every trainable parameter and gradient checked to be on the device.
import { expect } from "vitest";
import { AdamW, F, Tensor, tidy, type Module } from "../../lib/index.js";
import { values } from "./nn-reference.js";

export function adamwLosses(model: Module, device: "cpu" | "cuda", steps: number, lr: number): number[] {
  const x = Tensor.fromArray(values(33 * 12, 5), [33, 12]).to(device);
  const y = Tensor.fromArray(values(33, 6).map((v) => Math.floor((v + 1) * 1.5)), [33], "i64").to(device);
  const params = [...model.parameters()].filter((p) => p.requiresGrad);
  for (const p of params) expect(p.device).toBe(device);
  const opt = new AdamW(params, { lr, weightDecay: 0.01 });
  const losses: number[] = [];
  for (let s = 0; s < steps; s++) {
    const loss = tidy(() => F.nllLoss((model as Module & { forward(x: Tensor): Tensor }).forward(x), y));
    loss.backward();
    for (const p of params) expect(p.grad?.device).toBe(device);
    opt.step();
    opt.zeroGrad();
    losses.push(loss.toFloat64Array()[0]);
    loss.dispose();
  }
  x.dispose();
  y.dispose();
  return losses;
}
