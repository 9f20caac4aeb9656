// Default target modules per transformers model type, used when a config leaves targetModules unset.
// The tables are PEFT's (src/peft/utils/constants.py, TRANSFORMERS_MODELS_TO_*_MAPPING) so a config
// without targetModules adapts the same modules as in Python. One addition is marked below.

import { describe, peftError, shownValue, typeError } from "./errors.js";

/** A list of names, or (for a few model types) one full-match regex. */
export type TargetSpec = readonly string[] | string;
type Table = Readonly<Record<string, TargetSpec>>;

// Gemma 4 checkpoints hold a vision tower too; PEFT limits its defaults to the language model.
const GEMMA4_QV = String.raw`.*language_model\..*\.(q_proj|v_proj)`;

// Not in PEFT: transformers' Phi-3 fuses q/k/v into one `qkv_proj` (and gate/up into `gate_up_proj`),
// so none of PEFT's entries fit it; these are the equivalents of the llama defaults.
const PHI3_LORA = ["qkv_proj"];

export const LORA_TARGET_MODULES: Table = freeze({
  t5: ["q", "v"],
  mt5: ["q", "v"],
  bart: ["q_proj", "v_proj"],
  gpt2: ["c_attn"],
  bloom: ["query_key_value"],
  "blip-2": ["q", "v", "q_proj", "v_proj"],
  opt: ["q_proj", "v_proj"],
  gptj: ["q_proj", "v_proj"],
  gpt_neox: ["query_key_value"],
  gpt_neo: ["q_proj", "v_proj"],
  bert: ["query", "value"],
  roberta: ["query", "value"],
  "xlm-roberta": ["query", "value"],
  electra: ["query", "value"],
  "deberta-v2": ["query_proj", "value_proj"],
  deberta: ["in_proj"],
  layoutlm: ["query", "value"],
  llama: ["q_proj", "v_proj"],
  llama4: ["q_proj", "v_proj"],
  chatglm: ["query_key_value"],
  gpt_bigcode: ["c_attn"],
  mpt: ["Wqkv"],
  RefinedWebModel: ["query_key_value"],
  RefinedWeb: ["query_key_value"],
  falcon: ["query_key_value"],
  btlm: ["c_proj", "c_attn"],
  codegen: ["qkv_proj"],
  mistral: ["q_proj", "v_proj"],
  mixtral: ["q_proj", "v_proj"],
  stablelm: ["q_proj", "v_proj"],
  phi: ["q_proj", "v_proj", "fc1", "fc2"],
  phi3: PHI3_LORA,
  gemma: ["q_proj", "v_proj"],
  gemma2: ["q_proj", "v_proj"],
  gemma3_text: ["q_proj", "v_proj"],
  gemma4: GEMMA4_QV,
  qwen2: ["q_proj", "v_proj"],
  qwen3: ["q_proj", "v_proj"],
  nemotron_h: ["q_proj", "k_proj", "v_proj", "o_proj"],
  rwkv: ["key", "value", "receptance", "output"],
  rwkv7: ["r_proj", "k_proj", "v_proj", "o_proj", "key", "value"],
});

export const IA3_TARGET_MODULES: Table = freeze({
  t5: ["k", "v", "wo"],
  mt5: ["k", "v", "wi_1"],
  gpt2: ["c_attn", "mlp.c_proj"],
  bloom: ["query_key_value", "mlp.dense_4h_to_h"],
  roberta: ["key", "value", "output.dense"],
  opt: ["q_proj", "k_proj", "fc2"],
  gptj: ["q_proj", "v_proj", "fc_out"],
  gpt_neox: ["query_key_value", "dense_4h_to_h"],
  gpt_neo: ["q_proj", "v_proj", "c_proj"],
  bart: ["q_proj", "v_proj", "fc2"],
  gpt_bigcode: ["c_attn", "mlp.c_proj"],
  llama: ["k_proj", "v_proj", "down_proj"],
  llama4: ["q_proj", "v_proj", "down_proj"],
  mistral: ["k_proj", "v_proj", "down_proj"],
  mixtral: ["k_proj", "v_proj", "w2"],
  bert: ["key", "value", "output.dense"],
  "deberta-v2": ["key_proj", "value_proj", "output.dense"],
  deberta: ["in_proj", "output.dense"],
  RefinedWebModel: ["query_key_value", "dense_4h_to_h"],
  RefinedWeb: ["query_key_value", "dense_4h_to_h"],
  falcon: ["query_key_value", "dense_4h_to_h"],
  phi: ["q_proj", "v_proj", "fc2"],
  phi3: ["qkv_proj", "down_proj"],
  gemma: ["q_proj", "v_proj", "down_proj"],
  gemma2: ["q_proj", "v_proj", "down_proj"],
  gemma3_text: ["q_proj", "v_proj", "down_proj"],
  qwen2: ["q_proj", "v_proj", "down_proj"],
  qwen3: ["q_proj", "v_proj", "down_proj"],
});

