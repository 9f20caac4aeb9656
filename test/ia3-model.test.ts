// IA3 through getPeftModel: targets and feed-forward modules (PEFT's defaults and rules), adapter management,
// merging and unloading, parameter counts, PEFT's checkpoint files, and the CLI's merge and inspect.
import { afterAll, afterEach, beforeEach, describe, expect, it, vi, type MockInstance } from "vitest";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  IA3Config, IA3Layer, IA3Model, Linear, LoraConfig, ModulesToSaveWrapper, PeftError, PeftModel, Tensor, configFromPretrained, getPeftModel,
  getPeftModelStateDict, loadSafetensors, openSafetensors, saveSafetensors,
} from "../lib/index.js";
import { expectClose, expectError } from "./helpers/numeric.js";
import { values } from "./helpers/nn-reference.js";
import { root } from "./helpers/child.js";
import { Gpt2Like, Mixed } from "./helpers/ia3-models.js";

const tmp = mkdtempSync(join(tmpdir(), "node-peft-ia3-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let warn: MockInstance<typeof process.emitWarning>;
beforeEach(() => {
  warn = vi.spyOn(process, "emitWarning").mockImplementation(() => {});
  vi.spyOn(console, "log").mockImplementation(() => {});
});
afterEach(() => vi.restoreAllMocks());

const x = () => Tensor.fromArray(values(5 * 8, 3), [5, 8]);

/** Random vectors in every IA3 layer of the model (the identity would hide mistakes). */
function randomize(m: PeftModel, adapter = "default", seed = 1): void {
  for (const [, l] of m.namedModules())
    if (l instanceof IA3Layer && l.adapterNames.includes(adapter)) {
      const v = l.ia3Vector(adapter);
      v.copyFrom(Tensor.fromArray(values(v.numel, seed++), v.shape));
    }
}

const layerAt = (m: PeftModel, path: string) => m.baseModel.model.getSubmodule(path) as IA3Layer;

describe("getPeftModel with IA3Config", () => {
  it("defaults from modelType (gpt2: c_attn and mlp.c_proj, c_proj feed-forward); PEFT's parameter figures", () => {
    const m = getPeftModel(new Gpt2Like(), new IA3Config(), { modelType: "gpt2" });
    expect(m.baseModel).toBeInstanceOf(IA3Model);
    expect(m.peftType).toBe("IA3");
    expect(m.targetedModuleNames).toEqual(["attn.c_attn", "mlp.c_proj"]);
    expect(layerAt(m, "attn.c_attn").isFeedforward).toBe(false);
    expect(layerAt(m, "mlp.c_proj").isFeedforward).toBe(true);
    expect(layerAt(m, "attn.c_attn").ia3Vector("default").shape).toEqual([24, 1]);
    expect(layerAt(m, "mlp.c_proj").ia3Vector("default").shape).toEqual([1, 16]);
    expect(layerAt(m, "mlp.c_proj").fanInFanOut).toBe(true);
    // 24 + 16 trainable of 779 base + 40; only the vectors train.
    expect(m.printTrainableParameters()).toBe("trainable params: 40 || all params: 819 || trainable%: 4.8840");
    expect([...m.namedParameters()].filter(([, p]) => p.requiresGrad).map(([n]) => n)).toEqual([
      "base_model.model.attn.c_attn.ia3_l.default",
      "base_model.model.mlp.c_proj.ia3_l.default",
    ]);
    expect(m.peftConfig.default).toMatchObject({ targetModules: ["c_attn", "mlp.c_proj"], feedforwardModules: ["mlp.c_proj"] });
  });

  it("the ones init leaves the output unchanged; trained vectors give base(x ⊙ l) / base(x) ⊙ l", () => {
    const plain = new Gpt2Like();
    plain.eval();
    const want = plain.forward(x()).toFloat64Array();
    const m = getPeftModel(new Gpt2Like(), new IA3Config({ targetModules: ["c_attn", "c_proj"], feedforwardModules: ["c_proj"] }));
    m.eval();
    expect([...m.forward(x()).toFloat64Array()]).toEqual([...want]);
    randomize(m);
    const l1 = layerAt(m, "attn.c_attn").ia3Vector("default").toFloat64Array(), l2 = layerAt(m, "mlp.c_proj").ia3Vector("default").toFloat64Array();
    // The same model built from plain layers and elementwise products.
    const scale = (t: Tensor, l: Float64Array) => Tensor.fromArray(t.toFloat64Array().map((v, i) => v * l[i % l.length]), t.shape);
    let h = scale(plain.getSubmodule("attn.c_attn").forward(x()), l1);
    h = plain.getSubmodule("mlp.c_fc").forward(h);
    h = plain.getSubmodule("mlp.c_proj").forward(scale(h, l2));
    const ref = plain.getSubmodule("head").forward(h).toFloat64Array();
    expectClose(m.forward(x()).toFloat64Array(), ref, (i) => 1e-5 * (1 + Math.abs(ref[i])), "IA3 model");
  });

  it("PEFT's rules: feed-forward modules must be targets; both lists or a known model type are needed", () => {
    expectError(() => new IA3Config({ targetModules: ["c_attn"], feedforwardModules: ["c_fc"] }), PeftError, "ERR_CONFIG", /`feedforward_modules` should be a subset of `target_modules`/, /c_fc/);
    expectError(() => getPeftModel(new Gpt2Like(), new IA3Config()), PeftError, "ERR_CONFIG", /targetModules is not set/);
    expectError(() => getPeftModel(new Gpt2Like(), new IA3Config({ targetModules: ["c_attn"] })), PeftError, "ERR_CONFIG", /feedforwardModules is not set/);
    expectError(() => getPeftModel(new Gpt2Like(), new IA3Config({ targetModules: ["nothing"], feedforwardModules: [] })), PeftError, "ERR_TARGET_NOT_FOUND");
    // A regex target (the subset rule is not checked then, as in PEFT).
    const m = getPeftModel(new Gpt2Like(), new IA3Config({ targetModules: ".*c_(attn|fc)", feedforwardModules: ["c_fc"] }));
    expect(m.targetedModuleNames).toEqual(["attn.c_attn", "mlp.c_fc"]);
    expect(layerAt(m, "mlp.c_fc").isFeedforward).toBe(true);
  });

  it("add, set (vectors multiply), disable (exactly the base), delete", () => {
    const plain = new Gpt2Like();
    plain.eval();
    const base = [...plain.forward(x()).toFloat32Array()];
    const m = getPeftModel(new Gpt2Like(), new IA3Config({ targetModules: ["c_attn", "c_proj"], feedforwardModules: ["c_proj"] }));
    m.eval();
    randomize(m, "default", 1);
    m.addAdapter("b", new IA3Config({ targetModules: ["c_attn"], feedforwardModules: [] }));
    randomize(m, "b", 7);
    expect(layerAt(m, "attn.c_attn").ia3Vector("b").requiresGrad).toBe(false);
    expect(m.activeAdapters).toEqual(["default"]);
    const only = [...m.forward(x()).toFloat32Array()];
    m.setAdapter(["default", "b"]);
    expect(layerAt(m, "attn.c_attn").ia3Vector("b").requiresGrad).toBe(true);
    const both = m.forward(x()).toFloat64Array();
    // c_attn's two vectors multiply: the same as one adapter holding their product.
    const l = layerAt(m, "attn.c_attn");
    const prod = l.ia3Vector("default").toFloat64Array().map((v, i) => v * l.ia3Vector("b").toFloat64Array()[i]);
    l.updateLayer({ adapterName: "p" });
    l.ia3Vector("p").copyFrom(Tensor.fromArray(Array.from(prod), [24, 1]));
    const cp = layerAt(m, "mlp.c_proj");
    l.setAdapter("p");
    const viaProduct = m.forward(x()).toFloat64Array();
    l.deleteAdapter("p");
    l.setAdapter(["default", "b"]);
    expect(cp.activeAdapters).toEqual(["default", "b"]);
    expectClose(both, viaProduct, (i) => 1e-6 * (1 + Math.abs(both[i])), "product of vectors");
    {
      using _ = m.disableAdapter();
      expect([...m.forward(x()).toFloat32Array()]).toEqual(base);
    }
    expect([...m.forward(x()).toFloat32Array()]).not.toEqual(only);
    m.deleteAdapter("default");
    expect(m.activeAdapters).toEqual(["b"]);
    expect(cp.adapterNames).toEqual([]);
    expect(Object.keys(m.peftConfig)).toEqual(["b"]);
  });

  it("mergeAndUnload gives the adapter's outputs from plain layers; unload gives the base back exactly", () => {
    const plain = new Gpt2Like();
    plain.eval();
    const base = [...plain.forward(x()).toFloat32Array()];
    const make = () => {
      const m = getPeftModel(new Gpt2Like(), new IA3Config({ targetModules: ["c_attn", "c_proj", "head"], feedforwardModules: ["c_proj"] }));
      m.eval();
      randomize(m);
      return m;
    };
    const m = make();
    const want = m.forward(x()).toFloat64Array();
    const merged = m.mergeAndUnload();
    expect([...merged.namedModules()].some(([, l]) => l instanceof IA3Layer)).toBe(false);
    expect(merged.getSubmodule("head")).toBeInstanceOf(Linear);
    const got = merged.forward(x()).toFloat64Array();
    expectClose(got, want, (i) => 1e-5 * (1 + Math.abs(want[i])), "merged");
    expect([...make().unload().forward(x()).toFloat32Array()]).toEqual(base);
  });

  it("modulesToSave: a trainable copy of the head, saved under PEFT's keys", () => {
    const m = getPeftModel(new Gpt2Like(), new IA3Config({ targetModules: ["c_attn"], feedforwardModules: [], modulesToSave: ["head"] }));
    expect(m.baseModel.model.getSubmodule("head")).toBeInstanceOf(ModulesToSaveWrapper);
    expect(m.getNbTrainableParameters()[0]).toBe(24 + 27);
    expect(Object.keys(getPeftModelStateDict(m)).sort()).toEqual(["base_model.model.attn.c_attn.ia3_l", "base_model.model.head.bias", "base_model.model.head.weight"]);
  });

  it("addWeightedAdapter: Σ w·l per layer, frozen until set (PEFT's IA3Model.add_weighted_adapter)", () => {
    const m = getPeftModel(new Gpt2Like(), new IA3Config({ targetModules: ["c_attn"], feedforwardModules: [] }));
    m.addAdapter("b", new IA3Config({ targetModules: ["c_attn", "c_proj"], feedforwardModules: ["c_proj"] }));
    randomize(m, "default", 1);
    randomize(m, "b", 5);
    m.addWeightedAdapter(["default", "b"], [0.5, 2], "mix");
    const l = layerAt(m, "attn.c_attn"), cp = layerAt(m, "mlp.c_proj");
    const want = l.ia3Vector("default").toFloat64Array().map((v, i) => 0.5 * v + 2 * l.ia3Vector("b").toFloat64Array()[i]);
    expectClose(l.ia3Vector("mix").toFloat64Array(), want, (i) => 1e-6 * Math.abs(want[i]), "mix");
    expectClose(cp.ia3Vector("mix").toFloat64Array(), cp.ia3Vector("b").toFloat64Array().map((v) => 2 * v), () => 1e-6, "only b on c_proj");
    expect(l.ia3Vector("mix").requiresGrad).toBe(false);
    expect(m.peftConfig.mix).toMatchObject({ targetModules: ["c_attn", "c_proj"], feedforwardModules: ["c_proj"] });
    expectError(() => m.addWeightedAdapter(["default", "nope"], [1, 1], "x"), PeftError, "ERR_CONFIG", /Adapter nope does not exist/);
  });
});

describe("IA3 layers a model already holds", () => {
  it("an IA3Layer (or a subclass) put in a custom model gets each new adapter through updateLayer (PEFT's IA3 has no registerCustomModule)", () => {
    class MyIA3 extends IA3Layer {}
    const model = new Gpt2Like();
    model.setSubmodule("head", new MyIA3(model.getSubmodule("head") as Linear, { adapterName: "mine", isFeedforward: true }));
    const m = getPeftModel(model, new IA3Config({ targetModules: ["head", "c_attn"], feedforwardModules: [] }));
    const head = layerAt(m, "head");
    expect(head).toBeInstanceOf(MyIA3);
    expect(head.adapterNames).toEqual(["mine", "default"]);
    expect(head.isFeedforward).toBe(true); // the layer's own side, as PEFT keeps is_feedforward per layer
    expect(head.ia3Vector("default").shape).toEqual([1, 8]);
  });
});

describe("IA3 checkpoints in PEFT's format", () => {
  const IA3_KEYS = [
    "auto_mapping", "base_model_name_or_path", "exclude_modules", "fan_in_fan_out", "feedforward_modules", "inference_mode", "init_ia3_weights",
    "modules_to_save", "peft_type", "peft_version", "revision", "target_modules", "task_type",
  ];

  it("savePretrained: ia3_l keys without the adapter name, IA3's config keys; fromPretrained and loadAdapter restore the outputs", async () => {
    const m = getPeftModel(new Gpt2Like(), new IA3Config({ targetModules: ["c_attn", "mlp.c_proj"], feedforwardModules: ["mlp.c_proj"] }));
    m.eval();
    randomize(m);
    m.addAdapter("other", new IA3Config({ targetModules: ["head"], feedforwardModules: [] }));
    randomize(m, "other", 9);
    const want = [...m.forward(x()).toFloat32Array()];
    const dir = join(tmp, "saved");
    await m.savePretrained(dir);
    const cfg = JSON.parse(readFileSync(join(dir, "adapter_config.json"), "utf8"));
    expect(Object.keys(cfg)).toEqual(IA3_KEYS);
    expect(cfg).toMatchObject({ peft_type: "IA3", feedforward_modules: ["mlp.c_proj"], inference_mode: true, init_ia3_weights: true });
    {
      using f = openSafetensors(join(dir, "adapter_model.safetensors"));
      expect(f.keys().sort()).toEqual(["base_model.model.attn.c_attn.ia3_l", "base_model.model.mlp.c_proj.ia3_l"]);
      expect(f.info("base_model.model.attn.c_attn.ia3_l").shape).toEqual([24, 1]);
      expect(f.info("base_model.model.mlp.c_proj.ia3_l").shape).toEqual([1, 16]);
      expect(f.metadata()).toEqual({ format: "pt" });
    }
    expect(await configFromPretrained(dir)).toBeInstanceOf(IA3Config);
    const back = await PeftModel.fromPretrained(new Gpt2Like(), dir);
    expect(back.baseModel).toBeInstanceOf(IA3Model);
    expect(back.getNbTrainableParameters()[0]).toBe(0);
    await back.loadAdapter(join(dir, "other"), "other");
    expect(back.activeAdapters).toEqual(["default"]);
    expect(layerAt(back, "head").ia3Vector("other").requiresGrad).toBe(false);
    back.setAdapter(["default"]);
    m.setAdapter(["default"]);
    expect([...back.forward(x()).toFloat32Array()]).toEqual(want);
  });

  it("reads an adapter as PEFT writes it (config text and tensors by PEFT's key names)", async () => {
    const dir = join(tmp, "peft-written");
    mkdirSync(dir, { recursive: true });
    // What PEFT 0.19 saves for IA3Config(task_type="CAUSAL_LM") on GPT-2 (json.dumps(indent=2, sort_keys=True)).
    writeFileSync(join(dir, "adapter_config.json"), JSON.stringify({
      auto_mapping: null, base_model_name_or_path: "gpt2", exclude_modules: null, fan_in_fan_out: true, feedforward_modules: ["mlp.c_proj"],
      inference_mode: true, init_ia3_weights: true, modules_to_save: null, peft_type: "IA3", peft_version: "0.19.1", revision: null,
      target_modules: ["mlp.c_proj", "c_attn"], task_type: "CAUSAL_LM",
    }, null, 2));
    const l1 = values(24, 1), l2 = values(16, 2);
    await saveSafetensors(join(dir, "adapter_model.safetensors"), {
      "base_model.model.attn.c_attn.ia3_l": Tensor.fromArray(l1, [24, 1]),
      "base_model.model.mlp.c_proj.ia3_l": Tensor.fromArray(l2, [1, 16]),
    }, { format: "pt" });
    const m = await PeftModel.fromPretrained(new Gpt2Like(), dir);
    expect(m.targetedModuleNames.sort()).toEqual(["attn.c_attn", "mlp.c_proj"]);
    expect([...layerAt(m, "mlp.c_proj").ia3Vector("default").toFloat32Array()]).toEqual([...Float32Array.from(l2)]);
    expect((m.peftConfig.default as IA3Config).taskType).toBe("CAUSAL_LM");
  });

  it("a wrong ia3_l shape, a missing vector or a LoRA adapter is refused before the model changes", async () => {
    const dir = join(tmp, "bad-shape");
    const m = getPeftModel(new Gpt2Like(), new IA3Config({ targetModules: ["c_attn", "mlp.c_proj"], feedforwardModules: ["mlp.c_proj"] }));
    await m.savePretrained(dir);
    const file = join(dir, "adapter_model.safetensors");
    await saveSafetensors(file, { "base_model.model.attn.c_attn.ia3_l": Tensor.zeros([1, 24]), "base_model.model.mlp.c_proj.ia3_l": Tensor.zeros([1, 16]) }, { format: "pt" });
    const model = new Gpt2Like();
    await expect(PeftModel.fromPretrained(model, dir)).rejects.toMatchObject({ code: "ERR_CHECKPOINT", message: expect.stringMatching(/attn\.c_attn\.ia3_l has shape \[1, 24\] but attn\.c_attn needs \[24, 1\]/) });
    expect([...model.namedModules()].some(([, l]) => l instanceof IA3Layer)).toBe(false);
    await saveSafetensors(file, { "base_model.model.attn.c_attn.ia3_l": Tensor.zeros([24, 1]) }, { format: "pt" });
    await expect(PeftModel.fromPretrained(model, dir)).rejects.toMatchObject({ code: "ERR_CHECKPOINT", message: expect.stringMatching(/no base_model\.model\.mlp\.c_proj\.ia3_l/) });
    const lora = getPeftModel(new Gpt2Like(), new LoraConfig({ targetModules: ["head"] }));
    await lora.savePretrained(join(tmp, "lora"));
    const ia3 = getPeftModel(new Gpt2Like(), new IA3Config({ targetModules: ["c_attn"], feedforwardModules: [] }));
    await expect(ia3.loadAdapter(join(tmp, "lora"), "l")).rejects.toMatchObject({ code: "ERR_CONFIG", message: "Cannot combine adapters with different peft types. Found IA3 and LORA." });
    expect(Object.keys(ia3.peftConfig)).toEqual(["default"]);
  });
});

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, [join(root, "dist", "cli.js"), ...args], { encoding: "utf8", timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe("CLI with IA3 adapters", () => {
  it("merge scales the base checkpoint as mergeAndUnload does (Linear, Conv1D, Conv2d; input and output sides; biases); inspect lists it", async () => {
    const config = new IA3Config({ targetModules: ["lin", "lin_ff", "gpt", "gpt_ff", "conv", "conv_ff"], feedforwardModules: ["lin_ff", "gpt_ff", "conv_ff"] });
    const base = join(tmp, "mixed.safetensors");
    await saveSafetensors(base, new Mixed().stateDict(), { format: "pt" });
    const m = getPeftModel(new Mixed(), config);
    randomize(m);
    const dir = join(tmp, "mixed-adapter");
    await m.savePretrained(dir);
    const want = m.mergeAndUnload().stateDict();
    const out = join(tmp, "mixed-merged.safetensors");
    const r = cli("merge", "--base", base, "--adapter", dir, "--out", out);
    expect(r.stderr).not.toMatch(/Error/);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/9 merged/); // six weights and the three output-scaled biases
    const got = await loadSafetensors(out);
    expect(Object.keys(got).sort()).toEqual(Object.keys(want).sort());
    for (const [k, t] of Object.entries(want)) expectClose(got[k].toFloat64Array(), t.toFloat64Array(), () => 0, k);
    const ins = cli("inspect", dir);
    expect(ins.code).toBe(0);
    expect(ins.stdout).toMatch(/peft_type\s+IA3/);
    expect(ins.stdout).toMatch(/feedforward_modules\s+\["lin_ff","gpt_ff","conv_ff"\]/);
    expect(ins.stdout).toMatch(/base_model\.model\.conv\.ia3_l\s+F32\s+\[1, 4, 1, 1\]/);
  });

  it("merge refuses a vector whose shape fits neither the config nor the base tensor", async () => {
    const dir = join(tmp, "mixed-bad");
    const m = getPeftModel(new Mixed(), new IA3Config({ targetModules: ["lin"], feedforwardModules: [] }));
    await m.savePretrained(dir);
    await saveSafetensors(join(dir, "adapter_model.safetensors"), { "base_model.model.lin.ia3_l": Tensor.zeros([1, 5]) }, { format: "pt" });
    const r = cli("merge", "--base", join(tmp, "mixed.safetensors"), "--adapter", dir, "--out", join(tmp, "never.safetensors"));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/lin\.ia3_l has shape \[1,5\] but the config makes lin an output-scaled module/);
  });
});
