// The Llama-family decoder (transformers' LlamaForCausalLM; Mistral and Qwen2 differ only in biases and the
// sliding window): modules named exactly as transformers names its parameters, so checkpoints load by name
// and PEFT adapters for these models apply here (and ours load in Python PEFT). Activations keep the layout
// [batch, seq, heads, headDim] between the projections and attention (a reshape, no transpose).
import { Tensor, isDType, type DType, type Device } from "../tensor.js";
import { describe, optionsArg, peftError, typeError } from "../errors.js";
import * as F from "../functional/index.js";
import { Module } from "../nn/module.js";
import { Linear } from "../nn/linear.js";
import { Embedding } from "../nn/embedding.js";
import { ModuleList } from "../nn/containers.js";
import { RMSNorm } from "../nn/norm.js";
import { tidy } from "../autograd/tidy.js";
import { checkpoint } from "../autograd/checkpoint.js";
import { causalLMLoss } from "./causal-lm-loss.js";
import { ropeInvFreq, ropeTables } from "./rope.js";
import { readLlamaConfig, type LlamaConfig } from "./llama-config.js";
import { skipInit } from "../init-mode.js";
import { loadModelWeightsAsync, type LoadProgress, type QuantizeHook } from "../io/model-loader.js";

/** What every decoder layer of one forward shares: the rope tables and the key padding mask. */
export interface LayerContext {
  cos: Tensor;
  sin: Tensor;
  attentionMask: Tensor | null;
}

interface LayerOptions {
  dtype: DType;
}

type SwiGLU = (gate: Tensor, up: Tensor) => Tensor;
// A fused silu(gate)·up node when the functional ops offer one; otherwise its two parts.
const fusedSwiglu = (F as unknown as { swiglu?: SwiGLU }).swiglu;

export class LlamaAttention extends Module {
  q_proj: Module;
  k_proj: Module;
  v_proj: Module;
  o_proj: Module;

  constructor(readonly config: LlamaConfig, opts: LayerOptions) {
    super();
    const { hiddenSize: E, numAttentionHeads: H, numKeyValueHeads: Hkv, headDim: D } = config;
    const dtype = opts.dtype;
    this.q_proj = this.registerModule("q_proj", new Linear(E, H * D, { bias: config.qkvBias, dtype }));
    this.k_proj = this.registerModule("k_proj", new Linear(E, Hkv * D, { bias: config.qkvBias, dtype }));
    this.v_proj = this.registerModule("v_proj", new Linear(E, Hkv * D, { bias: config.qkvBias, dtype }));
    this.o_proj = this.registerModule("o_proj", new Linear(H * D, E, { bias: config.oBias, dtype }));
  }

  forward(x: Tensor, ctx: LayerContext): Tensor {
    const [B, T] = x.shape;
    const { numAttentionHeads: H, numKeyValueHeads: Hkv, headDim: D } = this.config;
    return tidy(() => {
      const q = F.rotaryEmbedding(this.q_proj.forward(x).reshape([B, T, H, D]), ctx.cos, ctx.sin);
      const k = F.rotaryEmbedding(this.k_proj.forward(x).reshape([B, T, Hkv, D]), ctx.cos, ctx.sin);
      const v = this.v_proj.forward(x).reshape([B, T, Hkv, D]);
      const a = F.scaledDotProductAttention(q, k, v, { causal: true, attentionMask: ctx.attentionMask });
      return this.o_proj.forward(a.reshape([B, T, H * D])) as Tensor;
    });
  }
}

export class LlamaMLP extends Module {
  gate_proj: Module;
  up_proj: Module;
  down_proj: Module;

  constructor(config: LlamaConfig, opts: LayerOptions) {
    super();
    const { hiddenSize: E, intermediateSize: I, mlpBias: bias } = config;
    this.gate_proj = this.registerModule("gate_proj", new Linear(E, I, { bias, dtype: opts.dtype }));
    this.up_proj = this.registerModule("up_proj", new Linear(E, I, { bias, dtype: opts.dtype }));
    this.down_proj = this.registerModule("down_proj", new Linear(I, E, { bias, dtype: opts.dtype }));
  }

