import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi, type MockInstance } from "vitest";
import { PeftError } from "../lib/errors.js";
import { pyFloatRepr } from "../lib/pyjson.js";
import { configToJSONString, PEFT_FORMAT_VERSION, camelToSnake, snakeToCamel, TASK_TYPES } from "../lib/tuners/config.js";
import { IA3Config } from "../lib/tuners/ia3/config.js";
import { LoraConfig } from "../lib/tuners/lora/config.js";
import { configFromJSON, configFromPretrained } from "../lib/tuners/peft-config.js";
import { FIXTURE_DIR as FIXTURE_ROOT } from "./helpers/fixtures.js";

// The reference adapter lives beside the project (../shared from the project root).
const FIXTURE_DIR = join(FIXTURE_ROOT, "adapter");
const FIXTURE_TEXT = readFileSync(join(FIXTURE_DIR, "adapter_config.json"), "utf8");
const fixture = () => JSON.parse(FIXTURE_TEXT) as Record<string, unknown>;

/** The keys PEFT 0.19.1 writes for IA3 (PeftConfigMixin + PeftConfig + IA3Config fields). */
const IA3_KEYS = [
  "auto_mapping", "base_model_name_or_path", "exclude_modules", "fan_in_fan_out", "feedforward_modules",
  "inference_mode", "init_ia3_weights", "modules_to_save", "peft_type", "peft_version", "revision",
  "target_modules", "task_type",
];

let warn: MockInstance<typeof process.emitWarning>;
beforeEach(() => {
  warn = vi.spyOn(process, "emitWarning").mockImplementation(() => {});
});
afterEach(() => {
  warn.mockRestore();
});
const warningsWithCode = (code: string) =>
  warn.mock.calls.filter((c) => (c[1] as { code?: string } | undefined)?.code === code).map((c) => String(c[0]));

/** Run f, expect a PeftError with this code whose message mentions every `mentions` string. */
function expectPeftError(f: () => unknown, code: string, ...mentions: string[]): void {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err, "expected an error").toBeInstanceOf(PeftError);
  expect((err as PeftError).code).toBe(code);
  for (const m of mentions) expect((err as Error).message).toContain(m);
}

function expectTypeError(f: () => unknown, ...mentions: string[]): void {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err, "expected an error").toBeInstanceOf(TypeError);
  expect((err as { code?: string }).code).toBe("ERR_INVALID_ARG_TYPE");
  for (const m of mentions) expect((err as Error).message).toContain(m);
}

describe("PEFT fixture", () => {
  it("round-trips to byte-identical text", () => {
    expect(configToJSONString(LoraConfig.fromJSON(fixture()))).toBe(FIXTURE_TEXT);
  });

  it("reads the values", async () => {
    const c = await LoraConfig.fromPretrained(FIXTURE_DIR);
    expect(c.r).toBe(8);
    expect(c.loraAlpha).toBe(16);
    expect(c.loraDropout).toBe(0.05);
    expect(c.targetModules).toEqual(["q_proj", "k_proj", "v_proj", "o_proj"]);
    expect(c.taskType).toBe("CAUSAL_LM");
    expect(c.inferenceMode).toBe(true);
    expect(c.peftVersion).toBe("0.19.1");
    expect(c.peftType).toBe("LORA");
    expect(warn).not.toHaveBeenCalled();
  });

  it("a default LoraConfig writes exactly PEFT's key set", () => {
    expect(Object.keys(new LoraConfig().toJSON())).toEqual(Object.keys(fixture()));
  });

  it("configFromPretrained dispatches on peft_type", async () => {
    expect(await configFromPretrained(FIXTURE_DIR)).toBeInstanceOf(LoraConfig);
  });
});

describe("defaults (PEFT's)", () => {
  it("LoraConfig", () => {
    const c = new LoraConfig();
    expect(c).toMatchObject({
      r: 8, loraAlpha: 8, loraDropout: 0, bias: "none", initLoraWeights: true, useRslora: false,
      fanInFanOut: false, targetModules: null, excludeModules: null, modulesToSave: null,
      layersToTransform: null, layersPattern: null, rankPattern: {}, alphaPattern: {},
      taskType: null, inferenceMode: false, peftVersion: PEFT_FORMAT_VERSION, customModules: null,
    });
    const j = c.toJSON();
    expect(j).toMatchObject({ peft_type: "LORA", loftq_config: {}, megatron_core: "megatron.core", qalora_group_size: 16, use_dora: false });
  });

  it("IA3Config", () => {
    const c = new IA3Config();
    expect(c).toMatchObject({ targetModules: null, feedforwardModules: null, fanInFanOut: false, initIa3Weights: true });
    expect(Object.keys(c.toJSON())).toEqual(IA3_KEYS);
    expect(c.toJSON()["peft_type"]).toBe("IA3");
  });
});

