// The Llama-family decoder stack (transformers' LlamaModel and its layers; Mistral and Qwen2 differ only in
// biases and the sliding window): modules named exactly as transformers names its parameters. Activations
// keep the layout [batch, seq, heads, headDim] between the projections and attention (a reshape, no
// transpose).
import type { Tensor, DType } from "../tensor.js";
import * as F from "../functional/index.js";
import { Module } from "../nn/module.js";
import { Linear } from "../nn/linear.js";
import { Embedding } from "../nn/embedding.js";
import { ModuleList } from "../nn/containers.js";
import { RMSNorm } from "../nn/norm.js";
import { tidy } from "../autograd/tidy.js";
import { checkpoint } from "../autograd/checkpoint.js";
import { wantsGrad } from "../autograd/record.js";
import { checkLayerArgs, type LlamaConfig } from "./llama-config.js";
import { Tensor as TensorClass } from "../tensor.js";
import { describe, peftError, typeError } from "../errors.js";
import type { KVCache } from "./kv-cache.js";

/** What every decoder layer of one forward shares: the rope tables and the key padding mask. */
export interface LayerContext {
  cos: Tensor;
  sin: Tensor;
  attentionMask: Tensor | null;
  /** Decoding: keys and values of earlier positions, extended by this forward's (inference only). */
  cache?: KVCache | null;
  /** This layer's index in the cache (and in prefix). */
  layer?: number;
  /** Keys and values put before every layer's own (prefix tuning): one {key, value} per layer. */
  prefix?: readonly { key: Tensor; value: Tensor }[] | null;
}

export interface LayerOptions {
  dtype: DType;
}

/** A decoder layer's input: [batch, seq, hiddenSize] (what LlamaModel passes between layers). */
function checkHidden(x: unknown, hidden: number, op: string): asserts x is Tensor {
  if (!(x instanceof TensorClass)) throw typeError(`${op}: x must be a Tensor, got ${describe(x)}`);
  if (x.shape.length !== 3 || x.shape[2] !== hidden) throw peftError("ERR_SHAPE", `${op}: x must be [batch, seq, ${hidden}], got [${x.shape.join(", ")}]`);
}

/** The shared per-forward context: rope tables (and optionally a key mask and a cache). */
function checkContext(ctx: unknown, op: string): asserts ctx is LayerContext {
  const c = ctx as Partial<LayerContext> | null;
  if (typeof c !== "object" || c === null || !(c.cos instanceof TensorClass) || !(c.sin instanceof TensorClass))
    throw typeError(`${op}: ctx must be a layer context {cos, sin, attentionMask} (as LlamaModel builds it), got ${describe(ctx)}`);
}

type SwiGLU = (gate: Tensor, up: Tensor) => Tensor;
// A fused silu(gate)·up node when the functional ops offer one; otherwise its two parts.
const fusedSwiglu = (F as unknown as { swiglu?: SwiGLU }).swiglu;

export class LlamaAttention extends Module {
  q_proj: Module;
  k_proj: Module;
  v_proj: Module;
  o_proj: Module;

  constructor(readonly config: LlamaConfig, opts: LayerOptions = { dtype: "f32" }) {
    super();
    checkLayerArgs(config, opts, "LlamaAttention");
    const { hiddenSize: E, numAttentionHeads: H, numKeyValueHeads: Hkv, headDim: D } = config;
    const dtype = opts.dtype;
    this.q_proj = this.registerModule("q_proj", new Linear(E, H * D, { bias: config.qkvBias, dtype }));
    this.k_proj = this.registerModule("k_proj", new Linear(E, Hkv * D, { bias: config.qkvBias, dtype }));
    this.v_proj = this.registerModule("v_proj", new Linear(E, Hkv * D, { bias: config.qkvBias, dtype }));
    this.o_proj = this.registerModule("o_proj", new Linear(H * D, E, { bias: config.oBias, dtype }));
  }

  forward(x: Tensor, ctx: LayerContext): Tensor {
    checkHidden(x, this.config.hiddenSize, "LlamaAttention.forward");
    checkContext(ctx, "LlamaAttention.forward");
    const [B, T] = x.shape;
    const { numAttentionHeads: H, numKeyValueHeads: Hkv, headDim: D } = this.config;
    return tidy(() => {
      const q = F.rotaryEmbedding(this.q_proj.forward(x).reshape([B, T, H, D]), ctx.cos, ctx.sin);
      const k = F.rotaryEmbedding(this.k_proj.forward(x).reshape([B, T, Hkv, D]), ctx.cos, ctx.sin);
      const v = this.v_proj.forward(x).reshape([B, T, Hkv, D]);
      const a = F.scaledDotProductAttention(q, ...keysOf(k, v, q, ctx));
      return this.o_proj.forward(a.reshape([B, T, H * D])) as Tensor;
    });
  }
}

/**
 * The keys and values attention reads, and its options: this forward's k/v, or with a cache all positions so
 * far; when no gradient is wanted the cache's buffers are read in place (no copy of the prefix per token).
 */
