// The key/value cache of a causal LM's attention layers: per layer one K and one V buffer preallocated to
// the longest sequence it will hold, in the [batch, seq, kvHeads, headDim] layout scaledDotProductAttention
// takes (its causal mask is bottom-right aligned when there are fewer queries than keys, which is what
// decoding against a cache needs). A forward writes the new positions of every layer, then advances.
import { Tensor, type DType } from "../tensor.js";
import { optionsArg, peftError, typeError, describe } from "../errors.js";
import { strided, stridedInto, stridesOf } from "../functional/raw.js";
import type { LlamaConfig } from "./llama-config.js";

export interface KVCacheOptions {
  /** Rows decoded together (default 1). */
  batch?: number;
  /** The most positions the cache holds (prompt and generated tokens). */
  maxLength: number;
  /** The K/V dtype: the model's activation dtype ("f32", or "bf16" in bf16 mode). */
  dtype?: DType;
}

export class KVCache {
  readonly batch: number;
  readonly maxLength: number;
  readonly dtype: DType;
  /** Positions already held (the next forward's tokens start here). */
  length = 0;
  readonly #keys: Tensor[];
  readonly #values: Tensor[];
  readonly #kvHeads: number;
  readonly #headDim: number;

  constructor(config: Pick<LlamaConfig, "numHiddenLayers" | "numKeyValueHeads" | "headDim">, options: KVCacheOptions) {
    const opts = optionsArg(options, "KVCache");
    const positive = (v: unknown, n: string): number => {
      if (typeof v !== "number" || !Number.isInteger(v) || v < 1) throw typeError(`KVCache: ${n} must be a positive integer, got ${describe(v)}`);
      return v;
    };
    const batch = positive(opts.batch ?? 1, "batch");
    const maxLength = positive(opts.maxLength, "maxLength");
    const dtype = opts.dtype ?? "f32";
    if (dtype !== "f32" && dtype !== "bf16") throw peftError("ERR_DTYPE", `KVCache: dtype must be "f32" or "bf16", got ${describe(dtype)}`);
    this.batch = batch;
    this.maxLength = maxLength;
    this.dtype = dtype;
    this.#kvHeads = config.numKeyValueHeads;
    this.#headDim = config.headDim;
    const shape = [batch, maxLength, config.numKeyValueHeads, config.headDim];
    this.#keys = Array.from({ length: config.numHiddenLayers }, () => Tensor.zeros(shape, { dtype }));
    this.#values = Array.from({ length: config.numHiddenLayers }, () => Tensor.zeros(shape, { dtype }));
  }

  get numLayers(): number {
    return this.#keys.length;
  }

  /** Bytes the buffers take. */
  get nbytes(): number {
    return 2 * this.#keys.length * this.batch * this.maxLength * this.#kvHeads * this.#headDim * (this.dtype === "f32" ? 4 : 2);
  }

  /** Throws unless `T` more positions of `batch` rows fit. */
  checkRoom(batch: number, T: number, op: string): void {
    for (const [v, n] of [[batch, "batch"], [T, "T"]] as const)
      if (typeof v !== "number" || !Number.isInteger(v) || v < 0) throw typeError(`KVCache.checkRoom: ${n} must be a non-negative integer, got ${describe(v)}`);
    if (typeof op !== "string") throw typeError(`KVCache.checkRoom: op must be a string, got ${describe(op)}`);
    if (batch !== this.batch) throw peftError("ERR_SHAPE", `${op}: the KV cache holds ${this.batch} rows, the input has ${batch}`);
    if (this.length + T > this.maxLength)
      throw peftError("ERR_SHAPE", `${op}: ${this.length} cached + ${T} new positions exceed the KV cache's maxLength ${this.maxLength}`);
  }

  /**
   * Writes layer `layer`'s new k/v [batch, T, kvHeads, headDim] at positions length..length+T-1 and returns
   * all positions so far, [batch, length + T, kvHeads, headDim] (fresh tensors the caller owns).
   */
  update(layer: number, k: Tensor, v: Tensor): { k: Tensor; v: Tensor } {
    const S = this.#write(layer, k, v, "KVCache.update");
    const [B, , H, D] = k.shape, st = stridesOf([B, this.maxLength, H, D]);
    return { k: strided(this.#keys[layer], [B, S, H, D], st, 0), v: strided(this.#values[layer], [B, S, H, D], st, 0) };
  }

  /**
   * Writes as update does and returns the layer's whole buffers, [batch, maxLength, kvHeads, headDim], with
   * the number of positions that are keys now: attention reads them in place (scaledDotProductAttention's
   * keyLength) instead of a copy of the prefix per token. The buffers stay the cache's: never dispose them.
   */
  append(layer: number, k: Tensor, v: Tensor): { k: Tensor; v: Tensor; keyLength: number } {
    const keyLength = this.#write(layer, k, v, "KVCache.append");
    return { k: this.#keys[layer], v: this.#values[layer], keyLength };
  }

  #write(layer: number, k: Tensor, v: Tensor, op: string): number {
    if (typeof layer !== "number") throw typeError(`${op}: layer must be a number, got ${describe(layer)}`);
    for (const [t, n] of [[k, "k"], [v, "v"]] as const)
      if (!(t instanceof Tensor)) throw typeError(`${op}: ${n} must be a Tensor, got ${describe(t)}`);
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.#keys.length) throw peftError("ERR_SHAPE", `${op}: layer ${layer} is outside the cache's ${this.#keys.length} layers`);
    const [B, T, H, D] = k.shape;
    if (k.shape.length !== 4 || H !== this.#kvHeads || D !== this.#headDim || v.shape.join() !== k.shape.join())
      throw peftError("ERR_SHAPE", `${op}: k [${k.shape.join(", ")}] / v [${v.shape.join(", ")}] must be [${this.batch}, T, ${this.#kvHeads}, ${this.#headDim}]`);
    if (k.dtype !== this.dtype || v.dtype !== this.dtype) throw peftError("ERR_DTYPE", `${op}: the cache holds ${this.dtype}, k/v are ${k.dtype}/${v.dtype}`);
    this.checkRoom(B, T, op);
    const full = [B, this.maxLength, H, D], st = stridesOf(full), at = this.length * H * D;
    stridedInto(k, this.#keys[layer], [B, T, H, D], st, at);
    stridedInto(v, this.#values[layer], [B, T, H, D], st, at);
    return this.length + T;
  }

  /** Called once per forward after every layer wrote its T positions. */
  advance(T: number): void {
    this.length += T;
  }

  /** Forgets the cached positions (the buffers are kept for the next sequence). */
  reset(): void {
    this.length = 0;
  }

  dispose(): void {
    for (const t of [...this.#keys, ...this.#values]) t.dispose();
    this.#keys.length = 0;
    this.#values.length = 0;
  }
}