describe("JSON writing", () => {
  it("camelCase options become snake_case keys, sorted", () => {
    const c = new LoraConfig({ r: 16, loraAlpha: 32, targetModules: ["q_proj"], useRslora: true, taskType: "SEQ_CLS", modulesToSave: ["classifier"] });
    const j = c.toJSON();
    expect(j).toMatchObject({ r: 16, lora_alpha: 32, target_modules: ["q_proj"], use_rslora: true, task_type: "SEQ_CLS", modules_to_save: ["classifier"] });
    const keys = Object.keys(j);
    expect(keys).toEqual([...keys].sort());
  });

  it("writes Python's number forms: float fields keep .0, small floats use e-05", () => {
    expect(configToJSONString(new LoraConfig())).toContain('"lora_dropout": 0.0,');
    expect(configToJSONString(new LoraConfig({ loraDropout: 0.00001 }))).toContain('"lora_dropout": 1e-05,');
    const s = configToJSONString(new LoraConfig({ loraAlpha: 16, alphaPattern: { q_proj: 0.5 }, rankPattern: { q_proj: 4 } }));
    expect(s).toContain('"lora_alpha": 16,');
    expect(s).toContain('"alpha_pattern": {\n    "q_proj": 0.5\n  },');
    expect(s).toContain('"rank_pattern": {\n    "q_proj": 4\n  },');
  });

  it("pyFloatRepr matches Python's repr(float)", () => {
    const cases: [number, string][] = [
      [0, "0.0"], [-0, "-0.0"], [1, "1.0"], [0.05, "0.05"], [0.1, "0.1"], [1e-4, "0.0001"], [1e-5, "1e-05"],
      [1.5e-7, "1.5e-07"], [123456789012345.6, "123456789012345.6"], [1e15, "1000000000000000.0"],
      [1e16, "1e+16"], [1.5e16, "1.5e+16"], [1e100, "1e+100"], [-2.5, "-2.5"], [1 / 3, "0.3333333333333333"],
    ];
    for (const [v, s] of cases) expect(pyFloatRepr(v), String(v)).toBe(s);
  });

  it("escapes non-ASCII like ensure_ascii and sorts integer-like keys as strings", () => {
    const c = new LoraConfig({ baseModelNameOrPath: "modèle/日本", rankPattern: { "10": 4, "9": 2 } });
    const s = configToJSONString(c);
    expect(s).toContain('"base_model_name_or_path": "mod\\u00e8le/\\u65e5\\u672c",');
    expect(s.indexOf('"10": 4')).toBeLessThan(s.indexOf('"9": 2'));
    expect(JSON.parse(s).base_model_name_or_path).toBe("modèle/日本");
  });

  it("ends with one newline, like the reference file", () => {
    expect(configToJSONString(new IA3Config())).toMatch(/\n}\n$/);
  });

  it("toJSON hands out copies", () => {
    const c = new LoraConfig({ targetModules: ["q_proj"] });
    (c.toJSON()["target_modules"] as string[]).push("x");
    expect(c.targetModules).toEqual(["q_proj"]);
  });

  it("drops duplicate list entries (PEFT stores them as sets)", () => {
    expect(new LoraConfig({ targetModules: ["q_proj", "v_proj", "q_proj"] }).targetModules).toEqual(["q_proj", "v_proj"]);
  });
});

