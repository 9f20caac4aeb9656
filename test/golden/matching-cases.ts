// Golden cases for target-module matching. KEY_CASES pin PEFT's check_target_module_exists decision for
// one module path (the first block is PEFT's own REGEX_TEST_CASES table); MODEL_CASES pin
// findTargetModules over whole models: targets, unmatched list entries, and the errors.

import type { TargetConfig } from "../../lib/matching.js";

export interface KeyCase {
  key: string;
  config: TargetConfig;
  expected: boolean;
  why?: string;
}

/** PEFT's table: (key, target_modules, layers_to_transform, layers_pattern, expected). */
type PeftRow = [string, string | string[], number[] | null, string | string[] | null, boolean];

const PEFT_REGEX_TEST_CASES: PeftRow[] = [
  ["", [], null, null, false],
  ["", ["foo"], null, null, false],
  ["foo", [], null, null, false],
  ["foo", ["foo"], null, null, true],
  ["foo", ["bar"], null, null, false],
  ["foo", ["foo", "bar"], null, null, true],
  ["foo", "foo", null, null, true],
  ["foo", ".*oo", null, null, true],
  ["foo", "fo.*", null, null, true],
  ["foo", ".*bar.*", null, null, false],
  ["foobar", ".*oba.*", null, null, true],
  ["foo.bar.1.baz", ["baz"], [1], ["bar"], true],
  ["foo.bar.1.baz", ["baz"], [0], ["bar"], false],
  ["foo.bar.1.baz", ["baz"], [2], ["bar"], false],
  ["foo.bar.10.baz", ["baz"], [0], ["bar"], false],
  ["foo.bar.10.baz", ["baz"], [1], ["bar"], false],
  ["foo.bar.1.baz", ["baz"], [0, 1, 2], ["bar"], true],
  ["foo.bar.1.baz", ["baz", "spam"], [1], ["bar"], true],
  ["foo.bar.1.baz", ["baz", "spam"], [0, 1, 2], ["bar"], true],
  ["foo.whatever.1.baz", ["baz"], [1], [], true],
  ["foo.whatever.1.baz", ["baz"], [0], [], false],
  ["foo.whatever.1.baz", ["baz"], [1], "", true],
  ["foo.whatever.1.baz", ["baz"], [0], "", false],
  ["foo.whatever.1.baz", ["baz"], [1], null, true],
  ["foo.whatever.1.baz", ["baz"], [0], null, false],
  ["transformer.h.1.attn.attention.q_proj.foo", ["q_proj"], null, [], false],
  ["transformer.h.1.attn.attention.q_proj", [], null, [], false],
  ["transformer.h.1.attn.attention.q_proj", ["q_proj"], null, [], true],
  ["transformer.h.1.attn.attention.q_proj", ["q_proj", "v_proj"], null, [], true],
  ["transformer.h.1.attn.attention.resid_dropout", ["q_proj", "v_proj"], null, [], false],
  ["transformer.h.1.attn.attention.q_proj", ["q_proj"], [1], ["h"], true],
  ["transformer.h.1.attn.attention.q_proj", ["q_proj"], [0], ["h"], false],
  ["transformer.h.1.attn.attention.q_proj", ["q_proj"], [2], ["h"], false],
  ["transformer.h.1.attn.attention.q_proj", ["q_proj"], [0, 1, 2], ["h"], true],
  ["transformer.h.1.attn.attention.q_proj", ["q_proj", "v_proj"], [0, 1, 2], ["h"], true],
  ["foo.bar.q_proj", ["q_proj"], null, [], true],
  ["foo.bar.1.baz", ["baz"], [1], ["foo"], false],
  ["foo.bar.1.baz", ["baz"], [1], ["baz"], false],
  ["bar.1.baz", ["baz"], [1], ["bar"], false],
  ["foo.bar.001.baz", ["baz"], [1], ["bar"], true],
  ["foo.bar.1.spam.2.baz", ["baz"], [1], ["bar"], true],
  ["foo.bar.2.spam.1.baz", ["baz"], [1], ["bar"], false],
  ["blocks.1.weight", ["weight"], [1], ["blocks"], false],
  ["blocks.1.bias", ["weight"], [1], ["blocks"], false],
  ["mlp.blocks.1.weight", ["weight"], [1], ["blocks"], true],
  ["mlp.blocks.1.bias", ["weight"], [1], ["blocks"], false],
];

