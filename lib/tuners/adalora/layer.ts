// AdaLoRA layers (PEFT's tuners/adalora/layer.py): an adapter is the SVD-like triplet lora_A (r, in) (right
// singular vectors), lora_E (r, 1) (singular values) and lora_B (out, r) (left singular vectors), plus ranknum,
// the rank it started with. The update is B·(A ⊙ E)·scaling / (ranknum + 1e-5); the rank allocator prunes it by
// zeroing entries of E. SVDLinear and SVDConv2d run it through LoRA's fused dense and convolution kernels with
// A' = A ⊙ E as the LoRA A (r small rows, made per call), so base and adapters are one native forward, one native
// backward and one graph node.
import { Tensor } from "../../tensor.js";
import { native, type NativeTensor } from "../../native.js";
import { geometryArray, linearGradWeight, matmul } from "../../ops.js";
import { addInPlace, scaleInPlace, sumRows } from "../../kernels.js";
import { ew, reduceRaw } from "../../functional/raw.js";
import { describe, peftError, shownValue, typeError } from "../../errors.js";
import { takeRng } from "../../random.js";
import { Conv1D, Conv2d, Linear, Module, ParameterDict, gradOf, markAbstract, type BackwardOptions } from "../../nn/index.js";
import { BaseTunerLayer, adapterNameArg, denseFanInFanOut } from "../tuner-layer.js";
import { applyLoraDeltas } from "../lora/delta.js";

/** The factor of B·(A ⊙ E): scaling / (ranknum + 1e-5), the sum rounded to f32 as PEFT computes it. */
export function svdScale(scaling: number, ranknum: number): number {
  return scaling / Math.fround(ranknum + Math.fround(1e-5));
}

export interface AdaLoraLayerOptions {
  adapterName?: string;
  /** The adapter's rank (AdaLoRA's init_r; 0 is allowed, as in PEFT). */
  r: number;
  /** scaling = loraAlpha, or r when loraAlpha is 0 (PEFT's rule; AdaLoRA does not divide alpha by r). */
  loraAlpha?: number;
  loraDropout?: number;
  /** true / "gaussian": E zeros, A and B ~ N(0, 0.02²); false: all three N(0, 1). */
  initLoraWeights?: boolean | "gaussian";
  fanInFanOut?: boolean;
}

type Rng = Map<string, { seed: number; stream: number }>;

/** The triplet of one adapter. */
export interface SvdFactors {
  A: Tensor;
  E: Tensor;
  B: Tensor;
}

/** What every AdaLoRA layer holds: the triplets and ranknum per adapter, their init, pruning and state entries. */
export abstract class AdaLoraLayer extends BaseTunerLayer {
  readonly loraA: ParameterDict;
  readonly loraB: ParameterDict;
  readonly loraE: ParameterDict;
  readonly ranknum: ParameterDict;
  // Per-adapter settings keyed by user-chosen names: null-prototype records.
  readonly r: Record<string, number> = Object.create(null);
  readonly loraAlpha: Record<string, number> = Object.create(null);
  readonly scaling: Record<string, number> = Object.create(null);
  readonly loraDropout: Record<string, number> = Object.create(null);

  constructor(baseLayer: Module) {
    super(baseLayer);
    // PEFT's registration order: lora_A, lora_B, lora_E, then ranknum (a frozen parameter, never saved).
    this.loraA = this.registerModule("lora_A", new ParameterDict());
    this.loraB = this.registerModule("lora_B", new ParameterDict());
    this.loraE = this.registerModule("lora_E", new ParameterDict());
    this.ranknum = this.registerModule("ranknum", new ParameterDict());
  }

  protected get methodName(): string {
    return "AdaLoRA";
  }

  /** (in, out) features of the base layer. */
  protected abstract features(): [number, number];

  get adapterNames(): string[] {
    return this.loraA?.keys() ?? [];
  }

  /** An adapter's A (r, in), E (r, 1) and B (out, r). */
  svdFactors(name: string): SvdFactors {
    if (!this.adapterNames.includes(name)) throw this.unknownAdapter(name);
    return this.factors(name);
  }

  protected factors(name: string): SvdFactors {
    return { A: this.loraA.get(name), E: this.loraE.get(name), B: this.loraB.get(name) };
  }

  /** The rank the adapter started with (its scaling's divisor; pruning keeps it). */
  ranknumOf(name: string): number {
    return this.ranknum.get(name).toFloat32Array()[0];
  }