describe("round trips", () => {
  it("LoraConfig: options -> JSON -> config -> same JSON text", () => {
    const c = new LoraConfig({
      r: 4, loraAlpha: 12.5, loraDropout: 0.1, targetModules: ["q_proj", "v_proj"], excludeModules: String.raw`.*lm_head`,
      layersToTransform: [0, 2], layersPattern: "layers", bias: "lora_only", initLoraWeights: "gaussian", fanInFanOut: true,
      rankPattern: { "layers.0.q_proj": 2 }, alphaPattern: { v_proj: 3 }, modulesToSave: ["score"], taskType: "TOKEN_CLS",
      inferenceMode: true, baseModelNameOrPath: "org/model", revision: "main", autoMapping: { base_model_class: "X" },
    });
    const text = configToJSONString(c);
    const back = LoraConfig.fromJSON(JSON.parse(text));
    expect(configToJSONString(back)).toBe(text);
    expect(back).toMatchObject({ r: 4, loraAlpha: 12.5, layersToTransform: [0, 2], initLoraWeights: "gaussian", bias: "lora_only" });
  });

  it("IA3Config round trip", () => {
    const c = new IA3Config({
      targetModules: ["k_proj", "v_proj", "down_proj"], feedforwardModules: ["down_proj"], excludeModules: ["lm_head"],
      modulesToSave: ["classifier"], fanInFanOut: true, initIa3Weights: false, taskType: "SEQ_2_SEQ_LM",
    });
    const text = configToJSONString(c);
    expect(Object.keys(JSON.parse(text))).toEqual(IA3_KEYS);
    const back = IA3Config.fromJSON(JSON.parse(text));
    expect(configToJSONString(back)).toBe(text);
    expect(back.feedforwardModules).toEqual(["down_proj"]);
  });

  it("configFromJSON dispatches on peft_type", () => {
    expect(configFromJSON(new IA3Config().toJSON())).toBeInstanceOf(IA3Config);
    expect(configFromJSON(fixture())).toBeInstanceOf(LoraConfig);
    expectPeftError(() => configFromJSON({ peft_type: "BOFT" }), "ERR_UNSUPPORTED", "BOFT");
    expectPeftError(() => configFromJSON({ r: 8 }), "ERR_CONFIG", "peft_type");
    expectTypeError(() => configFromJSON({ peft_type: 3 }), "peft_type");
  });

  it("fromJSON of the other method's config is an error", () => {
    expectPeftError(() => LoraConfig.fromJSON(new IA3Config().toJSON()), "ERR_CONFIG", "peft_type", "LORA");
    expectPeftError(() => IA3Config.fromJSON(fixture()), "ERR_CONFIG", "peft_type", "IA3");
  });

  it("missing keys take PEFT's defaults", () => {
    const c = LoraConfig.fromJSON({ peft_type: "LORA", target_modules: ["q"] });
    expect(c).toMatchObject({ r: 8, loraAlpha: 8, targetModules: ["q"] });
  });
});

