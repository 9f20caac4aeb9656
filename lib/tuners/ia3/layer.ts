// (IA)³ layers (PEFT's tuners/ia3/layer.py): one learned vector `ia3_l` per adapter rescales a Linear, Conv1D
// or Conv2d: a feed-forward module's input features ((1, in); Conv2d (1, C, 1, 1)), any other module's output
// features, bias included ((out, 1); Conv2d (1, out, 1, 1)). Active adapters multiply. Each call is one graph
// node; the dense numeric work is kernels.ts's, the convolution's conv.ts's.
import { Tensor } from "../../tensor.js";
import { describe, peftError, typeError } from "../../errors.js";
import { Conv1D, Conv2d, Linear, ParameterDict, gradOf, type BackwardOptions } from "../../nn/index.js";
import { addInPlace, fill } from "../../kernels.js";
import { ew } from "../../functional/raw.js";
import { BaseTunerLayer, adapterNameArg, denseFanInFanOut } from "../tuner-layer.js";
import { ia3LinearBackward, ia3LinearForward, ia3MergeInPlace } from "./kernels.js";
import { ia3Conv2dBackward, ia3Conv2dForward } from "./conv.js";

export interface IA3LayerOptions {
  adapterName?: string;
  /** Scale the input features (PEFT's feed-forward modules) rather than the output. */
  isFeedforward: boolean;
  /** true (default): ones, the identity; false: N(0, 1) as PEFT draws before its init. */
  initIa3Weights?: boolean;
  fanInFanOut?: boolean;
}

export type IA3Base = Linear | Conv1D | Conv2d;

/** Whether PEFT's IA3 adapts this module type. */
export function isIa3Base(m: unknown): m is IA3Base {
  return m instanceof Linear || m instanceof Conv1D || m instanceof Conv2d;
}

/** The shape of an adapter's ia3_l on `base`, as PEFT makes it. */
export function ia3Shape(base: IA3Base, isFeedforward: boolean): number[] {
  if (base instanceof Conv2d) return [1, isFeedforward ? base.inChannels : base.outChannels, 1, 1];
  const [inF, outF] = base instanceof Conv1D ? [base.nx, base.nf] : [base.inFeatures, base.outFeatures];
  return isFeedforward ? [1, inF] : [outF, 1];
}

export class IA3Layer extends BaseTunerLayer {
  declare baseLayer: IA3Base;
  readonly ia3L: ParameterDict;
  readonly isFeedforward: boolean;
  /** W stored (in, out) (GPT-2's Conv1D): forced to match the base layer, as PEFT does. */
  readonly fanInFanOut: boolean;

  constructor(base: IA3Base, opts: IA3LayerOptions) {
    if (!isIa3Base(base)) throw typeError(`IA3Layer: the base layer must be a Linear, Conv1D or Conv2d, got ${describe(base)}`);
    if (opts === null || typeof opts !== "object") throw typeError(`IA3Layer: options must be an object, got ${describe(opts)}`);
    if (typeof opts.isFeedforward !== "boolean") throw typeError(`IA3Layer: isFeedforward must be a boolean, got ${describe(opts.isFeedforward)}`);
    super(base);
    this.ia3L = this.registerModule("ia3_l", new ParameterDict());
    this.isFeedforward = opts.isFeedforward;
    this.fanInFanOut = base instanceof Conv2d ? false : denseFanInFanOut(base instanceof Conv1D, opts.fanInFanOut);
    this.updateLayer(opts);
  }

  protected get methodName(): string {
    return "IA3";
  }

  get adapterNames(): string[] {
    return this.ia3L?.keys() ?? [];
  }

  protected adapterParameters(name: string): Tensor[] {
    return [this.ia3L.get(name)];
  }

  protected removeAdapter(name: string): void {
    this.ia3L.delete(name);
  }

  adapterStateEntries(name: string): [string, Tensor][] {
    return [["ia3_l", this.ia3L.get(name)]];
  }

  /** An adapter's vector (PEFT's shape: (1, in), (out, 1), or (1, C, 1, 1) on Conv2d). */
  ia3Vector(name: string): Tensor {
    if (!this.adapterNames.includes(name)) throw this.unknownAdapter(name);
    return this.ia3L.get(name);
  }

