// Linear8bitLt: bitsandbytes' LLM.int8 linear layer (hasFp16Weights = false). The weight is kept only as CB
// (int8, (out, in)) and SCB (f32 row absmax, (out)); forward quantises x per row and runs the int8 kernel,
// with input columns holding any |x| >= threshold computed in floating point. The int8 weight is frozen:
// backward gives dx (and the bias gradient), so adapters train on top of it.
import { Tensor, describe, type DType } from "../tensor.js";
import { int8Linear, int8LinearGradInput, int8Quantize } from "../ops.js";
import { sumRows } from "../kernels.js";
import { optionsArg, peftError, rangeError, shownValue, typeError } from "../errors.js";
import { Module, gradOf, retain } from "./module.js";
import { Linear } from "./linear.js";

export interface Linear8bitLtOptions {
  bias?: boolean;
  /** Outlier threshold (bitsandbytes' default 0: no outlier columns; transformers loads with 6.0). */
  threshold?: number;
  /** bitsandbytes' trainable-f16-weight mode: not supported (ERR_UNSUPPORTED when true). */
  hasFp16Weights?: boolean;
  /** dtype of the bias (the weight is int8 whatever this says). */
  dtype?: DType;
  seed?: number;
}

// The parts the next construction takes instead of initialising (fromLinear / fromStateDict / clone).
let assembling: { cb: Tensor; scb: Tensor; bias: Tensor | null; threshold: number } | null = null;

/** bitsandbytes' weight_format values; only "row" (0) is what bitsandbytes >= 0.45 writes and what the kernels read. */
const WEIGHT_FORMATS = ["row", "col32", "col_turing", "col_ampere"];

function checkThreshold(t: unknown, what: string): number {
  if (t === undefined) return 0;
  if (typeof t !== "number") throw typeError(`${what}: threshold must be a number, got ${describe(t)}`);
  if (!(t >= 0) || !Number.isFinite(t)) throw rangeError(`${what}: threshold must be a finite number >= 0, got ${t}`);
  return t;
}

function checkOptions(options: Linear8bitLtOptions | undefined, what: string): Linear8bitLtOptions {
  const opts = optionsArg(options, what);
  if (opts.hasFp16Weights !== undefined && typeof opts.hasFp16Weights !== "boolean")
    throw typeError(`${what}: hasFp16Weights must be a boolean, got ${describe(opts.hasFp16Weights)}`);
  if (opts.hasFp16Weights)
    throw peftError("ERR_UNSUPPORTED", `${what}: hasFp16Weights: true (bitsandbytes' trainable f16 weight mode) is not supported; the int8 weight is frozen`);
  checkThreshold(opts.threshold, what);
  return opts;
}

export class Linear8bitLt extends Module {
  /** CB: the int8 weight (out, in), frozen. */
  weight: Tensor;
  bias: Tensor | null;
  /** SCB: each output row's absmax (f32). */
  SCB: Tensor;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly threshold: number;

  /** A layer initialised as torch.nn.Linear would be, then quantised (as bitsandbytes does on first use). */
  constructor(inFeatures: number, outFeatures: number, options: Linear8bitLtOptions = {}) {
    super();
    const given = assembling;
    assembling = null;
    if (given) {
      this.inFeatures = given.cb.shape[1];
      this.outFeatures = given.cb.shape[0];
      this.threshold = given.threshold;
      [this.weight, this.bias, this.SCB] = this.#register(given.cb, given.bias, given.scb);
      return;
    }
    const opts = checkOptions(options, "Linear8bitLt");
    this.threshold = checkThreshold(opts.threshold, "Linear8bitLt");
    const dense = new Linear(inFeatures, outFeatures, { bias: opts.bias, dtype: opts.dtype, seed: opts.seed });
    try {
      this.inFeatures = dense.inFeatures;
      this.outFeatures = dense.outFeatures;
      const [cb, scb] = int8Quantize(dense.weight);
      [this.weight, this.bias, this.SCB] = this.#register(cb, dense.bias ? retain(dense.bias) : null, scb);
    } finally {
      dense.dispose();
    }
  }