  /** scaling / (ranknum + 1e-5), with ranknum + 1e-5 rounded to f32 as PEFT computes it. */
  protected scaleOf(name: string): number {
    return svdScale(this.scaling[name], this.ranknumOf(name));
  }

  protected adapterParameters(name: string): Tensor[] {
    const { A, E, B } = this.factors(name);
    return [A, B, E];
  }

  protected removeAdapter(name: string): void {
    for (const d of [this.loraA, this.loraB, this.loraE]) d.delete(name);
    this.ranknum.delete(name)?.dispose();
    delete this.r[name], delete this.loraAlpha[name], delete this.scaling[name], delete this.loraDropout[name];
  }

  /** PEFT's file names relative to the layer: lora_A, lora_B, lora_E (ranknum is not saved). */
  adapterStateEntries(name: string): [string, Tensor][] {
    const { A, E, B } = this.factors(name);
    return [["lora_A", A], ["lora_B", B], ["lora_E", E]];
  }

  /** Adds (or replaces) an adapter with PEFT's init; the first one added becomes active. */
  updateLayer(opts: AdaLoraLayerOptions): void {
    if (opts === null || typeof opts !== "object") throw typeError(`${this.constructor.name}.updateLayer: options must be an object, got ${describe(opts)}`);
    const name = adapterNameArg(opts.adapterName ?? "default", "AdaLoRA");
    const what = `AdaLoRA adapter ${shownValue(name)}`;
    const { r } = opts;
    if (typeof r !== "number" || !Number.isSafeInteger(r) || r < 0)
      throw peftError("ERR_CONFIG", `${what}: \`r\` should be a positive integer or 0, but the value passed is ${shownValue(r)}`);
    const alpha = opts.loraAlpha ?? 8;
    if (typeof alpha !== "number" || !Number.isFinite(alpha)) throw peftError("ERR_CONFIG", `${what}: loraAlpha must be a finite number, got ${shownValue(alpha)}`);
    const p = opts.loraDropout ?? 0;
    if (typeof p !== "number" || !(p >= 0 && p < 1)) throw peftError("ERR_CONFIG", `${what}: loraDropout must be in [0, 1), got ${shownValue(p)}`);
    const init = opts.initLoraWeights ?? true;
    if (init !== true && init !== false && init !== "gaussian")
      throw peftError("ERR_UNSUPPORTED", `${what}: initLoraWeights ${shownValue(init)} is not supported (true, false or "gaussian")`);
    if (this.adapterNames.includes(name)) this.dropAdapter(name);
    const [inF, outF] = this.features();
    // PEFT draws torch.randn for all three, then (init) E = 0 and A, B ~ N(0, 0.02).
    const std = init === false ? 1 : 0.02;
    this.loraA.set(name, Tensor.randn([r, inF], { std }));
    this.loraE.set(name, init === false ? Tensor.randn([r, 1]) : Tensor.zeros([r, 1]));
    this.loraB.set(name, Tensor.randn([outF, r], { std }));
    const rank = Tensor.fromArray([r], [1]);
    this.ranknum.set(name, rank);
    rank.requiresGrad = false;
    this.r[name] = r;
    this.loraAlpha[name] = alpha;
    this.scaling[name] = alpha > 0 ? alpha : r;
    this.loraDropout[name] = p;
    const active = this.activeAdapters;
    this.setAdapter(active.length ? active : [name], { allowMissing: true });
  }

