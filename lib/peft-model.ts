// PeftModel: the user's model wrapped with adapters (PEFT's PeftModel + LoraModel), adapter management,
// merging/unloading and trainable-parameter accounting.
import { Tensor } from "./tensor.js";
import { clip, isArray, optionsArg, peftError, shownValue, stringsArg, typeError } from "./errors.js";
import { Module, disposeDropped, type BackwardOptions } from "./nn/index.js";
import { LoraConfig } from "./tuners/lora/config.js";
import { IA3Config } from "./tuners/ia3/config.js";
import { LoraModel } from "./tuners/lora/model.js";
import { LoraLayer, type MergeOptions } from "./tuners/lora/layer.js";
import { ModulesToSaveWrapper } from "./tuners/modules-to-save.js";
import type { WeightedAdapterOptions } from "./tuners/lora/weighted-adapter.js";
import type { PeftConfig } from "./tuners/peft-config.js";
// Checkpoint I/O lives in io/; it is reached only from method bodies, after both modules have loaded.
import * as checkpoint from "./io/peft-checkpoint.js";

export interface GetPeftModelOptions {
  adapterName?: string;
  /** The model's type (e.g. "llama"), for the default target modules when the config has none. */
  modelType?: string;
}

function loraConfigOf(config: unknown, what: string): LoraConfig {
  if (config instanceof LoraConfig) return config;
  if (config instanceof IA3Config) throw peftError("ERR_UNSUPPORTED", `${what}: IA3 models are not supported yet`);
  throw typeError(`${what}: expected a LoraConfig`);
}

function checkAdapterName(name: unknown, what: string): string {
  if (typeof name !== "string" || !name || name.includes(".")) throw peftError("ERR_CONFIG", `${what}: adapter name must be a non-empty string without ".", got ${shownValue(name)}`);
  return name;
}

export class PeftModel extends Module {
  readonly baseModel: LoraModel;
  #active: string[];
  #disableDepth = 0;

  constructor(model: Module, config: PeftConfig, opts: GetPeftModelOptions = {}) {
    super();
    if (!(model instanceof Module)) throw typeError(`getPeftModel: model must be a Module`);
    const o = optionsArg(opts, "getPeftModel");
    const name = checkAdapterName(o.adapterName ?? "default", "getPeftModel");
    if (o.modelType !== undefined && typeof o.modelType !== "string") throw typeError(`getPeftModel: modelType must be a string, got ${shownValue(o.modelType)}`);
    this.baseModel = this.registerModule("base_model", new LoraModel(model, loraConfigOf(config, "getPeftModel"), name, { modelType: o.modelType }));
    this.#active = [name];
  }

  get peftConfig(): Record<string, PeftConfig> {
    return this.baseModel.peftConfig;
  }

  get activeAdapter(): string {
    return this.#active[0];
  }

