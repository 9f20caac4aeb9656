import { describe, expect, it } from "vitest";
import { PeftError } from "../lib/errors.js";
import {
  ADALORA_TARGET_MODULES,
  IA3_FEEDFORWARD_MODULES,
  IA3_TARGET_MODULES,
  LORA_TARGET_MODULES,
  defaultFeedforwardModules,
  defaultTargetModules,
} from "../lib/mappings.js";
import { IA3Config } from "../lib/tuners/ia3/config.js";
import { LoraConfig } from "../lib/tuners/lora/config.js";

// Model types of the seed document's tables (PEFT's older constants); every one must still be there.
const SEED_LORA = [
  "t5", "mt5", "bart", "gpt2", "bloom", "blip-2", "opt", "gptj", "gpt_neox", "gpt_neo", "bert", "roberta",
  "xlm-roberta", "electra", "deberta-v2", "deberta", "layoutlm", "llama", "chatglm", "gpt_bigcode", "mpt",
  "RefinedWebModel", "RefinedWeb", "falcon", "btlm",
];
const SEED_IA3 = [
  "t5", "mt5", "gpt2", "bloom", "roberta", "opt", "gptj", "gpt_neox", "gpt_neo", "bart", "gpt_bigcode", "llama",
  "bert", "deberta-v2", "deberta", "RefinedWebModel", "RefinedWeb", "falcon",
];
const SEED_ADALORA = [
  "t5", "mt5", "bart", "gpt2", "bloom", "opt", "gptj", "gpt_neox", "gpt_neo", "llama", "bert", "roberta",
  "deberta-v2", "gpt_bigcode", "deberta",
];
// Current decoder families the package is used with.
const CURRENT = ["qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "mistral", "mixtral", "llama"];

function codeOf(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(PeftError);
    return (e as PeftError).code;
  }
  return undefined;
}

describe("tables", () => {
  it("cover every model type of the seed tables", () => {
    for (const t of SEED_LORA) expect(LORA_TARGET_MODULES, t).toHaveProperty([t]);
    for (const t of SEED_IA3) {
      expect(IA3_TARGET_MODULES, t).toHaveProperty([t]);
      expect(IA3_FEEDFORWARD_MODULES, t).toHaveProperty([t]);
    }
    for (const t of SEED_ADALORA) expect(ADALORA_TARGET_MODULES, t).toHaveProperty([t]);
  });

  it("cover current model families for LoRA, IA3 and AdaLoRA", () => {
    for (const t of CURRENT) {
      expect(defaultTargetModules("LORA", t), t).toBeTruthy();
      expect(defaultTargetModules("IA3", t), t).toBeTruthy();
      expect(defaultFeedforwardModules(t), t).toBeTruthy();
      // PEFT's AdaLoRA table has no mistral/mixtral entries; parity keeps it that way.
      if (t === "mistral" || t === "mixtral") expect(codeOf(() => defaultTargetModules("ADALORA", t))).toBe("ERR_CONFIG");
      else expect(defaultTargetModules("ADALORA", t), t).toBeTruthy();
    }
  });

  it("hold PEFT's current values", () => {
    expect(defaultTargetModules("LORA", "llama")).toEqual(["q_proj", "v_proj"]);
    expect(defaultTargetModules("LORA", "qwen3")).toEqual(["q_proj", "v_proj"]);
    expect(defaultTargetModules("LORA", "gpt2")).toEqual(["c_attn"]);
    expect(defaultTargetModules("LORA", "phi")).toEqual(["q_proj", "v_proj", "fc1", "fc2"]);
    expect(defaultTargetModules("LORA", "gemma4")).toBe(String.raw`.*language_model\..*\.(q_proj|v_proj)`);
    expect(defaultTargetModules("IA3", "mixtral")).toEqual(["k_proj", "v_proj", "w2"]);
    expect(defaultFeedforwardModules("mixtral")).toEqual(["w2"]);
    // newer than the seed: falcon's IA3 defaults gained dense_4h_to_h, which is also the feed-forward one
    expect(defaultTargetModules("IA3", "RefinedWeb")).toEqual(["query_key_value", "dense_4h_to_h"]);
    expect(defaultFeedforwardModules("RefinedWeb")).toEqual(["dense_4h_to_h"]);
    expect(defaultFeedforwardModules("mt5")).toEqual([]);
    expect(defaultTargetModules("ADALORA", "roberta")).toEqual(["query", "key", "value", "dense"]);
  });

  it("IA3 feed-forward modules are a subset of the IA3 targets for every model type", () => {
    for (const [t, ff] of Object.entries(IA3_FEEDFORWARD_MODULES)) {
      const targets = IA3_TARGET_MODULES[t];
      expect(Array.isArray(targets), t).toBe(true);
      for (const m of ff as readonly string[]) expect(targets, `${t}: ${m}`).toContain(m);
      // and IA3Config accepts them together
      expect(() => new IA3Config({ targetModules: [...(targets as string[])], feedforwardModules: [...(ff as string[])] })).not.toThrow();
    }
  });

  it("defaults are valid LoraConfig targets", () => {
    for (const t of Object.keys(LORA_TARGET_MODULES)) {
      expect(() => new LoraConfig({ targetModules: defaultTargetModules("LORA", t) })).not.toThrow();
    }
  });

  it("are frozen, and lookups return fresh arrays", () => {
    expect(Object.isFrozen(LORA_TARGET_MODULES)).toBe(true);
    expect(Object.isFrozen(LORA_TARGET_MODULES["llama"])).toBe(true);
    const a = defaultTargetModules("LORA", "llama") as string[];
    a.push("o_proj");
    expect(defaultTargetModules("LORA", "llama")).toEqual(["q_proj", "v_proj"]);
  });
});

describe("errors", () => {
  it("no model type: ERR_CONFIG asking for targetModules", () => {
    expect(codeOf(() => defaultTargetModules("LORA", undefined))).toBe("ERR_CONFIG");
    expect(() => defaultTargetModules("LORA", null)).toThrow(/targetModules is not set and no modelType was given/);
    expect(() => defaultFeedforwardModules("")).toThrow(/feedforwardModules is not set/);
  });

  it("unknown model type: ERR_CONFIG naming it", () => {
    expect(codeOf(() => defaultTargetModules("IA3", "my_custom_net"))).toBe("ERR_CONFIG");
    expect(() => defaultTargetModules("IA3", "my_custom_net")).toThrow(/model type "my_custom_net" has no IA3 defaults; please specify targetModules/);
    expect(() => defaultTargetModules("LORA", "constructor")).toThrow(/has no LORA defaults/);
  });

  it("unknown method: ERR_CONFIG", () => {
    expect(codeOf(() => defaultTargetModules("VERA", "llama"))).toBe("ERR_CONFIG");
  });
});