  /**
   * Keeps only the triplets `mask` marks (PEFT's resize_modules_by_rank_pattern for one layer): A's rows, E's
   * rows and B's columns; ranknum keeps the rank the adapter started with. PEFT rebuilds the layer at the new rank,
   * so a scaling that came from r (loraAlpha <= 0) becomes the kept rank.
   */
  pruneRanks(name: string, mask: readonly boolean[]): void {
    const { A, E, B } = this.svdFactors(name);
    const r = this.r[name];
    if (mask.length !== r)
      throw peftError("ERR_CHECKPOINT", `${this.describe()}: the rank pattern for AdaLoRA adapter ${shownValue(name)} has ${mask.length} entries but the adapter has rank ${r}`);
    const keep = mask.flatMap((m, i) => (m ? [i] : []));
    const [inF, outF] = this.features();
    const a = A.toFloat32Array(), e = E.toFloat32Array(), b = B.toFloat32Array();
    const rows = (src: Float32Array, width: number) => {
      const out = new Float32Array(keep.length * width);
      keep.forEach((j, i) => out.set(src.subarray(j * width, (j + 1) * width), i * width));
      return out;
    };
    const cols = new Float32Array(outF * keep.length);
    for (let o = 0; o < outF; o++) keep.forEach((j, i) => (cols[o * keep.length + i] = b[o * r + j]));
    const trainable = A.requiresGrad;
    const made: [ParameterDict, Tensor][] = [
      [this.loraA, Tensor.fromArray(rows(a, inF), [keep.length, inF])],
      [this.loraE, Tensor.fromArray(rows(e, 1), [keep.length, 1])],
      [this.loraB, Tensor.fromArray(cols, [outF, keep.length])],
    ];
    for (const [dict, t] of made) {
      const old = dict.get(name);
      old.grad?.dispose();
      old.dispose();
      dict.delete(name);
      t.requiresGrad = trainable;
      dict.set(name, t);
    }
    this.r[name] = keep.length;
    if (!(this.loraAlpha[name] > 0)) this.scaling[name] = keep.length;
  }

  /** The adapters a forward or merge applies: active (or named), with at least one rank left. */
  protected nonEmpty(names: string[]): string[] {
    return names.filter((n) => this.r[n] > 0);
  }

  /** A' = A ⊙ E (r, in), f32: the LoRA A of the SVD form. */
  protected effectiveA(name: string): Tensor {
    const { A, E } = this.factors(name);
    return ew("mul", [A, E], "f32");
  }

  override extraRepr(): string {
    return `r=${JSON.stringify(this.r)}, scaling=${JSON.stringify(this.scaling)}, active=${JSON.stringify(this.activeAdapters)}${this.merged ? ", merged" : ""}`;
  }

  /** The base layer's weight as the 2-D W of the product W (N, K) ± s·B·A' (a view `keep` collects when reshaped). */
  protected abstract mergeWeight(keep: Tensor[]): { weight: Tensor; weightInOut: boolean };

  /** The base output plus the adapters (one native call), and T = drop(x)·A'ᵀ (or its equivalent) for backward. */
  protected abstract runForward(x: Tensor, adapters: object[]): { y: Tensor; T: Tensor };

  /** The fused backward: dA' and dB through the descriptors, a trainable base's dW and db into .grad; dx when wanted. */
  protected abstract runBackward(dy: Tensor, x: Tensor, T: Tensor, weight: Tensor, adapters: object[], wantDx: boolean): Tensor | null;

