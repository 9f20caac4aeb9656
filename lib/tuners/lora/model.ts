// The LoRA tuner model (PEFT's LoraModel): finds the target modules, puts LoRA layers in their place through
// an ordered list of dispatchers, marks only adapters trainable and wraps modulesToSave.
import { Module, Linear, Conv1D, Conv2d, Embedding } from "../../nn/index.js";
import { PeftError, clip, optionsArg, peftError, shownValue, typeError, type PeftErrorCode } from "../../errors.js";
import { describe } from "../../tensor.js";
import { findTargetModules, SEQ_CLS_HEAD_NAMES, type MatchOptions } from "../../matching.js";
import { defaultTargetModules } from "../../mappings.js";
import { LoraConfig, type ModuleClass } from "./config.js";
import { LoraLayer, LoraLinear, type LoraLayerOptions } from "./layer.js";
import { LoraConv2d } from "./conv.js";
import { LoraEmbedding } from "./embedding.js";
import { ModulesToSaveWrapper } from "../modules-to-save.js";
import { addWeightedAdapter, type WeightedAdapterOptions } from "./weighted-adapter.js";

/** Makes a LoRA layer for a target, or returns null to let the next dispatcher try. */
export type LoraDispatcher = (target: Module, opts: LoraLayerOptions, config: LoraConfig) => LoraLayer | null;

/** User registrations (config.registerCustomModule) come first, then the built-ins. */
function customDispatcher(target: Module, opts: LoraLayerOptions, config: LoraConfig): LoraLayer | null {
  if (!(config instanceof LoraConfig)) throw typeError(`LoRA dispatcher: config must be a LoraConfig, got ${describe(config)}`);
  for (const [from, to] of config.customModules ?? []) {
    if (target instanceof (from as ModuleClass)) {
      const layer = new (to as new (base: Module, o: LoraLayerOptions) => Module)(target, opts);
      if (!(layer instanceof LoraLayer))
        throw peftError("ERR_CONFIG", `registerCustomModule: ${(to as ModuleClass).name} must extend LoraLayer`);
      return layer;
    }
  }
  return null;
}

function denseDispatcher(target: Module, opts: LoraLayerOptions): LoraLayer | null {
  return target instanceof Linear || target instanceof Conv1D ? new LoraLinear(target, opts) : null;
}

function conv2dDispatcher(target: Module, opts: LoraLayerOptions): LoraLayer | null {
  return target instanceof Conv2d ? new LoraConv2d(target, opts) : null;
}

// PEFT's dispatch_default drops fan_in_fan_out for embeddings.
function embeddingDispatcher(target: Module, opts: LoraLayerOptions): LoraLayer | null {
  return target instanceof Embedding ? new LoraEmbedding(target, { ...opts, fanInFanOut: undefined }) : null;
}

export const LORA_DISPATCHERS: readonly LoraDispatcher[] = [customDispatcher, denseDispatcher, conv2dDispatcher, embeddingDispatcher];

/** The layer types LoRA adapts without a registration. */
const BUILT_IN = [Linear, Conv1D, Conv2d, Embedding];

function isCustom(m: unknown, config: LoraConfig): boolean {
  for (const [from] of config.customModules ?? []) if (m instanceof (from as ModuleClass)) return true;
  return false;
}

export function loraMatchOptions(config: LoraConfig): MatchOptions {
  return {
    isLinearLike: (m) => m instanceof Linear || m instanceof Conv1D || m instanceof LoraLinear,
    isSupported: (m) => m instanceof LoraLayer || BUILT_IN.some((c) => m instanceof c) || isCustom(m, config),
    typeName: (m) => (m as object)?.constructor?.name ?? typeof m,
    isTunerLayer: (m) => m instanceof LoraLayer || m instanceof ModulesToSaveWrapper,
    supportedTypeNames: [...BUILT_IN.map((c) => c.name), ...[...(config.customModules?.keys() ?? [])].map((c) => c.name)],
  };
}

/** Does `key` name `entry` (the path itself or a dotted suffix)? */
function namesModule(key: string, entry: string): boolean {
  return key === entry || key.endsWith(`.${entry}`);
}

export class LoraModel extends Module {
  readonly model: Module;
  // Null prototype: adapter names are user strings ("toString", "__proto__" are names like any other).
  readonly peftConfig: Record<string, LoraConfig> = Object.create(null);
  targetedModuleNames: string[] = [];
  unmatchedTargets: string[] = [];

  constructor(model: Module, config: LoraConfig, adapterName: string, opts: { modelType?: string } = {}) {
    super();
    const modelType = optionsArg(opts, "LoraModel").modelType;
    this.model = this.registerModule("model", model);
    this.injectAdapter(config, adapterName, modelType);
  }

  override forward(x: import("../../tensor.js").Tensor) {
    return this.model.forward(x);
  }

  override backward(dy: import("../../tensor.js").Tensor, opts?: import("../../nn/index.js").BackwardOptions) {
    return this.model.backward(dy, opts);
  }

