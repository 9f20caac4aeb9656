// npm run demo: what the backend runs on, then PEFT's custom-model MLP trained on a synthetic task, fully
// and with LoRA.
import { backend, manualSeed, Sequential, Linear, ReLU, LogSoftmax, LoraLinear } from "../dist/index.js";
import { makeDataset } from "./data.mjs";
import { train } from "./train.mjs";

const cuda = backend.cuda;
console.log("node-peft backend");
console.log(`  build     ${backend.build}`);
console.log(`  ISA       ${backend.isa}`);
console.log(`  features  ${backend.features.join(", ") || "(none)"}`);
console.log(`  threads   ${backend.threads}`);
console.log(`  CUDA      ${cuda.available ? (cuda.emulated ? "emulated on the CPU" : cuda.devices.join(", ")) : `unavailable (${cuda.reason})`}`);

const trainSet = makeDataset(4096, { seed: 1 });
const testSet = makeDataset(1024, { seed: 2 });

// The MLP from PEFT's custom-model guide.
function mlp() {
  return new Sequential(new Linear(20, 2000), new ReLU(), new Linear(2000, 2000), new ReLU(), new Linear(2000, 2), new LogSoftmax());
}

manualSeed(0);
const full = mlp();
console.log(`\n${full}\n`);
const fullAcc = train(full, trainSet, testSet, { epochs: 3, label: "full fine-tuning" });
console.log(`full fine-tuning: test accuracy ${(fullAcc * 100).toFixed(1)} %\n`);
full.dispose();

// LoRA (r = 8) on seq.0 and seq.2, the head seq.4 fully trainable, everything else frozen.
manualSeed(0);
const model = mlp();
for (const p of model.parameters()) p.requiresGrad = false;
for (const path of ["0", "2"]) model.setSubmodule(path, new LoraLinear(model.getSubmodule(path), { r: 8, loraAlpha: 16 }));
for (const p of model.getSubmodule("4").parameters()) p.requiresGrad = true;
const trainable = [...model.parameters()].filter((p) => p.requiresGrad).reduce((n, p) => n + p.numel, 0);
const all = [...model.parameters()].reduce((n, p) => n + p.numel, 0);
console.log(`LoRA: ${trainable.toLocaleString("en-US")} trainable of ${all.toLocaleString("en-US")} parameters`);
const loraAcc = train(model, trainSet, testSet, { epochs: 3, lr: 1e-2, label: "LoRA r=8        " });
console.log(`LoRA r=8: test accuracy ${(loraAcc * 100).toFixed(1)} % (full fine-tuning: ${(fullAcc * 100).toFixed(1)} %)`);
model.dispose();
