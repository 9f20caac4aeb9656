// Prompt learning on a causal LM (PEFT's PeftModelForCausalLM with a prompt-learning config): the base model
// is left as it is and frozen; one prompt encoder per adapter (under `prompt_encoder.<adapter>`) makes the
// prompt. Prompt tuning and P-tuning put numVirtualTokens embeddings before the input's (the attention mask
// gets ones for them, the labels -100); prefix tuning gives every attention layer numVirtualTokens keys and
// values before the input's (the input's positions start after them). With a KV cache the prompt is seeded
// into it by the first forward (an empty cache) and later forwards decode against it.
import { Tensor, type DType } from "../../tensor.js";
import * as F from "../../functional/index.js";
import { tidy } from "../../autograd/tidy.js";
import { noGrad } from "../../autograd/grad-mode.js";
import { record, wantsGrad } from "../../autograd/record.js";
import { clip, describe, optionsArg, peftError, shownValue, typeError } from "../../errors.js";
import { Module, ModuleDict, type BackwardOptions } from "../../nn/index.js";
import type { Embedding } from "../../nn/embedding.js";
import type { MatchOptions } from "../../matching.js";
import type { CausalLMForwardOptions, CausalLMOutput, LlamaForCausalLM, PrefixKeyValue } from "../../models/llama.js";
import type { KVCache } from "../../models/kv-cache.js";
import { BaseTuner, mixedTypesError, type TunerSpec } from "../tuner.js";
import { BaseTunerLayer, adapterNameArg, type MergeOptions } from "../tuner-layer.js";
import { PrefixTuningConfig, PromptEncoderConfig, PromptLearningConfig, PromptTuningConfig } from "./config.js";
import { PrefixEncoder, PromptEmbedding, PromptEncoder, type PromptEncoderBase } from "./encoders.js";

const METHOD_NAMES: Record<string, string> = { PROMPT_TUNING: "prompt tuning", P_TUNING: "P-tuning", PREFIX_TUNING: "prefix tuning" };
const IGNORE_INDEX = -100;

/** A LlamaForCausalLM-like model, checked by shape (this file does not load the model classes). */
function causalLMArg(model: Module, op: string): LlamaForCausalLM {
  const m = model as unknown as Partial<LlamaForCausalLM>;
  const c = m.config as Partial<LlamaForCausalLM["config"]> | undefined;
  if (typeof m.createCache !== "function" || typeof m.getInputEmbeddings !== "function" || typeof c?.numHiddenLayers !== "number")
    throw peftError("ERR_UNSUPPORTED", `${op}: prompt learning needs a causal LM such as LlamaForCausalLM (inputsEmbeds, prefix keys/values, a KV cache), got ${model.constructor.name}`);
  return model as LlamaForCausalLM;
}

/** A differentiable dtype conversion (the prompt is f32; the model may run in bf16): x itself when it already is. */
function castTo(x: Tensor, dtype: DType): Tensor {
  if (x.dtype === dtype) return x;
  const y = x.to(dtype);
  const from = x.dtype;
  return wantsGrad(x) ? record("ToCopyBackward", [x], y, ([g]) => [g ? g.to(from) : null]) : y;
}

let warnedPositionIds = false;

/**
 * The tuner of the prompt-learning methods. One model holds adapters of one method; one adapter is active
 * at a time (PEFT's rule for prompt learning).
 */
export class PromptLearningModel extends BaseTuner<PromptLearningConfig> {
  // Set by injectAdapter, which BaseTuner's constructor calls before this class's field initialisers would
  // run: declared only, so no initialiser overwrites them (and no # members, which do not exist yet then).
  declare private kind: string | undefined;
  declare private encoders: ModuleDict | undefined;
  declare private off: boolean | undefined;

  protected get spec(): TunerSpec<PromptLearningConfig> {
    const kind = this.kind ?? "PROMPT_TUNING";
    return { peftType: kind, methodName: METHOD_NAMES[kind] ?? kind, configClass: PromptLearningConfig, layerClass: BaseTunerLayer };
  }

  protected prepareAdapterConfig(config: PromptLearningConfig): PromptLearningConfig {
    return config;
  }

  protected matchOptions(): MatchOptions {
    throw peftError("ERR_UNSUPPORTED", "prompt learning targets no modules");
  }

  protected createAdapterLayer(): BaseTunerLayer | null {
    throw peftError("ERR_UNSUPPORTED", "prompt learning creates no adapter layers");
  }

  /** The causal LM under the prompt. */
  get lm(): LlamaForCausalLM {
    return this.model as LlamaForCausalLM;
  }