/** The IA3 targets scaled on their input (a subset of IA3_TARGET_MODULES for every model type). */
export const IA3_FEEDFORWARD_MODULES: Table = freeze({
  t5: ["wo"],
  mt5: [],
  gpt2: ["mlp.c_proj"],
  bloom: ["mlp.dense_4h_to_h"],
  roberta: ["output.dense"],
  opt: ["fc2"],
  gptj: ["fc_out"],
  gpt_neox: ["dense_4h_to_h"],
  gpt_neo: ["c_proj"],
  bart: ["fc2"],
  gpt_bigcode: ["mlp.c_proj"],
  llama: ["down_proj"],
  llama4: ["down_proj"],
  mistral: ["down_proj"],
  mixtral: ["w2"],
  bert: ["output.dense"],
  "deberta-v2": ["output.dense"],
  deberta: ["output.dense"],
  RefinedWeb: ["dense_4h_to_h"],
  RefinedWebModel: ["dense_4h_to_h"],
  falcon: ["dense_4h_to_h"],
  phi: ["fc2"],
  phi3: ["down_proj"],
  gemma: ["down_proj"],
  gemma2: ["down_proj"],
  gemma3_text: ["down_proj"],
  qwen2: ["down_proj"],
  qwen3: ["down_proj"],
});

export const ADALORA_TARGET_MODULES: Table = freeze({
  t5: ["q", "k", "v", "o", "wi", "wo"],
  mt5: ["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
  bart: ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
  gpt2: ["c_attn"],
  bloom: ["query_key_value"],
  opt: ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
  gptj: ["q_proj", "v_proj"],
  gpt_neox: ["query_key_value"],
  gpt_neo: ["q_proj", "v_proj"],
  llama: ["q_proj", "v_proj"],
  llama4: ["q_proj", "v_proj"],
  bert: ["query", "value"],
  roberta: ["query", "key", "value", "dense"],
  "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
  gpt_bigcode: ["c_attn"],
  deberta: ["in_proj"],
  phi3: PHI3_LORA,
  gemma: ["q_proj", "v_proj"],
  gemma2: ["q_proj", "v_proj"],
  gemma3_text: ["q_proj", "v_proj"],
  gemma4: GEMMA4_QV,
  qwen2: ["q_proj", "v_proj"],
  qwen3: ["q_proj", "v_proj"],
  nemotron_h: ["q_proj", "k_proj", "v_proj", "o_proj"],
});

function freeze(t: Record<string, TargetSpec>): Table {
  for (const v of Object.values(t)) if (typeof v !== "string") Object.freeze(v);
  return Object.freeze(t);
}

const TARGET_TABLES: Readonly<Record<string, Table>> = {
  LORA: LORA_TARGET_MODULES,
  IA3: IA3_TARGET_MODULES,
  ADALORA: ADALORA_TARGET_MODULES,
};

function lookup(table: Table, what: string, modelType: string | null | undefined, peftType: string): string[] | string {
  if (modelType !== null && modelType !== undefined && typeof modelType !== "string")
    throw typeError(`${what}: modelType must be a string, got ${describe(modelType)}`);
  if (modelType === null || modelType === undefined || modelType === "") {
    throw peftError(
      "ERR_CONFIG",
      `${what} is not set and no modelType was given to pick ${peftType} defaults: pass ${what} in the config ` +
        `(e.g. ["q_proj", "v_proj"] or "all-linear"), or getPeftModel(model, config, { modelType })`,
    );
  }
  if (!Object.hasOwn(table, modelType)) {
    throw peftError(
      "ERR_CONFIG",
      `${what} is not set and model type ${shownValue(modelType)} has no ${peftType} defaults; please specify ${what} ` +
        `in the config. Model types with defaults: ${Object.keys(table).join(", ")}`,
    );
  }
  const v = table[modelType]!;
  return typeof v === "string" ? v : [...v];
}

/**
 * PEFT's default target_modules for a method ("LORA", "IA3", "ADALORA") and transformers model type
 * (a fresh array, or a regex string for a few types). Throws PeftError ERR_CONFIG when the model type is
 * missing or has no defaults.
 */
export function defaultTargetModules(peftType: string, modelType: string | null | undefined): string[] | string {
  if (typeof peftType !== "string") throw typeError(`defaultTargetModules: peftType must be a string, got ${describe(peftType)}`);
  const table = Object.hasOwn(TARGET_TABLES, peftType) ? TARGET_TABLES[peftType] : undefined;
  if (!table) {
    throw peftError(
      "ERR_CONFIG",
      `no default target modules for peft type ${shownValue(peftType)} (known: ${Object.keys(TARGET_TABLES).join(", ")})`,
    );
  }
  return lookup(table, "targetModules", modelType, peftType);
}

/** PEFT's default feedforward_modules for IA3 and a model type; ERR_CONFIG as defaultTargetModules. */
export function defaultFeedforwardModules(modelType: string | null | undefined): string[] | string {
  return lookup(IA3_FEEDFORWARD_MODULES, "feedforwardModules", modelType, "IA3");
}
