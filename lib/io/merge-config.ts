// The config.json beside a merged int8 checkpoint: a merge whose output holds bitsandbytes int8 layers (an int8
// base, or `--dtype int8`) writes the base directory's config.json into the output's directory with the
// quantization_config transformers would write for it, so the directory loads as the int8 model it holds
// (here and in transformers). Float outputs leave config.json alone: their base's config already fits them.
import { existsSync, readFileSync, realpathSync } from "node:fs";
import { rename, unlink } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { peftError } from "../errors.js";
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

/**
 * The output's config.json text: the base's config.json, its quantization_config kept when the base was int8
 * already, else one for int8 layers with the output's threshold (6.0) and the linear weights it kept in float
 * (`kept`, out of `linears`: module paths). Refused before any merging when another config.json is there
 * and `force` is not given; null when the one there already says the same.
 */
export function mergedConfigText(target: { from: string; to: string }, linears: string[], kept: string[], force: boolean): string | null {
  const config = readJsonSync(target.from);
  const qc = config.quantization_config as Record<string, unknown> | undefined;
  if (!(qc && typeof qc === "object" && qc.load_in_8bit === true))
    config.quantization_config = bitsAndBytesConfigDict({ kind: "int8", skipModules: kept.length ? skippedModules(kept, linears) : null });
  const text = configJSONText(config);
  if (!existsSync(target.to)) return text;
  if (readFileSync(target.to, "utf8") === text) return null;
  if (!force) throw peftError("ERR_CHECKPOINT", `${target.to} exists and the int8 output needs its own config.json there; pass --force to overwrite it`);
  return text;
}

function readJsonSync(file: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw peftError("ERR_CONFIG", `${file}: cannot read the base model's config (${(e as Error).message})`);
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) throw peftError("ERR_CONFIG", `${file}: expected a JSON object`);
  return v as Record<string, unknown>;
}

/** Writes config.json text atomically (a temporary file renamed over `to`). */
export async function writeMergedConfig(to: string, text: string): Promise<void> {
  const tmp = tempPath(to);
  try {
    await writeTextDurable(tmp, text);
    await rename(tmp, to);
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw e;
  }
}
