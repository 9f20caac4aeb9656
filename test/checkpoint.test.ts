import { afterAll, describe, expect, it, vi } from "vitest";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  LoraConfig, LoraLayer, Linear, PeftModel, Tensor, buildModelFromCheckpoint, getPeftModel, loadModelWeights, loadSafetensors,
  openSafetensors, saveSafetensors, type Module,
} from "../lib/index.js";
import { MLP } from "./helpers/models.js";
import { expectClose } from "./helpers/nn-reference.js";
import { FIXTURE_DIR } from "./helpers/fixtures.js";

const fixture = (p: string) => join(FIXTURE_DIR, p);
const tmp = mkdtempSync(join(tmpdir(), "node-peft-ckpt-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
}

describe("the PEFT fixture (torch-computed expectations)", () => {
  it("builds the llama-style base tree from the checkpoint's names and shapes", () => {
    const base = buildModelFromCheckpoint(fixture("base_model.safetensors"));
    const q = base.getSubmodule("model.layers.1.self_attn.q_proj");
    expect(q).toBeInstanceOf(Linear);
    expect((q as Linear).bias).toBeNull();
    expect([...base.namedParameters()].length).toBe(21);
  });

  it("fromPretrained gives each targeted module's output with the adapter (atol = rtol = 1e-5)", async () => {
    const base = buildModelFromCheckpoint(fixture("base_model.safetensors"));
    const m = await PeftModel.fromPretrained(base, fixture("adapter"));
    expect(m.targetedModuleNames.length).toBe(12);
    expect(m.training).toBe(false);
    expect([...m.parameters()].every((p) => !p.requiresGrad)).toBe(true);
    const expected = await loadSafetensors(fixture("expected_outputs.safetensors"));
    const x = expected.x;
    for (const name of m.targetedModuleNames) {
      const layer = m.baseModel.model.getSubmodule(name) as LoraLayer;
      const want = expected[name].toFloat32Array();
      expectClose(layer.forward(x).toFloat32Array(), want, (i) => 1e-5 + 1e-5 * Math.abs(want[i]), name);
    }
  });

  it("mergeAndUnload gives the expected merged state dict", async () => {
    const base = buildModelFromCheckpoint(fixture("base_model.safetensors"));
    const m = await PeftModel.fromPretrained(base, fixture("adapter"));
    const merged = m.mergeAndUnload();
    const want = await loadSafetensors(fixture("expected_merged_model.safetensors"));
    const sd = merged.stateDict();
    expect(Object.keys(sd).sort()).toEqual(Object.keys(want).sort());
    for (const k of Object.keys(want)) {
      const w = want[k].toFloat32Array();
      expectClose(sd[k].toFloat32Array(), w, (i) => 1e-5 + 1e-5 * Math.abs(w[i]), k);
    }
  });
});

describe("savePretrained / fromPretrained round trips", () => {
  it("writes PEFT's files and key names; a fresh model reloads to the same outputs", async () => {
    vi.spyOn(process, "emitWarning").mockImplementation(() => {});
    const m = getPeftModel(new MLP(16, 1), new LoraConfig({ targetModules: ["seq.0", "seq.2"], modulesToSave: ["seq.4"], r: 4, loraAlpha: 8 }));
    for (const p of m.parameters()) if (p.requiresGrad) p.copyFrom(Tensor.randn(p.shape, { seed: p.numel, std: 0.1 }));
    const dir = join(tmp, "mlp");
    await m.savePretrained(dir);
    const config = JSON.parse(readFileSync(join(dir, "adapter_config.json"), "utf8"));
    expect(config.peft_type).toBe("LORA");
    expect(config.inference_mode).toBe(true);
    expect(Object.keys(config)).toEqual(Object.keys(config).sort());
    expect(Object.keys(config).sort()).toEqual(Object.keys(JSON.parse(readFileSync(fixture("adapter/adapter_config.json"), "utf8"))).sort());
    expect(readFileSync(join(dir, "README.md"), "utf8")).toContain("library_name: peft");
    using f = openSafetensors(join(dir, "adapter_model.safetensors"));
    expect(f.metadata().format).toBe("pt");
    expect(f.keys()).toEqual([
      "base_model.model.seq.0.lora_A.weight", "base_model.model.seq.0.lora_B.weight", "base_model.model.seq.2.lora_A.weight",
      "base_model.model.seq.2.lora_B.weight", "base_model.model.seq.4.bias", "base_model.model.seq.4.weight",
    ]);
    const x = Tensor.randn([3, 20], { seed: 7 });
    m.eval();
    const y = m.forward(x).toArray();
    const back = await PeftModel.fromPretrained(new MLP(16, 1), dir);
    expect(back.forward(x).toArray()).toEqual(y);
    const trainable = await PeftModel.fromPretrained(new MLP(16, 1), dir, { isTrainable: true });
    expect(trainable.getNbTrainableParameters()[0]).toBe(m.getNbTrainableParameters()[0]);
  });

  it("non-default adapters go to <dir>/<adapter>/ and load with loadAdapter", async () => {
    vi.spyOn(process, "emitWarning").mockImplementation(() => {});
    const m = getPeftModel(new MLP(8), new LoraConfig({ targetModules: ["seq.0"], r: 2 }));
    m.addAdapter("second", new LoraConfig({ targetModules: ["seq.2"], r: 3 }));
    const B = (m.baseModel.model.getSubmodule("seq.2") as LoraLayer).loraB.get("second") as Linear;
    B.weight.copyFrom(Tensor.randn(B.weight.shape, { seed: 3 }));
    const dir = join(tmp, "multi");
    await m.savePretrained(dir);
    expect(existsSync(join(dir, "adapter_model.safetensors"))).toBe(true);
    expect(existsSync(join(dir, "second", "adapter_model.safetensors"))).toBe(true);
    const n = await PeftModel.fromPretrained(new MLP(8), dir);
    await n.loadAdapter(join(dir, "second"), "second");
    expect(n.activeAdapters).toEqual(["default"]);
    const got = ((n.baseModel.model.getSubmodule("seq.2") as LoraLayer).loraB.get("second") as Linear).weight.toArray();
    expect(got).toEqual(B.weight.toArray());
  });

  it("loads hand-written PEFT adapters with f16 and bf16 weights", async () => {
    for (const dtype of ["f16", "bf16"] as const) {
      const dir = join(tmp, `hand-${dtype}`);
      mkdirSync(dir, { recursive: true });
      const config = JSON.parse(readFileSync(fixture("adapter/adapter_config.json"), "utf8"));
      writeFileSync(join(dir, "adapter_config.json"), JSON.stringify({ ...config, target_modules: ["seq.0"], r: 2, lora_alpha: 4 }));
      const A = Tensor.fromArray(Array.from({ length: 40 }, (_, i) => (i % 7) / 8), [2, 20], dtype);
      const B = Tensor.fromArray(Array.from({ length: 16 }, (_, i) => (i % 5) / 4), [8, 2], dtype);
      await saveSafetensors(join(dir, "adapter_model.safetensors"), {
        "base_model.model.seq.0.lora_A.weight": A,
        "base_model.model.seq.0.lora_B.weight": B,
      });
      const m = await PeftModel.fromPretrained(new MLP(8), dir);
      const layer = m.baseModel.model.getSubmodule("seq.0") as LoraLayer;
      expect((layer.loraA.get("default") as Linear).weight.dtype).toBe("f32");
      expect((layer.loraA.get("default") as Linear).weight.toArray()).toEqual(A.toArray());
      expect(layer.scaling.default).toBe(2);
    }
  });

  it("refuses mismatched checkpoints, unsupported options and missing files with ERR_* codes", async () => {
    const dir = join(tmp, "bad");
    mkdirSync(dir, { recursive: true });
    const config = JSON.parse(readFileSync(fixture("adapter/adapter_config.json"), "utf8"));
    writeFileSync(join(dir, "adapter_config.json"), JSON.stringify({ ...config, target_modules: ["seq.0"], r: 2 }));
    await saveSafetensors(join(dir, "adapter_model.safetensors"), { "base_model.model.seq.0.lora_A.weight": Tensor.zeros([2, 20]) });
    await expect(PeftModel.fromPretrained(new MLP(8), dir)).rejects.toThrow(/missing: base_model\.model\.seq\.0\.lora_B\.weight \[8, 2\]/);
    writeFileSync(join(dir, "adapter_config.json"), JSON.stringify({ ...config, target_modules: ["seq.0"], lora_bias: true }));
    expect(await codeOf(PeftModel.fromPretrained(new MLP(8), dir))).toBe("ERR_UNSUPPORTED");
    expect(await codeOf(PeftModel.fromPretrained(new MLP(8), join(tmp, "nowhere")))).toBe("ERR_CHECKPOINT");
    writeFileSync(join(dir, "adapter_config.json"), "{not json");
    expect(await codeOf(PeftModel.fromPretrained(new MLP(8), dir))).toBe("ERR_CHECKPOINT");
    writeFileSync(join(dir, "adapter_config.json"), JSON.stringify({ ...config, peft_type: "PREFIX_TUNING" }));
    expect(await codeOf(PeftModel.fromPretrained(new MLP(8), dir))).toBe("ERR_UNSUPPORTED");
  });
});

describe("base model loading", () => {
  it("loadModelWeights copies in place with a key prefix and checks keys and shapes first", async () => {
    const src = new MLP(8, 5);
    const path = join(tmp, "mlp.safetensors");
    const sd = src.stateDict();
    await saveSafetensors(path, Object.fromEntries(Object.entries(sd).map(([k, t]) => [`model.${k}`, t])));
    const dst: Module = new MLP(8, 9);
    const w = (dst as MLP).seq.at(0) as Linear;
    const obj = w.weight;
    loadModelWeights(dst, path, { prefix: "model." });
    expect(w.weight).toBe(obj);
    expect(w.weight.toArray()).toEqual(((src.seq.at(0) as Linear).weight).toArray());
    expect(() => loadModelWeights(new MLP(8), path)).toThrow(/missing: seq\.0\.weight/);
    expect(() => loadModelWeights(new MLP(9), path, { prefix: "model." })).toThrow(/shape \[8,20\] in the file but \[9,20\]/);
  });
});
