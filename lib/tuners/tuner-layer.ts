// What every adapter layer shares (PEFT's BaseTunerLayer): the wrapped base layer, adapters by name, which are
// active (trainable) or disabled, and the merge / unmerge bookkeeping. A method's layer (LoraLayer, IA3Layer)
// says how its adapter weights are stored and how merging changes the base weights.
import type { Tensor } from "../tensor.js";
import { Module, markAbstract, type BackwardOptions } from "../nn/index.js";
import { clip, describe, isArray, optionsArg, peftError, shownValue, stringsArg, typeError } from "../errors.js";
import { record, wantsGrad } from "../autograd/record.js";

/** A fused layer's backward for one forward call: dx when wanted; parameter gradients accumulate into .grad. */
export type FusedGradients = (dy: Tensor, x: Tensor, saved: Tensor[], weight: Tensor, wantDx: boolean) => Tensor | null;

export interface MergeOptions {
  safeMerge?: boolean;
  adapterNames?: string[];
  /**
   * Layers over an int8 base (LoRA on Linear8bitLt): keep the original CB/SCB while merged (twice the int8
   * memory) so unmerge restores them bit for bit instead of requantising. Other layers ignore it.
   */
  exactUnmerge?: boolean;
}

const warned = new Set<string>();
/** A process warning shown once per message (PEFT's warnings.warn, which Python shows once per place). */
export function warnOnce(code: string, msg: string): void {
  if (warned.has(msg)) return;
  warned.add(msg);
  process.emitWarning(msg, { code });
}

/**
 * fan_in_fan_out for a dense base layer: PEFT forces it to match the weight layout (true for GPT-2's Conv1D,
 * false for Linear), with a warning when the option asked for the other one.
 */
export function denseFanInFanOut(isConv1D: boolean, requested: boolean | undefined): boolean {
  if (requested === true && !isConv1D)
    warnOnce("PEFT_FAN_IN_FAN_OUT", "fan_in_fan_out is set to True but the target module is `torch.nn.Linear`. Setting fan_in_fan_out to False.");
  if (requested === false && isConv1D)
    warnOnce("PEFT_FAN_IN_FAN_OUT", "fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.");
  return isConv1D;
}

/** An adapter name as PEFT accepts it (a key in state dicts: never empty, never dotted). */
export function adapterNameArg(name: unknown, what: string): string {
  if (typeof name !== "string" || !name || name.includes(".")) throw peftError("ERR_CONFIG", `${what}: adapter name must be a non-empty string without ".", got ${shownValue(name)}`);
  return name;
}

export abstract class BaseTunerLayer extends Module {
  baseLayer: Module;
  readonly mergedAdapters: string[] = [];
  #active: string[] = [];
  #disabled = false;
  // The backward of the last training forward that ran adapters (tape-free path); null: the base ran alone.
  #pending: FusedGradients | null = null;

  constructor(baseLayer: Module) {
    super();
    if (!(baseLayer instanceof Module)) throw typeError(`${new.target.name}: the base layer must be a Module`);
    this.baseLayer = this.registerModule("base_layer", baseLayer);
  }

  /** The method's name in messages ("LoRA", "IA3"). */
  protected abstract get methodName(): string;

  /** Every adapter this layer holds, in the order they were added. */
  abstract get adapterNames(): string[];

  /** An adapter's trainable tensors (what setAdapter and enableAdapters freeze and unfreeze). */
  protected abstract adapterParameters(name: string): Tensor[];

  /** Unregisters an adapter's weights and settings; its tensors are already disposed. */
  protected abstract removeAdapter(name: string): void;

  /** The adapter's tensors under PEFT's names relative to the layer ("lora_A.weight", "ia3_l"), for state dicts. */
  abstract adapterStateEntries(name: string): [string, Tensor][];

  /**
   * Applies the adapters to the base weights (sign 1, in this order) or takes them out again (sign -1). With
   * `safe`, nothing is written when a result would not be finite; `checkOnly` (with safe) never writes. Returns
   * the index of the first adapter whose merge is not finite, or -1.
   */
  protected abstract applyMerge(names: string[], sign: 1 | -1, safe: boolean, checkOnly: boolean): number;