  #register(cb: Tensor, bias: Tensor | null, scb: Tensor): [Tensor, Tensor | null, Tensor] {
    // bitsandbytes' state-dict order: weight, bias, SCB, weight_format.
    const weight = this.registerParameter("weight", cb);
    weight.requiresGrad = false;
    const b = this.registerParameter("bias", bias);
    const SCB = this.registerBuffer("SCB", scb);
    this.registerBuffer("weight_format", Tensor.fromArray([0], [], "u8"));
    return [weight, bias ? b : null, SCB];
  }

  /** Quantises a Linear's weight (the Linear keeps its own tensors; the bias is shared, not copied). */
  static fromLinear(linear: Linear, options: Omit<Linear8bitLtOptions, "bias" | "dtype" | "seed"> = {}): Linear8bitLt {
    if (!(linear instanceof Linear)) throw typeError(`Linear8bitLt.fromLinear: expected a Linear, got ${describe(linear)}`);
    const opts = checkOptions(options, "Linear8bitLt.fromLinear");
    const [cb, scb] = int8Quantize(linear.weight);
    return Linear8bitLt.#assemble(cb, scb, linear.bias ? retain(linear.bias) : null, opts.threshold ?? 0);
  }

  /**
   * From a bitsandbytes / transformers state dict: `weight` (i8, (out, in)), `SCB` (f32), optional `bias` and
   * `weight_format` (0, "row"). The tensors are shared, not copied.
   */
  static fromStateDict(record: Record<string, Tensor>, options: Omit<Linear8bitLtOptions, "bias" | "dtype" | "seed"> = {}): Linear8bitLt {
    const what = "Linear8bitLt.fromStateDict";
    const opts = checkOptions(options, what);
    if (typeof record !== "object" || record === null) throw typeError(`${what}: expected a record of tensors, got ${describe(record)}`);
    const get = (k: string): Tensor | undefined => {
      const t = (record as Record<string, unknown>)[k];
      if (t !== undefined && !(t instanceof Tensor)) throw typeError(`${what}: ${shownValue(k)} must be a Tensor, got ${describe(t)}`);
      return t;
    };
    const w = get("weight"), scb = get("SCB"), bias = get("bias") ?? null;
    if (!w) throw peftError("ERR_CHECKPOINT", `${what}: no "weight" (the int8 CB)`);
    if (!scb) throw peftError("ERR_CHECKPOINT", `${what}: no "SCB" beside the int8 weight [${w.shape.join(", ")}]: the row scales are needed to dequantise it`);
    checkFormat(get("weight_format"), what);
    checkInt8(w, scb, what);
    return Linear8bitLt.#assemble(retain(w), retain(scb), bias ? retain(bias) : null, opts.threshold ?? 0);
  }

  /**
   * A layer holding zeros (CB 0, SCB 0), for a checkpoint to be loaded into (bitsandbytes' keys: weight,
   * bias, SCB, weight_format).
   */
  static empty(inFeatures: number, outFeatures: number, options: Omit<Linear8bitLtOptions, "seed"> = {}): Linear8bitLt {
    const opts = checkOptions(options, "Linear8bitLt.empty");
    for (const [n, what] of [[inFeatures, "inFeatures"], [outFeatures, "outFeatures"]] as const)
      if (!Number.isSafeInteger(n) || n < 0) throw peftError("ERR_CONFIG", `Linear8bitLt.empty: ${what} must be a non-negative integer, got ${shownValue(n)}`);
    const cb = Tensor.zeros([outFeatures, inFeatures], { dtype: "i8" });
    const bias = opts.bias === false ? null : Tensor.zeros([outFeatures], { dtype: opts.dtype ?? "f32" });
    return Linear8bitLt.#assemble(cb, Tensor.zeros([outFeatures]), bias, opts.threshold ?? 0);
  }

  static #assemble(cb: Tensor, scb: Tensor, bias: Tensor | null, threshold: number): Linear8bitLt {
    assembling = { cb, scb, bias, threshold };
    return new Linear8bitLt(cb.shape[1], cb.shape[0]);
  }

  forward(x: Tensor): Tensor {
    this.input(x);
    if (this.weight.requiresGrad)
      throw peftError("ERR_UNSUPPORTED", `${this.describe()}: the int8 weight has no gradient (hasFp16Weights is false); set weight.requiresGrad = false`);
    const y = int8Linear(x, this.weight, this.SCB, this.bias, this.threshold);
    return this.weightLayerOutput(x, y, this.weight, this.bias, (g, _x, wantDx) => this.#gradients(g, wantDx));
  }

  override backward(dy: Tensor, options = {}): Tensor | null {
    const opts = this.gradInput(dy, options);
    this.saved();
    const dx = this.#gradients(dy, opts.inputGrad !== false);
    this.releaseSaved();
    return dx;
  }

  #gradients(dy: Tensor, wantDx: boolean): Tensor | null {
    if (this.bias?.requiresGrad) sumRows(dy, gradOf(this.bias), { accumulate: true });
    return wantDx ? int8LinearGradInput(dy, this.weight, this.SCB) : null;
  }

  /** Loads bitsandbytes' keys; `weight_format` may be absent (older files) but must be 0 ("row") when present. */
  override loadStateDict(record: Record<string, Tensor>, options: { strict?: boolean } = {}): { missingKeys: string[]; unexpectedKeys: string[] } {
    if (typeof record !== "object" || record === null) throw typeError(`${this.describe()}.loadStateDict: expected a record of tensors, got ${describe(record)}`);
    if (typeof record === "object" && record !== null && record.weight instanceof Tensor && !(record.SCB instanceof Tensor))
      throw peftError("ERR_CHECKPOINT", `${this.describe()}.loadStateDict: no "SCB" beside the int8 weight: the row scales are needed to dequantise it`);
    if (typeof record === "object" && record !== null && !("weight_format" in record)) {
      const full = { ...record, weight_format: this.stateDict().weight_format };
      const r = super.loadStateDict(full, options);
      return { missingKeys: r.missingKeys, unexpectedKeys: r.unexpectedKeys };
    }
    checkFormat(record.weight_format, `${this.describe()}.loadStateDict`);
    return super.loadStateDict(record, options);
  }

  override clone(): Linear8bitLt {
    const opts = { bias: this.bias !== null, threshold: this.threshold, dtype: this.bias?.dtype };
    return Linear8bitLt.empty(this.inFeatures, this.outFeatures, opts).copyParametersFrom(this);
  }

  override extraRepr(): string {
    return `in_features=${this.inFeatures}, out_features=${this.outFeatures}, bias=${this.bias ? "True" : "False"}, threshold=${this.threshold}`;
  }
}

