// LoRA layers (PEFT's tuners/lora/layer.py): LoraLayer holds adapters by name on a base layer; LoraLinear
// runs base + adapters as one fused native forward, a fused backward, and merges in place.
import { Tensor } from "../../tensor.js";
import { native, type NativeTensor } from "../../native.js";
import { linearGradWeight, matmul } from "../../ops.js";
import { scaleInPlace, sumRows } from "../../kernels.js";
import { ew } from "../../functional/raw.js";
import { describe, peftError, shownValue, typeError } from "../../errors.js";
import { takeRng } from "../../random.js";
import { applyLoraDeltas, type LoraDelta } from "./delta.js";
import { DoraMagnitude, doraBackward, doraForward, type DoraOps, type DoraRun } from "./dora.js";
import { denseDoraOps } from "./dora-ops.js";
import { baseWeightF32 } from "./dora-weight.js";
import { expandedNorms, outputNorms, outputSumSquares, scaleOutputs } from "./dora-norm.js";
import { Module, ModuleDict, Linear, Conv1D, gradOf, markAbstract, type BackwardOptions } from "../../nn/index.js";
import { BaseTunerLayer, adapterNameArg, denseFanInFanOut, warnOnce, type MergeOptions } from "../tuner-layer.js";

export { warnOnce, type MergeOptions };

type Rng = Map<string, { seed: number; stream: number }>;

export interface LoraLayerOptions {
  adapterName?: string;
  r: number;
  loraAlpha?: number;
  loraDropout?: number;
  useRslora?: boolean;
  initLoraWeights?: boolean | "gaussian";
  fanInFanOut?: boolean;
  /** DoRA (PEFT's use_dora): a trainable magnitude per output feature over the LoRA-adapted direction. */
  useDora?: boolean;
}

/** PEFT's reset_lora_parameters for an A/B pair already drawn as PyTorch's layer init draws them. */
export function initAdapter(A: Tensor, B: Tensor, r: number, init: boolean | "gaussian"): void {
  if (init === "gaussian") {
    using a = Tensor.randn(A.shape, { std: 1 / r });
    A.copyFrom(a);
  }
  if (init !== false) {
    using z = Tensor.zeros(B.shape);
    B.copyFrom(z);
  }
}

/** The contract every LoRA layer follows (custom layers for user module types extend it too). */
export abstract class LoraLayer extends BaseTunerLayer {
  readonly loraA: ModuleDict;
  readonly loraB: ModuleDict;
  // Per-adapter settings keyed by user-chosen names: null-prototype records, so no name reaches Object.prototype.
  readonly r: Record<string, number> = Object.create(null);
  readonly loraAlpha: Record<string, number> = Object.create(null);
  readonly scaling: Record<string, number> = Object.create(null);
  readonly loraDropout: Record<string, number> = Object.create(null);
  readonly useDora: Record<string, boolean> = Object.create(null);
  // PEFT's lora_magnitude_vector (a ModuleDict of DoraMagnitude), registered with the first DoRA adapter.
  #magnitudes: ModuleDict | null = null;
  // ‖w_i‖² of the base weight for DoRA's norm, kept while the base's weight tensors are unchanged.
  #sumSquares: { tensors: Tensor[]; versions: number[]; value: Float64Array } | null = null;
  // Each DoRA adapter's norm, kept while its A, B, scaling and the base's weight tensors are unchanged.
  readonly #norms = new Map<string, { tensors: Tensor[]; versions: number[]; scale: number; value: Float64Array }>();
  // The norms each DoRA merge divided by (PEFT's `<adapter>-weight_norm` cache), for unmerge.
  readonly #mergeNorms = new Map<string, Float64Array>();

  constructor(baseLayer: Module) {
    super(baseLayer);
    this.loraA = this.registerModule("lora_A", new ModuleDict());
    this.loraB = this.registerModule("lora_B", new ModuleDict());
  }

  protected get methodName(): string {
    return "LoRA";
  }

