// transformers' LlamaForCausalLM (also Mistral and Qwen2): the decoder stack and its head, loaded from a
// transformers-format directory by parameter name, so checkpoints and PEFT adapters for these models apply
// here (and ours load in Python PEFT). Forward returns logits and the shifted causal LM loss.
import { generate, type GenerateOptions, type GenerateResult } from "../generation/generate.js";
import { generateText, type GenerateTextOptions } from "../generation/generate-text.js";
import type { ChatMessage } from "../tokenizer/tokenizer.js";
import { Tensor, isDType, type DType, type Device } from "../tensor.js";
import { describe, optionsArg, peftError, typeError } from "../errors.js";
import { Module } from "../nn/module.js";
import { Linear } from "../nn/linear.js";
import type { Embedding } from "../nn/embedding.js";
import { tidy } from "../autograd/tidy.js";
import * as F from "../functional/index.js";
import { causalLMLoss } from "./causal-lm-loss.js";
import { ropeInvFreq, ropeTables } from "./rope.js";
import { CONFIG_NAME, checkLayerArgs, llamaConfigToJSON, readLlamaConfig, type LlamaConfig } from "./llama-config.js";
import { savePretrainedModel, type SavePretrainedOptions } from "../io/save-pretrained.js";
import { join } from "node:path";
import { readJsonObject } from "../io/json-file.js";
import { prequantizedOptionsOf } from "../io/prequantized.js";
import { LlamaModel } from "./llama-layers.js";
import { KVCache } from "./kv-cache.js";
import { readGenerationDefaults, type GenerationDefaults } from "../generation/generation-config.js";
import { skipInit } from "../init-mode.js";
import { loadModelWeightsAsync, type LoadProgress, type QuantizeHook } from "../io/model-loader.js";

export { LlamaAttention, LlamaMLP, LlamaDecoderLayer, LlamaModel, type LayerContext } from "./llama-layers.js";

export interface CausalLMForwardOptions {
  /** [B, T] key mask as a tokenizer gives it (1 = token, 0 = padding); any numeric dtype. */
  attentionMask?: Tensor | null;
  /** [B, T] i32/i64 targets, shifted inside (position t predicts labels[t + 1]); -100 is ignored. */
  labels?: Tensor | null;
  /** [B, T] or [1, T] integer positions for the rotary embedding; 0..T-1 by default. */
  positionIds?: Tensor | null;
  /**
   * A KV cache holding the earlier positions (transformers' past_key_values): inputIds are the new tokens
   * only, positions continue after the cached ones, attentionMask (if any) covers cached + new positions.
   * The forward writes its own keys and values into it.
   */
  pastKeyValues?: KVCache | null;
  /** Without pastKeyValues: start a cache (returned as pastKeyValues) of cacheLength positions. */
  useCache?: boolean;
  /** Positions a cache started by useCache holds (default config.maxPositionEmbeddings). */
  cacheLength?: number;
  /** Head only over the last n positions (transformers' logits_to_keep; 0 = all): decoding needs one. */
  logitsToKeep?: number;
  /** [B, T, hiddenSize] in the model's dtype, in place of inputIds (then null): transformers' inputs_embeds. */
  inputsEmbeds?: Tensor | null;
  /**
   * Keys and values every attention layer sees before the input's (one entry per layer; transformers'
   * past_key_values given as a prefix, as prefix tuning does): positions start after the prefix's P, and
   * attentionMask covers P + T. Differentiable; not together with pastKeyValues (seed the cache instead).
   */
  prefixKeyValues?: readonly PrefixKeyValue[] | null;
}

/** One layer's prefix: key and value [B, P, numKeyValueHeads, headDim] in the model's dtype (keys unrotated). */
export interface PrefixKeyValue {
  key: Tensor;
  value: Tensor;
}

export interface CausalLMOutput {
  /** [B, T, vocab] in the model's dtype (bf16 in bf16 mode, as transformers returns them). */
  logits: Tensor;
  /** Mean cross-entropy over the non-ignored shifted targets, f32, or null without labels. */
  loss: Tensor | null;
  /** The cache this forward extended (pastKeyValues, or the one useCache started), else null. */
  pastKeyValues: KVCache | null;
}

