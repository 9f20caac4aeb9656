// AdaLoraConfig: PEFT's AdaLoraConfig (a LoraConfig with an SVD-form adapter whose rank budget shrinks during
// training): LoRA's fields and rules plus target_r, init_r, the tinit / tfinal / deltaT schedule, the EMA betas,
// orth_reg_weight, total_step, and rank_pattern, which here holds the allocator's per-layer masks
// ({"<path>.lora_E": [true, false, …]}) rather than LoRA's ranks. camelCase in memory, PEFT's snake_case JSON
// (peft_type "ADALORA") on disk.

import { isArray, peftError, typeError } from "../../errors.js";
import * as check from "../config-checks.js";
import { type ConfigSpec, type FieldSpec, PeftConfigBase, pyTruthy, snakeToCamel } from "../config.js";
import { LoraConfig, type LoraConfigOptions } from "../lora/config.js";
import { warnOnce } from "../tuner-layer.js";

/** Per layer (`<path>.lora_E`), which of its init_r triplets the allocator kept. */
export type AdaLoraRankPattern = Record<string, boolean[]>;

/** LoRA's options (PEFT's AdaLoraConfig is a LoraConfig) and AdaLoRA's own; rankPattern holds masks here. */
export interface AdaLoraConfigOptions extends Omit<LoraConfigOptions, "rankPattern" | "r"> {
  /** The average rank each layer ends with (the final budget is targetR × the number of layers). */
  targetR?: number;
  /** The rank every layer starts with. */
  initR?: number;
  /** Steps of warm-up before the budget starts to shrink. */
  tinit?: number;
  /** Steps at the end that train at the final budget. */
  tfinal?: number;
  /** Steps between two budget allocations. */
  deltaT?: number;
  /** EMA factor of the sensitivity (importance) smoothing, in (0, 1). */
  beta1?: number;
  /** EMA factor of the uncertainty, in (0, 1). */
  beta2?: number;
  /** Weight of the orthogonal regulariser (>= 0). */
  orthRegWeight?: number;
  /** The number of training steps; required. */
  totalStep?: number | null;
  /** The allocator's masks (written when training ends, read on load to prune ranks). */
  rankPattern?: AdaLoraRankPattern | null;
  /** Not used by AdaLoRA (PEFT warns when it is not 8); initR sets the rank. */
  r?: number;
}

/** LoRA's ConfigSpec and defaults (AdaLoraConfig is a LoraConfig in PEFT: same keys, same checks, same defaults). */
class LoraSpec extends LoraConfig {
  static get(): ConfigSpec {
    return new LoraSpec().spec;
  }
}

/** LoRA's fields an AdaLoraConfig has too, typed as LoraConfig types them. */
type LoraFields = Pick<
  LoraConfig,
  | "r" | "targetModules" | "excludeModules" | "loraAlpha" | "loraDropout" | "fanInFanOut" | "bias" | "useRslora" | "modulesToSave"
  | "initLoraWeights" | "layersToTransform" | "layersPattern" | "alphaPattern" | "megatronCore" | "qaloraGroupSize"
>;

/** LoRA's defaults of the fields AdaLoRA shares (a fresh copy each time). */
function loraDefaults(): Record<string, unknown> {
  const lora = new LoraConfig() as unknown as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const f of adaLoraSpec().fields) if (!OWN_KEYS.has(f.key)) out[snakeToCamel(f.key)] = structuredClone(lora[snakeToCamel(f.key)]);
  return out;
}

function rankPatternCheck(v: unknown, name: string): AdaLoraRankPattern | null {
  if (v === null) return null;
  if (typeof v !== "object" || isArray(v)) throw typeError(`${name} must be an object mapping module names to lists of booleans, or null, got ${check.describe(v)}`);
  const out: AdaLoraRankPattern = {};
  for (const [k, mask] of Object.entries(v)) {
    const what = `${name}[${JSON.stringify(k)}]`;
    if (!isArray(mask)) throw typeError(`${what} must be a list of booleans (which ranks the allocator kept), got ${check.describe(mask)}`);
    mask.forEach((b, i) => {
      if (typeof b !== "boolean") throw typeError(`${what}[${i}] must be a boolean, got ${check.describe(b)}`);
    });
    check.defineKey(out, k, [...(mask as boolean[])]);
  }
  return out;
}

function nonNegativeInt(v: unknown, name: string): number {
  const n = check.int(v, name);
  if (n < 0) throw peftError("ERR_CONFIG", `${name} must be an integer >= 0, got ${n}`);
  return n;
}

function optInt(v: unknown, name: string): number | null {
  return v === null ? null : check.int(v, name);
}

// PEFT's AdaLoRA refuses these outright (its own ValueError), not as an unimplemented LoRA option.
function refusedFlag(what: string) {
  return (v: unknown, name: string) => {
    if (pyTruthy(v)) throw peftError("ERR_CONFIG", `AdaLoraConfig: ${name}: ADALORA does not support ${what}.`);
    return v;
  };
}