  /** PEFT's _prepare_prompt_learning_config: the model-dependent fields filled in from the model's config. */
  private preparedConfig(config: PromptLearningConfig): PromptLearningConfig {
    const mc = this.lm.config;
    const json = config.toJSON();
    const fill: Record<string, unknown> = {
      num_layers: config.numLayers ?? mc.numHiddenLayers,
      token_dim: config.tokenDim ?? mc.hiddenSize,
      num_attention_heads: config.numAttentionHeads ?? mc.numAttentionHeads,
      num_transformer_submodules: config.numTransformerSubmodules ?? 1,
    };
    // Grouped-query attention: the prefix holds the key/value heads (PEFT #1901), whatever was given.
    if (config instanceof PrefixTuningConfig) {
      fill.token_dim = mc.headDim * mc.numKeyValueHeads;
      fill.num_attention_heads = mc.numKeyValueHeads;
    }
    if ((config instanceof PromptEncoderConfig || config instanceof PrefixTuningConfig) && config.encoderHiddenSize === null) fill.encoder_hidden_size = fill.token_dim;
    const Cls = config.constructor as unknown as { fromJSON(o: object): PromptLearningConfig };
    return Cls.fromJSON({ ...json, ...fill });
  }

  /** Checks what this package's models can run: one decoder stack, a prefix shaped as the model's keys/values. */
  private checkFits(c: PromptLearningConfig): void {
    const mc = this.lm.config;
    if (c.numTransformerSubmodules !== 1)
      throw peftError("ERR_UNSUPPORTED", `num_transformer_submodules = ${c.numTransformerSubmodules}: only decoder-only models (1) are supported`);
    if (c instanceof PrefixTuningConfig) {
      if (c.numLayers !== mc.numHiddenLayers)
        throw peftError("ERR_CONFIG", `PrefixTuningConfig: num_layers = ${c.numLayers} but the model has ${mc.numHiddenLayers} layers`);
      if (this.lm.isGradientCheckpointing) throw peftError("ERR_CONFIG", "PREFIX_TUNING does not work with gradient checkpointing.");
    } else if (c.tokenDim !== mc.hiddenSize) {
      throw peftError("ERR_CONFIG", `${c.constructor.name}: token_dim = ${c.tokenDim} but the model's embeddings are ${mc.hiddenSize} wide`);
    }
  }

  private makeEncoder(config: PromptLearningConfig): PromptEncoderBase {
    if (config instanceof PromptTuningConfig) return new PromptEmbedding(config, this.lm.getInputEmbeddings() as Embedding);
    if (config instanceof PromptEncoderConfig) return new PromptEncoder(config);
    return new PrefixEncoder(config as PrefixTuningConfig);
  }

  /** PEFT's add_adapter for prompt learning: the config completed from the model, then the adapter's encoder. */
  override injectAdapter(config: PromptLearningConfig, adapterName: string): void {
    const op = "getPeftModel";
    if (!(config instanceof PromptLearningConfig)) {
      const type = (config as { peftType?: unknown } | null)?.peftType;
      if (typeof type === "string" && this.kind !== undefined) throw mixedTypesError(this.kind, type);
      throw peftError("ERR_CONFIG", `${op}: expected a prompt-learning config, got ${describe(config)}`);
    }
    if (this.kind !== undefined && config.peftType !== this.kind) throw mixedTypesError(this.kind, config.peftType);
    adapterNameArg(adapterName, op);
    if (Object.hasOwn(this.peftConfig, adapterName)) throw peftError("ERR_CONFIG", `Adapter with name ${clip(adapterName)} already exists.`);
    causalLMArg(this.model, op);
    if (config.taskType !== null && config.taskType !== "CAUSAL_LM")
      throw peftError("ERR_UNSUPPORTED", `${config.constructor.name}: task_type ${shownValue(config.taskType)}: prompt learning is implemented for CAUSAL_LM`);
    if (config.numVirtualTokens === null) throw peftError("ERR_CONFIG", `${config.constructor.name}: num_virtual_tokens must be set`);
    const effective = this.preparedConfig(config);
    this.checkFits(effective);
    // PEFT freezes the whole base model.
    for (const p of this.model.parameters()) p.requiresGrad = false;
    const encoder = this.makeEncoder(effective);
    if (effective.inferenceMode) for (const p of encoder.parameters()) p.requiresGrad = false;
    if (!this.encoders) this.encoders = this.registerModule("prompt_encoder", new ModuleDict());
    this.encoders.set(adapterName, encoder);
    this.peftConfig[adapterName] = effective;
    this.kind = effective.peftType;
  }

