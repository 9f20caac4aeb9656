// transformers' config.json for the Llama family (llama — also SmolLM and TinyLlama —, mistral, qwen2), read
// into one checked shape. Both spellings transformers has written are accepted: `torch_dtype` or `dtype`,
// `rope_scaling` + `rope_theta` or `rope_parameters`. A missing or ill-typed key is an ERR_CONFIG naming the key
// and the file; a setting the model does not implement (another rope type, another activation) ERR_UNSUPPORTED.
import { join } from "node:path";
import { describe, peftError, shownValue, typeError } from "../errors.js";
import type { DType } from "../tensor.js";
import { readJsonObject } from "../io/json-file.js";

export const CONFIG_NAME = "config.json";

/** The architectures this model class computes (their forward is the same up to biases). */
export const LLAMA_MODEL_TYPES = ["llama", "mistral", "qwen2"] as const;
export type LlamaModelType = (typeof LLAMA_MODEL_TYPES)[number];

export type RopeScaling =
  | { type: "linear"; factor: number }
  | { type: "llama3"; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositionEmbeddings: number };

export interface LlamaConfig {
  modelType: LlamaModelType;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** Biases on q_proj, k_proj, v_proj (llama's attention_bias; always for qwen2). */
  qkvBias: boolean;
  /** Bias on o_proj (llama's attention_bias; never for qwen2 and mistral). */
  oBias: boolean;
  mlpBias: boolean;
  /** Keys beyond this many before a query are not attended to (mistral, qwen2 with use_sliding_window). */
  slidingWindow: number | null;
  /** The dtype the checkpoint was saved in (torch_dtype / dtype), when given. */
  dtype: DType | null;
}

/** Options to build a config in memory (camelCase, defaults as transformers' LlamaConfig). */
export type LlamaConfigInit = Partial<LlamaConfig> & Pick<LlamaConfig, "vocabSize" | "hiddenSize" | "intermediateSize" | "numHiddenLayers" | "numAttentionHeads">;

const TORCH_DTYPES: Record<string, DType> = { float32: "f32", bfloat16: "bf16", float16: "f16" };

type Json = Record<string, unknown>;

class Reader {
  /** `prefix` names the enclosing key of a nested object ("rope_scaling."). */
  constructor(readonly obj: Json, readonly file: string, readonly prefix = "") {}

  fail(key: string, what: string, code: "ERR_CONFIG" | "ERR_UNSUPPORTED" = "ERR_CONFIG"): never {
    throw peftError(code, `${this.file}: "${this.prefix}${key}" ${what}`);
  }

  has(key: string): boolean {
    return Object.hasOwn(this.obj, key) && this.obj[key] !== null && this.obj[key] !== undefined;
  }

  int(key: string, fallback?: number, min = 1): number {
    if (!this.has(key)) return fallback ?? this.fail(key, "is missing (a positive integer is required)");
    const v = this.obj[key];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) this.fail(key, `must be an integer >= ${min}, got ${shownValue(v)}`);
    return v;
  }

  num(key: string, fallback?: number): number {
    if (!this.has(key)) return fallback ?? this.fail(key, "is missing (a positive number is required)");
    const v = this.obj[key];
    if (typeof v !== "number" || !(v > 0) || !Number.isFinite(v)) this.fail(key, `must be a positive number, got ${shownValue(v)}`);
    return v;
  }

  bool(key: string, fallback: boolean): boolean {
    if (!this.has(key)) return fallback;
    const v = this.obj[key];
    if (typeof v !== "boolean") this.fail(key, `must be true or false, got ${shownValue(v)}`);
    return v;
  }

  str(key: string): string | null {
    if (!this.has(key)) return null;
    const v = this.obj[key];
    if (typeof v !== "string") this.fail(key, `must be a string, got ${shownValue(v)}`);
    return v;
  }
}

/** rope_scaling / rope_parameters: null for the default rope, else the scaling it names. */
function ropeScaling(r: Reader, key: string, maxPositions: number): RopeScaling | null {
  if (!r.has(key)) return null;
  const raw = r.obj[key];
  if (typeof raw !== "object" || Array.isArray(raw)) r.fail(key, `must be an object or null, got ${shownValue(raw)}`);
  const inner = new Reader(raw as Json, r.file, `${key}.`);
  const typeKey = inner.has("rope_type") ? "rope_type" : "type";
  const type = inner.str(typeKey) ?? "default";
  if (type === "default") return null;
  if (type === "linear") return { type, factor: inner.num("factor") };
  if (type === "llama3")
    return {
      type,
      factor: inner.num("factor"),
      lowFreqFactor: inner.num("low_freq_factor"),
      highFreqFactor: inner.num("high_freq_factor"),
      originalMaxPositionEmbeddings: inner.int("original_max_position_embeddings", maxPositions),
    };
  return inner.fail(typeKey, `is ${shownValue(type)}: only "default", "linear" and "llama3" rope scaling are implemented`, "ERR_UNSUPPORTED");
}

