// Checks an AdaLoRA adapter file's tensor shapes (from its header alone) against its config before any layer is
// made: each lora_A / lora_E / lora_B must have the rank the config gives its layer (the rank pattern's kept count,
// or init_r where the pattern has no entry), and each mask must have init_r entries. A config that disagrees with
// the weights would otherwise make every layer allocate init_r ranks before the shapes are compared.
import { peftError } from "../../errors.js";
import type { AdaLoraConfig } from "./config.js";
import { rankPatternKey } from "./rank-allocator.js";

const KEY = /^base_model\.model\.(.+)\.lora_([AEB])$/;

export function checkAdaLoraShapes(config: AdaLoraConfig, shapes: ReadonlyMap<string, readonly number[]>, file: string): void {
  const pattern = config.rankPattern ?? {};
  for (const [key, mask] of Object.entries(pattern))
    if (mask.length !== config.initR)
      throw peftError("ERR_CHECKPOINT", `${file}: the config's rank_pattern entry ${key} has ${mask.length} entries but init_r is ${config.initR}`);
  for (const [key, shape] of shapes) {
    const m = KEY.exec(key);
    if (!m) continue;
    const [, path, which] = m as unknown as [string, string, "A" | "E" | "B"];
    const mask = Object.hasOwn(pattern, rankPatternKey(path)) ? pattern[rankPatternKey(path)] : null;
    const want = mask ? mask.filter(Boolean).length : config.initR;
    const rank = shape.length !== 2 ? undefined : which === "B" ? shape[1] : shape[0];
    if (rank !== want || (which === "E" && shape[1] !== 1))
      throw peftError(
        "ERR_CHECKPOINT",
        `${file}: ${key} has shape [${shape.join(", ")}] but the config gives ${path} rank ${want} (${mask ? "the ranks its rank_pattern keeps" : "init_r"}; ` +
          `lora_A (r, in), lora_E (r, 1), lora_B (out, r))`,
      );
  }
}
