// npm run demo: what the backend runs on, then PEFT's custom-model MLP trained on a synthetic task, fully
// and with LoRA through getPeftModel.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { backend, manualSeed, getPeftModel, LoraConfig, PeftModel, saveSafetensors, noGrad } from "../dist/index.js";
import { makeDataset } from "./data.mjs";
import { MLP } from "./mlp.mjs";
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

manualSeed(0);
const full = new MLP();
console.log(`\n${full}\n`);
const fullAcc = train(full, trainSet, testSet, { epochs: 3, label: "full fine-tuning" });
console.log(`full fine-tuning: test accuracy ${(fullAcc * 100).toFixed(1)} %\n`);
full.dispose();

// LoRA (r = 8) on seq.0 and seq.2, the head seq.4 trained as a saved module, everything else frozen.
manualSeed(0);
const config = new LoraConfig({ r: 8, loraAlpha: 16, targetModules: ["seq.0", "seq.2"], modulesToSave: ["seq.4"] });
const model = getPeftModel(new MLP(), config);
model.printTrainableParameters();
const loraAcc = train(model, trainSet, testSet, { epochs: 8, lr: 3e-3, label: "LoRA r=8        " });
console.log(`LoRA r=8: test accuracy ${(loraAcc * 100).toFixed(1)} % (full fine-tuning: ${(fullAcc * 100).toFixed(1)} %)`);

// Save the adapter in PEFT's format, reload it into a fresh copy of the base model and compare outputs.
const dir = mkdtempSync(join(tmpdir(), "node-peft-demo-"));
try {
  const adapterDir = join(dir, "adapter");
  await model.savePretrained(adapterDir);
  manualSeed(0); // the same seed as the trained model's base: the same base weights
  const baseCopy = new MLP();
  const reloaded = await PeftModel.fromPretrained(baseCopy, adapterDir);
  const probe = testSet.x;
  // Inference: no graph is recorded under noGrad.
  const a = noGrad(() => model.forward(probe)).toFloat32Array(), b = noGrad(() => reloaded.forward(probe)).toFloat32Array();
  const maxDiff = a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
  console.log(`\nsaved to ${adapterDir} and reloaded: max |Δ output| = ${maxDiff}`);

  // Merge the adapter into the base weights, drop the adapter layers, save the plain model and inspect it.
  const merged = reloaded.mergeAndUnload();
  const mergedOut = merged.forward(probe).toFloat32Array();
  const mergedDiff = a.reduce((m, v, i) => Math.max(m, Math.abs(v - mergedOut[i])), 0);
  const mergedPath = join(dir, "merged.safetensors");
  const sd = merged.stateDict();
  await saveSafetensors(mergedPath, sd);
  console.log(`merged and unloaded: max |Δ output| = ${mergedDiff.toExponential(2)}; saved ${mergedPath}\n`);
  const cli = fileURLToPath(new URL("../dist/cli.js", import.meta.url));
  spawnSync(process.execPath, [cli, "inspect", mergedPath], { stdio: "inherit" });
} finally {
  rmSync(dir, { recursive: true, force: true });
}
model.dispose();