  /** Adds (or replaces) an adapter; the first one added becomes active. Whether it scales the input is the layer's. */
  updateLayer(opts: { adapterName?: string; initIa3Weights?: boolean }): void {
    if (opts === null || typeof opts !== "object") throw typeError(`IA3Layer.updateLayer: options must be an object, got ${describe(opts)}`);
    const name = adapterNameArg(opts.adapterName ?? "default", "IA3");
    const init = opts.initIa3Weights ?? true;
    if (typeof init !== "boolean") throw typeError(`IA3Layer: initIa3Weights must be a boolean, got ${describe(init)}`);
    if (this.adapterNames.includes(name)) this.dropAdapter(name);
    // Drawn either way, as PEFT draws before its init: what other layers draw does not depend on the option.
    const l = Tensor.randn(ia3Shape(this.baseLayer, this.isFeedforward));
    if (init) fill(l, 1);
    this.ia3L.set(name, l);
    const active = this.activeAdapters;
    this.setAdapter(active.length ? active : [name], { allowMissing: true });
  }

  get #isConv(): boolean {
    return this.baseLayer instanceof Conv2d;
  }

  /** The scale's shape for the kernels: a vector for dense layers, (1, C, 1, 1) for convolutions. */
  get #kernelShape(): number[] {
    const s = ia3Shape(this.baseLayer, this.isFeedforward);
    return this.#isConv ? s : [s[0] * s[1]];
  }

  /** The active adapters' product in the kernels' shape (a new handle; disposing it never frees a vector). */
  #combined(ls: Tensor[], shape = this.#kernelShape): Tensor {
    let acc = ls[0].reshape(shape);
    for (const l of ls.slice(1)) {
      using v = l.reshape(shape);
      const next = ew("mul", [acc, v], "f32");
      acc.dispose();
      acc = next;
    }
    return acc;
  }

  #run(x: Tensor, scale: Tensor, keepUnscaled: boolean): { y: Tensor; saved: Tensor[] } {
    const base = this.baseLayer;
    const [inScale, outScale] = this.isFeedforward ? [scale, null] : [null, scale];
    if (base instanceof Conv2d) return ia3Conv2dForward(x, base.weight, base.bias, { geometry: base.geometry, inScale, outScale });
    return ia3LinearForward(x, base.weight, base.bias, { weightInOut: this.fanInFanOut, inScale, outScale, keepUnscaled });
  }

  forward(x: Tensor): Tensor {
    this.input(x);
    const adapters = this.adaptersToRun();
    if (!adapters.length) return this.forwardBase(x);
    const ls = adapters.map((n) => this.ia3L.get(n));
    let res: { y: Tensor; saved: Tensor[] };
    {
      using scale = this.#combined(ls);
      // The unscaled output is kept only when a backward will want the vectors' gradient.
      res = this.#run(x, scale, this.training && ls.some((l) => l.requiresGrad));
    }
    return this.finishFused(x, res.y, res.saved, ls, (dy, xs, saved, weight, wantDx) => this.#gradients(dy, xs, saved, weight, adapters, wantDx));
  }

  override backward(dy: Tensor, options: BackwardOptions = {}): Tensor | null {
    return this.fusedBackward(dy, options);
  }

  /**
   * dx, the base's gradients when trainable, and each trainable vector's: the kernels give the gradient of
   * the product of the active vectors, and vector a's is that times the product of the others (never a
   * division, so a zero entry anywhere is fine).
   */
  #gradients(dy: Tensor, x: Tensor, saved: Tensor[], weight: Tensor, adapters: string[], wantDx: boolean): Tensor | null {
    this.requireUnmerged();
    const base = this.baseLayer;
    const ls = adapters.map((n) => this.ia3L.get(n));
    const shape = this.#kernelShape;
    const trainable = ls.map((l) => l.requiresGrad);
    const temps: Tensor[] = [];
    try {
      const scale = this.#combined(ls, shape);
      temps.push(scale);
      let dScale: Tensor | null = null;
      if (ls.length === 1 && trainable[0]) dScale = gradOf(ls[0]).reshape(shape);
      else if (trainable.some(Boolean)) dScale = Tensor.zeros(shape);
      if (dScale) temps.push(dScale);
      const [inScale, outScale] = this.isFeedforward ? [scale, null] : [null, scale];
      const [dInScale, dOutScale] = this.isFeedforward ? [dScale, null] : [null, dScale];
      const dW = base.weight.requiresGrad ? gradOf(base.weight) : null;
      const db = base.bias?.requiresGrad ? gradOf(base.bias) : null;
      const common = { inScale, outScale, saved, wantDx, dW, db, dInScale, dOutScale };
      const dx =
        base instanceof Conv2d
          ? ia3Conv2dBackward(dy, x, weight, { ...common, geometry: base.geometry })
          : ia3LinearBackward(dy, x, weight, { ...common, weightInOut: this.fanInFanOut });
      if (dScale && ls.length > 1) this.#distribute(dScale, ls, trainable, shape);
      return dx;
    } finally {
      temps.forEach((t) => t.dispose());
    }
  }

  #distribute(dScale: Tensor, ls: Tensor[], trainable: boolean[], shape: number[]): void {
    ls.forEach((l, i) => {
      if (!trainable[i]) return;
      using others = this.#combined(ls.filter((_, j) => j !== i), shape);
      using g = ew("mul", [dScale, others], "f32");
      using into = gradOf(l).reshape(shape);
      addInPlace(into, g);
    });
  }

  protected override mergeRefusal(): string | null {
    const b = this.baseLayer;
    if (b instanceof Conv2d && this.isFeedforward && b.groups > 1)
      return `merging an (IA)³ vector that scales the input of a Conv2d with groups=${b.groups} is not supported: the weight holds in/groups input channels per output channel, so no per-channel factor of it equals the scale`;
    return null;
  }

  /** Where the vector acts on the weight: the columns (input) or rows (output) of W, transposed for Conv1D. */
  get #weightScaleShape(): number[] {
    const b = this.baseLayer;
    const s = ia3Shape(b, this.isFeedforward);
    const n = s[0] * s[1] * (s[2] ?? 1) * (s[3] ?? 1);
    if (b instanceof Conv2d) return this.isFeedforward ? s : [n, 1, 1, 1];
    if (this.fanInFanOut) return this.isFeedforward ? [n, 1] : [1, n];
    return s;
  }

  /**
   * W ⊙ l (and b ⊙ l when the output is scaled), adapter after adapter, or PEFT's inverse W ⊘ (l + 1e-8).
   * Unmerging is therefore inexact, as PEFT warns: it leaves W·l / (l + 1e-8) = W·(1 − 1e-8 / (l + 1e-8)), a
   * relative drift of 1e-8 / l: below f32's rounding for |l| above about 0.17, 1 % at l = 1e-6, and an entry
   * with l = 0 stays 0 (what it scaled is lost). With safeMerge the weight and the bias are both checked before
   * either is written.
   */
  protected applyMerge(names: string[], sign: 1 | -1, safe: boolean, checkOnly: boolean): number {
    const base = this.baseLayer;
    const outScaledBias = !this.isFeedforward && base.bias !== null;
    const views: Tensor[] = [];
    try {
      const ws = names.map((n) => this.ia3L.get(n).reshape(this.#weightScaleShape));
      const bs = outScaledBias ? names.map((n) => this.ia3L.get(n).reshape([-1])) : [];
      views.push(...ws, ...bs);
      const divide = sign < 0;
      if (safe) {
        let bad = ia3MergeInPlace(base.weight, ws, { divide, safe, checkOnly: true });
        if (bad < 0 && outScaledBias) bad = ia3MergeInPlace(base.bias!, bs, { divide, safe, checkOnly: true });
        if (bad >= 0 || checkOnly) return bad;
      }
      ia3MergeInPlace(base.weight, ws, { divide });
      if (outScaledBias) ia3MergeInPlace(base.bias!, bs, { divide });
      return -1;
    } finally {
      views.forEach((v) => v.dispose());
    }
  }

  protected override unmergeWarning(): string {
    return "Unmerge result can be inaccurate for (IA)^3.";
  }

  override extraRepr(): string {
    return `feedforward=${this.isFeedforward}, active=${JSON.stringify(this.activeAdapters)}${this.merged ? ", merged" : ""}`;
  }
}