  /** Adds `adapterName` to every matching module (new layers, or updateLayer on existing ones). */
  injectAdapter(config: LoraConfig, adapterName: string, modelType?: string): void {
    if (!(config instanceof LoraConfig)) throw peftError("ERR_CONFIG", "LoraModel: expected a LoraConfig");
    if (typeof adapterName !== "string" || !adapterName || adapterName.includes("."))
      throw peftError("ERR_CONFIG", `LoraModel: adapter name must be a non-empty string without ".", got ${shownValue(adapterName)}`);
    if (modelType !== undefined && modelType !== null && typeof modelType !== "string")
      throw typeError(`LoraModel: modelType must be a string, got ${describe(modelType)}`);
    if (Object.hasOwn(this.peftConfig, adapterName)) throw peftError("ERR_CONFIG", `Adapter with name ${clip(adapterName)} already exists.`);
    const effective =
      config.targetModules === null ? new LoraConfig({ ...config, targetModules: defaultTargetModules("LORA", modelType) }) : config;
    if (config.targetModules === null) effective.registerCustomModule(config.customModules ?? new Map());
    const report = findTargetModules(this.model, effective, loraMatchOptions(config));
    for (const key of report.targeted) {
      const target = this.model.getSubmodule(key);
      const opts: LoraLayerOptions = {
        adapterName,
        r: config.rankFor(key),
        loraAlpha: config.alphaFor(key),
        loraDropout: config.loraDropout,
        useRslora: config.useRslora,
        initLoraWeights: config.initLoraWeights as LoraLayerOptions["initLoraWeights"],
        fanInFanOut: config.fanInFanOut,
      };
      if (target instanceof LoraLayer) {
        target.updateLayer(opts);
        continue;
      }
      let layer: LoraLayer | null = null;
      try {
        for (const dispatch of LORA_DISPATCHERS) if ((layer = dispatch(target, opts, config))) break;
      } catch (e) {
        // Name the layer: the same message from a deep model is no use without it.
        if (e instanceof PeftError) throw peftError(e.code as PeftErrorCode, `Target module ${key} (${target.constructor.name}): ${e.message}`);
        throw e;
      }
      if (!layer)
        throw peftError("ERR_UNSUPPORTED", `Target module ${key} (${target.constructor.name}) is not supported: LoRA adapts Linear, Conv1D, Conv2d and Embedding, or a type given to registerCustomModule`);
      this.model.setSubmodule(key, layer);
    }
    this.peftConfig[adapterName] = effective;
    this.targetedModuleNames = [...new Set([...this.targetedModuleNames, ...report.targeted])];
    this.unmatchedTargets = report.unmatchedTargets;
    this.#markOnlyAdaptersTrainable(effective);
    if (effective.inferenceMode) for (const l of this.loraLayers()) if (l.adapterNames.includes(adapterName)) this.#freezeAdapter(l, adapterName);
    this.#wrapModulesToSave(effective, adapterName);
  }

  /** A new adapter made from existing ones, as PEFT's add_weighted_adapter (see weighted-adapter.ts). */
  addWeightedAdapter(adapters: string[], weights: number[], adapterName: string, opts?: WeightedAdapterOptions): void {
    addWeightedAdapter(this, adapters, weights, adapterName, opts);
  }

  *loraLayers(): Iterable<LoraLayer> {
    for (const [, m] of this.model.namedModules()) if (m instanceof LoraLayer) yield m;
  }

  *savedModules(): Iterable<[string, ModulesToSaveWrapper]> {
    for (const [n, m] of this.model.namedModules()) if (m instanceof ModulesToSaveWrapper) yield [n, m];
  }

  // PEFT's _mark_only_adapters_as_trainable: everything but LoRA weights frozen, then the bias mode.
  #markOnlyAdaptersTrainable(config: LoraConfig): void {
    for (const [name, p] of this.model.namedParameters()) if (!name.includes("lora_")) p.requiresGrad = false;
    if (config.bias === "all") {
      for (const [name, p] of this.model.namedParameters()) if (name.endsWith("bias")) p.requiresGrad = true;
    } else if (config.bias === "lora_only") {
      for (const l of this.loraLayers()) for (const [name, p] of l.baseLayer.namedParameters()) if (name === "bias") p.requiresGrad = true;
    }
  }

  #freezeAdapter(l: LoraLayer, adapterName: string): void {
    for (const p of Object.values(l.loraFactors(adapterName))) p.requiresGrad = false;
  }

  // modulesToSave (plus PEFT's classifier heads for SEQ_CLS): matched by path or dotted suffix.
  #wrapModulesToSave(config: LoraConfig, adapterName: string): void {
    const names = [...(config.modulesToSave ?? [])];
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
      if (target instanceof LoraLayer) throw peftError("ERR_CONFIG", `modulesToSave: ${key} is also a LoRA target`);
      this.model.setSubmodule(key, new ModulesToSaveWrapper(target, adapterName));
    }
  }

  #insideWrapper(key: string): boolean {
    for (const [n] of this.savedModules()) if (key.startsWith(`${n}.`)) return true;
    return false;
  }
}
