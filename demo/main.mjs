// npm run demo: what the backend runs on, then PEFT's custom-model MLP trained on a synthetic task, fully
// and with LoRA through getPeftModel.
import { backend, manualSeed, getPeftModel, LoraConfig } from "../dist/index.js";
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
const loraAcc = train(model, trainSet, testSet, { epochs: 5, lr: 1e-2, label: "LoRA r=8        " });
console.log(`LoRA r=8: test accuracy ${(loraAcc * 100).toFixed(1)} % (full fine-tuning: ${(fullAcc * 100).toFixed(1)} %)`);
model.dispose();
