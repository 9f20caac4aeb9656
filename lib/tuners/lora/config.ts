// LoraConfig: PEFT's LoraConfig fields, defaults and __post_init__ rules (PEFT 0.19), camelCase in
// memory and PEFT's snake_case adapter_config.json on disk.

import { peftError, typeError } from "../../errors.js";
import { getPatternKey } from "../../matching.js";
import * as check from "../config-checks.js";
import {
  type ConfigSpec,
  type PeftConfigOptions,
  PeftConfigBase,
  hide,
  pyTruthy,
} from "../config.js";

export type LoraBias = "none" | "all" | "lora_only";
export type InitLoraWeights = boolean | "gaussian";

/** A module class, as a key or value of a custom-module mapping. */
export type ModuleClass = new (...args: any[]) => unknown;

/**
 * PEFT options this package does not implement. They are accepted at their PEFT default only (a
 * non-default value throws PeftError ERR_UNSUPPORTED), so configs written by PEFT load unchanged.
 */
export interface UnsupportedLoraOptions {
  loraBias?: false;
  useQalora?: false;
  ensureWeightTying?: false;
  layerReplication?: null;
  trainableTokenIndices?: null;
  targetParameters?: null;
  aloraInvocationTokens?: null;
  megatronConfig?: null;
  loftqConfig?: Record<string, never> | null;
  evaConfig?: null;
  cordaConfig?: null;
  loraGaConfig?: null;
  useBdlora?: null;
  arrowConfig?: null;
}

export interface LoraConfigOptions extends PeftConfigOptions, UnsupportedLoraOptions {
  r?: number;
  loraAlpha?: number;
  loraDropout?: number;
  targetModules?: string[] | string | null;
  excludeModules?: string[] | string | null;
  modulesToSave?: string[] | null;
  layersToTransform?: number | number[] | null;
  layersPattern?: string | string[] | null;
  bias?: LoraBias;
  useRslora?: boolean;
  initLoraWeights?: InitLoraWeights;
  fanInFanOut?: boolean;
  /** DoRA (PEFT's use_dora): LoRA's direction with a trainable magnitude per output feature. */
  useDora?: boolean;
  rankPattern?: Record<string, number>;
  alphaPattern?: Record<string, number>;
  /** Only used by Megatron layers (unsupported); kept for the file. */
  megatronCore?: string | null;
  /** Only used with use_qalora (unsupported); kept for the file. */
  qaloraGroupSize?: number;
}

// init_lora_weights values PEFT knows besides true/false/"gaussian": data- or SVD-driven schemes.
const UNSUPPORTED_INITS = ["eva", "olora", "pissa", "corda", "loftq", "orthogonal", "lora_ga"];

function checkInitLoraWeights(v: unknown, name: string): InitLoraWeights {
  if (typeof v === "boolean" || v === "gaussian") return v;
  if (typeof v !== "string") throw typeError(`${name} must be true, false or "gaussian", got ${check.describe(v)}`);
  const known = UNSUPPORTED_INITS.includes(v) || /^pissa_niter_\d+$/.test(v);
  throw peftError(
    "ERR_UNSUPPORTED",
    `LoraConfig: ${name} = "${v}" is not supported by node-peft` +
      (known ? "" : " (not an initialization PEFT 0.19 knows either)") +
      `; use true, false or "gaussian"`,
  );
}

