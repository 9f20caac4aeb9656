// Reading any adapter config: dispatch on `peft_type`, as PEFT's PeftConfig.from_peft_type does.
// Kept apart from config.ts because it must know every method's config class.

import { isArray, peftError, typeError } from "../errors.js";
import { describe } from "./config-checks.js";
import { readConfigFile } from "./config.js";
import { IA3Config } from "./ia3/config.js";
import { LoraConfig } from "./lora/config.js";
import { PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig } from "./prompt-learning/config.js";
import { AdaLoraConfig } from "./adalora/config.js";

export type PeftConfig = LoraConfig | IA3Config | AdaLoraConfig
  | PromptTuningConfig | PromptEncoderConfig | PrefixTuningConfig;

const READERS: Record<string, (obj: object) => PeftConfig> = {
  LORA: (o) => LoraConfig.fromJSON(o),
  IA3: (o) => IA3Config.fromJSON(o),
  PROMPT_TUNING: (o) => PromptTuningConfig.fromJSON(o),
  P_TUNING: (o) => PromptEncoderConfig.fromJSON(o),
  PREFIX_TUNING: (o) => PrefixTuningConfig.fromJSON(o),
  ADALORA: (o) => AdaLoraConfig.fromJSON(o),
};

/** A config object as PEFT writes it (snake_case keys), read into the class its `peft_type` names. */
export function configFromJSON(obj: object): PeftConfig {
  if (obj === null || typeof obj !== "object" || isArray(obj)) {
    throw typeError(`configFromJSON: expected a config object, got ${describe(obj)}`);
  }
  const type = Object.hasOwn(obj, "peft_type") ? (obj as Record<string, unknown>)["peft_type"] : undefined;
  if (type === undefined || type === null) {
    throw peftError("ERR_CONFIG", "adapter config has no peft_type; cannot tell which method it configures");
  }
  if (typeof type !== "string") throw typeError(`peft_type must be a string, got ${describe(type)}`);
  const read = Object.hasOwn(READERS, type) ? READERS[type] : undefined;
  if (!read) {
    throw peftError(
      "ERR_UNSUPPORTED",
      `peft_type "${type}" is not supported by node-peft (supported: ${Object.keys(READERS).join(", ")})`,
    );
  }
  return read(obj);
}

/** Read `dir/adapter_config.json` into the class its `peft_type` names. */
export async function configFromPretrained(dir: string): Promise<PeftConfig> {
  return configFromJSON(await readConfigFile(dir));
}