  get activeAdapters(): string[] {
    return [...this.#active];
  }

  get targetedModuleNames(): string[] {
    return [...this.baseModel.targetedModuleNames];
  }

  get unmatchedTargets(): string[] {
    return [...this.baseModel.unmatchedTargets];
  }

  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  override forward(...args: any[]): any {
    return this.baseModel.model.forward(...args);
  }

  override backward(dy: Tensor, opts?: BackwardOptions): Tensor | null {
    return this.baseModel.model.backward(dy, opts);
  }

  /** Adds an adapter (inactive until setAdapter); its config must be of the same PEFT type. */
  addAdapter(name: string, config: PeftConfig): void {
    checkAdapterName(name, "addAdapter");
    this.baseModel.injectAdapter(loraConfigOf(config, "addAdapter"), name);
    // Layers the new adapter created must follow the model's active adapters, not activate the new one (PEFT).
    this.setAdapter(this.#active);
  }

  /**
   * Adds `adapterName` combining `adapters` with `weights` (PEFT's add_weighted_adapter); it stays inactive
   * (and frozen) until setAdapter.
   */
  addWeightedAdapter(adapters: string[], weights: number[], adapterName: string, opts?: WeightedAdapterOptions): void {
    this.baseModel.addWeightedAdapter(adapters, weights, adapterName, opts);
    this.setAdapter(this.#active);
  }

  #known(name: unknown): void {
    if (typeof name !== "string" || !Object.hasOwn(this.peftConfig, name))
      throw peftError("ERR_CONFIG", `Adapter ${typeof name === "string" ? clip(name) : shownValue(name)} not found; this model has ${clip(Object.keys(this.peftConfig).join(", "), 200)}`);
  }

  /** Activates adapters (trainable) everywhere; modulesToSave take one adapter only. */
  setAdapter(names: string | string[]): void {
    if (typeof names !== "string" && !isArray(names)) throw typeError("setAdapter: expected an adapter name or a non-empty array of names");
    const list = typeof names === "string" ? [names] : stringsArg(names, "setAdapter", "names");
    if (!list.length) throw typeError("setAdapter: expected an adapter name or a non-empty array of names");
    list.forEach((n) => this.#known(n));
    for (const l of this.baseModel.loraLayers()) l.setAdapter(list, { allowMissing: true });
    for (const [, w] of this.baseModel.savedModules()) {
      const here = list.filter((n) => w.adapterNames.includes(n));
      if (here.length) w.setAdapter(here);
    }
    this.#active = [...list];
  }

  /** Removes an adapter everywhere, disposing its weights; another adapter becomes active if needed. */
  deleteAdapter(name: string): void {
    this.#known(name);
    const remaining = Object.keys(this.peftConfig).filter((n) => n !== name);
    const next = this.#active.filter((n) => n !== name);
    const newActive = next.length ? next : remaining.slice(0, 1);
    for (const l of this.baseModel.loraLayers()) if (l.adapterNames.includes(name)) l.deleteAdapter(name);
    for (const [, w] of this.baseModel.savedModules()) w.deleteAdapter(name, newActive[0] ?? null);
    delete this.baseModel.peftConfig[name];
    this.#active = newActive;
    if (newActive.length) this.setAdapter(newActive);
  }

  /** Runs the base model without adapters until the returned scope is disposed (`using _ = m.disableAdapter()`). */
  disableAdapter(): Disposable {
    if (this.#disableDepth++ === 0) this.#enable(false);
    let open = true;
    return {
      [Symbol.dispose]: () => {
        if (!open) return;
        open = false;
        if (--this.#disableDepth === 0) this.#enable(true);
      },
    };
  }

  #enable(on: boolean): void {
    for (const l of this.baseModel.loraLayers()) l.enableAdapters(on);
    for (const [, w] of this.baseModel.savedModules()) w.enableAdapters(on);
  }

  /** With safeMerge every layer is checked before any is merged: a broken adapter leaves the model as it was. */
  mergeAdapter(options: MergeOptions = {}): void {
    const opts = optionsArg(options, "mergeAdapter");
    const wanted = opts.adapterNames === undefined || opts.adapterNames === null ? this.#active : stringsArg(opts.adapterNames, "mergeAdapter", "adapterNames");
    const plan: [LoraLayer, string[]][] = [];
    for (const l of this.baseModel.loraLayers()) {
      const names = wanted.filter((n) => l.adapterNames.includes(n));
      if (names.length) plan.push([l, names]);
    }
    if (opts.safeMerge === true) for (const [l, adapterNames] of plan) l.checkMerge({ adapterNames });
    for (const [l, adapterNames] of plan) l.merge({ safeMerge: opts.safeMerge, adapterNames });
  }

  unmergeAdapter(): void {
    for (const l of this.baseModel.loraLayers()) if (l.merged) l.unmerge();
  }

  /** Merges the adapters into the base weights and returns the plain model (adapter layers removed). */
  mergeAndUnload(opts: MergeOptions = {}): Module {
    return this.#unload(true, optionsArg(opts, "mergeAndUnload"));
  }

  /** Returns the plain model with the original base weights (adapter layers removed, nothing merged). */
  unload(): Module {
    return this.#unload(false, {});
  }

  #unload(merge: boolean, opts: MergeOptions): Module {
    const model = this.baseModel.model;
    if (merge) this.mergeAdapter(opts);
    // Deepest first, so a wrapper's path is still valid when it is replaced.
    const targets = [...model.namedModules()].filter(([, m]) => m instanceof LoraLayer || m instanceof ModulesToSaveWrapper).reverse();
    for (const [path, m] of targets) {
      let replacement: Module;
      if (m instanceof LoraLayer) {
        if (!merge && m.merged) m.unmerge();
        replacement = m.baseLayer;
      } else {
        replacement = (m as ModulesToSaveWrapper).unloadTarget();
      }
      if (path === "") throw peftError("ERR_UNSUPPORTED", "unload: the whole model is an adapter layer");
      model.setSubmodule(path, replacement, { dispose: false });
      disposeDropped(m, replacement);
    }
    for (const p of model.parameters()) p.requiresGrad = true;
    return model;
  }

  /** Saves adapters (default: all) as PEFT does: adapter_config.json + adapter_model.safetensors per adapter. */
  savePretrained(dir: string, opts: { adapterNames?: string[] } = {}): Promise<void> {
    return checkpoint.savePretrained(this, dir, opts);
  }

  /** Wraps `model` with the adapter saved in `dir` (frozen and in eval mode unless isTrainable). */
  static fromPretrained(
    model: Module,
    dir: string,
    opts: { adapterName?: string; isTrainable?: boolean; config?: PeftConfig; modelType?: string } = {},
  ): Promise<PeftModel> {
    return checkpoint.fromPretrained(model, dir, opts);
  }

  /** Adds the adapter saved in `dir` as `adapterName` (inactive until setAdapter). */
  loadAdapter(dir: string, adapterName: string, opts: { isTrainable?: boolean } = {}): Promise<void> {
    return checkpoint.loadAdapter(this, dir, adapterName, opts);
  }

  /** [trainable, all] parameter counts (PEFT's get_nb_trainable_parameters). */
  getNbTrainableParameters(): [number, number] {
    let trainable = 0, all = 0;
    for (const p of this.parameters()) {
      all += p.numel;
      if (p.requiresGrad) trainable += p.numel;
    }
    return [trainable, all];
  }

  /** Prints and returns PEFT's line: `trainable params: … || all params: … || trainable%: …`. */
  printTrainableParameters(): string {
    const [t, a] = this.getNbTrainableParameters();
    const fmt = (n: number) => n.toLocaleString("en-US");
    const line = `trainable params: ${fmt(t)} || all params: ${fmt(a)} || trainable%: ${(a ? (100 * t) / a : 0).toFixed(4)}`;
    console.log(line);
    return line;
  }
}

export function getPeftModel(model: Module, config: PeftConfig, opts: GetPeftModelOptions = {}): PeftModel {
  return new PeftModel(model, config, opts);
}