  /** (in, out) features of the base layer. */
  protected abstract features(): [number, number];

  get adapterNames(): string[] {
    return this.loraA.keys();
  }

  /** Refuses a rank this layer cannot take (before anything changes). */
  protected checkRank(_r: number, _what: string): void {}

  /**
   * Makes and registers one adapter's A and B with PEFT's init: A kaiming-uniform (a=√5, what Linear does)
   * and B zeros, or A ~ N(0, 1/r) for "gaussian"; false keeps both random so the adapter is not the identity.
   * Dense layers: A = Linear(in, r), B = Linear(r, out); other layer types override it.
   */
  protected createAdapterWeights(name: string, r: number, init: boolean | "gaussian"): void {
    const [inF, outF] = this.features();
    const A = new Linear(inF, r, { bias: false });
    const B = new Linear(r, outF, { bias: false });
    initAdapter(A.weight, B.weight, r, init);
    this.loraA.set(name, A);
    this.loraB.set(name, B);
  }

  /** Unregisters one adapter's weights (already disposed). */
  protected removeAdapterWeights(name: string): void {
    this.loraA.delete(name);
    this.loraB.delete(name);
  }

  protected removeAdapter(name: string): void {
    this.removeAdapterWeights(name);
    this.#magnitudes?.delete(name);
    this.#mergeNorms.delete(name);
    this.#norms.delete(name);
    delete this.r[name], delete this.loraAlpha[name], delete this.scaling[name], delete this.loraDropout[name], delete this.useDora[name];
  }