describe("validation", () => {
  const lora = (o: object) => () => new LoraConfig(o as never);
  const fromJSON = (o: object) => () => LoraConfig.fromJSON({ ...fixture(), ...o });

  it("r is a positive integer", () => {
    expectPeftError(lora({ r: 0 }), "ERR_CONFIG", "r must be a positive integer");
    expectPeftError(lora({ r: -4 }), "ERR_CONFIG", "r ");
    expectPeftError(lora({ r: 2.5 }), "ERR_CONFIG", "r must be an integer");
    expectTypeError(lora({ r: "8" }), "r must be an integer", 'string "8"');
  });

  it("lora_alpha is a finite number", () => {
    expectPeftError(lora({ loraAlpha: Infinity }), "ERR_CONFIG", "loraAlpha");
    expectPeftError(lora({ loraAlpha: NaN }), "ERR_CONFIG", "loraAlpha");
    expectTypeError(fromJSON({ lora_alpha: "16" }), "lora_alpha");
  });

  it("lora_dropout is in [0, 1)", () => {
    expectPeftError(lora({ loraDropout: 1 }), "ERR_CONFIG", "loraDropout must be in [0, 1)");
    expectPeftError(lora({ loraDropout: -0.1 }), "ERR_CONFIG", "loraDropout");
    expectTypeError(fromJSON({ lora_dropout: null }), "lora_dropout");
    expect(new LoraConfig({ loraDropout: 0.999 }).loraDropout).toBe(0.999);
  });

  it("bias, init_lora_weights, booleans", () => {
    expectPeftError(lora({ bias: "some" }), "ERR_CONFIG", "bias", '"none", "all", "lora_only"');
    expectTypeError(lora({ bias: true }), "bias");
    expectTypeError(lora({ initLoraWeights: 1 }), "initLoraWeights");
    expectTypeError(lora({ useRslora: "yes" }), "useRslora");
    expectTypeError(fromJSON({ fan_in_fan_out: 0 }), "fan_in_fan_out");
    expectTypeError(fromJSON({ inference_mode: "true" }), "inference_mode");
  });

  it("task_type is one of PEFT's", () => {
    for (const t of TASK_TYPES) expect(new LoraConfig({ taskType: t }).taskType).toBe(t);
    expectPeftError(lora({ taskType: "CAUSAL" }), "ERR_CONFIG", "Invalid task type: 'CAUSAL'", "CAUSAL_LM");
    expect(new LoraConfig({ taskType: null }).taskType).toBeNull();
  });

  it("module lists and regexes", () => {
    expectTypeError(lora({ targetModules: 5 }), "targetModules");
    expectTypeError(lora({ targetModules: ["q", 1] }), "targetModules[1]");
    expectTypeError(fromJSON({ target_modules: { q: 1 } }), "target_modules");
    expectPeftError(lora({ targetModules: "q_proj(" }), "ERR_CONFIG", "targetModules", "invalid regular expression");
    expectPeftError(fromJSON({ exclude_modules: "[" }), "ERR_CONFIG", "exclude_modules");
    expectTypeError(lora({ modulesToSave: "score" }), "modulesToSave");
    expect(new LoraConfig({ targetModules: new Set(["a", "b"]) as never }).targetModules).toEqual(["a", "b"]);
  });

  it("layers_to_transform / layers_pattern rules of PEFT's __post_init__", () => {
    expectPeftError(lora({ targetModules: ".*q", layersToTransform: [0] }), "ERR_CONFIG", "`layers_to_transform` cannot be used when `target_modules` is a str.");
    expectPeftError(lora({ targetModules: ".*q", layersPattern: "layers" }), "ERR_CONFIG", "`layers_pattern` cannot be used when `target_modules` is a str.");
    expectPeftError(lora({ targetModules: "all-linear", layersToTransform: 1 }), "ERR_CONFIG", "layers_to_transform");
    expectPeftError(lora({ targetModules: ["q"], layersPattern: "layers" }), "ERR_CONFIG", "`layers_to_transform` must also be specified");
    expectPeftError(lora({ targetModules: ["q"], layersPattern: "layers", layersToTransform: 0 }), "ERR_CONFIG", "pass [0]");
    expectPeftError(lora({ targetModules: ["q"], layersPattern: ["h"], layersToTransform: [] }), "ERR_CONFIG", "layers_to_transform");
    expectPeftError(lora({ layersToTransform: -1 }), "ERR_CONFIG", "layersToTransform");
    expectPeftError(lora({ layersToTransform: [0, 1.5] }), "ERR_CONFIG", "layersToTransform[1]");
    expectTypeError(lora({ layersToTransform: "0" }), "layersToTransform");
    expectTypeError(lora({ layersPattern: 3 }), "layersPattern");
    // accepted
    expect(new LoraConfig({ targetModules: ["q"], layersPattern: "layers", layersToTransform: [0] }).layersPattern).toBe("layers");
    expect(new LoraConfig({ targetModules: ["q"], layersPattern: [], layersToTransform: null }).layersPattern).toEqual([]);
    expect(new LoraConfig({ targetModules: ["q"], layersToTransform: 0 }).layersToTransform).toBe(0);
  });

  it("rank_pattern / alpha_pattern values", () => {
    expectPeftError(lora({ rankPattern: { q_proj: 0 } }), "ERR_CONFIG", 'rankPattern["q_proj"]');
    expectPeftError(lora({ rankPattern: { q_proj: 1.5 } }), "ERR_CONFIG", 'rankPattern["q_proj"]');
    expectTypeError(lora({ rankPattern: { q_proj: "4" } }), 'rankPattern["q_proj"]');
    expectPeftError(lora({ alphaPattern: { q_proj: Infinity } }), "ERR_CONFIG", 'alphaPattern["q_proj"]');
    expectTypeError(fromJSON({ rank_pattern: [1] }), "rank_pattern");
    expectPeftError(fromJSON({ alpha_pattern: { "(": 2 } }), "ERR_CONFIG", "alpha_pattern key");
    expect(LoraConfig.fromJSON({ ...fixture(), rank_pattern: null }).rankPattern).toEqual({});
  });

  it("IA3: feedforward_modules must be a subset of target_modules", () => {
    expectPeftError(() => new IA3Config({ targetModules: ["k", "v"], feedforwardModules: ["down"] }), "ERR_CONFIG", "subset", "down");
    expect(new IA3Config({ targetModules: String.raw`.*\.(k|down)`, feedforwardModules: ["down"] }).feedforwardModules).toEqual(["down"]);
    expectTypeError(() => new IA3Config({ initIa3Weights: "no" as never }), "initIa3Weights");
  });

  it("a snake_case option name in the constructor is pointed at its camelCase form", () => {
    expectPeftError(lora({ lora_alpha: 16 }), "ERR_CONFIG", '"lora_alpha"', '"loraAlpha"');
  });

  it("non-objects are rejected", () => {
    expectTypeError(() => new LoraConfig(null as never), "LoraConfig");
    expectTypeError(() => LoraConfig.fromJSON([] as never), "LoraConfig");
  });
});