export interface PretrainedOptions {
  /** The parameters' dtype: "f32" (default) or "bf16" (bf16 mode: adapters added later stay f32). */
  dtype?: DType;
  /**
   * "int8": every projection becomes a Linear8bitLt as its weight is read (transformers' load_in_8bit;
   * lm_head and `skipModules` stay in `dtype`); "nf4" / "fp4": a Linear4bit instead (load_in_4bit, with
   * `blocksize`, `compressStatistics`, `computeDtype`); or a loader hook replacing modules as they load.
   */
  quantize?: "int8" | "nf4" | "fp4" | QuantizeHook;
  /** Outlier threshold of the int8 layers (quantize: "int8" only; default 6.0 as transformers'). */
  threshold?: number;
  /** Modules kept in full precision besides lm_head (transformers' llm_int8_skip_modules). */
  skipModules?: string[];
  /** 4-bit options (quantize: "nf4" / "fp4" only; transformers' defaults: 64, false, "f32"). */
  blocksize?: number;
  compressStatistics?: boolean;
  computeDtype?: "f32" | "bf16" | "f16";
  /** "cpu" (the only device the model's ops run on). */
  device?: Device;
  signal?: AbortSignal;
  onProgress?: (p: LoadProgress) => void;
}

function integerTensor(v: unknown, name: string, op: string): Tensor {
  if (!(v instanceof Tensor)) throw typeError(`${op}: ${name} must be a Tensor, got ${describe(v)}`);
  if (v.dtype !== "i32" && v.dtype !== "i64") throw peftError("ERR_DTYPE", `${op}: ${name} must be i32 or i64, got ${v.dtype}`);
  return v;
}

function checkShape(t: Tensor, want: readonly number[], name: string, op: string): void {
  if (t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i]))
    throw peftError("ERR_SHAPE", `${op}: ${name} has shape [${t.shape.join(", ")}], expected [${want.join(", ")}]`);
}

/** Rows of an integer tensor as numbers. */
function rowsOf(t: Tensor): number[][] {
  const [R, T] = t.shape;
  const v = t.toFloat64Array();
  return Array.from({ length: R }, (_, r) => Array.from(v.subarray(r * T, (r + 1) * T)));
}

export class LlamaForCausalLM extends Module {
  model: LlamaModel;
  lm_head: Linear;
  readonly config: LlamaConfig;
  readonly #invFreq: Float64Array;
  /** The directory fromPretrained read (its tokenizer files serve generateText), else null. */
  nameOrPath: string | null = null;
  /** Stop tokens and sampling defaults of that directory (generation_config.json, config.json). */
  generationDefaults: GenerationDefaults | null = null;

  /**
   * A model of `config` with freshly initialised weights (PyTorch's layer inits; norms at ones). Load a
   * checkpoint with LlamaForCausalLM.fromPretrained instead, which builds without initialising.
   */
  constructor(config: LlamaConfig, options: { dtype?: DType } = {}) {
    super();
    checkLayerArgs(config, options, "LlamaForCausalLM");
    const dtype = optionsArg(options, "LlamaForCausalLM").dtype ?? "f32";
    this.config = config;
    this.model = this.registerModule("model", new LlamaModel(config, { dtype }));
    this.lm_head = this.registerModule("lm_head", new Linear(config.hiddenSize, config.vocabSize, { bias: false, dtype }));
    if (config.tieWordEmbeddings) this.#tie();
    this.#invFreq = ropeInvFreq(config.headDim, config.ropeTheta, config.ropeScaling);
  }