  override *tunerLayers(): Iterable<BaseTunerLayer> {}

  /** One adapter at a time (PEFT). */
  override setAdapter(names: string | string[]): void {
    if (Array.isArray(names) && names.length > 1) throw peftError("ERR_UNSUPPORTED", `setAdapter: prompt learning uses one adapter at a time, got ${names.length}`);
    super.setAdapter(names);
  }

  override deleteAdapter(name: string): void {
    super.deleteAdapter(name);
    this.encoders?.delete(name)?.dispose();
  }

  override enableAdapterLayers(enabled: boolean): void {
    this.off = !enabled;
  }

  /** True inside disableAdapter(): forwards run the base model alone. */
  get adaptersDisabled(): boolean {
    return this.off === true;
  }

  override mergeAdapter(_options?: MergeOptions): void {
    throw peftError("ERR_UNSUPPORTED", `mergeAdapter: ${this.methodName} adapters have no weights to merge into the model`);
  }

  override unmergeAdapter(): void {}

  /** unload: the base model without the prompt (the encoders disposed, its parameters trainable again); merging is refused. */
  override unloadAndOptionallyMerge(merge: boolean): Module {
    if (merge) throw peftError("ERR_UNSUPPORTED", `mergeAndUnload: ${this.methodName} adapters have no weights to merge into the model`);
    for (const name of this.encoders?.keys() ?? []) this.encoders!.delete(name)?.dispose();
    for (const p of this.model.parameters()) p.requiresGrad = p.dtype !== "i8";
    return this.model;
  }

  get activeConfig(): PromptLearningConfig {
    return this.peftConfig[this.activeAdapters[0]];
  }

  /** The encoder of an adapter (the active one by default). */
  promptEncoder(adapterName = this.activeAdapters[0]): PromptEncoderBase {
    if (!this.encoders || !this.encoders.keys().includes(adapterName)) throw peftError("ERR_CONFIG", `Adapter ${shownValue(adapterName)} not found`);
    return this.encoders.get(adapterName) as PromptEncoderBase;
  }

  /** Positions the active prompt takes before the input (0 while adapters are disabled). */
  get numVirtualTokens(): number {
    return this.adaptersDisabled ? 0 : (this.activeConfig.numVirtualTokens ?? 0);
  }

  /** The encoder's output for tokens 0..count-1 as [1, count, width] (the stored table itself for an inference adapter). */
  private encoded(name: string, count: number): Tensor {
    const config = this.peftConfig[name], enc = this.promptEncoder(name);
    const w = enc.embedding.weight;
    if (config.inferenceMode) return w.reshape([1, ...w.shape]);
    const ids = Tensor.fromArray(Array.from({ length: count }, (_, i) => i), [1, count], "i64");
    try {
      return enc.forward(ids) as Tensor;
    } finally {
      ids.dispose();
    }
  }

  /** PEFT's get_prompt for prompt tuning and P-tuning: [batch, numVirtualTokens, hidden] in `dtype`. */
  prompts(batch: number, dtype: DType): Tensor {
    const name = this.activeAdapters[0], c = this.peftConfig[name];
    const total = c.numVirtualTokens! * (c.numTransformerSubmodules ?? 1);
    return tidy(() => {
      const p = castTo(this.encoded(name, total), dtype);
      return batch === 1 ? p : F.expand(p, [batch, ...p.shape.slice(1)]);
    });
  }

  /**
   * PEFT's get_prompt for prefix tuning: per layer the prefix's keys and values, [batch, numVirtualTokens,
   * kvHeads, headDim] in `dtype`. PEFT's layout of one virtual token's vector: layer l's key at block 2l and
   * its value at block 2l+1 of numLayers·2 blocks of kvHeads·headDim.
   */
  prefixKeyValues(batch: number, dtype: DType): PrefixKeyValue[] {
    const name = this.activeAdapters[0], c = this.peftConfig[name];
    const n = c.numVirtualTokens!, L = c.numLayers!, H = c.numAttentionHeads!, D = c.tokenDim! / H;
    return tidy(() => {
      const all = castTo(this.encoded(name, n), dtype).reshape([1, n, 2 * L, H, D]);
      const part = (block: number) => {
        const one = F.narrow(all, 2, block, 1).reshape([1, n, H, D]);
        return batch === 1 ? one : F.expand(one, [batch, n, H, D]);
      };
      return Array.from({ length: L }, (_, l) => ({ key: part(2 * l), value: part(2 * l + 1) }));
    });
  }

