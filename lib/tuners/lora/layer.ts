// LoRA layers (PEFT's tuners/lora/layer.py): LoraLayer holds adapters by name on a base layer; LoraLinear
// runs base + adapters as one fused native forward, a fused backward, and merges in place.
import { Tensor } from "../../tensor.js";
import { native, type NativeTensor } from "../../native.js";
import { linearGradWeight, matmul } from "../../ops.js";
import { scaleInPlace, sumRows } from "../../kernels.js";
import { clip, describe, isArray, optionsArg, peftError, shownValue, stringsArg, typeError } from "../../errors.js";
import { takeRng } from "../../random.js";
import { applyLoraDeltas, type LoraDelta } from "./delta.js";
import { Module, ModuleDict, Linear, Conv1D, gradOf, type BackwardOptions } from "../../nn/index.js";
import { record, wantsGrad } from "../../autograd/record.js";

type Rng = Map<string, { seed: number; stream: number }>;

export interface LoraLayerOptions {
  adapterName?: string;
  r: number;
  loraAlpha?: number;
  loraDropout?: number;
  useRslora?: boolean;
  initLoraWeights?: boolean | "gaussian";
  fanInFanOut?: boolean;
}

export interface MergeOptions {
  safeMerge?: boolean;
  adapterNames?: string[];
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

const warned = new Set<string>();
export function warnOnce(code: string, msg: string): void {
  if (warned.has(msg)) return;
  warned.add(msg);
  process.emitWarning(msg, { code });
}

/** The contract every LoRA layer follows (custom layers for user module types extend it too). */
export abstract class LoraLayer extends Module {
  baseLayer: Module;
  readonly loraA: ModuleDict;
  readonly loraB: ModuleDict;
  // Per-adapter settings keyed by user-chosen names: null-prototype records, so no name reaches Object.prototype.
  readonly r: Record<string, number> = Object.create(null);
  readonly loraAlpha: Record<string, number> = Object.create(null);
  readonly scaling: Record<string, number> = Object.create(null);
  readonly loraDropout: Record<string, number> = Object.create(null);
  readonly mergedAdapters: string[] = [];
  #active: string[] = [];
  #disabled = false;

  constructor(baseLayer: Module) {
    super();
    if (!(baseLayer instanceof Module)) throw typeError(`${new.target.name}: the base layer must be a Module`);
    this.baseLayer = this.registerModule("base_layer", baseLayer);
    this.loraA = this.registerModule("lora_A", new ModuleDict());
    this.loraB = this.registerModule("lora_B", new ModuleDict());
  }

  /** (in, out) features of the base layer. */
  protected abstract features(): [number, number];

  get activeAdapters(): string[] {
    return [...this.#active];
  }

  get merged(): boolean {
    return this.mergedAdapters.length > 0;
  }

  get disabled(): boolean {
    return this.#disabled;
  }

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

  /** The adapter's tensors under PEFT's names relative to the layer ("lora_A.weight", ...), for state dicts. */
  adapterStateEntries(name: string): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [which, dict] of [["lora_A", this.loraA], ["lora_B", this.loraB]] as const)
      for (const [n, t] of dict.get(name).namedParameters()) out.push([`${which}.${n}`, t]);
    return out;
  }