  /** lm_head shares model.embed_tokens' weight (one tensor, loaded and saved under the embedding's name). */
  #tie(): void {
    const w = this.model.embed_tokens.weight;
    const old = this.lm_head.weight;
    const trainable = w.requiresGrad;
    this.lm_head.registerParameter("weight", w);
    w.requiresGrad = trainable;
    this.lm_head.weight = w;
    if (old !== w) old.dispose();
  }

  /**
   * Reads a transformers-format directory: config.json and model.safetensors (or a sharded
   * model.safetensors.index.json). The model is built without initialising its weights and each tensor is
   * read straight into its parameter (converted to `dtype`, default f32 as transformers loads).
   */
  static async fromPretrained(dir: string, options: PretrainedOptions = {}): Promise<LlamaForCausalLM> {
    const op = "LlamaForCausalLM.fromPretrained";
    if (typeof dir !== "string") throw typeError(`${op}: dir must be a string, got ${describe(dir)}`);
    const opts = optionsArg(options, op);
    if (opts.dtype !== undefined && !isDType(opts.dtype)) throw typeError(`${op}: dtype must be a dtype name such as "bf16", got ${describe(opts.dtype)}`);
    if (opts.device !== undefined && opts.device !== "cpu")
      throw peftError("ERR_NOT_ON_DEVICE", `${op}: device ${describe(opts.device)}: the Llama ops (attention, rotary embedding, RMSNorm) run on the CPU only`);
    const config = await readLlamaConfig(dir);
    // A pre-quantized checkpoint's layer settings (bnb_4bit_compute_dtype, llm_int8_threshold) and the kind it must hold.
    const configFile = join(dir, CONFIG_NAME);
    const prequantized = prequantizedOptionsOf(await readJsonObject(configFile, "model config", "ERR_CONFIG"), configFile);
    const model = skipInit(() => new LlamaForCausalLM(config, { dtype: opts.dtype ?? "f32" }));
    try {
      const { quantize, threshold, skipModules, blocksize, compressStatistics, computeDtype } = opts;
      const res = await loadModelWeightsAsync(model, dir, {
        strict: false, signal: opts.signal, onProgress: opts.onProgress, quantize, threshold, skipModules, blocksize, compressStatistics, computeDtype, prequantized,
      });
      // Checkpoints may also hold the tied head under its own name, and older ones the rope buffers.
      const extra = res.unexpectedKeys.filter((k) => !(k === "lm_head.weight" && config.tieWordEmbeddings) && !/\.rotary_emb\.inv_freq$/.test(k));
      if (res.missingKeys.length || extra.length) {
        const list = (ks: string[]) => ks.slice(0, 8).join(", ") + (ks.length > 8 ? `, … (${ks.length} in all)` : "");
        throw peftError(
          "ERR_CHECKPOINT",
          `${op}: the checkpoint in ${dir} does not fit its config.json (${config.modelType}, ${config.numHiddenLayers} layers): ` +
            [res.missingKeys.length ? `missing: ${list(res.missingKeys)}` : "", extra.length ? `unexpected: ${list(extra)}` : ""].filter(Boolean).join("; "),
        );
      }
    } catch (e) {
      model.dispose();
      throw e;
    }
    model.nameOrPath = dir;
    model.generationDefaults = readGenerationDefaults(dir);
    return model;
  }

  /**
   * Writes the model as transformers' save_pretrained does (config.json with the quantization_config of its
   * 4-bit or int8 layers, model.safetensors or shards above maxShardSize, the tokenizer files of the directory
   * it was loaded from): fromPretrained(dir) reads it back as it is, quantised layers included.
   */
  savePretrained(dir: string, options?: SavePretrainedOptions): Promise<void> {
    const config = llamaConfigToJSON(this.config);
    delete config.torch_dtype; // the model's own dtype, not the one it was read from
    return savePretrainedModel(this, dir, options, { config, dtype: this.dtype, sourceDir: this.nameOrPath }, "LlamaForCausalLM.savePretrained");
  }

  /** transformers' model_type ("llama", "mistral", "qwen2"): PEFT's default target modules follow it. */
  get modelType(): string {
    return this.config.modelType;
  }

  get dtype(): DType {
    return this.model.embed_tokens.weight.dtype;
  }

  /** transformers' gradient_checkpointing_enable: each decoder layer is recomputed in backward. */
  gradientCheckpointingEnable(): void {
    this.model.gradientCheckpointing = true;
  }

  gradientCheckpointingDisable(): void {
    this.model.gradientCheckpointing = false;
  }

  get isGradientCheckpointing(): boolean {
    return this.model.gradientCheckpointing;
  }

  override getOutputEmbeddings(): Module {
    return this.lm_head;
  }

  getInputEmbeddings(): Embedding {
    return this.model.embed_tokens;
  }

  /** Converting a tied model converts the shared weight once and ties it again. */
  override to(target: Parameters<Module["to"]>[0]): this {
    if (!this.config.tieWordEmbeddings) return super.to(target);
    const trainable = this.lm_head.weight.requiresGrad;
    this.lm_head.registerParameter("weight", null);
    super.to(target);
    this.lm_head.weight = this.model.embed_tokens.weight;
    this.#tie();
    this.lm_head.weight.requiresGrad = trainable;
    return this;
  }

  /** Decodes up to maxNewTokens after `prompt` (token ids of one sequence): see generate(). */
  generate(prompt: number[] | Tensor, options?: GenerateOptions): Promise<GenerateResult> {
    return generate(this, prompt, options);
  }

  /** The continuation of a text or chat prompt as text, with the model directory's tokenizer. */
  generateText(prompt: string | readonly ChatMessage[], options?: GenerateTextOptions): Promise<string> {
    return generateText(this, prompt, options);
  }

  /** An empty KV cache for this model's layers in its activation dtype (see KVCache). */
  createCache(options: { batch?: number; maxLength: number }): KVCache {
    const opts = optionsArg(options, "createCache");
    return new KVCache(this.config, { batch: opts.batch, maxLength: opts.maxLength as number, dtype: this.dtype });
  }

  /** inputsEmbeds checked (exactly one of it and inputIds), or null when inputIds are given. */
  #inputsEmbeds(inputIds: unknown, embeds: unknown, op: string): Tensor | null {
    if (embeds === undefined || embeds === null) return null;
    if (inputIds !== null && inputIds !== undefined) throw peftError("ERR_CONFIG", `${op}: give exactly one of inputIds and inputsEmbeds (pass inputIds as null)`);
    if (!(embeds instanceof Tensor)) throw typeError(`${op}: inputsEmbeds must be a Tensor, got ${describe(embeds)}`);
    const E = this.config.hiddenSize;
    if (embeds.shape.length !== 3 || embeds.shape[2] !== E) throw peftError("ERR_SHAPE", `${op}: inputsEmbeds must be [batch, seq, ${E}], got [${embeds.shape.join(", ")}]`);
    if (embeds.dtype !== this.dtype) throw peftError("ERR_DTYPE", `${op}: inputsEmbeds is ${embeds.dtype}, the model runs in ${this.dtype}`);
    return embeds;
  }

  /** prefixKeyValues checked: one {key, value} per layer, each [B, P, kvHeads, headDim] in the model's dtype. */
  #prefix(prefix: unknown, B: number, op: string): readonly PrefixKeyValue[] | null {
    if (prefix === undefined || prefix === null) return null;
    const { numHiddenLayers: L, numKeyValueHeads: H, headDim: D } = this.config;
    if (!Array.isArray(prefix) || prefix.length !== L) throw typeError(`${op}: prefixKeyValues must be an array of ${L} {key, value} entries (one per layer), got ${describe(prefix)}`);
    const P = (prefix[0] as Partial<PrefixKeyValue> | null)?.key?.shape?.[1];
    for (const [l, e] of (prefix as Partial<PrefixKeyValue>[]).entries()) {
      for (const which of ["key", "value"] as const) {
        const t = e?.[which];
        if (!(t instanceof Tensor)) throw typeError(`${op}: prefixKeyValues[${l}].${which} must be a Tensor, got ${describe(t)}`);
        if (t.shape.length !== 4 || t.shape[0] !== B || t.shape[1] !== P || t.shape[2] !== H || t.shape[3] !== D)
          throw peftError("ERR_SHAPE", `${op}: prefixKeyValues[${l}].${which} has shape [${t.shape.join(", ")}], expected [${B}, ${P}, ${H}, ${D}]`);
        if (t.dtype !== this.dtype) throw peftError("ERR_DTYPE", `${op}: prefixKeyValues[${l}].${which} is ${t.dtype}, the model runs in ${this.dtype}`);
      }
    }
    return prefix as readonly PrefixKeyValue[];
  }

  /**
   * Logits and (with labels) the shifted cross-entropy: mean over tokens whose next label is not -100,
   * accumulated and returned in f32 whatever the model's dtype.
   */
  forward(inputIds: Tensor | null, options: CausalLMForwardOptions = {}): CausalLMOutput {
    const op = "LlamaForCausalLM.forward";
    const opts = optionsArg(options, op);
    const embeds = this.#inputsEmbeds(inputIds, opts.inputsEmbeds, op);
    if (embeds === null) {
      integerTensor(inputIds, "inputIds", op);
      if (inputIds!.shape.length !== 2) throw peftError("ERR_SHAPE", `${op}: inputIds must be [batch, seq], got [${inputIds!.shape.join(", ")}]`);
    }
    const [B, T] = (embeds ?? inputIds!).shape;
    let cache = opts.pastKeyValues ?? null;
    if (cache !== null && !(cache instanceof KVCache)) throw typeError(`${op}: pastKeyValues must be a KVCache, got ${describe(cache)}`);
    const prefix = this.#prefix(opts.prefixKeyValues, B, op);
    if (prefix !== null && (cache !== null || opts.useCache === true))
      throw peftError("ERR_UNSUPPORTED", `${op}: prefixKeyValues cannot be combined with a KV cache; write the prefix into the cache first`);
    const started = cache === null && opts.useCache === true;
    if (started) cache = this.createCache({ batch: B, maxLength: opts.cacheLength ?? this.config.maxPositionEmbeddings });
    const past = cache?.length ?? prefix?.[0]?.key.shape[1] ?? 0;
    cache?.checkRoom(B, T, op);
    const window = this.config.slidingWindow;
    if (window !== null && past + T > window)
      throw peftError("ERR_UNSUPPORTED", `${op}: ${past + T} tokens exceed the sliding window of ${window}; sliding-window attention is not implemented`);
    const mask = opts.attentionMask ?? null;
    if (mask !== null) {
      if (!(mask instanceof Tensor)) throw typeError(`${op}: attentionMask must be a Tensor, got ${describe(mask)}`);
      checkShape(mask, [B, past + T], "attentionMask", op);
    }
    const labels = opts.labels ?? null;
    if (labels !== null) checkShape(integerTensor(labels, "labels", op), [B, T], "labels", op);
    let positions: number[][] = [Array.from({ length: T }, (_, t) => past + t)];
    if (opts.positionIds !== undefined && opts.positionIds !== null) {
      const p = integerTensor(opts.positionIds, "positionIds", op);
      if (p.shape.length !== 2 || (p.shape[0] !== B && p.shape[0] !== 1) || p.shape[1] !== T)
        throw peftError("ERR_SHAPE", `${op}: positionIds has shape [${p.shape.join(", ")}], expected [${B} or 1, ${T}]`);
      positions = rowsOf(p);
    }
    const keep = opts.logitsToKeep ?? 0;
    if (!Number.isInteger(keep) || keep < 0) throw typeError(`${op}: logitsToKeep must be a non-negative integer, got ${describe(keep)}`);
    if (keep > 0 && labels !== null) throw peftError("ERR_UNSUPPORTED", `${op}: logitsToKeep cannot be combined with labels (the loss needs every position's logits)`);
    const { cos, sin } = ropeTables(this.#invFreq, positions);
    try {
      const out = tidy(() => {
        const all = this.model.forward(embeds ?? inputIds!, { cos, sin, attentionMask: mask, cache, prefix });
        const hidden = keep > 0 && keep < T ? F.narrow(all, 1, T - keep, keep) : all;
        const logits = this.lm_head.forward(hidden) as Tensor;
        return { logits, loss: labels ? causalLMLoss(logits, labels) : null };
      });
      cache?.advance(T);
      return { ...out, pastKeyValues: cache };
    } catch (e) {
      if (started) cache?.dispose();
      throw e;
    } finally {
      cos.dispose();
      sin.dispose();
    }
  }
}
