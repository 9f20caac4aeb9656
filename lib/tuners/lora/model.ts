// The LoRA tuner model (PEFT's LoraModel): LoRA layers made through an ordered list of dispatchers, LoRA's
// bias modes, addWeightedAdapter; injection and adapter management are the shared tuner's (tuner.ts).
import { Module, Linear, Conv1D, Conv2d, Embedding, Linear8bitLt, Linear4bit } from "../../nn/index.js";
import { peftError, typeError } from "../../errors.js";
import { describe } from "../../tensor.js";
import type { MatchOptions } from "../../matching.js";
import { defaultTargetModules } from "../../mappings.js";
import { BaseTuner, type TunerSpec } from "../tuner.js";
import type { BaseTunerLayer } from "../tuner-layer.js";
import { LoraConfig, type ModuleClass } from "./config.js";
import { LoraLayer, LoraLinear, type LoraLayerOptions } from "./layer.js";
import { LoraConv2d } from "./conv.js";
import { LoraLinear8bitLt } from "./bnb.js";
import { LoraLinear4bit } from "./bnb-4bit.js";
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

// PEFT's dispatch_bnb_8bit: an int8 base gets the LoRA layer that keeps it int8.
function int8Dispatcher(target: Module, opts: LoraLayerOptions): LoraLayer | null {
  return target instanceof Linear8bitLt ? new LoraLinear8bitLt(target, opts) : null;
}

// PEFT's dispatch_bnb_4bit: a 4-bit base gets the LoRA layer that keeps it 4-bit.
function int4Dispatcher(target: Module, opts: LoraLayerOptions): LoraLayer | null {
  return target instanceof Linear4bit ? new LoraLinear4bit(target, opts) : null;
}

function conv2dDispatcher(target: Module, opts: LoraLayerOptions): LoraLayer | null {
  return target instanceof Conv2d ? new LoraConv2d(target, opts) : null;
}

// PEFT's dispatch_default drops fan_in_fan_out for embeddings.
function embeddingDispatcher(target: Module, opts: LoraLayerOptions): LoraLayer | null {
  return target instanceof Embedding ? new LoraEmbedding(target, { ...opts, fanInFanOut: undefined }) : null;
}

export const LORA_DISPATCHERS: readonly LoraDispatcher[] = [customDispatcher, int8Dispatcher, int4Dispatcher, denseDispatcher, conv2dDispatcher, embeddingDispatcher];

/** The layer types LoRA adapts without a registration. */
const BUILT_IN = [Linear, Conv1D, Linear8bitLt, Linear4bit, Conv2d, Embedding];

function isCustom(m: unknown, config: LoraConfig): boolean {
  for (const [from] of config.customModules ?? []) if (m instanceof (from as ModuleClass)) return true;
  return false;
}

export function loraMatchOptions(config: LoraConfig): MatchOptions {
  return {
    isLinearLike: (m) => m instanceof Linear || m instanceof Conv1D || m instanceof Linear8bitLt || m instanceof Linear4bit || m instanceof LoraLinear || m instanceof LoraLinear8bitLt || m instanceof LoraLinear4bit,
    isSupported: (m) => m instanceof LoraLayer || BUILT_IN.some((c) => m instanceof c) || isCustom(m, config),
    typeName: (m) => (m as object)?.constructor?.name ?? typeof m,
    isTunerLayer: (m) => m instanceof LoraLayer || m instanceof ModulesToSaveWrapper,
    supportedTypeNames: [...BUILT_IN.map((c) => c.name), ...[...(config.customModules?.keys() ?? [])].map((c) => c.name)],
  };
}

export class LoraModel extends BaseTuner<LoraConfig> {
  protected get spec(): TunerSpec<LoraConfig> {
    return { peftType: "LORA", methodName: "LoRA", configClass: LoraConfig, layerClass: LoraLayer };
  }

  protected prepareAdapterConfig(config: LoraConfig, modelType: string | undefined): LoraConfig {
    if (config.targetModules !== null) return config;
    const effective = new LoraConfig({ ...config, targetModules: defaultTargetModules("LORA", modelType) });
    effective.registerCustomModule(config.customModules ?? new Map());
    return effective;
  }

  protected matchOptions(config: LoraConfig): MatchOptions {
    return loraMatchOptions(config);
  }

  protected createAdapterLayer(config: LoraConfig, adapterName: string, target: Module, key: string): BaseTunerLayer | null {
    const opts: LoraLayerOptions = {
      adapterName,
      r: config.rankFor(key),
      loraAlpha: config.alphaFor(key),
      loraDropout: config.loraDropout,
      useRslora: config.useRslora,
      initLoraWeights: config.initLoraWeights as LoraLayerOptions["initLoraWeights"],
      fanInFanOut: config.fanInFanOut,
      useDora: config.useDora,
    };
    if (target instanceof LoraLayer) {
      target.updateLayer(opts);
      return null;
    }
    for (const dispatch of LORA_DISPATCHERS) {
      const layer = dispatch(target, opts, config);
      if (layer) return layer;
    }
    throw peftError("ERR_UNSUPPORTED", `Target module ${key} (${target.constructor.name}) is not supported: LoRA adapts Linear, Conv1D, Linear8bitLt, Linear4bit, Conv2d and Embedding, or a type given to registerCustomModule`);
  }

  /** A new adapter made from existing ones, as PEFT's add_weighted_adapter (see weighted-adapter.ts). */
  addWeightedAdapter(adapters: string[], weights: number[], adapterName: string, opts?: WeightedAdapterOptions): void {
    addWeightedAdapter(this, adapters, weights, adapterName, opts);
  }

  *loraLayers(): Iterable<LoraLayer> {
    for (const l of this.tunerLayers()) yield l as LoraLayer;
  }

  // PEFT's _mark_only_adapters_as_trainable: everything but LoRA weights frozen, then the bias mode.
  protected override markOnlyAdaptersTrainable(config: LoraConfig): void {
    for (const [name, p] of this.model.namedParameters()) if (!name.includes("lora_")) p.requiresGrad = false;
    if (config.bias === "all") {
      for (const [name, p] of this.model.namedParameters()) if (name.endsWith("bias")) p.requiresGrad = true;
    } else if (config.bias === "lora_only") {
      for (const l of this.loraLayers()) for (const [name, p] of l.baseLayer.namedParameters()) if (name === "bias") p.requiresGrad = true;
    }
  }
}