const L0 = "model.layers.0.self_attn";

export const KEY_CASES: KeyCase[] = [
  ...PEFT_REGEX_TEST_CASES.map(([key, targetModules, layersToTransform, layersPattern, expected]) => ({
    key,
    config: { targetModules, layersToTransform, layersPattern },
    expected,
    why: "PEFT REGEX_TEST_CASES",
  })),
  // list entries: exact name or "."-suffix, never a bare string suffix
  { key: `${L0}.q_proj`, config: { targetModules: ["q_proj"] }, expected: true },
  { key: `${L0}.qq_proj`, config: { targetModules: ["q_proj"] }, expected: false, why: "q_proj must not match qq_proj" },
  { key: `${L0}.q_proj`, config: { targetModules: ["self_attn.q_proj"] }, expected: true },
  { key: `${L0}.q_proj`, config: { targetModules: ["attn.q_proj"] }, expected: false, why: "suffix must start at a dot" },
  { key: "q_proj", config: { targetModules: ["q_proj"] }, expected: true, why: "exact top-level name" },
  // a string is a full-match regex on the whole path
  { key: `${L0}.q_proj`, config: { targetModules: "q_proj" }, expected: false, why: "fullmatch, not search" },
  { key: `${L0}.q_proj`, config: { targetModules: String.raw`.*\.q_proj` }, expected: true },
  { key: `${L0}.q_proj_extra`, config: { targetModules: String.raw`.*\.q_proj` }, expected: false },
  { key: `${L0}.q_proj`, config: { targetModules: String.raw`.*(q|v)_proj` }, expected: true },
  // Python-only regex spellings
  { key: `${L0}.q_proj`, config: { targetModules: String.raw`(?P<root>model)\..*\.q_proj` }, expected: true },
  { key: `${L0}.q_proj`, config: { targetModules: String.raw`(?i)MODEL\..*\.Q_PROJ` }, expected: true },
  { key: `${L0}.q_proj`, config: { targetModules: String.raw`\Amodel\..*q_proj\Z` }, expected: true },
  // exclude first
  { key: `${L0}.q_proj`, config: { targetModules: ["q_proj"], excludeModules: ["q_proj"] }, expected: false },
  { key: `${L0}.q_proj`, config: { targetModules: ["q_proj"], excludeModules: ["self_attn.q_proj"] }, expected: false },
  { key: `${L0}.q_proj`, config: { targetModules: ["q_proj"], excludeModules: ["attn.q_proj"] }, expected: true },
  { key: `${L0}.q_proj`, config: { targetModules: ["q_proj"], excludeModules: String.raw`.*layers\.0\..*` }, expected: false },
  { key: `${L0}.q_proj`, config: { targetModules: ["q_proj"], excludeModules: "layers" }, expected: true, why: "exclude regex is full-match too" },
  { key: `${L0}.q_proj`, config: { targetModules: ["q_proj"], excludeModules: "" }, expected: true, why: "empty exclude is unset" },
  { key: `${L0}.q_proj`, config: { targetModules: String.raw`.*q_proj`, excludeModules: ["q_proj"] }, expected: false },
  // modules_to_save are never adapted, nor anything inside them
  { key: "lm_head", config: { targetModules: ["lm_head"], modulesToSave: ["lm_head"] }, expected: false },
  { key: "model.lm_head", config: { targetModules: ["lm_head"], modulesToSave: ["lm_head"] }, expected: false },
  { key: "model.score.dense", config: { targetModules: ["dense"], modulesToSave: ["score"] }, expected: false },
  { key: "model.scorer.dense", config: { targetModules: ["dense"], modulesToSave: ["score"] }, expected: true },
  // layer filter: default index regex is `.*\.[^.]*\.(\d+)\.` (greedy: the last index before the name)
  { key: "layers.0.q_proj", config: { targetModules: ["q_proj"], layersToTransform: [0] }, expected: false, why: "needs a dot before the layer list" },
  { key: "model.layers.1.mlp.experts.3.w1", config: { targetModules: ["w1"], layersToTransform: [3] }, expected: true },
  { key: "model.layers.1.mlp.experts.3.w1", config: { targetModules: ["w1"], layersToTransform: [1] }, expected: false },
  { key: "model.layers.1.mlp.experts.3.w1", config: { targetModules: ["w1"], layersToTransform: 1, layersPattern: "layers" }, expected: true },
  { key: `${L0}.q_proj`, config: { targetModules: ["q_proj"], layersToTransform: 0 }, expected: true, why: "an int index" },
  { key: `${L0}.q_proj`, config: { targetModules: ["q_proj"], layersToTransform: [] }, expected: true, why: "empty list: no filter" },
  { key: `${L0}.q_proj`, config: { targetModules: ["q_proj"], layersToTransform: [0], layersPattern: ["h", "layers"] }, expected: true },
  { key: `${L0}.q_proj`, config: { targetModules: ["q_proj"], layersToTransform: [0], layersPattern: ["h", "blocks"] }, expected: false },
  { key: `${L0}.q_proj`, config: { targetModules: ["q_proj"], layersToTransform: [0], layersPattern: "(layers|h)" }, expected: true, why: "pattern groups do not shift the index" },
  // an exact path is taken without the layer filter (PEFT)
  { key: `${L0}.q_proj`, config: { targetModules: [`${L0}.q_proj`], layersToTransform: [5] }, expected: true },
  // "*" wildcards (Megatron-Bridge): a glob over the whole path, "*" crossing dots
  { key: "decoder.layers.0.self_attention.linear_qkv", config: { targetModules: ["*.layers.0.*.linear_qkv"] }, expected: true },
  { key: "decoder.layers.1.self_attention.linear_qkv", config: { targetModules: ["*.layers.0.*.linear_qkv"] }, expected: false },
  { key: "decoder.layers.0.self_attention.linear_qkv", config: { targetModules: ["layers.0.*.linear_qkv"] }, expected: false, why: "globs match the whole path" },
  { key: "decoder.layers.0.self_attention.linear_qkv", config: { targetModules: ["decoder*linear_qkv"] }, expected: true },
  { key: "decoderXlayers.0.linear_qkv", config: { targetModules: ["decoder.layers*"] }, expected: false, why: "dots are literal" },
  { key: "decoder.layers.1.self_attention.linear_qkv", config: { targetModules: ["*linear_qkv"], layersToTransform: [0] }, expected: false, why: "globs are layer-filtered" },
  { key: "decoder.layers.0.mlp.linear_fc1", config: { targetModules: ["linear_fc1"], excludeModules: ["*.layers.0.*"] }, expected: false },
];