  /** Adds (or replaces) an adapter; the first one added becomes active. */
  updateLayer(opts: LoraLayerOptions): void {
    if (opts === null || typeof opts !== "object") throw typeError(`${this.constructor.name}.updateLayer: options must be an object`);
    const name = opts.adapterName ?? "default";
    if (typeof name !== "string" || !name || name.includes(".")) throw peftError("ERR_CONFIG", `LoRA: adapter name must be a non-empty string without ".", got ${shownValue(name)}`);
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
    this.checkRank(r, what);
    if (this.adapterNames.includes(name)) this.#dropAdapter(name);
    this.createAdapterWeights(name, r, init);
    this.r[name] = r;
    this.loraAlpha[name] = alpha;
    this.scaling[name] = opts.useRslora ? alpha / Math.sqrt(r) : alpha / r;
    this.loraDropout[name] = p;
    this.setAdapter(this.#active.length ? this.#active : [name], { allowMissing: true });
  }

  /**
   * Activates adapters (trainable) and freezes the others, as PEFT's set_adapter. With `allowMissing` (the model
   * sets its adapters on every layer) names this layer lacks are kept as active but have no effect here.
   */
  setAdapter(names: string | string[], options: { allowMissing?: boolean } = {}): void {
    const opts = optionsArg(options, "setAdapter");
    if (typeof names !== "string" && !isArray(names)) throw typeError(`setAdapter: expected an adapter name or an array of names, got ${describe(names)}`);
    const list = typeof names === "string" ? [names] : stringsArg(names, "setAdapter", "names");
    if (!opts.allowMissing) for (const n of list) if (!this.adapterNames.includes(n)) throw this.#unknown(n);
    for (const n of this.adapterNames) {
      const on = list.includes(n);
      this.#weights(n).forEach((w) => (w.requiresGrad = on));
    }
    this.#active = [...list];
  }

  /** false: the layer computes exactly its base output, adapters frozen; true: back to the active adapters. */
  enableAdapters(enabled: boolean): void {
    if (typeof enabled !== "boolean") throw typeError("enableAdapters: expected a boolean");
    if (enabled) {
      this.setAdapter(this.#active, { allowMissing: true });
      this.#disabled = false;
    } else {
      for (const n of this.adapterNames) this.#weights(n).forEach((w) => (w.requiresGrad = false));
      this.#disabled = true;
    }
  }

  deleteAdapter(name: string): void {
    if (!this.adapterNames.includes(name)) throw this.#unknown(name);
    if (this.mergedAdapters.includes(name)) throw peftError("ERR_STATE", `deleteAdapter(${shownValue(name)}): the adapter is merged; unmerge first`);
    this.#dropAdapter(name);
    this.#active = this.#active.filter((n) => n !== name);
    if (!this.#active.length && this.adapterNames.length) this.setAdapter(this.adapterNames[0]);
  }

  #dropAdapter(name: string): void {
    this.#weights(name).forEach((w) => {
      w.grad?.dispose();
      w.dispose();
    });
    this.removeAdapterWeights(name);
    delete this.r[name], delete this.loraAlpha[name], delete this.scaling[name], delete this.loraDropout[name];
  }

  /**
   * The adapter's parameters as this layer stores them (LoraLinear: A (r, in), B (out, r); conv layers keep
   * PEFT's 4-D shapes; the embedding PEFT's lora_embedding_A (r, num) and lora_embedding_B (dim, r)).
   */
  loraFactors(name: string): { A: Tensor; B: Tensor } {
    if (!this.adapterNames.includes(name)) throw this.#unknown(name);
    return this.loraWeights(name);
  }

  protected loraWeights(name: string): { A: Tensor; B: Tensor } {
    return { A: (this.loraA.get(name) as Linear).weight, B: (this.loraB.get(name) as Linear).weight };
  }