function checkFormat(t: unknown, what: string): void {
  if (t === undefined) return;
  if (!(t instanceof Tensor)) throw typeError(`${what}: weight_format must be a Tensor, got ${describe(t)}`);
  const v = t.toArray();
  if (v.length !== 1) throw peftError("ERR_CHECKPOINT", `${what}: weight_format must hold one value, got shape [${t.shape.join(", ")}]`);
  if (v[0] !== 0)
    throw peftError("ERR_UNSUPPORTED", `${what}: weight_format ${v[0]} (${WEIGHT_FORMATS[v[0]] ?? "unknown"}) is not supported; only 0 ("row"), which bitsandbytes >= 0.45 writes`);
}

function checkInt8(cb: Tensor, scb: Tensor, what: string): void {
  if (cb.dtype !== "i8") throw peftError("ERR_DTYPE", `${what}: weight must be i8 (the int8 CB), got ${cb.dtype}`);
  if (cb.shape.length !== 2) throw peftError("ERR_SHAPE", `${what}: weight must be 2-D (out, in), got [${cb.shape.join(", ")}]`);
  if (scb.dtype !== "f32") throw peftError("ERR_DTYPE", `${what}: SCB must be f32, got ${scb.dtype}`);
  if (scb.shape.length !== 1 || scb.shape[0] !== cb.shape[0])
    throw peftError("ERR_SHAPE", `${what}: SCB must have shape [${cb.shape[0]}] (one scale per row of weight), got [${scb.shape.join(", ")}]`);
}