/** Module kinds of the fake models. */
export type Kind = "Linear" | "Conv1D" | "Conv2d" | "Embedding" | "LayerNorm" | "Dropout" | "Container" | "LoraLinear";

export type ModelCaseExpect =
  | { targeted: string[]; unmatchedTargets?: string[]; excluded?: string[] }
  | { error: string; message: string | RegExp };

export interface ModelCase {
  name: string;
  /** Paths and kinds, in model order; the root "" is added by the runner. */
  modules: [string, Kind][];
  /** Path of the module the model's getOutputEmbeddings() returns. */
  outputEmbeddings?: string;
  config: TargetConfig;
  expect: ModelCaseExpect;
}

/** A small llama-shaped model: embed, n decoder layers (attention + MLP + norms), final norm, lm_head. */
export function llama(n: number): [string, Kind][] {
  const m: [string, Kind][] = [["model", "Container"], ["model.embed_tokens", "Embedding"], ["model.layers", "Container"]];
  for (let i = 0; i < n; i++) {
    const p = `model.layers.${i}`;
    m.push([p, "Container"], [`${p}.self_attn`, "Container"]);
    for (const x of ["q", "k", "v", "o"]) m.push([`${p}.self_attn.${x}_proj`, "Linear"]);
    m.push([`${p}.mlp`, "Container"]);
    for (const x of ["gate", "up", "down"]) m.push([`${p}.mlp.${x}_proj`, "Linear"]);
    m.push([`${p}.input_layernorm`, "LayerNorm"], [`${p}.post_attention_layernorm`, "LayerNorm"]);
  }
  m.push(["model.norm", "LayerNorm"], ["lm_head", "Linear"]);
  return m;
}