function keysOf(k: Tensor, v: Tensor, q: Tensor, ctx: LayerContext): [Tensor, Tensor, F.AttentionOptions] {
  const opts: F.AttentionOptions = { causal: true, attentionMask: ctx.attentionMask };
  if (!ctx.cache) {
    // A prefix (prefix tuning) comes only without a cache: with one, it was written into the cache first.
    const pre = ctx.prefix?.[ctx.layer ?? 0];
    return pre ? [F.cat([pre.key, k], 1), F.cat([pre.value, v], 1), opts] : [k, v, opts];
  }
  if (wantsGrad(q, k, v)) {
    const all = ctx.cache.update(ctx.layer ?? 0, k, v);
    return [all.k, all.v, opts];
  }
  const buf = ctx.cache.append(ctx.layer ?? 0, k, v);
  return [buf.k, buf.v, { ...opts, keyLength: buf.keyLength }];
}

export class LlamaMLP extends Module {
  gate_proj: Module;
  up_proj: Module;
  down_proj: Module;
  readonly hiddenSize: number;

  constructor(config: LlamaConfig, opts: LayerOptions = { dtype: "f32" }) {
    super();
    checkLayerArgs(config, opts, "LlamaMLP");
    this.hiddenSize = config.hiddenSize;
    const { hiddenSize: E, intermediateSize: I, mlpBias: bias } = config;
    this.gate_proj = this.registerModule("gate_proj", new Linear(E, I, { bias, dtype: opts.dtype }));
    this.up_proj = this.registerModule("up_proj", new Linear(E, I, { bias, dtype: opts.dtype }));
    this.down_proj = this.registerModule("down_proj", new Linear(I, E, { bias, dtype: opts.dtype }));
  }

  /** down_proj(silu(gate_proj(x)) · up_proj(x)) */
  forward(x: Tensor): Tensor {
    checkHidden(x, this.hiddenSize, "LlamaMLP.forward");
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
  readonly hiddenSize: number;

  constructor(config: LlamaConfig, opts: LayerOptions = { dtype: "f32" }) {
    super();
    checkLayerArgs(config, opts, "LlamaDecoderLayer");
    this.hiddenSize = config.hiddenSize;
    const norm = () => new RMSNorm(config.hiddenSize, { eps: config.rmsNormEps, dtype: opts.dtype });
    this.self_attn = this.registerModule("self_attn", new LlamaAttention(config, opts));
    this.mlp = this.registerModule("mlp", new LlamaMLP(config, opts));
    this.input_layernorm = this.registerModule("input_layernorm", norm());
    this.post_attention_layernorm = this.registerModule("post_attention_layernorm", norm());
  }

  /** Pre-norm residual block: h + attn(norm(h)), then + mlp(norm(·)). */
  forward(h: Tensor, ctx: LayerContext): Tensor {
    checkHidden(h, this.hiddenSize, "LlamaDecoderLayer.forward");
    checkContext(ctx, "LlamaDecoderLayer.forward");
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

  constructor(readonly config: LlamaConfig, opts: LayerOptions = { dtype: "f32" }) {
    super();
    checkLayerArgs(config, opts, "LlamaModel");
    this.embed_tokens = this.registerModule("embed_tokens", new Embedding(config.vocabSize, config.hiddenSize, { dtype: opts.dtype }));
    this.layers = this.registerModule("layers", new ModuleList(Array.from({ length: config.numHiddenLayers }, () => new LlamaDecoderLayer(config, opts))));
    this.norm = this.registerModule("norm", new RMSNorm(config.hiddenSize, { eps: config.rmsNormEps, dtype: opts.dtype }));
  }

  /** The final hidden states [B, T, hidden] (after model.norm) of token ids, or of float input embeddings [B, T, hidden]. */
  forward(inputIds: Tensor, ctx: LayerContext): Tensor {
    if (!(inputIds instanceof TensorClass)) throw typeError(`LlamaModel.forward: inputIds must be a Tensor (token ids, or input embeddings [B, T, hidden]), got ${describe(inputIds)}`);
    checkContext(ctx, "LlamaModel.forward");
    // Embeddings get a handle of their own: the first layer's input is disposed below, the caller's is not.
    const embeds = inputIds.shape.length === 3 && inputIds.dtype !== "i32" && inputIds.dtype !== "i64";
    let h = embeds ? inputIds.reshape(inputIds.shape) : this.embed_tokens.forward(inputIds);
    const recompute = this.gradientCheckpointing && this.training;
    if (recompute && ctx.prefix) throw peftError("ERR_UNSUPPORTED", "LlamaModel.forward: a prefix (prefix tuning) does not work with gradient checkpointing");
    // The rerun in backward gets the context as tensors the checkpoint keeps (the caller frees its own).
    const context = [ctx.cos, ctx.sin, ...(ctx.attentionMask ? [ctx.attentionMask] : [])];
    for (const [index, layer] of [...this.layers].entries()) {
      const run = (x: Tensor, cos: Tensor, sin: Tensor, mask?: Tensor) => {
        const y = layer.forward(x, { cos, sin, attentionMask: mask ?? null, cache: ctx.cache, layer: index, prefix: ctx.prefix }) as Tensor;
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