  #weights(name: string): Tensor[] {
    const { A, B } = this.loraWeights(name);
    return [A, B];
  }

  #unknown(name: unknown) {
    return peftError("ERR_CONFIG", `LoRA: unknown adapter ${shownValue(name)}; this layer has ${clip(this.adapterNames.map((n) => `"${n}"`).join(", "), 200) || "none"}`);
  }

  /** Adapters of `opts.adapterNames` (default: the active ones), checked. */
  protected pickAdapters(names: string[] | undefined | null): string[] {
    const list = names === undefined || names === null ? this.#active : stringsArg(names, "merge", "adapterNames");
    for (const n of list) if (!this.adapterNames.includes(n)) throw this.#unknown(n);
    return list;
  }

  /** Merging refused for this layer (a reason), or null. */
  protected mergeRefusal(): string | null {
    return null;
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

  /** W += Σ scale·B·A in place, one pass over W; already merged adapters are skipped with a warning. */
  merge(options: MergeOptions = {}): void {
    const opts = optionsArg(options, "merge");
    const names = this.pickAdapters(opts.adapterNames);
    const already = names.filter((n) => this.mergedAdapters.includes(n));
    if (already.length)
      warnOnce("PEFT_ALREADY_MERGED", `Already following adapters were merged ${already.join(",")}. You are now additionally merging ${names.filter((n) => !already.includes(n)).join(",")}.`);
    const todo = names.filter((n) => !already.includes(n));
    if (!todo.length) return;
    this.#applyMerge(todo, opts.safeMerge === true, false);
    this.mergedAdapters.push(...todo);
    this.releaseSaved();
  }

  /**
   * Throws what merge({safeMerge: true}) would, without changing any weight: a model checks every layer
   * before it merges any, so a broken adapter leaves the whole model as it was.
   */
  checkMerge(opts: MergeOptions = {}): void {
    const todo = this.pickAdapters(optionsArg(opts, "checkMerge").adapterNames).filter((n) => !this.mergedAdapters.includes(n));
    if (todo.length) this.#applyMerge(todo, true, true);
  }

  #applyMerge(todo: string[], safe: boolean, checkOnly: boolean): void {
    const refusal = this.mergeRefusal();
    if (refusal) throw peftError("ERR_UNSUPPORTED", `${this.describe()}: ${refusal}`);
    const bad = this.#apply(todo, 1, safe, checkOnly);
    if (bad >= 0) throw peftError("ERR_STATE", `NaNs detected in the merged weights. The adapter ${todo[bad]} seems to be broken`);
  }

  #apply(names: string[], sign: 1 | -1, safe: boolean, checkOnly: boolean): number {
    const keep: Tensor[] = [];
    try {
      const { weight, deltas, weightInOut } = this.mergeOperands(names, keep);
      return applyLoraDeltas(weight, deltas, { weightInOut, sign, safe, checkOnly });
    } finally {
      keep.forEach((t) => t.dispose());
    }
  }

  /** W -= Σ scale·B·A for every merged adapter (latest first), one pass over W. */
  unmerge(): void {
    if (!this.merged) {
      warnOnce("PEFT_NOT_MERGED", "Already unmerged. Nothing to do.");
      return;
    }
    this.#apply([...this.mergedAdapters].reverse(), -1, false, false);
    this.mergedAdapters.length = 0;
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


  override extraRepr(): string {
    return "";
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
  // What forward drew for dropout (per adapter) and what backward needs.
  #rng: Rng = new Map();
  #forwardAdapters: string[] = [];

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
    if (this.disabled && this.merged) this.unmerge();
    const base = this.baseLayer;
    const adapters = this.disabled || this.merged ? [] : this.activeAdapters.filter((n) => this.adapterNames.includes(n));
    if (!adapters.length) {
      this.releaseSaved();
      this.#forwardAdapters = [];
      return base.forward(x);
    }
    base.releaseSaved();
    const training = this.training;
    // Dropout draws per call: the graph node keeps this call's draws, the tape-free path the last ones.
    const rng: Rng = new Map();
    if (training) for (const n of adapters) if (this.loraDropout[n] > 0) rng.set(n, takeRng(undefined, "LoRA dropout"));
    this.#rng = rng;
    const keep: Tensor[] = [];
    let res: FusedResult;
    try {
      res = this.runForward(x, this.#native(adapters, training, false, rng, keep));
    } finally {
      keep.forEach((t) => t.dispose());
    }
    const { y, saved } = res;
    if (training) {
      this.save(x, ...saved);
      this.#forwardAdapters = adapters;
    } else {
      this.releaseSaved();
      this.#forwardAdapters = [];
    }
    const lora = adapters.flatMap((n) => Object.values(this.loraWeights(n)));
    if (wantsGrad(x, base.weight, base.bias, ...lora)) {
      // A and B are saved too: only so that an optimizer step before backward is caught (version check).
      const k = saved.length;
      record(
        `${this.constructor.name}Backward`,
        [x],
        y,
        ([g], all, [needDx]) => [g ? this.#gradients(g, all[0], all.slice(1, 1 + k), all[1 + k], adapters, training, rng, needDx) : null],
        [x, ...saved, base.weight, ...lora],
        { force: true },
      );
    }
    saved.forEach((t) => t.dispose());
    return y;
  }

  override backward(dy: Tensor, options: BackwardOptions = {}): Tensor | null {
    const opts = this.gradInput(dy, options);
    this.#requireUnmerged();
    if (!this.#forwardAdapters.length) return this.baseLayer.backward(dy, opts);
    const [x, ...saved] = this.saved();
    const dx = this.#gradients(dy, x, saved, this.baseLayer.weight, this.#forwardAdapters, true, this.#rng, opts.inputGrad !== false);
    this.releaseSaved();
    this.#forwardAdapters = [];
    return dx;
  }

  #requireUnmerged(): void {
    if (this.merged) throw peftError("ERR_STATE", `${this.describe()}.backward: adapters are merged; unmerge them before training (adapter gradients need unmerged weights)`);
  }

  #gradients(dy: Tensor, x: Tensor, saved: Tensor[], weight: Tensor, adapters: string[], training: boolean, rng: Rng, wantDx: boolean): Tensor | null {
    this.#requireUnmerged();
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
    // PEFT forces fan_in_fan_out to match the weight layout, with a warning when the option disagreed.
    const isConv1D = base instanceof Conv1D;
    if (opts?.fanInFanOut === true && !isConv1D)
      warnOnce("PEFT_FAN_IN_FAN_OUT", "fan_in_fan_out is set to True but the target module is `torch.nn.Linear`. Setting fan_in_fan_out to False.");
    if (opts?.fanInFanOut === false && isConv1D)
      warnOnce("PEFT_FAN_IN_FAN_OUT", "fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.");
    this.fanInFanOut = isConv1D;
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
