// Linear4bit: bitsandbytes' 4-bit linear layer (NF4 or FP4, the QLoRA base). The weight is kept only as packed
// 4-bit codes (u8, two a byte, first value in the high nibble) with one absmax per block of `blocksize` values,
// optionally itself quantised (compressStatistics: 8-bit blocks of 256 around its mean). Forward casts x to the
// compute dtype, unpacks W into the GEMM's panels block by block (no f32 copy of W) and casts y back to x's
// dtype, as bitsandbytes' Linear4bit.forward; the weight is frozen and backward gives dx (and the bias gradient).
// stateDict()/fromStateDict() use transformers' keys: weight, bias, weight.absmax, weight.quant_map,
// weight.nested_absmax, weight.nested_quant_map, weight.quant_state.bitsandbytes__<nf4|fp4>.
import { Tensor, describe, type DType } from "../tensor.js";
import { quant4Dequantize, quant4Linear, quant4LinearGradInput, type Quant4Operand } from "../ops.js";
import { sumRows } from "../kernels.js";
import { optionsArg, peftError, shownValue, typeError } from "../errors.js";
import { Module, gradOf, retain } from "./module.js";
import { Linear } from "./linear.js";
import {
  BLOCKSIZES_4BIT, absmaxF32, packQuantState, quant4Table, quantize4bit, unpackQuantState,
  type Quant4Stats, type QuantStateInfo, type QuantType4,
} from "./quant-4bit.js";
import { untrack } from "../autograd/scope.js";

export type ComputeDtype4bit = "f32" | "bf16" | "f16";

export interface Linear4bitOptions {
  bias?: boolean;
  /** "nf4" or "fp4" (bitsandbytes' Linear4bit default: "fp4"). */
  quantType?: QuantType4;
  /** Values per absmax: 32, 64 (default), 128, ... 4096. */
  blocksize?: number;
  /** Quantise the absmax too (double quantisation; bitsandbytes' default: true). */
  compressStatistics?: boolean;
  /** The dtype x is cast to for the product (default: x's own, as bitsandbytes with compute_dtype None). */
  computeDtype?: ComputeDtype4bit;
  /** dtype of the weight before quantisation (what dequantisation rounds to) and of the bias. */
  dtype?: DType;
  seed?: number;
}

type BuildOptions = Pick<Linear4bitOptions, "quantType" | "blocksize" | "compressStatistics" | "computeDtype">;

interface Parts {
  packed: Tensor;
  stats: Quant4Stats;
  quantMap: Tensor;
  bias: Tensor | null;
  info: QuantStateInfo;
  computeDtype: ComputeDtype4bit | undefined;
  /** The packed quant state as a file holds it (else packed from info). */
  state?: Tensor;
}

// The parts the next construction takes instead of initialising (fromLinear / fromStateDict / empty).
let assembling: Parts | null = null;

/** Internal parameter name -> transformers' key (names here cannot hold dots). */
function externalKey(name: string, quantType: QuantType4): string {
  if (name === "weight" || name === "bias") return name;
  if (name === "quant_state") return `weight.quant_state.bitsandbytes__${quantType}`;
  return `weight.${name}`;
}

function checkOptions(options: unknown, what: string): BuildOptions & { bias?: boolean; dtype?: DType; seed?: number } {
  const o = optionsArg(options as Linear4bitOptions | undefined, what);
  if (o.quantType !== undefined && o.quantType !== "nf4" && o.quantType !== "fp4")
    throw peftError("ERR_CONFIG", `${what}: quantType must be "nf4" or "fp4", got ${shownValue(o.quantType)}`);
  if (o.blocksize !== undefined && !BLOCKSIZES_4BIT.includes(o.blocksize as number))
    throw peftError("ERR_CONFIG", `${what}: blocksize must be one of ${BLOCKSIZES_4BIT.join(", ")}, got ${shownValue(o.blocksize)}`);
  if (o.compressStatistics !== undefined && typeof o.compressStatistics !== "boolean")
    throw typeError(`${what}: compressStatistics must be a boolean, got ${describe(o.compressStatistics)}`);
  if (o.computeDtype !== undefined && o.computeDtype !== "f32" && o.computeDtype !== "bf16" && o.computeDtype !== "f16")
    throw peftError("ERR_CONFIG", `${what}: computeDtype must be "f32", "bf16" or "f16", got ${shownValue(o.computeDtype)}`);
  return o;
}

