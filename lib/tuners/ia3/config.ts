// IA3Config: PEFT's IA3Config fields, defaults and __post_init__ rule (PEFT 0.19), camelCase in memory
// and PEFT's snake_case adapter_config.json on disk.

import { peftError } from "../../errors.js";
import * as check from "../config-checks.js";
import { type ConfigSpec, type PeftConfigOptions, PeftConfigBase } from "../config.js";

export interface IA3ConfigOptions extends PeftConfigOptions {
  targetModules?: string[] | string | null;
  excludeModules?: string[] | string | null;
  /** Modules whose (IA)³ vector scales the input rather than the output; a subset of targetModules. */
  feedforwardModules?: string[] | string | null;
  modulesToSave?: string[] | null;
  fanInFanOut?: boolean;
  initIa3Weights?: boolean;
}

const IA3_SPEC: ConfigSpec = {
  className: "IA3Config",
  peftType: "IA3",
  fields: [
    { key: "target_modules", check: check.optRegexOrNames },
    { key: "exclude_modules", check: check.optRegexOrNames },
    { key: "feedforward_modules", check: check.optRegexOrNames },
    { key: "fan_in_fan_out", check: check.bool },
    { key: "modules_to_save", check: check.optModuleNames },
    { key: "init_ia3_weights", check: check.bool },
  ],
  unsupported: [],
};

export class IA3Config extends PeftConfigBase {
  targetModules: string | string[] | null = null;
  excludeModules: string | string[] | null = null;
  feedforwardModules: string | string[] | null = null;
  fanInFanOut = false;
  modulesToSave: string[] | null = null;
  initIa3Weights = true;

  constructor(opts: IA3ConfigOptions = {}) {
    super();
    this.load(opts, "options");
  }

  protected get spec(): ConfigSpec {
    return IA3_SPEC;
  }

  /** PEFT's IA3Config.__post_init__: listed feed-forward modules must also be targets. */
  protected validate(): void {
    const ff = this.feedforwardModules;
    const t = this.targetModules;
    if (Array.isArray(ff) && Array.isArray(t)) {
      const missing = ff.filter((m) => !t.includes(m));
      if (missing.length > 0) {
        throw peftError(
          "ERR_CONFIG",
          `\`feedforward_modules\` should be a subset of \`target_modules\` (not in target_modules: ${missing.join(", ")})`,
        );
      }
    }
  }
}