describe("known PEFT keys node-peft does not implement", () => {
  const NON_DEFAULT: Record<string, unknown> = {
    lora_bias: true,
    use_qalora: true,
    ensure_weight_tying: true,
    layer_replication: [[0, 4], [2, 5]],
    trainable_token_indices: [0, 1],
    target_parameters: ["experts.gate_up_proj"],
    alora_invocation_tokens: [1, 2, 3],
    megatron_config: { tensor_model_parallel_size: 2 },
    loftq_config: { loftq_bits: 4, loftq_iter: 1 },
    eva_config: { rho: 2.0 },
    corda_config: { corda_method: "ipm" },
    lora_ga_config: { direction: "ArB2r" },
    use_bdlora: { nblocks: 2 },
    arrow_config: { top_k: 3 },
  };

  it.each(Object.entries(NON_DEFAULT))("%s set to a non-default value throws ERR_UNSUPPORTED naming it", (key, value) => {
    expectPeftError(() => LoraConfig.fromJSON({ ...fixture(), [key]: value }), "ERR_UNSUPPORTED", key);
    expectPeftError(() => new LoraConfig({ [snakeToCamel(key)]: value } as never), "ERR_UNSUPPORTED", snakeToCamel(key));
  });

  it("default values are accepted silently and written back as read", () => {
    const c = LoraConfig.fromJSON({ ...fixture(), loftq_config: null, layer_replication: [], use_dora: false });
    expect(warn).not.toHaveBeenCalled();
    expect(c.toJSON()).toMatchObject({ loftq_config: null, layer_replication: [], use_dora: false });
    expect(new LoraConfig({ useDora: false, loftqConfig: {} }).toJSON()).toMatchObject({ use_dora: false, loftq_config: {} });
  });

  it("target_parameters as a string is a type error (as in PEFT)", () => {
    expectTypeError(() => LoraConfig.fromJSON({ ...fixture(), target_parameters: "experts" }), "target_parameters");
  });

  it.each(["pissa", "pissa_niter_4", "olora", "loftq", "eva", "corda", "orthogonal", "lora_ga", "something"])(
    "init_lora_weights = %s throws ERR_UNSUPPORTED",
    (v) => {
      expectPeftError(() => LoraConfig.fromJSON({ ...fixture(), init_lora_weights: v }), "ERR_UNSUPPORTED", "init_lora_weights", v);
    },
  );

  it("init_lora_weights true, false and gaussian are supported", () => {
    for (const v of [true, false, "gaussian"] as const) expect(new LoraConfig({ initLoraWeights: v }).initLoraWeights).toBe(v);
  });
});

describe("unknown keys", () => {
  it("are kept, written back and warned about once per key", () => {
    const a = LoraConfig.fromJSON({ ...fixture(), future_option: { x: 1 }, another_new_key: 0.5 });
    const b = LoraConfig.fromJSON({ ...fixture(), future_option: { x: 2 } });
    const w = warningsWithCode("PEFT_UNKNOWN_CONFIG_KEY");
    expect(w).toHaveLength(2);
    expect(w.filter((m) => m.includes('"future_option"'))).toHaveLength(1);
    expect(w.filter((m) => m.includes('"another_new_key"'))).toHaveLength(1);
    expect(a.extraKeys).toEqual({ future_option: { x: 1 }, another_new_key: 0.5 });
    expect(b.toJSON()["future_option"]).toEqual({ x: 2 });
    expect(LoraConfig.fromJSON(JSON.parse(configToJSONString(a))).toJSON()).toEqual(a.toJSON());
  });

  it("unknown camelCase options are kept under their snake_case name", () => {
    const c = new IA3Config({ someFutureFlag: true } as never);
    expect(c.toJSON()["some_future_flag"]).toBe(true);
    expect(warningsWithCode("PEFT_UNKNOWN_CONFIG_KEY")).toHaveLength(1);
  });

  it("runtime_config is dropped, as PEFT does", () => {
    const c = LoraConfig.fromJSON({ ...fixture(), runtime_config: { ephemeral_gpu_offload: false } });
    expect("runtime_config" in c.toJSON()).toBe(false);
  });
});

