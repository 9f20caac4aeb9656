// Trains a model on the synthetic set with AdamW and a progress bar; returns the final test accuracy.
import cliProgress from "cli-progress";
import { AdamW, F, noGrad, tidy } from "../dist/index.js";
import { accuracy, batch } from "./data.mjs";

// `device` ("cpu" or "cuda"): where the model already is; each batch is moved there.
function onDevice(b, device) {
  if (device === "cpu") return b;
  const moved = { x: b.x.to(device), y: b.y.to(device) };
  b.x.dispose();
  b.y.dispose();
  return moved;
}

export function train(model, train, test, { epochs = 4, batchSize = 64, lr = 1e-3, label = "train", device = "cpu" } = {}) {
  const params = [...model.parameters()].filter((p) => p.requiresGrad);
  const opt = new AdamW(params, { lr, weightDecay: 0 });
  const stepsPerEpoch = Math.floor(train.labels.length / batchSize);
  const bar = new cliProgress.SingleBar(
    { format: `${label} [{bar}] {value}/{total} steps | loss {loss} | {rate} steps/s`, hideCursor: true, clearOnComplete: false },
    cliProgress.Presets.shades_classic,
  );
  bar.start(epochs * stepsPerEpoch, 0, { loss: "-", rate: "-" });
  const t0 = performance.now();
  model.train();
  for (let step = 0; step < epochs * stepsPerEpoch; step++) {
    const b = onDevice(batch(train, (step % stepsPerEpoch) * batchSize, batchSize), device);
    // Autograd: each layer is one graph node running its fused backward; tidy frees the intermediates and
    // disposing the loss frees what the graph saved.
    const loss = tidy(() => F.nllLoss(model.forward(b.x), b.y));
    loss.backward();
    opt.step();
    opt.zeroGrad();
    const value = loss.toFloat32Array()[0];
    for (const t of [b.x, b.y, loss]) t.dispose();
    bar.update(step + 1, { loss: value.toFixed(4), rate: ((step + 1) / ((performance.now() - t0) / 1000)).toFixed(1) });
  }
  bar.stop();
  model.eval();
  const testX = device === "cpu" ? test.x : test.x.to(device);
  const out = noGrad(() => model.forward(testX));
  if (testX !== test.x) testX.dispose();
  const acc = accuracy(out, test.labels);
  out.dispose();
  return acc;
}