  /**
   * What savePretrained writes (PEFT's `prompt_embeddings`): an inference adapter's table as it is, otherwise
   * the encoder's output (the P-tuning MLP/LSTM or the prefix projection applied), so the file holds what an
   * inference adapter uses directly.
   */
  promptEmbeddingsToSave(adapterName: string): Tensor {
    if (typeof adapterName !== "string") throw typeError(`promptEmbeddingsToSave: adapterName must be a string, got ${describe(adapterName)}`);
    this.promptEncoder(adapterName);  // a known adapter, or ERR_CONFIG naming it
    const c = this.peftConfig[adapterName];
    const count = c.numVirtualTokens! * (c instanceof PrefixTuningConfig ? 1 : (c.numTransformerSubmodules ?? 1));
    return noGrad(() => {
      const out = this.encoded(adapterName, count);
      const flat = out.reshape(out.shape.slice(1));
      out.dispose();
      return flat;
    });
  }

  /** The tensor a checkpoint's `prompt_embeddings` is loaded into (PEFT: the encoder's embedding weight). */
  promptEmbeddingsTarget(adapterName: string): Tensor {
    return this.promptEncoder(adapterName).embedding.weight;
  }

  override adapterTensors(adapterName: string): Map<string, Tensor> {
    return new Map([["prompt_embeddings", this.promptEmbeddingsTarget(adapterName)]]);
  }

  /** What PEFT saves is computed (the encoder's output): a new tensor in place of the live one. */
  override adapterStateDict(adapterName: string, sd: Record<string, Tensor>): Record<string, Tensor> {
    if (typeof sd !== "object" || sd === null) throw typeError(`PromptLearningModel.adapterStateDict: sd must be a record of tensors, got ${describe(sd)}`);
    const saved = this.promptEmbeddingsToSave(adapterName);
    for (const t of Object.values(sd)) if (t instanceof Tensor) t.dispose();
    return { prompt_embeddings: saved };
  }

  override backward(_dy: Tensor, _opts?: BackwardOptions): Tensor | null {
    throw peftError("ERR_UNSUPPORTED", "PeftModel.backward: prompt-learning models train through autograd (loss.backward())");
  }

  /** PeftModelForCausalLM.forward for prompt learning (see the file's comment). */
  override forward(inputIds: Tensor | null, options: CausalLMForwardOptions = {}): CausalLMOutput {
    const lm = this.lm;
    if (this.adaptersDisabled) return lm.forward(inputIds, options);
    const op = "PeftModel.forward";
    const opts = optionsArg(options, op);
    const config = this.activeConfig, n = config.numVirtualTokens!;
    const embeds = opts.inputsEmbeds ?? null;
    if (inputIds !== null && inputIds !== undefined && embeds !== null) throw peftError("ERR_CONFIG", `${op}: give exactly one of inputIds and inputsEmbeds (pass inputIds as null)`);
    const first = inputIds ?? embeds;
    if (!(first instanceof Tensor)) throw typeError(`${op}: inputIds must be a Tensor (or null with inputsEmbeds), got ${describe(inputIds)}`);
    if (first.shape.length < 2) throw peftError("ERR_SHAPE", `${op}: inputIds must be [batch, seq], got [${first.shape.join(", ")}]`);
    const [B, T] = first.shape;
    if (opts.prefixKeyValues) throw peftError("ERR_UNSUPPORTED", `${op}: prefixKeyValues come from the adapter; they cannot be given to a prompt-learning model`);
    const cache = (opts.pastKeyValues ?? null) as KVCache | null;
    const isPrefix = config instanceof PrefixTuningConfig;
    const mask = opts.attentionMask === undefined || opts.attentionMask === null ? null : withLeadingOnes(opts.attentionMask, B, n, op);
    try {
      const decoding = cache !== null && typeof cache === "object" && cache.length > 0;
      const positionIds = isPrefix ? shiftedPositions(opts.positionIds, n, op) : ignoredPositions(opts.positionIds);
      try {
        if (decoding) return lm.forward(inputIds, { ...opts, attentionMask: mask, positionIds });
        if (isPrefix) return this.prefixForward(inputIds, { ...opts, attentionMask: mask, positionIds }, B);
        if (opts.labels !== undefined && opts.labels !== null) checkLabels(opts.labels, B, T, op);
        const x = tidy(() => {
          const e = embeds ?? (lm.getInputEmbeddings().forward(inputIds!) as Tensor);
          return F.cat([this.prompts(B, e.dtype), e], 1);
        });
        const labels = opts.labels ? withLeading(opts.labels, B, n, IGNORE_INDEX) : null;
        try {
          return lm.forward(null, { ...opts, inputsEmbeds: x, attentionMask: mask, labels, positionIds: null });
        } finally {
          x.dispose();
          labels?.dispose();
        }
      } finally {
        if (isPrefix) positionIds?.dispose();
      }
    } finally {
      mask?.dispose();
    }
  }

