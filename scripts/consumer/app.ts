// A consumer's strict TypeScript: the public types as an application sees them through the package exports.
import { Linear, LoraConfig, Module, PeftError, Sequential, Tensor, getPeftModel, mergeCheckpoint, type MergeSummary } from "node-peft";

class Net extends Module {
  fc = this.registerModule("fc", new Linear(4, 2, { seed: 1 }));
  override forward(x: Tensor): Tensor {
    return this.fc.forward(x);
  }
}
const model = getPeftModel(new Net(), new LoraConfig({ targetModules: ["fc"], r: 2 }));
const plain: Net = model.mergeAndUnload<Net>();
const fc: Linear = plain.getSubmodule("fc", Linear);
const seq = new Sequential(new Linear(2, 2));
const first: Linear = seq.getSubmodule<Linear>("0");
const summary: Promise<MergeSummary> = mergeCheckpoint({ base: "model.safetensors", adapter: "adapter", out: "merged.safetensors", dtype: "bf16" });
summary.catch((e: unknown) => (e instanceof PeftError ? e.code : "other"));
console.log(fc.inFeatures, first.outFeatures);