  get activeAdapters(): string[] {
    return [...this.#active];
  }

  get merged(): boolean {
    return this.mergedAdapters.length > 0;
  }

  get disabled(): boolean {
    return this.#disabled;
  }

  /** The innermost base layer (an adapter layer may wrap another). */
  getBaseLayer(): Module {
    let b: Module = this.baseLayer;
    while (b instanceof BaseTunerLayer) b = b.baseLayer;
    return b;
  }

  /** The adapters a forward runs: none while disabled (a merged layer is unmerged first, as PEFT does) or merged. */
  protected adaptersToRun(): string[] {
    if (this.disabled && this.merged) this.unmerge();
    return this.disabled || this.merged ? [] : this.#active.filter((n) => this.adapterNames.includes(n));
  }

  // ---- layers whose base and adapters run as one forward and one backward (one graph node per call) ----

  /** The base layer's own forward (no adapter runs); a tape-free backward then goes to the base. */
  protected forwardBase(x: Tensor): Tensor {
    this.releaseSaved();
    this.#pending = null;
    return this.getFusedBase().forward(x);
  }

  private getFusedBase(): Module & { weight: Tensor; bias?: Tensor | null } {
    return this.baseLayer as Module & { weight: Tensor; bias?: Tensor | null };
  }

  /**
   * Finishes a fused forward: while training keeps x and `saved` for the tape-free backward, and records one
   * graph node (backward = `gradients`) when x, the base or `params` want gradients. `params` are saved with
   * the node too, so an optimizer step between forward and backward is caught (version check). Disposes
   * this call's handles of `saved`.
   */
  protected finishFused(x: Tensor, y: Tensor, saved: Tensor[], params: Tensor[], gradients: FusedGradients): Tensor {
    const base = this.getFusedBase();
    base.releaseSaved();
    if (this.training) {
      this.save(x, ...saved);
      this.#pending = gradients;
    } else {
      this.releaseSaved();
      this.#pending = null;
    }
    if (wantsGrad(x, base.weight, base.bias, ...params)) {
      const k = saved.length;
      record(
        `${this.constructor.name}Backward`,
        [x],
        y,
        ([g], all, [needDx]) => [g ? gradients(g, all[0], all.slice(1, 1 + k), all[1 + k], needDx) : null],
        [x, ...saved, base.weight, ...params],
        { force: true },
      );
    }
    saved.forEach((t) => t.dispose());
    return y;
  }

  /** The tape-free backward of the last training forward (the base's when no adapter ran). */
  protected fusedBackward(dy: Tensor, options: BackwardOptions): Tensor | null {
    const opts = this.gradInput(dy, options);
    this.requireUnmerged();
    const gradients = this.#pending;
    if (!gradients) return this.baseLayer.backward(dy, opts);
    const [x, ...saved] = this.saved();
    const dx = gradients(dy, x, saved, this.getFusedBase().weight, opts.inputGrad !== false);
    this.releaseSaved();
    this.#pending = null;
    return dx;
  }

  protected requireUnmerged(): void {
    if (this.merged) throw peftError("ERR_STATE", `${this.describe()}.backward: adapters are merged; unmerge them before training (adapter gradients need unmerged weights)`);
  }

  /**
   * Activates adapters (trainable) and freezes the others, as PEFT's set_adapter. With `allowMissing` (the model
   * sets its adapters on every layer) names this layer lacks are kept as active but have no effect here.
   */
  setAdapter(names: string | string[], options: { allowMissing?: boolean } = {}): void {
    const opts = optionsArg(options, "setAdapter");
    if (typeof names !== "string" && !isArray(names)) throw typeError(`setAdapter: expected an adapter name or an array of names, got ${describe(names)}`);
    const list = typeof names === "string" ? [names] : stringsArg(names, "setAdapter", "names");
    if (!opts.allowMissing) for (const n of list) if (!this.adapterNames.includes(n)) throw this.unknownAdapter(n);
    for (const n of this.adapterNames) {
      const on = list.includes(n);
      this.adapterParameters(n).forEach((w) => (w.requiresGrad = on));
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
      for (const n of this.adapterNames) this.adapterParameters(n).forEach((w) => (w.requiresGrad = false));
      this.#disabled = true;
    }
  }

  /** Removes an adapter (disposing its weights); when no active adapter is left, the first remaining one is. */
  deleteAdapter(name: string): void {
    if (!this.adapterNames.includes(name)) throw this.unknownAdapter(name);
    if (this.mergedAdapters.includes(name)) throw peftError("ERR_STATE", `deleteAdapter(${shownValue(name)}): the adapter is merged; unmerge first`);
    this.dropAdapter(name);
    this.#active = this.#active.filter((n) => n !== name);
    if (!this.#active.length && this.adapterNames.length) this.setAdapter(this.adapterNames[0]);
  }

  /** Disposes and unregisters an adapter (replacing one, or deleting it). */
  protected dropAdapter(name: string): void {
    this.adapterParameters(name).forEach((w) => {
      w.grad?.dispose();
      w.dispose();
    });
    this.removeAdapter(name);
  }

  protected unknownAdapter(name: unknown) {
    return peftError("ERR_CONFIG", `${this.methodName}: unknown adapter ${shownValue(name)}; this layer has ${clip(this.adapterNames.map((n) => `"${n}"`).join(", "), 200) || "none"}`);
  }

  /** Adapters of `opts.adapterNames` (default: the active ones), checked. */
  protected pickAdapters(names: string[] | undefined | null): string[] {
    const list = names === undefined || names === null ? this.#active : stringsArg(names, "merge", "adapterNames");
    for (const n of list) if (!this.adapterNames.includes(n)) throw this.unknownAdapter(n);
    return list;
  }

  /** Merging refused for this layer (a reason), or null. */
  protected mergeRefusal(): string | null {
    return null;
  }

  /** Merges adapters into the base weights in place; already merged adapters are skipped with a warning. */
  merge(options: MergeOptions = {}): void {
    const opts = optionsArg(options, "merge");
    const names = this.pickAdapters(opts.adapterNames);
    const already = names.filter((n) => this.mergedAdapters.includes(n));
    if (already.length)
      warnOnce("PEFT_ALREADY_MERGED", `Already following adapters were merged ${already.join(",")}. You are now additionally merging ${names.filter((n) => !already.includes(n)).join(",")}.`);
    const todo = names.filter((n) => !already.includes(n));
    if (!todo.length) return;
    this.#merge(todo, opts.safeMerge === true, false);
    this.mergedAdapters.push(...todo);
    this.releaseSaved();
  }

  /**
   * Throws what merge({safeMerge: true}) would, without changing any weight: a model checks every layer
   * before it merges any, so a broken adapter leaves the whole model as it was.
   */
  checkMerge(opts: MergeOptions = {}): void {
    const todo = this.pickAdapters(optionsArg(opts, "checkMerge").adapterNames).filter((n) => !this.mergedAdapters.includes(n));
    if (todo.length) this.#merge(todo, true, true);
  }

  #merge(todo: string[], safe: boolean, checkOnly: boolean): void {
    const refusal = this.mergeRefusal();
    if (refusal) throw peftError("ERR_UNSUPPORTED", `${this.describe()}: ${refusal}`);
    const bad = this.applyMerge(todo, 1, safe, checkOnly);
    if (bad >= 0) throw peftError("ERR_STATE", `NaNs detected in the merged weights. The adapter ${todo[bad]} seems to be broken`);
  }

  /** Warned before unmerging (IA3's unmerge is inexact). */
  protected unmergeWarning(): string | null {
    return null;
  }

  /** Takes every merged adapter out of the base weights again, latest first. */
  unmerge(): void {
    if (!this.merged) {
      warnOnce("PEFT_NOT_MERGED", "Already unmerged. Nothing to do.");
      return;
    }
    const warning = this.unmergeWarning();
    if (warning) warnOnce("PEFT_UNMERGE_INEXACT", warning);
    this.applyMerge([...this.mergedAdapters].reverse(), -1, false, false);
    this.mergedAdapters.length = 0;
  }

  override extraRepr(): string {
    return "";
  }
}

markAbstract(BaseTunerLayer);