function checkWeight(w: Tensor, what: string): void {
  if (w.dtype !== "f32" && w.dtype !== "f16" && w.dtype !== "bf16") throw peftError("ERR_DTYPE", `${what}: the weight must be f32, f16 or bf16, got ${w.dtype}`);
  if (w.shape.length !== 2) throw peftError("ERR_SHAPE", `${what}: the weight must be 2-D (out, in), got [${w.shape.join(", ")}]`);
}

/** Quantises a float (out, in) weight into the parts of a layer. */
function quantizedParts(w: Tensor, bias: Tensor | null, o: BuildOptions): Parts {
  const quantType = o.quantType ?? "fp4", blocksize = o.blocksize ?? 64, compress = o.compressStatistics ?? true;
  const [packed, stats] = quantize4bit(w, quantType, blocksize, compress);
  const info: QuantStateInfo = {
    quantType, blocksize, dtype: w.dtype, shape: [w.shape[0], w.shape[1]],
    nested: stats.nested ? { blocksize: stats.nested.blocksize, dtype: stats.nested.dtype, offset: stats.nested.offset } : null,
  };
  return { packed, stats, quantMap: Tensor.fromArray(quant4Table(quantType), [16], "f32"), bias, info, computeDtype: o.computeDtype };
}

export class Linear4bit extends Module {
  /** The packed 4-bit codes, u8 ((out·in + 1) / 2, 1), frozen. */
  weight: Tensor;
  bias: Tensor | null;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly computeDtype: ComputeDtype4bit | undefined;
  #info: QuantStateInfo;
  #absmax32: { versions: number[]; t: Tensor } | null = null;

  /** A layer initialised as torch.nn.Linear would be, then quantised (as bitsandbytes does on first use). */
  constructor(inFeatures: number, outFeatures: number, options: Linear4bitOptions = {}) {
    super();
    let parts = assembling;
    assembling = null;
    if (!parts) {
      const opts = checkOptions(options, "Linear4bit");
      const dense = new Linear(inFeatures, outFeatures, { bias: opts.bias, dtype: opts.dtype, seed: opts.seed });
      try {
        parts = quantizedParts(dense.weight, dense.bias ? retain(dense.bias) : null, opts);
      } finally {
        dense.dispose();
      }
    }
    this.outFeatures = parts.info.shape[0];
    this.inFeatures = parts.info.shape[1];
    this.computeDtype = parts.computeDtype;
    this.#info = parts.info;
    // bitsandbytes' state-dict order: weight, bias, then the quant state's tensors.
    this.weight = this.registerParameter("weight", parts.packed);
    this.weight.requiresGrad = false;
    this.bias = parts.bias ? this.registerParameter("bias", parts.bias) : (this.registerParameter("bias", null), null);
    this.registerBuffer("absmax", parts.stats.absmax);
    this.registerBuffer("quant_map", parts.quantMap);
    if (parts.stats.nested) {
      this.registerBuffer("nested_absmax", parts.stats.nested.absmax);
      this.registerBuffer("nested_quant_map", parts.stats.nested.code);
    }
    this.registerBuffer("quant_state", parts.state ?? packQuantState(parts.info));
  }

