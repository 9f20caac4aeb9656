// The config.json beside a merged int8 checkpoint: a merge whose output holds bitsandbytes int8 layers (an int8
// base, or `--dtype int8`) writes the base directory's config.json into the output's directory with the
// quantization_config transformers would write for it, so the directory loads as the int8 model it holds
// (here and in transformers). Float outputs leave config.json alone: their base's config already fits them.
import { existsSync } from "node:fs";
import { rename, unlink } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { realpathSync } from "node:fs";
import { peftError } from "../errors.js";
import { readJsonObject } from "./json-file.js";
import { writeTextDurable } from "./peft-checkpoint.js";
import { tempPath } from "./safetensors-write.js";
import { bitsAndBytesConfigDict, configJSONText, skippedModules } from "./save-pretrained.js";

const CONFIG_NAME = "config.json";

function real(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return resolve(p);
  }
}

/**
 * Where the merged output's config.json goes, or null when none is written: the base directory has no
 * config.json, or the output lies in the base's own directory (its config.json describes the base).
 */
export function mergedConfigTarget(base: string, out: string): { from: string; to: string } | null {
  const from = join(dirname(base), CONFIG_NAME);
  if (!existsSync(from) || real(dirname(base)) === real(dirname(out))) return null;
  return { from, to: join(dirname(out), CONFIG_NAME) };
}

/** Refuses, before any merging, to replace an existing config.json beside the output without `force`. */
export function checkMergedConfigTarget(target: { to: string } | null, force: boolean): void {
  if (target && existsSync(target.to) && !force)
    throw peftError("ERR_CHECKPOINT", `${target.to} exists and the int8 output needs its own config.json there; pass --force to overwrite it`);
}

/**
 * Writes `target.to`: the base's config.json, its quantization_config kept when the base was int8 already, else
 * one for int8 layers with the output's threshold (6.0) and the linear weights it kept in float (`kept`, out of
 * `linears`: module paths).
 */
export async function writeMergedConfig(target: { from: string; to: string }, linears: string[], kept: string[]): Promise<void> {
  const config = await readJsonObject(target.from, "base model's config", "ERR_CONFIG");
  const qc = config.quantization_config as Record<string, unknown> | undefined;
  if (!(qc && typeof qc === "object" && qc.load_in_8bit === true))
    config.quantization_config = bitsAndBytesConfigDict({ kind: "int8", skipModules: kept.length ? skippedModules(kept, linears) : null });
  const tmp = tempPath(target.to);
  try {
    await writeTextDurable(tmp, configJSONText(config));
    await rename(tmp, target.to);
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw e;
  }
}