  /** Prefix tuning's forward: the prefix given to every layer, or seeded into a (new or empty) KV cache. */
  private prefixForward(inputIds: Tensor | null, opts: CausalLMForwardOptions, B: number): CausalLMOutput {
    const lm = this.lm;
    const prefix = this.prefixKeyValues(B, lm.dtype);
    try {
      if (!opts.pastKeyValues && !opts.useCache) return lm.forward(inputIds, { ...opts, prefixKeyValues: prefix });
      const started = !opts.pastKeyValues;
      const cache = opts.pastKeyValues ?? lm.createCache({ batch: B, maxLength: opts.cacheLength ?? lm.config.maxPositionEmbeddings });
      try {
        seedCache(cache, prefix, "PeftModel.forward");
        return lm.forward(inputIds, { ...opts, pastKeyValues: cache, useCache: false });
      } catch (e) {
        if (started) cache.dispose();
        throw e;
      }
    } finally {
      for (const { key, value } of prefix) key.dispose(), value.dispose();
    }
  }
}

/** Writes the prefix as the cache's first positions (the cache is a decoding device: no gradient flows). */
function seedCache(cache: KVCache, prefix: readonly PrefixKeyValue[], op: string): void {
  if (cache.length !== 0) throw peftError("ERR_STATE", `${op}: the prefix goes into an empty KV cache, this one holds ${cache.length} positions`);
  if (cache.numLayers !== prefix.length) throw peftError("ERR_SHAPE", `${op}: the KV cache has ${cache.numLayers} layers, the prefix ${prefix.length}`);
  noGrad(() => {
    for (const [l, { key, value }] of prefix.entries()) {
      const { k, v } = cache.update(l, key, value);
      k.dispose();
      v.dispose();
    }
  });
  cache.advance(prefix[0]?.key.shape[1] ?? 0);
}

/** [B, T] integer rows with `n` copies of `fill` put before each, in the input's dtype. */
function withLeading(t: Tensor, B: number, n: number, fill: number): Tensor {
  const T = t.shape[1], src = t.toFloat64Array();
  const out = new Float64Array(B * (n + T)).fill(fill);
  for (let b = 0; b < B; b++) out.set(src.subarray(b * T, (b + 1) * T), b * (n + T) + n);
  return Tensor.fromArray(out, [B, n + T], t.dtype);
}

/** The attention mask with ones for the virtual tokens (PEFT's prefix_attention_mask). */
function withLeadingOnes(mask: unknown, B: number, n: number, op: string): Tensor {
  if (!(mask instanceof Tensor)) throw typeError(`${op}: attentionMask must be a Tensor, got ${describe(mask)}`);
  if (mask.shape.length !== 2 || mask.shape[0] !== B) throw peftError("ERR_SHAPE", `${op}: attentionMask must be [${B}, keys], got [${mask.shape.join(", ")}]`);
  return withLeading(mask, B, n, 1);
}

function checkLabels(labels: unknown, B: number, T: number, op: string): void {
  if (!(labels instanceof Tensor)) throw typeError(`${op}: labels must be a Tensor, got ${describe(labels)}`);
  if (labels.dtype !== "i32" && labels.dtype !== "i64") throw peftError("ERR_DTYPE", `${op}: labels must be i32 or i64, got ${labels.dtype}`);
  if (labels.shape.length !== 2 || labels.shape[0] !== B || labels.shape[1] !== T)
    throw peftError("ERR_SHAPE", `${op}: labels has shape [${labels.shape.join(", ")}], expected [${B}, ${T}]`);
}

/** Prefix tuning: the input's positions come after the prefix's (PEFT adds num_virtual_tokens). */
function shiftedPositions(p: unknown, n: number, op: string): Tensor | null {
  if (p === undefined || p === null) return null;
  if (!(p instanceof Tensor)) throw typeError(`${op}: positionIds must be a Tensor, got ${describe(p)}`);
  const v = p.toFloat64Array().map((x) => x + n);
  return Tensor.fromArray(v, p.shape, p.dtype);
}

/** Prompt tuning / P-tuning ignore position ids, with PEFT's warning. */
function ignoredPositions(p: unknown): null {
  if (p !== undefined && p !== null && !warnedPositionIds) {
    warnedPositionIds = true;
    process.emitWarning("Position ids are not supported for parameter efficient tuning. Ignoring position ids.", { code: "PEFT_POSITION_IDS" });
  }
  return null;
}