  get quantType(): QuantType4 {
    return this.#info.quantType;
  }
  get blocksize(): number {
    return this.#info.blocksize;
  }
  get compressStatistics(): boolean {
    return this.#info.nested !== null;
  }
  /** The dtype the weight had when quantised: dequantisation rounds to it (QuantState.dtype). */
  get quantDtype(): DType {
    return this.#info.dtype;
  }
  /** A copy of the quant state's non-tensor fields. */
  get quantState(): QuantStateInfo {
    return structuredClone(this.#info);
  }

  #buffer(name: string): Tensor | null {
    for (const [n, t] of this.namedParameters("", { recurse: false })) if (n === name) return t;
    return null;
  }

  #stats(): Quant4Stats {
    const n = this.#info.nested;
    return {
      absmax: this.#buffer("absmax")!,
      nested: n ? { absmax: this.#buffer("nested_absmax")!, code: this.#buffer("nested_quant_map")!, offset: n.offset, blocksize: n.blocksize, dtype: n.dtype } : null,
    };
  }

  /** The f32 absmax the kernels read, remade when the statistics change. */
  #absmax(): Tensor {
    const s = this.#stats();
    const versions = [s.absmax.version, s.nested?.absmax.version ?? -1, s.nested?.code.version ?? -1, s.nested?.offset ?? 0];
    const c = this.#absmax32;
    if (c && c.versions.every((v, i) => v === versions[i])) return c.t;
    c?.t.dispose();
    const t = untrack(absmaxF32(s));
    this.#absmax32 = { versions, t };
    return t;
  }

  /** The weight as the quant4 ops take it, computed in `computeDtype`. */
  operand(computeDtype: ComputeDtype4bit = "f32"): Quant4Operand {
    const i = this.#info;
    return { packed: this.weight, absmax: this.#absmax(), quantType: i.quantType, blocksize: i.blocksize, shape: i.shape, dtype: i.dtype as Quant4Operand["dtype"], computeDtype: computeDtype as Quant4Operand["computeDtype"] };
  }

  /** The f32 (out, in) weight exactly as bitsandbytes' dequantize_4bit gives it (in quantDtype), widened to f32. */
  dequantizeWeight(): Tensor {
    return quant4Dequantize(this.operand(), "f32");
  }

  /**
   * Re-quantises this layer's weight from a float (out, in) tensor with its own quant type, block size and
   * statistics mode (PEFT's merge into a 4-bit base); the quant state's dtype becomes w's.
   */
  requantize(w: Tensor): void {
    checkWeight(w, `${this.describe()}.requantize`);
    if (w.shape[0] !== this.outFeatures || w.shape[1] !== this.inFeatures)
      throw peftError("ERR_SHAPE", `${this.describe()}.requantize: expected [${this.outFeatures}, ${this.inFeatures}], got [${w.shape.join(", ")}]`);
    const parts = quantizedParts(w, null, { quantType: this.quantType, blocksize: this.blocksize, compressStatistics: this.compressStatistics });
    try {
      this.#adopt(parts.info, parts.packed, parts.stats);
    } finally {
      parts.packed.dispose();
      parts.quantMap.dispose();
      parts.stats.absmax.dispose();
      parts.stats.nested?.absmax.dispose();
      parts.stats.nested?.code.dispose();
    }
  }

  /** Copies codes and statistics in place (same sizes) and takes `info` as the quant state. */
  #adopt(info: QuantStateInfo, packed: Tensor, stats: Quant4Stats): void {
    this.weight.copyFrom(packed);
    this.#buffer("absmax")!.copyFrom(stats.absmax);
    if (stats.nested) {
      this.#buffer("nested_absmax")!.copyFrom(stats.nested.absmax);
      this.#buffer("nested_quant_map")!.copyFrom(stats.nested.code);
    }
    this.#setInfo(info);
  }

  #setInfo(info: QuantStateInfo): void {
    this.#info = structuredClone(info);
    const old = this.unregisterParameter("quant_state");
    this.registerBuffer("quant_state", packQuantState(info));
    old?.dispose();
    this.#absmax32?.t.dispose();
    this.#absmax32 = null;
  }

  /** Quantises a Linear's weight (the Linear keeps its own tensors; the bias is shared, not copied). */
  static fromLinear(linear: Linear, options: BuildOptions = {}): Linear4bit {
    if (!(linear instanceof Linear)) throw typeError(`Linear4bit.fromLinear: expected a Linear, got ${describe(linear)}`);
    const opts = checkOptions(options, "Linear4bit.fromLinear");
    checkWeight(linear.weight, "Linear4bit.fromLinear");
    assembling = quantizedParts(linear.weight, linear.bias ? retain(linear.bias) : null, opts);
    return new Linear4bit(0, 0);
  }

  /**
   * From a bitsandbytes / transformers state dict of one layer (keys as stateDict() writes them). The tensors
   * are shared, not copied.
   */
  static fromStateDict(record: Record<string, Tensor>, options: Pick<Linear4bitOptions, "computeDtype"> = {}): Linear4bit {
    const what = "Linear4bit.fromStateDict";
    const opts = checkOptions(options, what);
    const parts = partsFromRecord(record, what);
    assembling = { ...parts, computeDtype: opts.computeDtype };
    return new Linear4bit(0, 0);
  }

  /**
   * A layer of the quant state a checkpoint holds (the u8 JSON tensor bitsandbytes packs; shared, not copied),
   * its codes, statistics and bias zeros of the sizes that state implies, for the checkpoint to be read into
   * (nothing is quantised). `what` names the tensor in errors.
   */
  static fromQuantState(state: Tensor, options: { bias?: boolean; biasDtype?: DType; computeDtype?: ComputeDtype4bit; what?: string } = {}): Linear4bit {
    const what = options.what ?? "Linear4bit.fromQuantState";
    if (!(state instanceof Tensor)) throw typeError(`${what}: the quant state must be a Tensor, got ${describe(state)}`);
    const opts = checkOptions({ computeDtype: options.computeDtype }, what);
    const info = unpackQuantState(state, what);
    const n = info.shape[0] * info.shape[1], blocks = Math.ceil(n / info.blocksize);
    const nested = info.nested;
    const stats: Quant4Stats = {
      absmax: Tensor.zeros([blocks], { dtype: nested ? "u8" : "f32" }),
      nested: nested ? { absmax: Tensor.zeros([Math.ceil(blocks / nested.blocksize)]), code: Tensor.zeros([256]), ...nested } : null,
    };
    const bias = options.bias ? Tensor.zeros([info.shape[0]], { dtype: options.biasDtype ?? info.dtype }) : null;
    assembling = {
      packed: Tensor.zeros([Math.ceil(n / 2), 1], { dtype: "u8" }), stats, quantMap: Tensor.zeros([16]), bias, info,
      computeDtype: opts.computeDtype, state: retain(state),
    };
    return new Linear4bit(0, 0);
  }

  /** A layer holding zeros for a checkpoint to be loaded into (the quant state comes with it). */
  static empty(inFeatures: number, outFeatures: number, options: Omit<Linear4bitOptions, "seed"> = {}): Linear4bit {
    const opts = checkOptions(options, "Linear4bit.empty");
    for (const [n, what] of [[inFeatures, "inFeatures"], [outFeatures, "outFeatures"]] as const)
      if (!Number.isSafeInteger(n) || n < 0) throw peftError("ERR_CONFIG", `Linear4bit.empty: ${what} must be a non-negative integer, got ${shownValue(n)}`);
    const w = Tensor.zeros([outFeatures, inFeatures], { dtype: opts.dtype ?? "f32" });
    try {
      const bias = opts.bias === false ? null : Tensor.zeros([outFeatures], { dtype: opts.dtype ?? "f32" });
      assembling = quantizedParts(w, bias, opts);
      return new Linear4bit(0, 0);
    } finally {
      w.dispose();
    }
  }

  forward(x: Tensor): Tensor {
    this.input(x);
    if (this.weight.requiresGrad) throw peftError("ERR_UNSUPPORTED", `${this.describe()}: the 4-bit weight has no gradient; set weight.requiresGrad = false`);
    const y = this.product(x);
    return this.weightLayerOutput(x, y, this.weight, this.bias, (g, _x, wantDx) => this.#gradients(g, wantDx));
  }

  /** y = x·Wᵀ + b as forward computes it (x and the bias cast to the compute dtype, y back in x's), outside autograd. */
  product(x: Tensor): Tensor {
    if (!(x instanceof Tensor)) throw typeError(`${this.describe()}.product: x must be a Tensor, got ${describe(x)}`);
    const cdt = this.computeFor(x);
    const keep: Tensor[] = [];
    try {
      const xc = inDtype(x, cdt, keep);
      const bias = this.bias ? inDtype(this.bias, cdt, keep) : null;
      const y = quant4Linear(xc, this.operand(cdt), bias);
      if (y.dtype === x.dtype) return y;
      keep.push(y);
      return y.to(x.dtype);
    } finally {
      keep.forEach((t) => t.dispose());
    }
  }

  override backward(dy: Tensor, options = {}): Tensor | null {
    const opts = this.gradInput(dy, options);
    this.saved();
    const dx = this.#gradients(dy, opts.inputGrad !== false);
    this.releaseSaved();
    return dx;
  }

  /** The compute dtype for an input of x's dtype (computeDtype, or x's own as bitsandbytes with compute_dtype None). */
  computeFor(x: Tensor): ComputeDtype4bit {
    return this.computeDtype ?? (x.dtype === "bf16" || x.dtype === "f16" ? x.dtype : "f32");
  }

  /** dx = dy·W in the compute dtype (W rounded as forward's), returned in dy's dtype; the bias gradient. */
  #gradients(dy: Tensor, wantDx: boolean): Tensor | null {
    if (this.bias?.requiresGrad) sumRows(dy, gradOf(this.bias), { accumulate: true });
    if (!wantDx) return null;
    return this.gradInput4bit(dy, this.computeFor(dy));
  }

  /** dx = dy·W with W rounded to `cdt` (dy cast to it first), in dy's dtype. */
  gradInput4bit(dy: Tensor, cdt: ComputeDtype4bit): Tensor {
    if (!(dy instanceof Tensor)) throw typeError(`${this.describe()}.gradInput4bit: dy must be a Tensor, got ${describe(dy)}`);
    if (cdt !== "f32" && cdt !== "bf16" && cdt !== "f16") throw typeError(`${this.describe()}.gradInput4bit: the compute dtype must be "f32", "bf16" or "f16", got ${shownValue(cdt)}`);
    const keep: Tensor[] = [];
    try {
      let dx = quant4LinearGradInput(inDtype(dy, cdt, keep), this.operand(cdt));
      if (dx.dtype !== dy.dtype) {
        const c = dx.to(dy.dtype);
        dx.dispose();
        dx = c;
      }
      return dx;
    } finally {
      keep.forEach((t) => t.dispose());
    }
  }

  /** transformers' keys (see the file's header): state dicts and the checkpoint loaders use them. */
  override stateKey(name: string): string {
    return externalKey(name, this.quantType);
  }

  /**
   * Loads transformers' keys. The codes and statistics are copied in place (their sizes follow the layer's
   * shape, block size and statistics mode, which must match); the quant state is taken from the record.
   */
  override loadStateDict(record: Record<string, Tensor>, options: { strict?: boolean } = {}): { missingKeys: string[]; unexpectedKeys: string[] } {
    const what = `${this.describe()}.loadStateDict`;
    const parts = partsFromRecord(record, what);
    try {
      const i = parts.info;
      if (i.shape[0] !== this.outFeatures || i.shape[1] !== this.inFeatures || i.blocksize !== this.blocksize || (i.nested !== null) !== this.compressStatistics)
        throw peftError("ERR_CHECKPOINT", `${what}: the record holds a ${i.quantType} weight [${i.shape.join(", ")}] with blocksize ${i.blocksize}${i.nested ? ", nested statistics" : ""}; this layer is [${this.outFeatures}, ${this.inFeatures}] with blocksize ${this.blocksize}${this.compressStatistics ? ", nested statistics" : ""}`);
      if ((parts.bias !== null) !== (this.bias !== null) && options.strict !== false)
        throw peftError("ERR_CHECKPOINT", `${what}: ${parts.bias ? "unexpected key bias" : "missing key bias"}`);
      if (parts.bias && this.bias) this.bias.copyFrom(parts.bias);
      this.#adopt(i, parts.packed, parts.stats);
      this.#buffer("quant_map")!.copyFrom(parts.quantMap);
      return { missingKeys: [], unexpectedKeys: [] };
    } finally {
      for (const t of [parts.packed, parts.bias, parts.quantMap, parts.stats.absmax, parts.stats.nested?.absmax, parts.stats.nested?.code]) t?.dispose();
    }
  }

  override clone(): Linear4bit {
    const copy = Linear4bit.empty(this.inFeatures, this.outFeatures, {
      bias: this.bias !== null, dtype: this.bias?.dtype ?? this.quantDtype, quantType: this.quantType, blocksize: this.blocksize,
      compressStatistics: this.compressStatistics, computeDtype: this.computeDtype,
    });
    const sd = this.stateDict();
    try {
      copy.loadStateDict(sd);
    } finally {
      for (const t of Object.values(sd)) t.dispose();
    }
    copy.training = this.training;
    if (copy.bias && this.bias) copy.bias.requiresGrad = this.bias.requiresGrad;
    return copy;
  }

  override dispose(): void {
    this.#absmax32?.t.dispose();
    this.#absmax32 = null;
    super.dispose();
  }

  override extraRepr(): string {
    return `in_features=${this.inFeatures}, out_features=${this.outFeatures}, bias=${this.bias ? "True" : "False"}, quant_type=${this.quantType}, blocksize=${this.blocksize}`;
  }
}

