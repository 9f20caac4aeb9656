// The shared tuner base: LoRA and IA3 models and layers are the same kind of object to PeftModel, one model
// holds one method, and the module graph around PeftModel has no import circle.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import {
  BaseTuner, BaseTunerLayer, IA3Config, IA3Layer, IA3Model, Linear, LoraConfig, LoraLinear, LoraModel, PeftError, Tensor, getPeftModel,
} from "../lib/index.js";
import { expectError } from "./helpers/numeric.js";
import { root } from "./helpers/child.js";
import { Gpt2Like } from "./helpers/ia3-models.js";

beforeEach(() => {
  vi.spyOn(process, "emitWarning").mockImplementation(() => {});
});
afterEach(() => vi.restoreAllMocks());

describe("one base for every method", () => {
  it("PeftModel holds a LoraModel or an IA3Model, both BaseTuners with BaseTunerLayers", () => {
    const lora = getPeftModel(new Gpt2Like(), new LoraConfig({ targetModules: ["head"] }));
    const ia3 = getPeftModel(new Gpt2Like(), new IA3Config({ targetModules: ["head"], feedforwardModules: [] }));
    expect(lora.baseModel).toBeInstanceOf(LoraModel);
    expect(ia3.baseModel).toBeInstanceOf(IA3Model);
    for (const m of [lora, ia3]) {
      expect(m.baseModel).toBeInstanceOf(BaseTuner);
      const layer = m.baseModel.model.getSubmodule("head") as BaseTunerLayer;
      expect(layer).toBeInstanceOf(BaseTunerLayer);
      expect(layer.getBaseLayer()).toBeInstanceOf(Linear);
      expect([...m.baseModel.tunerLayers()]).toEqual([layer]);
    }
    expect(lora.peftType).toBe("LORA");
    expect(ia3.peftType).toBe("IA3");
  });

  it("the shared adapter bookkeeping behaves the same for both layer kinds", () => {
    for (const l of [new LoraLinear(new Linear(3, 2), { r: 2 }), new IA3Layer(new Linear(3, 2), { isFeedforward: true })] as BaseTunerLayer[]) {
      const add = (name: string) => (l instanceof LoraLinear ? l.updateLayer({ adapterName: name, r: 2 }) : (l as IA3Layer).updateLayer({ adapterName: name }));
      add("b");
      expect(l.adapterNames).toEqual(["default", "b"]);
      expect(l.activeAdapters).toEqual(["default"]);
      l.setAdapter(["b"]);
      expect(l.adapterStateEntries("default").every(([, t]) => !t.requiresGrad)).toBe(true);
      expect(l.adapterStateEntries("b").every(([, t]) => t.requiresGrad)).toBe(true);
      l.deleteAdapter("b");
      expect(l.activeAdapters).toEqual(["default"]);
      l.merge();
      expectError(() => l.deleteAdapter("default"), PeftError, "ERR_STATE", /merged; unmerge first/);
      l.unmerge();
      expectError(() => l.setAdapter("nope"), PeftError, "ERR_CONFIG", /unknown adapter "nope"/);
    }
  });
});

describe("one model, one method (PEFT's error when mixing)", () => {
  it("addAdapter refuses the other method's config and changes nothing", () => {
    const lora = getPeftModel(new Gpt2Like(), new LoraConfig({ targetModules: ["head"] }));
    expectError(() => lora.addAdapter("x", new IA3Config({ targetModules: ["head"], feedforwardModules: [] })), PeftError, "ERR_CONFIG", /^Cannot combine adapters with different peft types\. Found LORA and IA3\.$/);
    const ia3 = getPeftModel(new Gpt2Like(), new IA3Config({ targetModules: ["head"], feedforwardModules: [] }));
    expectError(() => ia3.addAdapter("x", new LoraConfig({ targetModules: ["head"] })), PeftError, "ERR_CONFIG", /Found IA3 and LORA\./);
    expectError(() => (ia3.baseModel as IA3Model).injectAdapter(new LoraConfig() as never, "y"), PeftError, "ERR_CONFIG", /Found IA3 and LORA\./);
    expect(Object.keys(lora.peftConfig)).toEqual(["default"]);
    expect(Object.keys(ia3.peftConfig)).toEqual(["default"]);
    expectError(() => getPeftModel(new Gpt2Like(), {} as never), TypeError, "ERR_INVALID_ARG_TYPE", /LoraConfig or IA3Config/);
  });

  it("addWeightedAdapter takes no LoRA options on an IA3 model", () => {
    const ia3 = getPeftModel(new Gpt2Like(), new IA3Config({ targetModules: ["head"], feedforwardModules: [] }));
    expectError(() => ia3.addWeightedAdapter(["default"], [1], "w", { combinationType: "svd" }), PeftError, "ERR_UNSUPPORTED");
    ia3.addWeightedAdapter(["default"], [2], "w");
    expect([...(ia3.baseModel.model.getSubmodule("head") as IA3Layer).ia3Vector("w").toFloat32Array()]).toEqual([2, 2, 2]);
    const t = Tensor.zeros([1, 8]);
    expect(ia3.forward(t).shape).toEqual([1, 3]);
  });
});

/** The relative imports of a lib file (type-only ones too), as absolute paths of .ts files. */
function importsOf(file: string): string[] {
  const text = readFileSync(file, "utf8");
  return [...text.matchAll(/(?:import|export)[^;]*?from\s+"(\.[^"]+)"/g)].map((m) => resolve(dirname(file), m[1].replace(/\.js$/, ".ts")));
}

/** Every lib file `from` imports, directly or not. */
function reachable(from: string): Set<string> {
  const seen = new Set<string>();
  const stack = [from];
  while (stack.length) {
    const f = stack.pop()!;
    if (seen.has(f)) continue;
    seen.add(f);
    stack.push(...importsOf(f));
  }
  seen.delete(from);
  return seen;
}

const reaches = (from: string, target: string) => reachable(from).has(target);

describe("no import circle around PeftModel", () => {
  const lib = join(root, "lib");
  const peftModel = join(lib, "peft-model.ts"), checkpoint = join(lib, "io", "peft-checkpoint.ts"), stateDict = join(lib, "tuners", "state-dict.ts");

  it("peft-model.ts reaches io/peft-checkpoint.ts and tuners/state-dict.ts; neither reaches back", () => {
    expect(reaches(peftModel, checkpoint)).toBe(true);
    expect(reaches(peftModel, stateDict)).toBe(true);
    expect(reaches(checkpoint, peftModel)).toBe(false);
    expect(reaches(stateDict, peftModel)).toBe(false);
    expect(reaches(stateDict, checkpoint)).toBe(false);
  });

  it("tuners/ never imports io/", () => {
    const io = join(lib, "io") + "/";
    for (const f of [stateDict, join(lib, "tuners", "tuner.ts"), join(lib, "tuners", "ia3", "model.ts"), join(lib, "tuners", "lora", "model.ts")])
      for (const g of reachable(f)) expect(g.startsWith(io), `${f} reaches ${g}`).toBe(false);
  });
});