/** Reads a parsed config.json (`file` names it in errors). */
export function parseLlamaConfig(obj: unknown, file = CONFIG_NAME): LlamaConfig {
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) throw peftError("ERR_CONFIG", `${file}: expected a JSON object`);
  const r = new Reader(obj as Json, file);
  const modelType = r.str("model_type") ?? r.fail("model_type", `is missing (one of ${LLAMA_MODEL_TYPES.join(", ")})`);
  if (!(LLAMA_MODEL_TYPES as readonly string[]).includes(modelType))
    r.fail("model_type", `is ${shownValue(modelType)}; LlamaForCausalLM reads ${LLAMA_MODEL_TYPES.join(", ")}`, "ERR_UNSUPPORTED");
  const act = r.str("hidden_act") ?? "silu";
  if (act !== "silu") r.fail("hidden_act", `is ${shownValue(act)}; the Llama MLP here is SwiGLU ("silu")`, "ERR_UNSUPPORTED");
  const hiddenSize = r.int("hidden_size");
  const numAttentionHeads = r.int("num_attention_heads");
  const numKeyValueHeads = r.int("num_key_value_heads", numAttentionHeads);
  if (numAttentionHeads % numKeyValueHeads)
    r.fail("num_key_value_heads", `(${numKeyValueHeads}) must divide num_attention_heads (${numAttentionHeads})`);
  if (!r.has("head_dim") && hiddenSize % numAttentionHeads)
    r.fail("hidden_size", `(${hiddenSize}) is not a multiple of num_attention_heads (${numAttentionHeads}) and there is no head_dim`);
  const headDim = r.int("head_dim", hiddenSize / numAttentionHeads);
  if (headDim % 2) r.fail("head_dim", `must be even (rotary embedding rotates halves), got ${headDim}`);
  const maxPositionEmbeddings = r.int("max_position_embeddings", 2048);
  // transformers 5 moved rope_theta and the scaling into rope_parameters.
  const ropeKey = r.has("rope_parameters") ? "rope_parameters" : "rope_scaling";
  let ropeTheta = r.num("rope_theta", 10000);
  if (ropeKey === "rope_parameters") {
    const p = r.obj.rope_parameters;
    if (p && typeof p === "object" && !Array.isArray(p) && Object.hasOwn(p, "rope_theta")) {
      ropeTheta = new Reader(p as Json, file, "rope_parameters.").num("rope_theta");
    }
  }
  const ropeScalingValue = ropeScaling(r, ropeKey, maxPositionEmbeddings);
  const dtypeKey = r.has("dtype") ? "dtype" : "torch_dtype";
  const dtypeName = r.str(dtypeKey);
  let dtype: DType | null = null;
  if (dtypeName !== null) {
    if (!Object.hasOwn(TORCH_DTYPES, dtypeName)) r.fail(dtypeKey, `is ${shownValue(dtypeName)}; expected one of ${Object.keys(TORCH_DTYPES).join(", ")}`);
    dtype = TORCH_DTYPES[dtypeName];
  }
  const attentionBias = r.bool("attention_bias", false);
  const useSliding = modelType === "mistral" || (modelType === "qwen2" && r.bool("use_sliding_window", false));
  return {
    modelType: modelType as LlamaModelType,
    vocabSize: r.int("vocab_size"),
    hiddenSize,
    intermediateSize: r.int("intermediate_size"),
    numHiddenLayers: r.int("num_hidden_layers"),
    numAttentionHeads,
    numKeyValueHeads,
    headDim,
    rmsNormEps: r.num("rms_norm_eps", 1e-6),
    ropeTheta,
    ropeScaling: ropeScalingValue,
    maxPositionEmbeddings,
    tieWordEmbeddings: r.bool("tie_word_embeddings", false),
    qkvBias: modelType === "qwen2" ? true : modelType === "llama" && attentionBias,
    oBias: modelType === "llama" && attentionBias,
    mlpBias: modelType === "llama" && r.bool("mlp_bias", false),
    slidingWindow: useSliding ? (r.has("sliding_window") ? r.int("sliding_window") : null) : null,
    dtype,
  };
}

