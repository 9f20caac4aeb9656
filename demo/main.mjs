// npm run demo: what the backend runs on, then PEFT's custom-model MLP trained on a synthetic task, fully
// and with LoRA through getPeftModel.
//   --device cuda   full fine-tuning and LoRA training on the cuda device (a GPU, or NODE_PEFT_CUDA=emu:
//                   the CUDA kernels emulated on the CPU, where the MLP's hidden size defaults to 64 to keep
//                   it quick); the trained LoRA model comes back to the cpu to be saved, reloaded and merged
//   --hidden N      the MLP's hidden size (default 2000)
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { backend, manualSeed, getPeftModel, LoraConfig, PeftModel, saveSafetensors, noGrad } from "../dist/index.js";
import { makeDataset } from "./data.mjs";
import { MLP } from "./mlp.mjs";
import { train } from "./train.mjs";

function flag(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
const device = flag("device", "cpu");
if (device !== "cpu" && device !== "cuda") throw new Error(`--device must be cpu or cuda, got ${device}`);

const cuda = backend.cuda;
console.log("node-peft backend");
console.log(`  build     ${backend.build}`);
console.log(`  ISA       ${backend.isa}`);
console.log(`  features  ${backend.features.join(", ") || "(none)"}`);
console.log(`  threads   ${backend.threads}`);
console.log(`  CUDA      ${cuda.available ? (cuda.emulated ? "emulated on the CPU" : cuda.devices.join(", ")) : `unavailable (${cuda.reason})`}`);

const trainSet = makeDataset(4096, { seed: 1 });
const testSet = makeDataset(1024, { seed: 2 });

if (device === "cuda" && !cuda.available) throw new Error(`--device cuda: ${cuda.reason} (NODE_PEFT_CUDA=emu emulates it on the CPU)`);
const hidden = Number(flag("hidden", device === "cuda" && cuda.emulated ? 64 : 2000));
manualSeed(0);
const full = new MLP(hidden).to(device);
console.log(`\n${full}\n`);
const fullAcc = train(full, trainSet, testSet, { epochs: 3, label: `full fine-tuning (${device})`, device });
console.log(`full fine-tuning on ${device}: test accuracy ${(fullAcc * 100).toFixed(1)} %\n`);
full.dispose();

// LoRA (r = 8) on seq.0 and seq.2, the head seq.4 trained as a saved module, everything else frozen.
manualSeed(0);
const config = new LoraConfig({ r: 8, loraAlpha: 16, targetModules: ["seq.0", "seq.2"], modulesToSave: ["seq.4"] });
const model = getPeftModel(new MLP(hidden), config).to(device);
model.printTrainableParameters();
const loraAcc = train(model, trainSet, testSet, { epochs: 8, lr: 3e-3, label: `LoRA r=8 (${device})`, device });
console.log(`LoRA r=8 on ${device}: test accuracy ${(loraAcc * 100).toFixed(1)} % (full fine-tuning: ${(fullAcc * 100).toFixed(1)} %)`);
model.to("cpu");

// Save the adapter in PEFT's format, reload it into a fresh copy of the base model and compare outputs.
const dir = mkdtempSync(join(tmpdir(), "node-peft-demo-"));
try {
  const adapterDir = join(dir, "adapter");
  await model.savePretrained(adapterDir);
  manualSeed(0); // the same seed as the trained model's base: the same base weights
  const baseCopy = new MLP(hidden);
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