const LORA_SPEC: ConfigSpec = {
  className: "LoraConfig",
  peftType: "LORA",
  fields: [
    { key: "r", check: check.positiveInt },
    { key: "target_modules", check: check.optRegexOrNames },
    { key: "exclude_modules", check: check.optRegexOrNames },
    { key: "lora_alpha", check: check.finiteNumber },
    { key: "lora_dropout", check: check.dropout, float: true },
    { key: "fan_in_fan_out", check: check.bool },
    { key: "bias", check: check.oneOf<LoraBias>(["none", "all", "lora_only"]) },
    { key: "use_rslora", check: check.bool },
    { key: "use_dora", check: check.bool },
    { key: "modules_to_save", check: check.optModuleNames },
    { key: "init_lora_weights", check: checkInitLoraWeights },
    { key: "layers_to_transform", check: check.optLayerIndexes },
    { key: "layers_pattern", check: check.optLayersPattern },
    { key: "rank_pattern", check: check.patternMap(check.positiveInt) },
    { key: "alpha_pattern", check: check.patternMap(check.finiteNumber) },
    { key: "megatron_core", check: check.optString },
    { key: "qalora_group_size", check: check.int },
  ],
  // Defaults are what PEFT 0.19.1 writes (see the peft-lora-example fixture).
  unsupported: [
    { key: "lora_bias", default: false },
    { key: "use_qalora", default: false },
    { key: "ensure_weight_tying", default: false },
    { key: "layer_replication", default: null },
    { key: "trainable_token_indices", default: null },
    {
      key: "target_parameters",
      default: null,
      // PEFT rejects a string outright (regex matching of parameters is not implemented there).
      checkType: (v, name) => {
        if (typeof v === "string") throw typeError(`${name} must be a list of strings or null.`);
      },
    },
    { key: "alora_invocation_tokens", default: null },
    { key: "megatron_config", default: null },
    { key: "loftq_config", default: {} },
    { key: "eva_config", default: null },
    { key: "corda_config", default: null },
    { key: "lora_ga_config", default: null },
    { key: "use_bdlora", default: null },
    { key: "arrow_config", default: null },
  ],
};

export class LoraConfig extends PeftConfigBase {
  r = 8;
  targetModules: string | string[] | null = null;
  excludeModules: string | string[] | null = null;
  loraAlpha = 8;
  loraDropout = 0;
  fanInFanOut = false;
  bias: LoraBias = "none";
  useRslora = false;
  useDora = false;
  modulesToSave: string[] | null = null;
  initLoraWeights: InitLoraWeights = true;
  layersToTransform: number | number[] | null = null;
  layersPattern: string | string[] | null = null;
  rankPattern: Record<string, number> = {};
  alphaPattern: Record<string, number> = {};
  megatronCore: string | null = "megatron.core";
  qaloraGroupSize = 16;
  /** Module class -> LoRA layer class, set by registerCustomModule; never serialized (as in PEFT). */
  declare customModules: Map<ModuleClass, ModuleClass> | null;

  constructor(opts: LoraConfigOptions = {}) {
    super();
    hide(this, "customModules", null);
    this.load(opts, "options");
  }

  protected get spec(): ConfigSpec {
    return LORA_SPEC;
  }

  /** PEFT's LoraConfig.__post_init__ rules. */
  protected validate(): void {
    if (typeof this.targetModules === "string" && this.layersToTransform !== null) {
      throw peftError("ERR_CONFIG", "`layers_to_transform` cannot be used when `target_modules` is a str.");
    }
    if (typeof this.targetModules === "string" && this.layersPattern !== null) {
      throw peftError("ERR_CONFIG", "`layers_pattern` cannot be used when `target_modules` is a str.");
    }
    // Python truthiness, as PEFT tests it: a layers_to_transform of 0 counts as unset here.
    if (pyTruthy(this.layersPattern) && !pyTruthy(this.layersToTransform)) {
      throw peftError(
        "ERR_CONFIG",
        "When `layers_pattern` is specified, `layers_to_transform` must also be specified." +
          (this.layersToTransform === 0 ? " (PEFT reads 0 as unset here; pass [0] instead.)" : ""),
      );
    }
  }

  /** The rank for the module at `key`: its rank_pattern entry (PEFT's get_pattern_key), else r. */
  rankFor(key: string): number {
    const k = getPatternKey(Object.keys(this.rankPattern), key);
    return k === null ? this.r : this.rankPattern[k]!;
  }

  /** The alpha for the module at `key`: its alpha_pattern entry, else loraAlpha. */
  alphaFor(key: string): number {
    const k = getPatternKey(Object.keys(this.alphaPattern), key);
    return k === null ? this.loraAlpha : this.alphaPattern[k]!;
  }

  /**
   * Use custom LoRA layer classes for module types (PEFT's _register_custom_module): getPeftModel
   * checks this mapping before the built-in layers. Not saved; register again after loading.
   */
  registerCustomModule(mapping: Map<ModuleClass, ModuleClass>): void {
    if (!(mapping instanceof Map)) throw typeError(`registerCustomModule: mapping must be a Map, got ${check.describe(mapping)}`);
    for (const [from, to] of mapping) {
      if (typeof from !== "function" || typeof to !== "function") {
        throw typeError("registerCustomModule: mapping keys and values must be classes (constructors)");
      }
    }
    this.customModules ??= new Map();
    for (const [from, to] of mapping) this.customModules.set(from, to);
  }
}