  /** down_proj(silu(gate_proj(x)) · up_proj(x)) */
  forward(x: Tensor): Tensor {
    return tidy(() => {
      const gate = this.gate_proj.forward(x) as Tensor, up = this.up_proj.forward(x) as Tensor;
      const h = fusedSwiglu ? fusedSwiglu(gate, up) : F.mul(F.silu(gate), up);
      return this.down_proj.forward(h) as Tensor;
    });
  }
}

export class LlamaDecoderLayer extends Module {
  input_layernorm: RMSNorm;
  self_attn: LlamaAttention;
  post_attention_layernorm: RMSNorm;
  mlp: LlamaMLP;

  constructor(config: LlamaConfig, opts: LayerOptions) {
    super();
    const norm = () => new RMSNorm(config.hiddenSize, { eps: config.rmsNormEps, dtype: opts.dtype });
    this.self_attn = this.registerModule("self_attn", new LlamaAttention(config, opts));
    this.mlp = this.registerModule("mlp", new LlamaMLP(config, opts));
    this.input_layernorm = this.registerModule("input_layernorm", norm());
    this.post_attention_layernorm = this.registerModule("post_attention_layernorm", norm());
  }

  /** Pre-norm residual block: h + attn(norm(h)), then + mlp(norm(·)). */
  forward(h: Tensor, ctx: LayerContext): Tensor {
    return tidy(() => {
      const a = F.add(h, this.self_attn.forward(this.input_layernorm.forward(h), ctx));
      return F.add(a, this.mlp.forward(this.post_attention_layernorm.forward(a)));
    });
  }
}

export class LlamaModel extends Module {
  embed_tokens: Embedding;
  layers: ModuleList;
  norm: RMSNorm;
  /** Recompute each decoder layer in backward instead of keeping its activations (training only). */
  gradientCheckpointing = false;

  constructor(readonly config: LlamaConfig, opts: LayerOptions) {
    super();
    this.embed_tokens = this.registerModule("embed_tokens", new Embedding(config.vocabSize, config.hiddenSize, { dtype: opts.dtype }));
    this.layers = this.registerModule("layers", new ModuleList(Array.from({ length: config.numHiddenLayers }, () => new LlamaDecoderLayer(config, opts))));
    this.norm = this.registerModule("norm", new RMSNorm(config.hiddenSize, { eps: config.rmsNormEps, dtype: opts.dtype }));
  }

  /** The final hidden states [B, T, hidden] (after model.norm). */
  forward(inputIds: Tensor, ctx: LayerContext): Tensor {
    let h = this.embed_tokens.forward(inputIds);
    const recompute = this.gradientCheckpointing && this.training;
    // The rerun in backward gets the context as tensors the checkpoint keeps (the caller frees its own).
    const context = [ctx.cos, ctx.sin, ...(ctx.attentionMask ? [ctx.attentionMask] : [])];
    for (const layer of this.layers) {
      const run = (x: Tensor, cos: Tensor, sin: Tensor, mask?: Tensor) => {
        const y = layer.forward(x, { cos, sin, attentionMask: mask ?? null }) as Tensor;
        // Layers also keep their last input for a tape-free Module.backward, which this model does not
        // have; kept, those inputs would be most of what checkpointing is meant to free.
        if (recompute) for (const [, m] of layer.namedModules()) m.releaseSaved();
        return y;
      };
      const next = recompute ? checkpoint(run as (x: Tensor, ...c: Tensor[]) => Tensor, h, ...context) : run(h, ctx.cos, ctx.sin, ctx.attentionMask ?? undefined);
      h.dispose();
      h = next;
    }
    const out = this.norm.forward(h);
    h.dispose();
    return out;
  }
}

export interface CausalLMForwardOptions {
  /** [B, T] key mask as a tokenizer gives it (1 = token, 0 = padding); any numeric dtype. */
  attentionMask?: Tensor | null;
  /** [B, T] i32/i64 targets, shifted inside (position t predicts labels[t + 1]); -100 is ignored. */
  labels?: Tensor | null;
  /** [B, T] or [1, T] integer positions for the rotary embedding; 0..T-1 by default. */
  positionIds?: Tensor | null;
}