  /** The native adapter descriptors (A' made here; `keep` collects the temporaries, `grads` gets each dA'). */
  #native(names: string[], training: boolean, rngs: Rng, keep: Tensor[], grads: Map<string, Tensor> | null): object[] {
    return names.map((n) => {
      const Ae = this.effectiveA(n);
      keep.push(Ae);
      const p = training ? this.loraDropout[n] : 0;
      const rng = p > 0 ? (rngs.get(n) ?? { seed: 0, stream: 0 }) : { seed: 0, stream: 0 };
      const out: Record<string, unknown> = { A: Tensor.handle(Ae), B: Tensor.handle(this.loraB.get(n)), scale: this.scaleOf(n), p, seed: rng.seed, stream: rng.stream };
      if (grads) {
        const { A, E, B } = this.factors(n);
        const dAe = A.requiresGrad || E.requiresGrad ? Tensor.zeros(Ae.shape) : null;
        if (dAe) {
          keep.push(dAe);
          grads.set(n, dAe);
        }
        out.dA = dAe ? Tensor.handle(dAe) : null;
        out.dB = B.requiresGrad ? Tensor.handle(gradOf(B)) : null;
      }
      return out;
    });
  }

  forward(x: Tensor): Tensor {
    if (!(x instanceof Tensor)) throw typeError(`${this.constructor.name}.forward: x must be a Tensor`);
    const adapters = this.nonEmpty(this.adaptersToRun());
    if (!adapters.length) return this.forwardBase(x);
    const training = this.training;
    const rng: Rng = new Map();
    if (training) for (const n of adapters) if (this.loraDropout[n] > 0) rng.set(n, takeRng(undefined, "AdaLoRA dropout"));
    const keep: Tensor[] = [];
    let res: { y: Tensor; T: Tensor };
    try {
      res = this.runForward(x, this.#native(adapters, training, rng, keep, null));
    } finally {
      keep.forEach((t) => t.dispose());
    }
    const params = adapters.flatMap((n) => this.adapterParameters(n));
    return this.finishFused(x, res.y, [res.T], params, (dy, xs, [T], weight, wantDx) => this.#gradients(dy, xs, T, weight, adapters, training, rng, wantDx));
  }

  override backward(dy: Tensor, options: BackwardOptions = {}): Tensor | null {
    return this.fusedBackward(dy, options);
  }

  /**
   * LoRA's fused backward with A' = A ⊙ E gives dB and dA'; then dA = dA' ⊙ E and dE = Σ_k dA' ⊙ A (rows), which
   * are r·in elementwise work beside the GEMMs.
   */
  #gradients(dy: Tensor, x: Tensor, T: Tensor, weight: Tensor, adapters: string[], training: boolean, rng: Rng, wantDx: boolean): Tensor | null {
    this.requireUnmerged();
    const keep: Tensor[] = [];
    const dAe = new Map<string, Tensor>();
    try {
      const dx = this.runBackward(dy, x, T, weight, this.#native(adapters, training, rng, keep, dAe), wantDx);
      for (const [n, g] of dAe) {
        const { A, E } = this.factors(n);
        if (A.requiresGrad) {
          using dA = ew("mul", [g, E], "f32");
          addInPlace(gradOf(A), dA);
        }
        if (E.requiresGrad) {
          using prod = ew("mul", [g, A], "f32");
          const { values: dE } = reduceRaw("sum", prod, [1], true, "f32");
          using _ = dE;
          addInPlace(gradOf(E), dE);
        }
      }
      return dx;
    } finally {
      keep.forEach((t) => t.dispose());
    }
  }

  /** W ± Σ B·(A ⊙ E)·scaling / (ranknum + 1e-5) in place, one pass over W. */
  protected applyMerge(names: string[], sign: 1 | -1, safe: boolean, checkOnly: boolean): number {
    const run = this.nonEmpty(names);
    const keep: Tensor[] = [];
    try {
      const deltas = run.map((n) => {
        const A = this.effectiveA(n);
        keep.push(A);
        return { A, B: this.loraB.get(n), scale: this.scaleOf(n) };
      });
      if (!deltas.length) return -1;
      const { weight, weightInOut } = this.mergeWeight(keep);
      const bad = applyLoraDeltas(weight, deltas, { weightInOut, sign, safe, checkOnly });
      return bad < 0 ? -1 : names.indexOf(run[bad]);
    } finally {
      keep.forEach((t) => t.dispose());
    }
  }

  /** B·(A ⊙ E)·scaling / (ranknum + 1e-5) (f32) in the base weight's layout and shape. */
  getDeltaWeight(adapterName: string): Tensor {
    if (typeof adapterName !== "string") throw typeError(`getDeltaWeight: adapterName must be a string, got ${describe(adapterName)}`);
    const [name] = this.pickAdapters([adapterName]);
    const shape = (this.baseLayer as Module & { weight: Tensor }).weight.shape;
    if (this.r[name] === 0) return Tensor.zeros(shape);
    const keep: Tensor[] = [];
    try {
      const A = this.effectiveA(name);
      keep.push(A);
      const B = this.loraB.get(name);
      const { weightInOut } = this.mergeWeight(keep);
      const d = weightInOut ? matmul(A, B, { transA: true, transB: true }) : matmul(B, A);
      scaleInPlace(d, this.scaleOf(name));
      if (d.shape.length === shape.length) return d;
      const out = d.reshape(shape);
      d.dispose();
      return out;
    } finally {
      keep.forEach((t) => t.dispose());
    }
  }
}

type DenseLayer = Linear | Conv1D;

/** AdaLoRA on Linear (weight (out, in)) and GPT-2's Conv1D (weight (in, out), fan_in_fan_out). */
export class SVDLinear extends AdaLoraLayer {
  declare baseLayer: DenseLayer;
  readonly fanInFanOut: boolean;

  constructor(base: DenseLayer, opts: AdaLoraLayerOptions) {
    if (!(base instanceof Linear) && !(base instanceof Conv1D))
      throw typeError(`SVDLinear: the base layer must be a Linear or Conv1D, got ${describe(base)}`);
    super(base);
    // PEFT's SVDLinear freezes the pre-trained weight (the bias follows the model's bias mode).
    base.weight.requiresGrad = false;
    this.fanInFanOut = denseFanInFanOut(base instanceof Conv1D, opts?.fanInFanOut);
    this.updateLayer(opts);
  }

  protected features(): [number, number] {
    const b = this.baseLayer;
    return b instanceof Conv1D ? [b.nx, b.nf] : [b.inFeatures, b.outFeatures];
  }

  protected mergeWeight(): { weight: Tensor; weightInOut: boolean } {
    return { weight: this.baseLayer.weight, weightInOut: this.fanInFanOut };
  }

  protected runForward(x: Tensor, adapters: object[]): { y: Tensor; T: Tensor } {
    const base = this.baseLayer;
    const [y, T] = native.loraForward(Tensor.handle(x), Tensor.handle(base.weight), base.bias ? Tensor.handle(base.bias) : null, this.fanInFanOut, adapters) as [NativeTensor, NativeTensor];
    return { y: new Tensor(y), T: new Tensor(T) };
  }

  protected runBackward(dy: Tensor, x: Tensor, T: Tensor, weight: Tensor, adapters: object[], wantDx: boolean): Tensor | null {
    const base = this.baseLayer;
    const dx = native.loraBackward(Tensor.handle(dy), Tensor.handle(x), Tensor.handle(weight), null, this.fanInFanOut, adapters, Tensor.handle(T), wantDx) as NativeTensor | null;
    if (base.weight.requiresGrad) linearGradWeight(dy, x, gradOf(base.weight), { accumulate: true, weightInOut: this.fanInFanOut });
    if (base.bias?.requiresGrad) sumRows(dy, gradOf(base.bias), { accumulate: true });
    return dx ? new Tensor(dx) : null;
  }
}

/**
 * AdaLoRA on a Conv2d (PEFT's SVDConv2d): A (r, C·KH·KW), B (out, r); the update is the convolution of x with
 * B·(A ⊙ E) reshaped to the weight's shape, with the base's stride, padding and dilation, which LoRA's fused
 * convolution computes with A' = A ⊙ E as its A (the base and A' read the same unfolded tiles). groups = 1 only:
 * PEFT's reshape of B·A' (out, C·KH·KW) into a grouped weight (out, C/groups, KH, KW) fails otherwise.
 */
export class SVDConv2d extends AdaLoraLayer {
  declare baseLayer: Conv2d;

  constructor(base: Conv2d, opts: AdaLoraLayerOptions) {
    if (!(base instanceof Conv2d)) throw typeError(`SVDConv2d: the base layer must be a Conv2d, got ${describe(base)}`);
    if (base.groups !== 1)
      throw peftError("ERR_UNSUPPORTED", `AdaLoRA on a Conv2d with groups=${base.groups} is not supported: B·(A ⊙ E) (${base.outChannels}, ${base.inChannels}·${base.kernelSize.join("·")}) does not reshape to its grouped weight`);
    super(base);
    base.weight.requiresGrad = false;
    this.updateLayer(opts);
  }

  protected features(): [number, number] {
    const b = this.baseLayer;
    return [b.inChannels * b.kernelSize[0] * b.kernelSize[1], b.outChannels];
  }

  protected mergeWeight(keep: Tensor[]): { weight: Tensor; weightInOut: boolean } {
    const w = this.baseLayer.weight;
    const weight = w.reshape([w.shape[0], -1]);
    keep.push(weight);
    return { weight, weightInOut: false };
  }

  protected runForward(x: Tensor, adapters: object[]): { y: Tensor; T: Tensor } {
    const base = this.baseLayer;
    const [y, T] = native.loraConv2dForward(Tensor.handle(x), Tensor.handle(base.weight), base.bias ? Tensor.handle(base.bias) : null, geometryArray(base.geometry), adapters) as [
      NativeTensor,
      NativeTensor,
    ];
    return { y: new Tensor(y), T: new Tensor(T) };
  }

  protected runBackward(dy: Tensor, x: Tensor, T: Tensor, weight: Tensor, adapters: object[], wantDx: boolean): Tensor | null {
    const base = this.baseLayer;
    const dW = base.weight.requiresGrad ? Tensor.handle(gradOf(base.weight)) : null;
    const db = base.bias?.requiresGrad ? Tensor.handle(gradOf(base.bias)) : null;
    const dx = native.loraConv2dBackward(Tensor.handle(dy), Tensor.handle(x), Tensor.handle(weight), geometryArray(base.geometry), adapters, Tensor.handle(T), wantDx, dW, db) as NativeTensor | null;
    return dx ? new Tensor(dx) : null;
  }
}

markAbstract(AdaLoraLayer);