/** A GPT-2-shaped model: Conv1D projections under transformer.h.<i>. */
function gpt2(n: number): [string, Kind][] {
  const m: [string, Kind][] = [["transformer", "Container"], ["transformer.wte", "Embedding"], ["transformer.h", "Container"]];
  for (let i = 0; i < n; i++) {
    const p = `transformer.h.${i}`;
    m.push([p, "Container"], [`${p}.attn`, "Container"], [`${p}.attn.c_attn`, "Conv1D"], [`${p}.attn.c_proj`, "Conv1D"]);
    m.push([`${p}.attn.attn_dropout`, "Dropout"], [`${p}.mlp`, "Container"], [`${p}.mlp.c_fc`, "Conv1D"], [`${p}.mlp.c_proj`, "Conv1D"]);
  }
  m.push(["transformer.ln_f", "LayerNorm"], ["lm_head", "Linear"]);
  return m;
}

const attn = (i: number, x: string) => `model.layers.${i}.self_attn.${x}_proj`;
const mlp = (i: number, x: string) => `model.layers.${i}.mlp.${x}_proj`;
const linearsOf = (i: number) => [...["q", "k", "v", "o"].map((x) => attn(i, x)), ...["gate", "up", "down"].map((x) => mlp(i, x))];

export const MODEL_CASES: ModelCase[] = [
  {
    name: "list of names matches by suffix in every layer",
    modules: llama(2),
    config: { targetModules: ["q_proj", "v_proj"] },
    expect: { targeted: [attn(0, "q"), attn(0, "v"), attn(1, "q"), attn(1, "v")], unmatchedTargets: [] },
  },
  {
    name: "regex string is matched against the full path",
    modules: llama(2),
    config: { targetModules: String.raw`.*\.layers\.1\.self_attn\.(q|k)_proj` },
    expect: { targeted: [attn(1, "q"), attn(1, "k")], unmatchedTargets: [] },
  },
  {
    name: "regex that only matches a part of the path finds nothing",
    modules: llama(1),
    config: { targetModules: "q_proj" },
    expect: { error: "ERR_TARGET_NOT_FOUND", message: /^Target modules q_proj not found in the base model\. .*Candidate modules: q_proj/ },
  },
  {
    name: "q_proj does not match qq_proj",
    modules: [["blk", "Container"], ["blk.q_proj", "Linear"], ["blk.qq_proj", "Linear"], ["blk.xq_proj", "Linear"]],
    config: { targetModules: ["q_proj"] },
    expect: { targeted: ["blk.q_proj"] },
  },
  {
    name: "exclude regex removes a whole layer",
    modules: llama(2),
    config: { targetModules: ["q_proj", "v_proj"], excludeModules: String.raw`.*layers\.0\..*` },
    expect: { targeted: [attn(1, "q"), attn(1, "v")], excluded: llama(2).map(([n]) => n).filter((n) => n.startsWith("model.layers.0.")) },
  },
  {
    name: "exclude list: exact path and suffix",
    modules: llama(2),
    config: { targetModules: ["q_proj", "v_proj"], excludeModules: [attn(0, "q"), "1.self_attn.v_proj"] },
    expect: { targeted: [attn(0, "v"), attn(1, "q")], excluded: [attn(0, "q"), attn(1, "v")] },
  },
  {
    name: "layersToTransform without layersPattern",
    modules: llama(3),
    config: { targetModules: ["q_proj", "down_proj"], layersToTransform: [0, 2] },
    expect: { targeted: [attn(0, "q"), mlp(0, "down"), attn(2, "q"), mlp(2, "down")] },
  },
  {
    name: "layersToTransform as one integer",
    modules: llama(3),
    config: { targetModules: ["o_proj"], layersToTransform: 1 },
    expect: { targeted: [attn(1, "o")] },
  },
  {
    name: "layersToTransform with layersPattern",
    modules: llama(3),
    config: { targetModules: ["q_proj"], layersToTransform: [1], layersPattern: "layers" },
    expect: { targeted: [attn(1, "q")] },
  },
  {
    name: "layersPattern list: the first pattern found in the path gives the index",
    modules: [...gpt2(2), ...llama(2)],
    config: { targetModules: ["c_attn", "q_proj"], layersToTransform: [1], layersPattern: ["h", "layers"] },
    expect: { targeted: ["transformer.h.1.attn.c_attn", attn(1, "q")], unmatchedTargets: [] },
  },
  {
    name: "layersPattern absent from the model: not found, with the layer note",
    modules: llama(2),
    config: { targetModules: ["q_proj"], layersToTransform: [0], layersPattern: "blocks" },
    expect: {
      error: "ERR_TARGET_NOT_FOUND",
      message: "Target modules {'q_proj'} not found in the base model. Please check the target modules and try again. " +
        "Note: You specified 'layers_to_transform': [0]. You also specified 'layers_pattern': blocks. Candidate modules: q_proj, k_proj, v_proj, o_proj, up_proj.",
    },
  },
  {
    name: "an exact path escapes the layer filter, suffixes do not",
    modules: llama(2),
    config: { targetModules: [attn(0, "q"), "v_proj"], layersToTransform: [1] },
    expect: { targeted: [attn(0, "q"), attn(1, "v")], unmatchedTargets: [] },
  },
  {
    name: "all-linear skips a module named lm_head",
    modules: llama(2),
    config: { targetModules: "all-linear" },
    expect: { targeted: [...linearsOf(0), ...linearsOf(1)], unmatchedTargets: [] },
  },
  {
    name: "all-linear skips getOutputEmbeddings() whatever its name (and keeps lm_head then)",
    modules: [...llama(1).filter(([n]) => n !== "lm_head"), ["lm_head", "Linear"], ["output", "Linear"]],
    outputEmbeddings: "output",
    config: { targetModules: "ALL-LINEAR" },
    expect: { targeted: [...linearsOf(0), "lm_head"] },
  },
  {
    name: "all-linear on Conv1D (GPT-2)",
    modules: gpt2(1),
    outputEmbeddings: "lm_head",
    config: { targetModules: "all-linear" },
    expect: { targeted: ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"] },
  },
  {
    name: "all-linear skips the classifier head of a SEQ_CLS model",
    modules: [["encoder", "Container"], ["encoder.dense", "Linear"], ["classifier", "Linear"]],
    config: { targetModules: "all-linear", taskType: "SEQ_CLS" },
    expect: { targeted: ["encoder.dense"] },
  },
  {
    name: "all-linear keeps a classifier when the task is not SEQ_CLS",
    modules: [["encoder", "Container"], ["encoder.dense", "Linear"], ["classifier", "Linear"]],
    config: { targetModules: "all-linear" },
    expect: { targeted: ["encoder.dense", "classifier"] },
  },
  {
    name: "all-linear still honours excludeModules",
    modules: llama(1),
    config: { targetModules: "all-linear", excludeModules: ["gate_proj", "up_proj", "down_proj"] },
    expect: { targeted: ["q", "k", "v", "o"].map((x) => attn(0, x)) },
  },
  {
    name: "all-linear on a model without linear layers",
    modules: [["norm", "LayerNorm"], ["emb", "Embedding"]],
    config: { targetModules: "all-linear" },
    expect: { error: "ERR_TARGET_NOT_FOUND", message: /^Target modules all-linear not found in the base model/ },
  },
  {
    name: "wildcards select layer 0 attention",
    modules: llama(2),
    config: { targetModules: ["*.layers.0.*.q_proj", "*.layers.0.*.v_proj"] },
    expect: { targeted: [attn(0, "q"), attn(0, "v")], unmatchedTargets: [] },
  },
  {
    name: "wildcard inside a name",
    modules: llama(1),
    config: { targetModules: ["model.layers.*.mlp.*_proj"] },
    expect: { targeted: [mlp(0, "gate"), mlp(0, "up"), mlp(0, "down")] },
  },
  {
    name: "list entries that match nothing are reported",
    modules: llama(2),
    config: { targetModules: ["q_proj", "nope", "*.layers.9.*", "v_proj"] },
    expect: { targeted: [attn(0, "q"), attn(0, "v"), attn(1, "q"), attn(1, "v")], unmatchedTargets: ["nope", "*.layers.9.*"] },
  },
  {
    name: "an entry whose matches were all excluded is reported",
    modules: llama(1),
    config: { targetModules: ["q_proj", "down_proj"], excludeModules: ["down_proj"] },
    expect: { targeted: [attn(0, "q")], unmatchedTargets: ["down_proj"], excluded: [mlp(0, "down")] },
  },
  {
    name: "an entry filtered out by layersToTransform is reported",
    modules: llama(2),
    config: { targetModules: ["q_proj", "layers.0.self_attn.v_proj"], layersToTransform: [1] },
    expect: { targeted: [attn(1, "q")], unmatchedTargets: ["layers.0.self_attn.v_proj"] },
  },
  {
    name: "nothing matches: error with close candidates",
    modules: llama(1),
    config: { targetModules: ["qproj", "vproj"] },
    expect: {
      error: "ERR_TARGET_NOT_FOUND",
      message: /^Target modules \{'qproj', 'vproj'\} not found in the base model\. Please check the target modules and try again\. Candidate modules: q_proj, v_proj, /,
    },
  },
  {
    name: "everything excluded",
    modules: [["a", "Linear"], ["b", "Linear"]],
    config: { targetModules: ["a"], excludeModules: ".*" },
    expect: { error: "ERR_TARGET_NOT_FOUND", message: /^All modules were excluded\./ },
  },
  {
    name: "targets excluded, the rest unmatched",
    modules: llama(1),
    config: { targetModules: ["q_proj"], excludeModules: ["q_proj"] },
    expect: { error: "ERR_TARGET_NOT_FOUND", message: /^No modules were targeted for adaptation\./ },
  },
  {
    name: "modulesToSave wins over targetModules",
    modules: llama(1),
    config: { targetModules: ["q_proj", "lm_head"], modulesToSave: ["lm_head"] },
    expect: { targeted: [attn(0, "q")], unmatchedTargets: ["lm_head"], excluded: ["lm_head"] },
  },
  {
    name: "a target of an unsupported type",
    modules: llama(1),
    config: { targetModules: ["q_proj", "input_layernorm"] },
    expect: { error: "ERR_UNSUPPORTED", message: "Target module model.layers.0.input_layernorm (LayerNorm) is not supported." },
  },
  {
    name: "Conv2d and Embedding targets are allowed",
    modules: [["conv", "Conv2d"], ["emb", "Embedding"], ["fc", "Linear"]],
    config: { targetModules: ["conv", "emb"] },
    expect: { targeted: ["conv", "emb"] },
  },
  {
    name: "adapter internals are never targets; the adapter layer itself is",
    modules: [
      ["blk", "Container"],
      ["blk.q_proj", "LoraLinear"],
      ["blk.q_proj.base_layer", "Linear"],
      ["blk.q_proj.lora_A", "Container"],
      ["blk.q_proj.lora_A.default", "Linear"],
      ["blk.k_proj", "Linear"],
    ],
    config: { targetModules: "all-linear" },
    expect: { targeted: ["blk.q_proj", "blk.k_proj"], excluded: ["blk.q_proj.base_layer", "blk.q_proj.lora_A", "blk.q_proj.lora_A.default"] },
  },
  {
    name: "empty target list",
    modules: llama(1),
    config: { targetModules: [] },
    expect: { error: "ERR_CONFIG", message: /empty/ },
  },
  {
    name: "targetModules unset",
    modules: llama(1),
    config: { targetModules: null },
    expect: { error: "ERR_CONFIG", message: /^targetModules is not set/ },
  },
];