/** Reads `<dir>/config.json`. */
export async function readLlamaConfig(dir: string): Promise<LlamaConfig> {
  const file = join(dir, CONFIG_NAME);
  return parseLlamaConfig(await readJsonObject(file, "model config", "ERR_CONFIG"), file);
}

/** A config from camelCase options with transformers' LlamaConfig defaults (models built in memory). */
export function llamaConfig(init: LlamaConfigInit): LlamaConfig {
  if (typeof init !== "object" || init === null) throw typeError(`llamaConfig: expected an object of config fields, got ${describe(init)}`);
  const heads = init.numAttentionHeads;
  return parseLlamaConfig(
    {
      model_type: init.modelType ?? "llama",
      vocab_size: init.vocabSize,
      hidden_size: init.hiddenSize,
      intermediate_size: init.intermediateSize,
      num_hidden_layers: init.numHiddenLayers,
      num_attention_heads: heads,
      num_key_value_heads: init.numKeyValueHeads ?? heads,
      head_dim: init.headDim ?? null,
      rms_norm_eps: init.rmsNormEps ?? 1e-6,
      rope_theta: init.ropeTheta ?? 10000,
      rope_scaling: ropeScalingJSON(init.ropeScaling ?? null),
      max_position_embeddings: init.maxPositionEmbeddings ?? 2048,
      tie_word_embeddings: init.tieWordEmbeddings ?? false,
      attention_bias: init.qkvBias ?? false,
      mlp_bias: init.mlpBias ?? false,
      sliding_window: init.slidingWindow ?? null,
      torch_dtype: init.dtype ? Object.keys(TORCH_DTYPES).find((k) => TORCH_DTYPES[k] === init.dtype) : null,
    },
    "llamaConfig",
  );
}

function ropeScalingJSON(s: RopeScaling | null): Json | null {
  if (!s) return null;
  if (s.type === "linear") return { rope_type: "linear", factor: s.factor };
  return {
    rope_type: "llama3", factor: s.factor, low_freq_factor: s.lowFreqFactor, high_freq_factor: s.highFreqFactor,
    original_max_position_embeddings: s.originalMaxPositionEmbeddings,
  };
}

/** The config as transformers writes config.json (save_pretrained's keys for these fields). */
export function llamaConfigToJSON(c: LlamaConfig): Json {
  checkLayerArgs(c, undefined, "llamaConfigToJSON");
  return {
    architectures: [{ llama: "LlamaForCausalLM", mistral: "MistralForCausalLM", qwen2: "Qwen2ForCausalLM" }[c.modelType]],
    model_type: c.modelType,
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.numHiddenLayers,
    num_attention_heads: c.numAttentionHeads,
    num_key_value_heads: c.numKeyValueHeads,
    head_dim: c.headDim,
    hidden_act: "silu",
    rms_norm_eps: c.rmsNormEps,
    rope_theta: c.ropeTheta,
    rope_scaling: ropeScalingJSON(c.ropeScaling),
    max_position_embeddings: c.maxPositionEmbeddings,
    tie_word_embeddings: c.tieWordEmbeddings,
    ...(c.modelType === "llama" ? { attention_bias: c.qkvBias, mlp_bias: c.mlpBias } : {}),
    ...(c.slidingWindow !== null ? { sliding_window: c.slidingWindow } : {}),
    torch_dtype: Object.keys(TORCH_DTYPES).find((k) => TORCH_DTYPES[k] === c.dtype) ?? "float32",
  };
}

/**
 * Checks a module constructor's arguments: a config as llamaConfig / parseLlamaConfig / readLlamaConfig make
 * it, and layer options whose dtype is f32 or bf16 (absent: f32).
 */
export function checkLayerArgs(config: unknown, opts: unknown, op: string): void {
  const c = config as Partial<LlamaConfig> | null;
  if (typeof c !== "object" || c === null || typeof c.hiddenSize !== "number" || typeof c.numHiddenLayers !== "number" || typeof c.vocabSize !== "number")
    throw typeError(`${op}: config must be a LlamaConfig (from llamaConfig, parseLlamaConfig or readLlamaConfig), got ${describe(config)}`);
  if (opts !== undefined && (typeof opts !== "object" || opts === null)) throw typeError(`${op}: options must be an object, got ${describe(opts)}`);
  const dtype = (opts as { dtype?: unknown } | undefined)?.dtype;
  if (dtype !== undefined && dtype !== "f32" && dtype !== "bf16") throw peftError("ERR_UNSUPPORTED", `${op}: dtype must be "f32" or "bf16", got ${describe(dtype)}`);
}