export interface CausalLMOutput {
  /** [B, T, vocab] in the model's dtype (bf16 in bf16 mode, as transformers returns them). */
  logits: Tensor;
  /** Mean cross-entropy over the non-ignored shifted targets, f32, or null without labels. */
  loss: Tensor | null;
}

export interface PretrainedOptions {
  /** The parameters' dtype: "f32" (default) or "bf16" (bf16 mode: adapters added later stay f32). */
  dtype?: DType;
  /** "int8" for an int8 base (needs Linear8bitLt), or a loader hook replacing modules as they load. */
  quantize?: "int8" | QuantizeHook;
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

  /**
   * A model of `config` with freshly initialised weights (PyTorch's layer inits; norms at ones). Load a
   * checkpoint with LlamaForCausalLM.fromPretrained instead, which builds without initialising.
   */
  constructor(config: LlamaConfig, options: { dtype?: DType } = {}) {
    super();
    const opts = optionsArg(options, "LlamaForCausalLM");
    const dtype = opts.dtype ?? "f32";
    if (dtype !== "f32" && dtype !== "bf16") throw peftError("ERR_UNSUPPORTED", `LlamaForCausalLM: dtype must be "f32" or "bf16", got ${describe(dtype)}`);
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
    let quantize: QuantizeHook | undefined;
    if (opts.quantize === "int8")
      throw peftError("ERR_UNSUPPORTED", `${op}: quantize "int8" needs the int8 base layer (Linear8bitLt), which this build does not have`);
    else if (typeof opts.quantize === "function") quantize = opts.quantize;
    else if (opts.quantize !== undefined) throw typeError(`${op}: quantize must be "int8" or a function, got ${describe(opts.quantize)}`);
    const config = await readLlamaConfig(dir);
    const model = skipInit(() => new LlamaForCausalLM(config, { dtype: opts.dtype ?? "f32" }));
    try {
      const res = await loadModelWeightsAsync(model, dir, { strict: false, signal: opts.signal, onProgress: opts.onProgress, quantize });
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
    return model;
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

  /**
   * Logits and (with labels) the shifted cross-entropy: mean over tokens whose next label is not -100,
   * accumulated and returned in f32 whatever the model's dtype.
   */
  forward(inputIds: Tensor, options: CausalLMForwardOptions = {}): CausalLMOutput {
    const op = "LlamaForCausalLM.forward";
    const opts = optionsArg(options, op);
    integerTensor(inputIds, "inputIds", op);
    if (inputIds.shape.length !== 2) throw peftError("ERR_SHAPE", `${op}: inputIds must be [batch, seq], got [${inputIds.shape.join(", ")}]`);
    const [B, T] = inputIds.shape;
    const window = this.config.slidingWindow;
    if (window !== null && T > window)
      throw peftError("ERR_UNSUPPORTED", `${op}: ${T} tokens exceed the sliding window of ${window}; sliding-window attention is not implemented`);
    const mask = opts.attentionMask ?? null;
    if (mask !== null) {
      if (!(mask instanceof Tensor)) throw typeError(`${op}: attentionMask must be a Tensor, got ${describe(mask)}`);
      checkShape(mask, [B, T], "attentionMask", op);
    }
    const labels = opts.labels ?? null;
    if (labels !== null) checkShape(integerTensor(labels, "labels", op), [B, T], "labels", op);
    let positions: number[][] = [Array.from({ length: T }, (_, t) => t)];
    if (opts.positionIds !== undefined && opts.positionIds !== null) {
      const p = integerTensor(opts.positionIds, "positionIds", op);
      if (p.shape.length !== 2 || (p.shape[0] !== B && p.shape[0] !== 1) || p.shape[1] !== T)
        throw peftError("ERR_SHAPE", `${op}: positionIds has shape [${p.shape.join(", ")}], expected [${B} or 1, ${T}]`);
      positions = rowsOf(p);
    }
    const { cos, sin } = ropeTables(this.#invFreq, positions);
    try {
      return tidy(() => {
        const hidden = this.model.forward(inputIds, { cos, sin, attentionMask: mask });
        const logits = this.lm_head.forward(hidden) as Tensor;
        return { logits, loss: labels ? causalLMLoss(logits, labels) : null };
      });
    } finally {
      cos.dispose();
      sin.dispose();
    }
  }
}
