// What every tuner model shares (PEFT's BaseTuner): it holds the user's model as its child "model", puts a
// method's adapter layers in place of the modules a config targets, keeps one config per adapter, and manages
// adapters across all layers (active, disabled, deleted, merged, unloaded) and the modulesToSave copies.
// A method (LoraModel, IA3Model) says which configs it takes, how a config's defaults are filled in and how
// a target becomes an adapter layer.
import { Module, disposeDropped, markAbstract, type BackwardOptions } from "../nn/index.js";
import type { Tensor } from "../tensor.js";
import { PeftError, clip, describe, isArray, optionsArg, peftError, shownValue, stringsArg, typeError, type PeftErrorCode } from "../errors.js";
import { findTargetModules, SEQ_CLS_HEAD_NAMES, type MatchOptions } from "../matching.js";
import type { PeftConfigBase } from "./config.js";
import { BaseTunerLayer, adapterNameArg, type MergeOptions } from "./tuner-layer.js";
import { ModulesToSaveWrapper } from "./modules-to-save.js";

/** Does `key` name `entry` (the path itself or a dotted suffix)? */
function namesModule(key: string, entry: string): boolean {
  return key === entry || key.endsWith(`.${entry}`);
}

/** PEFT's message when one model is given adapters of two methods. */
export function mixedTypesError(have: string, got: string): PeftError {
  return peftError("ERR_CONFIG", `Cannot combine adapters with different peft types. Found ${have} and ${got}.`);
}

export interface TunerSpec<C> {
  peftType: string;
  /** The method's name in messages ("LoRA", "IA3"). */
  methodName: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  configClass: abstract new (...args: any[]) => C;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  layerClass: abstract new (...args: any[]) => BaseTunerLayer;
}

export abstract class BaseTuner<C extends PeftConfigBase = PeftConfigBase> extends Module {
  readonly model: Module;
  // Null prototype: adapter names are user strings ("toString", "__proto__" are names like any other).
  readonly peftConfig: Record<string, C> = Object.create(null);
  targetedModuleNames: string[] = [];
  unmatchedTargets: string[] = [];
  #active: string[];
  // The model type adapters added later default their targets from, as the first one did.
  #modelType: string | undefined;

  constructor(model: Module, config: C, adapterName: string, opts: { modelType?: string } = {}) {
    super();
    // PEFT reads model.config.model_type when none is given; our models expose it as `modelType`.
    const own = (model as { modelType?: unknown } | null)?.modelType;
    const modelType = optionsArg(opts, new.target.name).modelType ?? (typeof own === "string" ? own : undefined);
    this.model = this.registerModule("model", model);
    this.#active = [adapterNameArg(adapterName, new.target.name)];
    this.injectAdapter(config, adapterName, modelType);
    this.#modelType = modelType;
  }

  /** What the method is: its peft_type, its name in messages, its config and layer classes. */
  protected abstract get spec(): TunerSpec<C>;

  /** PEFT's peft_type of the configs this tuner takes ("LORA", "IA3"). */
  get peftType(): string {
    return this.spec.peftType;
  }

  protected get methodName(): string {
    return this.spec.methodName;
  }

  protected isConfig(c: unknown): c is C {
    return c instanceof this.spec.configClass;
  }

  protected isTunerLayer(m: unknown): m is BaseTunerLayer {
    return m instanceof this.spec.layerClass;
  }

  /** The config with PEFT's defaults filled in for `modelType` (PEFT's _prepare_adapter_config). */
  protected abstract prepareAdapterConfig(config: C, modelType: string | undefined): C;

  /** How targets are matched and which module types the method adapts. */
  protected abstract matchOptions(config: C): MatchOptions;

  /**
   * Adds the adapter to the module at `key`: updates it when it already is this method's layer, else returns
   * the new adapter layer to put in its place (PEFT's _create_and_replace).
   */
  protected abstract createAdapterLayer(config: C, adapterName: string, target: Module, key: string): BaseTunerLayer | null;

  override forward(x: Tensor) {
    return this.model.forward(x);
  }

  override backward(dy: Tensor, opts?: BackwardOptions) {
    return this.model.backward(dy, opts);
  }

