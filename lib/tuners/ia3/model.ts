// The (IA)³ tuner model (PEFT's IA3Model): IA3 layers on the targeted Linear, Conv1D and Conv2d modules,
// feed-forward ones (feedforwardModules) scaled on their input; both lists default from the model type.
// Injection and adapter management are the shared tuner's (tuner.ts). PEFT's IA3 has no custom-module
// dispatch (registerCustomModule is LoRA's); a model may hold its own IA3Layer subclasses, which get each
// new adapter through updateLayer.
import { Module, Linear, Conv1D, Conv2d } from "../../nn/index.js";
import { peftError } from "../../errors.js";
import { findTargetModules, isFeedforwardModule, type MatchOptions } from "../../matching.js";
import { defaultFeedforwardModules, defaultTargetModules } from "../../mappings.js";
import { BaseTuner, type TunerSpec } from "../tuner.js";
import { BaseTunerLayer } from "../tuner-layer.js";
import { ModulesToSaveWrapper } from "../modules-to-save.js";
import { IA3Config } from "./config.js";
import { IA3Layer, ia3Shape, isIa3Base } from "./layer.js";
import { addIa3WeightedAdapter } from "./weighted-adapter.js";

/** PEFT's _prepare_adapter_config: target and feed-forward modules from the model type when unset. */
export function prepareIa3Config(config: IA3Config, modelType: string | undefined): IA3Config {
  if (config.targetModules !== null && config.feedforwardModules !== null) return config;
  const effective = new IA3Config({ ...config, feedforwardModules: null });
  if (config.targetModules === null) effective.targetModules = defaultTargetModules("IA3", modelType);
  // Set after construction: PEFT checks the subset rule on the user's lists only, not on the defaults.
  effective.feedforwardModules = config.feedforwardModules ?? defaultFeedforwardModules(modelType);
  return effective;
}

const SUPPORTED = ["Linear", "Conv1D", "Conv2d"];

export const IA3_MATCH_OPTIONS: MatchOptions = {
  isLinearLike: (m) => m instanceof Linear || m instanceof Conv1D || (m instanceof IA3Layer && !(m.baseLayer instanceof Conv2d)),
  isSupported: (m) => m instanceof IA3Layer || isIa3Base(m),
  typeName: (m) => (m as object)?.constructor?.name ?? typeof m,
  isTunerLayer: (m) => m instanceof BaseTunerLayer || m instanceof ModulesToSaveWrapper,
  supportedTypeNames: SUPPORTED,
};

/**
 * The ia3_l shape each module the config targets in `model` gets (PEFT's rule per layer), by path: what a
 * checkpoint must hold, known before any layer is made.
 */
export function ia3TargetShapes(model: Module, config: IA3Config, modelType?: string): Map<string, number[]> {
  const effective = prepareIa3Config(config, modelType);
  const out = new Map<string, number[]>();
  for (const path of findTargetModules(model, effective, { ...IA3_MATCH_OPTIONS, warn: false }).targeted) {
    const m = model.getSubmodule(path);
    if (m instanceof IA3Layer) out.set(path, ia3Shape(m.baseLayer, m.isFeedforward));
    else if (isIa3Base(m)) out.set(path, ia3Shape(m, isFeedforwardModule(effective, path)));
  }
  return out;
}

export class IA3Model extends BaseTuner<IA3Config> {
  protected get spec(): TunerSpec<IA3Config> {
    return { peftType: "IA3", methodName: "IA3", configClass: IA3Config, layerClass: IA3Layer };
  }

  protected prepareAdapterConfig(config: IA3Config, modelType: string | undefined): IA3Config {
    return prepareIa3Config(config, modelType);
  }

  protected matchOptions(): MatchOptions {
    return IA3_MATCH_OPTIONS;
  }

  protected createAdapterLayer(config: IA3Config, adapterName: string, target: Module, key: string): BaseTunerLayer | null {
    if (target instanceof IA3Layer) {
      target.updateLayer({ adapterName, initIa3Weights: config.initIa3Weights });
      return null;
    }
    if (!isIa3Base(target))
      throw peftError("ERR_UNSUPPORTED", `Target module ${key} (${target.constructor.name}) is not supported. Currently, only Linear, Conv2d and Conv1D are supported.`);
    const layer = new IA3Layer(target, { adapterName, isFeedforward: isFeedforwardModule(config, key), initIa3Weights: config.initIa3Weights, fanInFanOut: config.fanInFanOut });
    // PEFT sets the config's flag to the layer's layout, so a saved config says how its last dense target stores W.
    if (!(target instanceof Conv2d)) config.fanInFanOut = layer.fanInFanOut;
    return layer;
  }

  /** The IA3 layers, in model order. */
  *ia3Layers(): Iterable<IA3Layer> {
    for (const l of this.tunerLayers()) yield l as IA3Layer;
  }

  /** A new adapter whose vectors are Σ wᵢ·lᵢ of existing ones (PEFT's IA3Model.add_weighted_adapter). */
  addWeightedAdapter(adapters: string[], weights: number[], adapterName: string): void {
    addIa3WeightedAdapter(this, adapters, weights, adapterName);
  }
}