const ADALORA_FIELDS: FieldSpec[] = [
  { key: "target_r", check: nonNegativeInt },
  { key: "init_r", check: nonNegativeInt },
  { key: "tinit", check: check.int },
  { key: "tfinal", check: check.int },
  { key: "deltaT", check: check.positiveInt },
  { key: "beta1", check: check.finiteNumber, float: true },
  { key: "beta2", check: check.finiteNumber, float: true },
  { key: "orth_reg_weight", check: check.finiteNumber, float: true },
  { key: "total_step", check: optInt },
  { key: "rank_pattern", check: rankPatternCheck },
  { key: "use_dora", check: refusedFlag("DoRA") },
  { key: "loftq_config", check: refusedFlag("LOFTQ") },
];
const OWN_KEYS = new Set(ADALORA_FIELDS.map((f) => f.key));

let adaSpec: ConfigSpec | null = null;
function adaLoraSpec(): ConfigSpec {
  if (adaSpec) return adaSpec;
  const lora = LoraSpec.get();
  adaSpec = {
    className: "AdaLoraConfig",
    peftType: "ADALORA",
    fields: [...lora.fields.filter((f) => !OWN_KEYS.has(f.key)), ...ADALORA_FIELDS],
    unsupported: lora.unsupported.filter((u) => !OWN_KEYS.has(u.key)),
  };
  return adaSpec;
}

// Set while fromJSON / fromPretrained make the empty instance they load into: PEFT's defaults alone are not a
// valid AdaLoRA config (total_step is required), so that instance is validated only once the file's values are in.
let loadingFile = false;

// The class has LoraFields' members too (set from LoRA's defaults in the constructor).
// eslint-disable-next-line @typescript-eslint/no-unsafe-declaration-merging
export interface AdaLoraConfig extends LoraFields {}

// eslint-disable-next-line @typescript-eslint/no-unsafe-declaration-merging
export class AdaLoraConfig extends PeftConfigBase {
  // AdaLoRA's own (LoRA's fields come from LoRA's defaults in the constructor)
  useDora: false = false;
  loftqConfig: Record<string, never> | null = {};
  targetR = 8;
  initR = 12;
  tinit = 0;
  tfinal = 0;
  deltaT = 1;
  beta1 = 0.85;
  beta2 = 0.85;
  orthRegWeight = 0.5;
  totalStep: number | null = null;
  rankPattern: AdaLoraRankPattern | null = null;

  constructor(opts: AdaLoraConfigOptions = {}) {
    super();
    Object.assign(this, loraDefaults());
    if (loadingFile) {
      loadingFile = false;
      return;
    }
    // `deltaT` is PEFT's own spelling of the key (not snake_case), so the option is the JSON key itself.
    if (opts !== null && typeof opts === "object" && !isArray(opts) && opts.deltaT !== undefined) {
      const { deltaT, ...rest } = opts;
      this.deltaT = check.positiveInt(deltaT, "deltaT");
      opts = rest;
    }
    this.load(opts, "options");
  }

  static override fromJSON<T extends PeftConfigBase>(this: new () => T, obj: object): T {
    loadingFile = true;
    try {
      return PeftConfigBase.fromJSON.call(this, obj) as T;
    } finally {
      loadingFile = false;
    }
  }

  static override fromPretrained<T extends PeftConfigBase>(this: new () => T, dir: string): Promise<T> {
    loadingFile = true;
    try {
      return PeftConfigBase.fromPretrained.call(this, dir) as Promise<T>;
    } finally {
      loadingFile = false;
    }
  }

  protected get spec(): ConfigSpec {
    return adaLoraSpec();
  }

  /** LoRA's __post_init__ rules, then AdaLoRA's (PEFT 0.19). */
  protected validate(): void {
    (LoraConfig.prototype as unknown as { validate(this: PeftConfigBase): void }).validate.call(this);
    if (this.r !== 8)
      warnOnce("PEFT_ADALORA_R", "Note that `r` is not used in AdaLora and will be ignored.If you intended to set the initial rank, use `init_r` instead.");
    if (this.totalStep === null || this.totalStep <= 0) throw peftError("ERR_CONFIG", "AdaLoRA does not work when `total_step` is None, supply a value > 0.");
    if (this.orthRegWeight < 0)
      throw peftError("ERR_CONFIG", `\`orth_reg_weight\` should be greater than or equal to 0, but the value passed is ${this.orthRegWeight}`);
    if (this.tinit >= this.totalStep - this.tfinal)
      throw peftError("ERR_CONFIG", "The supplied schedule values don't allow for a budgeting phase. Decrease `tfinal`/`tinit` or increase `total_step`.");
    // PEFT's RankAllocator asserts these when training starts; here they are config errors up front.
    for (const [k, b] of [["beta1", this.beta1], ["beta2", this.beta2]] as const)
      if (!(b > 0 && b < 1)) throw peftError("ERR_CONFIG", `AdaLoraConfig: ${k} must be in (0, 1), got ${b}`);
  }
}