  get activeAdapters(): string[] {
    return [...this.#active];
  }

  /** Adds `adapterName` to every matching module (new layers, or updateLayer on existing ones). */
  injectAdapter(config: C, adapterName: string, modelType: string | undefined = this.#modelType): void {
    const name = this.constructor.name;
    if (!this.isConfig(config)) {
      const type = (config as { peftType?: unknown } | null)?.peftType;
      if (typeof type === "string") throw mixedTypesError(this.peftType, type);
      throw peftError("ERR_CONFIG", `${name}: expected a ${this.methodName} config, got ${describe(config)}`);
    }
    adapterNameArg(adapterName, name);
    if (modelType !== undefined && modelType !== null && typeof modelType !== "string")
      throw typeError(`${name}: modelType must be a string, got ${describe(modelType)}`);
    if (Object.hasOwn(this.peftConfig, adapterName)) throw peftError("ERR_CONFIG", `Adapter with name ${clip(adapterName)} already exists.`);
    const effective = this.prepareAdapterConfig(config, modelType);
    const report = findTargetModules(this.model, effective, this.matchOptions(effective));
    for (const key of report.targeted) {
      const target = this.model.getSubmodule(key);
      let layer: BaseTunerLayer | null;
      try {
        layer = this.createAdapterLayer(effective, adapterName, target, key);
      } catch (e) {
        // Name the layer: the same message from a deep model is no use without it.
        if (e instanceof PeftError && !e.message.startsWith(`Target module ${key} `))
          throw peftError(e.code as PeftErrorCode, `Target module ${key} (${target.constructor.name}): ${e.message}`);
        throw e;
      }
      if (layer) this.model.setSubmodule(key, layer);
    }
    this.peftConfig[adapterName] = effective;
    this.targetedModuleNames = [...new Set([...this.targetedModuleNames, ...report.targeted])];
    this.unmatchedTargets = report.unmatchedTargets;
    this.markOnlyAdaptersTrainable(effective);
    if (effective.inferenceMode) for (const l of this.tunerLayers()) if (l.adapterNames.includes(adapterName)) this.freezeAdapter(l, adapterName);
    this.wrapModulesToSave(effective, adapterName);
  }

  /**
   * The adapter's state dict (file keys) as it is saved (PEFT's _get_adapter_state_dict): a method may reshape
   * what it holds (AdaLoRA leaves pruned ranks out). Entries it replaces it disposes.
   */
  adapterStateDict(_adapterName: string, sd: Record<string, Tensor>): Record<string, Tensor> {
    return sd;
  }

  /**
   * File key -> live tensor of an adapter whose state does not live in tuner layers (prompt learning: the
   * encoder's embedding, saved as `prompt_embeddings`); null: the layers' entries.
   */
  adapterTensors(_adapterName: string): Map<string, Tensor> | null {
    return null;
  }

  /** Called before a saved adapter's weights are loaded (PEFT's _remap_adapter_state_dict_for_load). */
  prepareAdapterForLoad(_adapterName: string): void {}

  /** This method's adapter layers, in model order. */
  *tunerLayers(): Iterable<BaseTunerLayer> {
    for (const [, m] of this.model.namedModules()) if (this.isTunerLayer(m)) yield m;
  }

  *savedModules(): Iterable<[string, ModulesToSaveWrapper]> {
    for (const [n, m] of this.model.namedModules()) if (m instanceof ModulesToSaveWrapper) yield [n, m];
  }

  /** PEFT's _mark_only_adapters_as_trainable: every parameter but the adapter layers' adapter weights frozen. */
  protected markOnlyAdaptersTrainable(_config: C): void {
    const adapters = new Set<Tensor>();
    for (const l of this.tunerLayers()) for (const n of l.adapterNames) for (const [, t] of l.adapterStateEntries(n)) adapters.add(t);
    for (const p of this.model.parameters()) if (!adapters.has(p)) p.requiresGrad = false;
  }

  protected freezeAdapter(l: BaseTunerLayer, adapterName: string): void {
    for (const [, p] of l.adapterStateEntries(adapterName)) p.requiresGrad = false;
  }

  // modulesToSave (plus PEFT's classifier heads for SEQ_CLS): matched by path or dotted suffix.
  protected wrapModulesToSave(config: C, adapterName: string): void {
    const names = [...((config as { modulesToSave?: string[] | null }).modulesToSave ?? [])];
    if (config.taskType === "SEQ_CLS") for (const h of SEQ_CLS_HEAD_NAMES) if (!names.includes(h)) names.push(h);
    if (!names.length) return;
    const keys = [...this.model.namedModules()].map(([k]) => k).filter((k) => k && names.some((n) => namesModule(k, n)));
    for (const key of keys) {
      const target = this.model.getSubmodule(key);
      if (target instanceof ModulesToSaveWrapper) {
        target.update(adapterName);
        continue;
      }
      if (this.#insideWrapper(key)) continue;
      if (target instanceof BaseTunerLayer) throw peftError("ERR_CONFIG", `modulesToSave: ${key} is also a ${this.methodName} target`);
      this.model.setSubmodule(key, new ModulesToSaveWrapper(target, adapterName));
    }
  }

  #insideWrapper(key: string): boolean {
    for (const [n] of this.savedModules()) if (key.startsWith(`${n}.`)) return true;
    return false;
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
    for (const l of this.tunerLayers()) l.setAdapter(list, { allowMissing: true });
    for (const [, w] of this.savedModules()) {
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
    for (const l of this.tunerLayers()) if (l.adapterNames.includes(name)) l.deleteAdapter(name);
    for (const [, w] of this.savedModules()) w.deleteAdapter(name, newActive[0] ?? null);
    delete this.peftConfig[name];
    this.#active = newActive;
    if (newActive.length) this.setAdapter(newActive);
  }

  /** false: every adapter layer and saved module computes its base output; true: back to the active adapters. */
  enableAdapterLayers(enabled: boolean): void {
    for (const l of this.tunerLayers()) l.enableAdapters(enabled);
    for (const [, w] of this.savedModules()) w.enableAdapters(enabled);
  }

  /** With safeMerge every layer is checked before any is merged: a broken adapter leaves the model as it was. */
  mergeAdapter(options: MergeOptions = {}): void {
    const opts = optionsArg(options, "mergeAdapter");
    const wanted = opts.adapterNames === undefined || opts.adapterNames === null ? this.#active : stringsArg(opts.adapterNames, "mergeAdapter", "adapterNames");
    const plan: [BaseTunerLayer, string[]][] = [];
    for (const l of this.tunerLayers()) {
      const names = wanted.filter((n) => l.adapterNames.includes(n));
      if (names.length) plan.push([l, names]);
    }
    if (opts.safeMerge === true) for (const [l, adapterNames] of plan) l.checkMerge({ adapterNames });
    for (const [l, adapterNames] of plan) l.merge({ safeMerge: opts.safeMerge, adapterNames, exactUnmerge: opts.exactUnmerge });
  }

  unmergeAdapter(): void {
    for (const l of this.tunerLayers()) if (l.merged) l.unmerge();
  }

  /**
   * The plain model with every adapter layer replaced by its base layer (merged first when `merge`) and every
   * saved module by its active copy (PEFT's _unload_and_optionally_merge).
   */
  unloadAndOptionallyMerge(merge: boolean, opts: MergeOptions = {}): Module {
    const model = this.model;
    // Nothing is unmerged after unloading: an int8 layer keeps no copy of its original weight.
    if (merge) this.mergeAdapter({ ...opts, exactUnmerge: false });
    // Deepest first, so a wrapper's path is still valid when it is replaced.
    const targets = [...model.namedModules()].filter(([, m]) => m instanceof BaseTunerLayer || m instanceof ModulesToSaveWrapper).reverse();
    for (const [path, m] of targets) {
      let replacement: Module;
      if (m instanceof BaseTunerLayer) {
        if (!merge && m.merged) m.unmerge();
        replacement = m.baseLayer;
      } else {
        replacement = (m as ModulesToSaveWrapper).unloadTarget();
      }
      if (path === "") throw peftError("ERR_UNSUPPORTED", "unload: the whole model is an adapter layer");
      model.setSubmodule(path, replacement, { dispose: false });
      disposeDropped(m, replacement);
    }
    // An int8 or packed 4-bit weight (and a 4-bit layer's integer statistics) has no gradient: it stays frozen.
    for (const p of model.parameters()) p.requiresGrad = p.dtype !== "i8" && p.dtype !== "u8";
    return model;
  }
}

markAbstract(BaseTuner);