  /** The adapter's tensors under PEFT's names relative to the layer ("lora_A.weight", ...), for state dicts. */
  adapterStateEntries(name: string): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [which, dict] of [["lora_A", this.loraA], ["lora_B", this.loraB]] as const)
      for (const [n, t] of dict.get(name).namedParameters()) out.push([`${which}.${n}`, t]);
    return this.withMagnitude(name, out);
  }

  /** `entries` plus a DoRA adapter's magnitude under PEFT's file name (`lora_magnitude_vector`, no ".weight"). */
  protected withMagnitude(name: string, entries: [string, Tensor][]): [string, Tensor][] {
    const m = this.doraMagnitude(name);
    if (m) entries.push(["lora_magnitude_vector", m]);
    return entries;
  }

  // ---- DoRA ----

  /** The magnitude of a DoRA adapter (PEFT's lora_magnitude_vector[name].weight), or null for plain LoRA. */
  doraMagnitude(name: string): Tensor | null {
    if (typeof name !== "string") throw typeError(`${this.describe()}.doraMagnitude: name must be a string, got ${describe(name)}`);
    return this.useDora[name] ? (this.#magnitudes!.get(name) as DoraMagnitude).weight : null;
  }

  /** Refuses DoRA on this layer (a reason), or null when it runs DoRA. */
  protected doraRefusal(): string | null {
    return `${this.constructor.name} does not support DoRA (use_dora)`;
  }

  /** DoRA's ops have CPU kernels only: tensors elsewhere get ERR_NOT_ON_DEVICE naming the layer, before any work. */
  protected requireDoraOnCpu(...tensors: Tensor[]): void {
    const t = tensors.find((v) => v.device !== "cpu");
    if (t) throw peftError("ERR_NOT_ON_DEVICE", `${this.describe()}: DoRA runs on the cpu only; a tensor is on ${t.device} (move the layer and its input to the cpu)`);
  }

  /** The magnitude's shape: one entry per output feature (convolutions: PEFT's (1, out, 1, 1)). */
  protected magnitudeShape(): number[] {
    return [this.features()[1]];
  }

  /** The base weight as DoRA reads it (f32, 2-D (N, K) or (K, N) when inOut), and A, B as 2-D; views kept in `keep`. */
  #doraOperands(name: string, keep: Tensor[]): { w: Tensor; inOut: boolean; A: Tensor; B: Tensor } {
    const bw = baseWeightF32(this.baseLayer);
    if (bw.owned) keep.push(bw.weight);
    const { A, B } = this.loraWeights(name);
    return { w: this.flat(bw.weight, keep), inOut: bw.inOut, A: this.flat(A, keep), B: this.flat(B, keep) };
  }

  /** The base's tensors its weight is made of (all but the bias: a quantised base's scales count too). */
  #weightTensors(): Tensor[] {
    return [...this.baseLayer.namedParameters()].filter(([n]) => n !== "bias").map(([, t]) => t);
  }

  /** ‖w_i‖² of the base weight, recomputed only when one of the base's tensors changed. */
  #baseSumSquares(w: Tensor, inOut: boolean): Float64Array {
    const tensors = this.#weightTensors();
    const c = this.#sumSquares;
    if (c && sameVersions(c, tensors)) return c.value;
    const value = outputSumSquares(w, inOut);
    this.#sumSquares = { tensors, versions: tensors.map((t) => t.version), value };
    return value;
  }

  /**
   * The detached norm ‖W + s·B·A‖ of a DoRA adapter per output feature (f32, the magnitude's shape). It is a
   * function of W, A, B and s only, so it is kept while none of them changed (an inference loop computes it
   * once; a training step, whose optimizer writes A and B, once per step).
   */
  doraNorm(name: string): Tensor {
    if (typeof name !== "string") throw typeError(`${this.describe()}.doraNorm: name must be a string, got ${describe(name)}`);
    const { A, B } = this.loraWeights(name);
    const tensors = [A, B, ...this.#weightTensors()];
    this.requireDoraOnCpu(...tensors);
    const scale = this.scaling[name];
    const c = this.#norms.get(name);
    let n: Float64Array;
    if (c && c.scale === scale && sameVersions(c, tensors)) n = c.value;
    else {
      const keep: Tensor[] = [];
      try {
        const { w, inOut, A: A2, B: B2 } = this.#doraOperands(name, keep);
        n = expandedNorms(w, inOut, this.#baseSumSquares(w, inOut), A2, B2, scale);
      } finally {
        keep.forEach((t) => t.dispose());
      }
      this.#norms.set(name, { tensors, versions: tensors.map((t) => t.version), scale, value: n });
    }
    return Tensor.fromArray(n, this.magnitudeShape(), "f32");
  }

  /** PEFT's DoRA update_layer: the magnitude starts as ‖W + s·B·A‖ with the adapter's initial A and B. */
  #initMagnitude(name: string): void {
    const m = this.doraNorm(name);
    if (!this.#magnitudes) this.#magnitudes = this.registerModule("lora_magnitude_vector", new ModuleDict());
    this.#magnitudes.set(name, new DoraMagnitude(m));
  }

  /** A fresh f32 copy of the base weight in its stored shape (what a DoRA merge works on). */
  protected readMergeWeight(): Tensor {
    const bw = baseWeightF32(this.baseLayer);
    return bw.owned ? bw.weight : bw.weight.to("f32");
  }

  /** Writes a DoRA merge's result into the base weight (converted to its dtype). */
  protected writeMergeWeight(w: Tensor): void {
    (this.baseLayer as Module & { weight: Tensor }).weight.copyFrom(w);
  }

  /**
   * PEFT's DoRA merge, adapter by adapter on an f32 copy of W: W ← m/‖W + ΔW‖ ⊙ (W + ΔW) (the norm kept for
   * unmerge), a plain LoRA adapter W ← W + ΔW; unmerge (sign -1, latest first) W ← W·‖…‖/m − ΔW with the kept
   * norm. Written back once (nothing written when `safe` finds a non-finite result, or with checkOnly).
   */
  protected doraMerge(names: string[], sign: 1 | -1, safe: boolean, checkOnly: boolean): number {
    this.requireDoraOnCpu(...this.baseLayer.parameters());
    const keep: Tensor[] = [];
    let wf = this.readMergeWeight();
    try {
      const { deltas, weightInOut } = this.mergeOperands(names, keep);
      const norms = new Map<string, Float64Array>();
      for (let i = 0; i < names.length; i++) {
        const name = names[i], m = this.doraMagnitude(name), N = deltas[i].B.shape[0];
        // W as (N, K), or (K, N) when stored in-out.
        const view = () => wf.reshape(weightInOut ? [-1, N] : [N, -1]);
        const mv = m ? Float64Array.from(m.toFloat32Array()) : null;
        if (sign > 0) {
          using w2 = view();
          applyLoraDeltas(w2, [deltas[i]], { weightInOut });
          if (mv) {
            const n = outputNorms(w2, weightInOut);
            norms.set(name, n);
            wf = this.#rescaled(wf, w2, mv.map((v, j) => v / n[j]), weightInOut);
          }
        } else {
          if (mv) {
            const n = this.#mergeNorms.get(name);
            if (!n) throw peftError("ERR_STATE", `${this.describe()}.unmerge: no kept norm for the DoRA adapter ${shownValue(name)}`);
            using w2 = view();
            wf = this.#rescaled(wf, w2, mv.map((v, j) => n[j] / v), weightInOut);
          }
          using w3 = view();
          applyLoraDeltas(w3, [deltas[i]], { weightInOut, sign: -1 });
        }
        if (safe && !allFinite(wf)) return i;
      }
      if (checkOnly) return -1;
      this.writeMergeWeight(wf);
      for (const n of names) {
        if (sign < 0) this.#mergeNorms.delete(n);
        else if (norms.has(n)) this.#mergeNorms.set(n, norms.get(n)!);
      }
      return -1;
    } finally {
      wf.dispose();
      keep.forEach((t) => t.dispose());
    }
  }

  /** wf (whose 2-D view is w2) scaled per output feature by f, as a new tensor of wf's shape (wf disposed). */
  #rescaled(wf: Tensor, w2: Tensor, f: Float64Array, inOut: boolean): Tensor {
    using s = scaleOutputs(w2, f, inOut);
    const out = s.reshape(wf.shape);
    wf.dispose();
    return out;
  }

  /** Adds (or replaces) an adapter; the first one added becomes active. */
  updateLayer(opts: LoraLayerOptions): void {
    if (opts === null || typeof opts !== "object") throw typeError(`${this.constructor.name}.updateLayer: options must be an object`);
    const name = adapterNameArg(opts.adapterName ?? "default", "LoRA");
    const what = `LoRA adapter ${shownValue(name)}`;
    const { r } = opts;
    if (typeof r !== "number" || !Number.isSafeInteger(r) || r <= 0)
      throw peftError("ERR_CONFIG", `${what}: r must be a positive integer, got ${shownValue(r)}`);
    const alpha = opts.loraAlpha ?? 8;
    if (typeof alpha !== "number" || !Number.isFinite(alpha) || alpha < 0)
      throw peftError("ERR_CONFIG", `${what}: loraAlpha must be a finite number >= 0, got ${shownValue(alpha)}`);
    const p = opts.loraDropout ?? 0;
    if (typeof p !== "number" || !(p >= 0 && p < 1)) throw peftError("ERR_CONFIG", `${what}: loraDropout must be in [0, 1), got ${shownValue(p)}`);
    const init = opts.initLoraWeights ?? true;
    if (init !== true && init !== false && init !== "gaussian")
      throw peftError("ERR_UNSUPPORTED", `${what}: initLoraWeights ${shownValue(init)} is not supported (true, false or "gaussian")`);
    if (opts.useDora !== undefined && typeof opts.useDora !== "boolean") throw typeError(`${what}: useDora must be a boolean, got ${describe(opts.useDora)}`);
    const dora = opts.useDora === true;
    const refusal = dora ? this.doraRefusal() : null;
    if (refusal) throw peftError("ERR_UNSUPPORTED", `${what}: ${refusal}`);
    this.checkRank(r, what);
    if (this.adapterNames.includes(name)) this.dropAdapter(name);
    this.createAdapterWeights(name, r, init);
    this.r[name] = r;
    this.loraAlpha[name] = alpha;
    this.scaling[name] = opts.useRslora ? alpha / Math.sqrt(r) : alpha / r;
    this.loraDropout[name] = p;
    if (dora) {
      try {
        this.#initMagnitude(name);
      } catch (e) {
        this.dropAdapter(name); // no half-made adapter is left behind
        throw e;
      }
      this.useDora[name] = true;
    }
    const active = this.activeAdapters;
    this.setAdapter(active.length ? active : [name], { allowMissing: true });
  }

  /**
   * The adapter's parameters as this layer stores them (LoraLinear: A (r, in), B (out, r); conv layers keep
   * PEFT's 4-D shapes; the embedding PEFT's lora_embedding_A (r, num) and lora_embedding_B (dim, r)).
   */
  loraFactors(name: string): { A: Tensor; B: Tensor } {
    if (!this.adapterNames.includes(name)) throw this.unknownAdapter(name);
    return this.loraWeights(name);
  }

  protected loraWeights(name: string): { A: Tensor; B: Tensor } {
    return { A: (this.loraA.get(name) as Linear).weight, B: (this.loraB.get(name) as Linear).weight };
  }

  protected adapterParameters(name: string): Tensor[] {
    const { A, B } = this.loraWeights(name);
    const m = this.doraMagnitude(name);
    return m ? [A, B, m] : [A, B];
  }

  /** t as a matrix (rows = its first dimension): t itself when 2-D, else a view that `keep` collects for disposal. */
  protected flat(t: Tensor, keep: Tensor[]): Tensor {
    if (t.shape.length === 2) return t;
    const v = t.reshape([t.shape[0], -1]);
    keep.push(v);
    return v;
  }

  /** W and the deltas as the 2-D product W (N, K) ± Σ s·B (N, r)·A (r, K) (W stored (K, N) when weightInOut). */
  protected mergeOperands(names: string[], keep: Tensor[]): { weight: Tensor; deltas: LoraDelta[]; weightInOut: boolean } {
    const base = this.baseLayer as Module & { weight?: unknown };
    if (!(base.weight instanceof Tensor)) throw peftError("ERR_UNSUPPORTED", `${this.describe()}: the base layer has no weight to merge into`);
    const deltas = names.map((n) => {
      const { A, B } = this.loraWeights(n);
      return { A: this.flat(A, keep), B: this.flat(B, keep), scale: this.scaling[n] };
    });
    return { weight: this.flat(base.weight, keep), deltas, weightInOut: false };
  }

  /** W ± Σ scale·B·A in place, one pass over W (DoRA adapters: doraMerge). */
  protected applyMerge(names: string[], sign: 1 | -1, safe: boolean, checkOnly: boolean): number {
    if (names.some((n) => this.useDora[n])) return this.doraMerge(names, sign, safe, checkOnly);
    const keep: Tensor[] = [];
    try {
      const { weight, deltas, weightInOut } = this.mergeOperands(names, keep);
      return applyLoraDeltas(weight, deltas, { weightInOut, sign, safe, checkOnly });
    } finally {
      keep.forEach((t) => t.dispose());
    }
  }

  /** scale·B·A (f32) in the base weight's layout and shape. */
  getDeltaWeight(adapterName: string): Tensor {
    if (typeof adapterName !== "string") throw typeError(`getDeltaWeight: adapterName must be a string, got ${describe(adapterName)}`);
    const [name] = this.pickAdapters([adapterName]);
    const refusal = this.mergeRefusal();
    if (refusal) throw peftError("ERR_UNSUPPORTED", `${this.describe()}.getDeltaWeight: ${refusal}`);
    const keep: Tensor[] = [];
    try {
      const { deltas, weightInOut } = this.mergeOperands([name], keep);
      const { A, B } = deltas[0];
      const d = weightInOut ? matmul(A, B, { transA: true, transB: true }) : matmul(B, A);
      scaleInPlace(d, this.scaling[name]);
      const shape = (this.baseLayer as Module & { weight: Tensor }).weight.shape;
      if (d.shape.length === shape.length) return d;
      const out = d.reshape(shape);
      d.dispose();
      return out;
    } finally {
      keep.forEach((t) => t.dispose());
    }
  }
}