describe("LoraConfig helpers", () => {
  it("rankFor / alphaFor follow rank_pattern / alpha_pattern", () => {
    const c = new LoraConfig({ r: 8, loraAlpha: 16, rankPattern: { "layers.0.self_attn.q_proj": 2, v_proj: 4 }, alphaPattern: { v_proj: 32 } });
    expect(c.rankFor("model.layers.0.self_attn.q_proj")).toBe(2);
    expect(c.rankFor("model.layers.1.self_attn.q_proj")).toBe(8);
    expect(c.rankFor("model.layers.1.self_attn.v_proj")).toBe(4);
    expect(c.alphaFor("model.layers.1.self_attn.v_proj")).toBe(32);
    expect(c.alphaFor("model.layers.1.self_attn.q_proj")).toBe(16);
  });

  it("registerCustomModule stores and merges the mapping, never serialized", () => {
    class Lstm {}
    class LoraLstm {}
    class Gru {}
    class LoraGru {}
    const c = new LoraConfig({ targetModules: ["lstm"] });
    c.registerCustomModule(new Map([[Lstm, LoraLstm]]));
    c.registerCustomModule(new Map([[Gru, LoraGru]]));
    expect(c.customModules?.get(Lstm)).toBe(LoraLstm);
    expect(c.customModules?.get(Gru)).toBe(LoraGru);
    expect(Object.keys(c.toJSON())).toEqual(Object.keys(fixture()));
    expectTypeError(() => c.registerCustomModule({} as never), "Map");
    expectTypeError(() => c.registerCustomModule(new Map([["x", LoraGru]]) as never), "constructors");
  });
});

describe("fromPretrained errors", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "node-peft-config-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("missing file", async () => {
    await expect(LoraConfig.fromPretrained(join(dir, "nope"))).rejects.toMatchObject({ code: "ERR_CONFIG", message: expect.stringContaining("adapter_config.json") });
  });

  it("invalid JSON and non-object JSON", async () => {
    await writeFile(join(dir, "adapter_config.json"), "{ not json");
    await expect(LoraConfig.fromPretrained(dir)).rejects.toMatchObject({ code: "ERR_CONFIG", message: expect.stringContaining("not valid JSON") });
    await writeFile(join(dir, "adapter_config.json"), "[1, 2]");
    await expect(IA3Config.fromPretrained(dir)).rejects.toMatchObject({ code: "ERR_CONFIG" });
  });

  it("reads what configToJSONString wrote", async () => {
    const c = new IA3Config({ targetModules: ["k", "down"], feedforwardModules: ["down"] });
    await writeFile(join(dir, "adapter_config.json"), configToJSONString(c));
    const back = await configFromPretrained(dir);
    expect(back).toBeInstanceOf(IA3Config);
    expect(configToJSONString(back)).toBe(configToJSONString(c));
  });
});

describe("key names", () => {
  it("snake <-> camel", () => {
    for (const k of Object.keys(fixture())) expect(camelToSnake(snakeToCamel(k))).toBe(k);
    expect(snakeToCamel("lora_alpha")).toBe("loraAlpha");
    expect(camelToSnake("initIa3Weights")).toBe("init_ia3_weights");
  });
});

describe("copying", () => {
  it("a spread config is a valid options object", () => {
    const base = new LoraConfig({ r: 4, targetModules: ["q_proj"], taskType: "CAUSAL_LM" });
    base.registerCustomModule(new Map([[class A {}, class B {}]]));
    const c = new LoraConfig({ ...base, r: 16 });
    expect(c).toMatchObject({ r: 16, targetModules: ["q_proj"], taskType: "CAUSAL_LM" });
    expect(c.customModules).toBeNull();
    expect(warn).not.toHaveBeenCalled();
    expect(Object.keys(c.toJSON())).toEqual(Object.keys(fixture()));
  });
});