/** t in `dtype` (t itself when it already is; a converted copy collected in `keep`). */
function inDtype(t: Tensor, dtype: DType, keep: Tensor[]): Tensor {
  if (t.dtype === dtype) return t;
  const c = t.to(dtype);
  keep.push(c);
  return c;
}

/** The parts of a layer from transformers' keys (tensors retained: shared, not copied). */
function partsFromRecord(record: Record<string, Tensor>, what: string): Omit<Parts, "computeDtype"> {
  if (typeof record !== "object" || record === null) throw typeError(`${what}: expected a record of tensors, got ${describe(record)}`);
  const get = (k: string): Tensor | undefined => {
    const t = (record as Record<string, unknown>)[k];
    if (t !== undefined && !(t instanceof Tensor)) throw typeError(`${what}: ${shownValue(k)} must be a Tensor, got ${describe(t)}`);
    return t;
  };
  const qsKeys = Object.keys(record).filter((k) => k.startsWith("weight.quant_state."));
  if (qsKeys.length !== 1)
    throw peftError("ERR_CHECKPOINT", `${what}: expected exactly one "weight.quant_state.bitsandbytes__nf4" or "…__fp4" key (the packed quant state), found ${qsKeys.length ? qsKeys.join(", ") : "none"}`);
  const qsKey = qsKeys[0];
  const info = unpackQuantState(get(qsKey)!, `${what} (${qsKey})`);
  if (qsKey !== `weight.quant_state.bitsandbytes__${info.quantType}`)
    throw peftError("ERR_CHECKPOINT", `${what}: ${qsKey} holds quant_type ${info.quantType}`);
  const w = get("weight"), absmax = get("weight.absmax"), quantMap = get("weight.quant_map");
  const nAbs = get("weight.nested_absmax"), nMap = get("weight.nested_quant_map");
  if (!w) throw peftError("ERR_CHECKPOINT", `${what}: no "weight" (the packed 4-bit codes)`);
  if (!absmax) throw peftError("ERR_CHECKPOINT", `${what}: no "weight.absmax" beside the 4-bit weight: the block scales are needed to dequantise it`);
  if (!quantMap) throw peftError("ERR_CHECKPOINT", `${what}: no "weight.quant_map"`);
  const [out, inF] = info.shape;
  const n = out * inF, blocks = Math.ceil(n / info.blocksize);
  if (w.dtype !== "u8") throw peftError("ERR_DTYPE", `${what}: weight must be u8 (packed 4-bit codes), got ${w.dtype}`);
  if (w.shape.reduce((a, b) => a * b, 1) !== Math.ceil(n / 2))
    throw peftError("ERR_SHAPE", `${what}: weight must hold ${Math.ceil(n / 2)} bytes for the [${out}, ${inF}] weight of its quant state, got [${w.shape.join(", ")}]`);
  if (quantMap.dtype !== "f32" || quantMap.shape.length !== 1 || quantMap.shape[0] !== 16)
    throw peftError("ERR_CHECKPOINT", `${what}: weight.quant_map must be f32 [16], got ${quantMap.dtype} [${quantMap.shape.join(", ")}]`);
  const nested = info.nested;
  if (nested ? !nAbs || !nMap : nAbs !== undefined || nMap !== undefined)
    throw peftError("ERR_CHECKPOINT", `${what}: ${nested ? "the quant state is nested but weight.nested_absmax / weight.nested_quant_map are missing" : "weight.nested_absmax / weight.nested_quant_map given but the quant state has no nested_offset"}`);
  const wantAbs = nested ? "u8" : "f32";
  if (absmax.dtype !== wantAbs || absmax.shape.length !== 1 || absmax.shape[0] !== blocks)
    throw peftError("ERR_CHECKPOINT", `${what}: weight.absmax must be ${wantAbs} [${blocks}] (one per block of ${info.blocksize}), got ${absmax.dtype} [${absmax.shape.join(", ")}]`);
  let stats: Quant4Stats = { absmax: retain(absmax), nested: null };
  if (nested) {
    const blocks2 = Math.ceil(blocks / nested.blocksize);
    if (nAbs!.dtype !== "f32" || nAbs!.shape.length !== 1 || nAbs!.shape[0] !== blocks2)
      throw peftError("ERR_CHECKPOINT", `${what}: weight.nested_absmax must be f32 [${blocks2}], got ${nAbs!.dtype} [${nAbs!.shape.join(", ")}]`);
    if (nMap!.dtype !== "f32" || nMap!.shape.length !== 1 || nMap!.shape[0] !== 256)
      throw peftError("ERR_CHECKPOINT", `${what}: weight.nested_quant_map must be f32 [256], got ${nMap!.dtype} [${nMap!.shape.join(", ")}]`);
    stats = { absmax: stats.absmax, nested: { absmax: retain(nAbs!), code: retain(nMap!), offset: nested.offset, blocksize: nested.blocksize, dtype: nested.dtype } };
  }
  const bias = get("bias");
  if (bias && (bias.shape.length !== 1 || bias.shape[0] !== out)) throw peftError("ERR_SHAPE", `${what}: bias must have shape [${out}], got [${bias.shape.join(", ")}]`);
  // The codes keep bitsandbytes' ((n + 1) / 2, 1) shape whatever shape they came in.
  const packed = w.shape.length === 2 && w.shape[1] === 1 ? retain(w) : w.reshape([Math.ceil(n / 2), 1]);
  return { packed, stats, quantMap: retain(quantMap), bias: bias ? retain(bias) : null, info };
}