/** The native adapter descriptor of one adapter: A (r, K) and B (N, r) as 2-D views. */
export interface NativeAdapter {
  /** The adapter's name (for layers that also run it outside the fused kernels); the addon ignores it. */
  name: string;
  A: NativeTensor;
  B: NativeTensor;
  scale: number;
  p: number;
  seed: number;
  stream: number;
  dA?: NativeTensor | null;
  dB?: NativeTensor | null;
}

/** What a fused forward keeps for backward besides x (LoRA's T = drop(x)·Aᵀ, or its equivalent). */
export interface FusedResult {
  y: Tensor;
  saved: Tensor[];
}

/**
 * LoRA layers whose base and adapters run as one native forward and one native backward, and merge in
 * place (dense layers, convolutions). A subclass says how its base runs (runForward / runBackward) and how
 * its weight and factors look as the 2-D product W (N, K) ± s·B (N, r)·A (r, K).
 */
export abstract class FusedLoraLayer extends LoraLayer {
  declare baseLayer: Module & { weight: Tensor; bias: Tensor | null };

  /** The base output plus the adapters (and what backward needs besides x). */
  protected abstract runForward(x: Tensor, adapters: NativeAdapter[]): FusedResult;
  /** dA, dB accumulate through the descriptors and a trainable base's dW, db into .grad; dx when wanted. */
  protected abstract runBackward(dy: Tensor, x: Tensor, saved: Tensor[], weight: Tensor, adapters: NativeAdapter[], wantDx: boolean): Tensor | null;
  #native(names: string[], training: boolean, grads: boolean, rngs: Rng, keep: Tensor[]): NativeAdapter[] {
    return names.map((n) => {
      const { A, B } = this.loraWeights(n);
      const p = training ? this.loraDropout[n] : 0;
      const rng = p > 0 ? (rngs.get(n) ?? { seed: 0, stream: 0 }) : { seed: 0, stream: 0 };
      const out: NativeAdapter = { name: n, A: Tensor.handle(this.flat(A, keep)), B: Tensor.handle(this.flat(B, keep)), scale: this.scaling[n], p, seed: rng.seed, stream: rng.stream };
      if (grads) {
        out.dA = A.requiresGrad ? Tensor.handle(this.flat(gradOf(A), keep)) : null;
        out.dB = B.requiresGrad ? Tensor.handle(this.flat(gradOf(B), keep)) : null;
      }
      return out;
    });
  }

  forward(x: Tensor): Tensor {
    if (!(x instanceof Tensor)) throw typeError(`${this.constructor.name}.forward: x must be a Tensor`);
    const adapters = this.adaptersToRun();
    if (!adapters.length) return this.forwardBase(x);
    const training = this.training;
    // Dropout draws per call: the graph node keeps this call's draws, the tape-free path the last ones.
    const rng: Rng = new Map();
    if (training) for (const n of adapters) if (this.loraDropout[n] > 0) rng.set(n, takeRng(undefined, "LoRA dropout"));
    if (adapters.some((n) => this.useDora[n])) return this.#forwardDora(x, adapters, training, rng);
    const keep: Tensor[] = [];
    let res: FusedResult;
    try {
      res = this.runForward(x, this.#native(adapters, training, false, rng, keep));
    } finally {
      keep.forEach((t) => t.dispose());
    }
    const lora = adapters.flatMap((n) => Object.values(this.loraWeights(n)));
    return this.finishFused(x, res.y, res.saved, lora, (dy, xs, saved, weight, wantDx) => this.#gradients(dy, xs, saved, weight, adapters, training, rng, wantDx));
  }

  override backward(dy: Tensor, options: BackwardOptions = {}): Tensor | null {
    return this.fusedBackward(dy, options);
  }

  // ---- DoRA (dora.ts runs the recurrence; the layer kind gives its DoraOps and working form) ----

  protected override doraRefusal(): string | null {
    return null;
  }

  /** How x meets the base weight and the adapters (dense by default: Linear, Conv1D, an int8 or 4-bit base). */
  protected doraOps(): DoraOps & Disposable {
    return denseDoraOps(this.baseLayer);
  }

  /** t (x or dy) in the DoRA ops' working form: dense f32 rows (M, features); views and copies go to `keep`. */
  protected doraWorking(t: Tensor, keep: Tensor[]): Tensor {
    let w = t;
    if (w.dtype !== "f32") keep.push((w = w.to("f32")));
    if (w.shape.length !== 2) keep.push((w = w.reshape([-1, w.shape[w.shape.length - 1]])));
    return w;
  }

  /** y from q (f32, working form): the base bias added, in x's shape (last dimension the out features) and dtype. */
  protected doraOutput(q: Tensor, x: Tensor): Tensor {
    const bias = this.baseLayer.bias;
    const y2 = bias ? ew("add", [q, bias], x.dtype) : q.to(x.dtype);
    const y = y2.reshape([...x.shape.slice(0, -1), q.shape[q.shape.length - 1]]);
    y2.dispose();
    return y;
  }

  /** A trainable base bias's gradient from dy (working form). */
  protected doraBiasGrad(dy: Tensor): void {
    const b = this.baseLayer.bias;
    if (b?.requiresGrad) sumRows(dy, gradOf(b), { accumulate: true });
  }

  #doraRuns(adapters: string[], training: boolean, rng: Rng, norms: (Tensor | null)[]): DoraRun[] {
    return adapters.map((n, i) => {
      const { A, B } = this.loraWeights(n);
      const p = training ? this.loraDropout[n] : 0;
      const r = p > 0 ? (rng.get(n) ?? { seed: 0, stream: 0 }) : { seed: 0, stream: 0 };
      return { A, B, scale: this.scaling[n], p, seed: r.seed, stream: r.stream, magnitude: this.doraMagnitude(n), norm: norms[i] };
    });
  }

  #forwardDora(x: Tensor, adapters: string[], training: boolean, rng: Rng): Tensor {
    this.requireDoraOnCpu(x, this.baseLayer.weight);
    const norms = adapters.map((n) => (this.useDora[n] ? this.doraNorm(n) : null));
    const keep: Tensor[] = [];
    let res: { y: Tensor; saved: Tensor[] };
    try {
      using ops = this.doraOps();
      const { q, saved } = doraForward(ops, this.doraWorking(x, keep), this.#doraRuns(adapters, training, rng, norms));
      try {
        res = { y: this.doraOutput(q, x), saved };
      } catch (e) {
        saved.forEach((t) => t.dispose());
        throw e;
      } finally {
        q.dispose();
      }
    } finally {
      keep.forEach((t) => t.dispose());
      norms.forEach((t) => t?.dispose());
    }
    const params = adapters.flatMap((n) => this.adapterParameters(n));
    return this.finishFused(x, res.y, res.saved, params, (dy, xs, saved, _weight, wantDx) => {
      this.requireUnmerged();
      const k: Tensor[] = [];
      try {
        using ops = this.doraOps();
        const dyw = this.doraWorking(dy, k);
        this.doraBiasGrad(dyw);
        const dx = doraBackward(ops, dyw, this.doraWorking(xs, k), saved, this.#doraRuns(adapters, training, rng, []), wantDx);
        if (!dx) return null;
        const c = dx.dtype === dy.dtype ? dx : dx.to(dy.dtype);
        const out = c.reshape(xs.shape);
        if (c !== dx) c.dispose();
        dx.dispose();
        return out;
      } finally {
        k.forEach((t) => t.dispose());
      }
    });
  }

  #gradients(dy: Tensor, x: Tensor, saved: Tensor[], weight: Tensor, adapters: string[], training: boolean, rng: Rng, wantDx: boolean): Tensor | null {
    this.requireUnmerged();
    const keep: Tensor[] = [];
    try {
      return this.runBackward(dy, x, saved, weight, this.#native(adapters, training, true, rng, keep), wantDx);
    } finally {
      keep.forEach((t) => t.dispose());
    }
  }

  override extraRepr(): string {
    return `r=${JSON.stringify(this.r)}, scaling=${JSON.stringify(this.scaling)}, active=${JSON.stringify(this.activeAdapters)}${this.merged ? ", merged" : ""}`;
  }
}

type DenseLayer = Linear | Conv1D;

/** LoRA on Linear (weight (out, in)) and GPT-2's Conv1D (weight (in, out), fan_in_fan_out). */
export class LoraLinear extends FusedLoraLayer {
  declare baseLayer: DenseLayer;
  readonly fanInFanOut: boolean;

  constructor(base: DenseLayer, opts: LoraLayerOptions) {
    if (!(base instanceof Linear) && !(base instanceof Conv1D))
      throw typeError(`LoraLinear: the base layer must be a Linear or Conv1D, got ${describe(base)}`);
    super(base);
    this.fanInFanOut = denseFanInFanOut(base instanceof Conv1D, opts?.fanInFanOut);
    this.updateLayer(opts);
  }

  protected override mergeOperands(names: string[], keep: Tensor[]) {
    return { ...super.mergeOperands(names, keep), weightInOut: this.fanInFanOut };
  }

  protected features(): [number, number] {
    const b = this.baseLayer;
    return b instanceof Conv1D ? [b.nx, b.nf] : [b.inFeatures, b.outFeatures];
  }

  protected runForward(x: Tensor, adapters: NativeAdapter[]): FusedResult {
    const base = this.baseLayer;
    const [yh, Th] = native.loraForward(Tensor.handle(x), Tensor.handle(base.weight), base.bias ? Tensor.handle(base.bias) : null, this.fanInFanOut, adapters) as [
      NativeTensor,
      NativeTensor,
    ];
    return { y: new Tensor(yh), saved: [new Tensor(Th)] };
  }

  protected runBackward(dy: Tensor, x: Tensor, [T]: Tensor[], weight: Tensor, adapters: NativeAdapter[], wantDx: boolean): Tensor | null {
    const base = this.baseLayer;
    const dx = native.loraBackward(Tensor.handle(dy), Tensor.handle(x), Tensor.handle(weight), null, this.fanInFanOut, adapters, Tensor.handle(T), wantDx) as NativeTensor | null;
    // A trainable base (bias "all"/"lora_only", or full fine-tuning) gets its gradients here.
    if (base.weight.requiresGrad) linearGradWeight(dy, x, gradOf(base.weight), { accumulate: true, weightInOut: this.fanInFanOut });
    if (base.bias?.requiresGrad) sumRows(dy, gradOf(base.bias), { accumulate: true });
    return dx ? new Tensor(dx) : null;
  }
}

/** Whether `tensors` are the cached ones, each still at the cached version (no write since). */
function sameVersions(c: { tensors: Tensor[]; versions: number[] }, tensors: Tensor[]): boolean {
  return c.tensors.length === tensors.length && c.tensors.every((t, i) => t === tensors[i] && t.version === c.versions[i]);
}

/** Whether every element of an f32 tensor is finite. */
function allFinite(t: Tensor): boolean {
  const v = t.view() as Float32Array;
  let bad = 0;
  for (let i = 0; i < v.length; i++) bad += v[i] - v[i]; // NaN for NaN and ±Inf, else 0
  return bad === 0;
}

markAbstract(LoraLayer, FusedLoraLayer);
