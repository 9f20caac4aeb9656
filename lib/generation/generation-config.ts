// The stop tokens and sampling defaults a transformers-format directory declares: generation_config.json
// when present (transformers' GenerationConfig), else config.json's eos_token_id; either may hold one id or
// a list.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { peftError } from "../errors.js";
import type { SamplingOptions } from "./sampling.js";

export interface GenerationDefaults extends SamplingOptions {
  eosTokenId: number[];
  bosTokenId: number | null;
  padTokenId: number | null;
  maxNewTokens?: number;
}

function ids(v: unknown, key: string, file: string): number[] {
  if (v === undefined || v === null) return [];
  const list = Array.isArray(v) ? v : [v];
  if (!list.every((x) => Number.isInteger(x) && x >= 0)) throw peftError("ERR_CONFIG", `${file}: ${key} must be a token id or a list of them, got ${JSON.stringify(v)}`);
  return list as number[];
}

function readJson(file: string): Record<string, unknown> | null {
  if (!existsSync(file)) return null;
  try {
    return JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw peftError("ERR_CONFIG", `${file}: not valid JSON (${(e as Error).message})`);
  }
}

/** Reads `dir`'s generation_config.json and config.json (either may be missing: then no defaults). */
export function readGenerationDefaults(dir: string): GenerationDefaults {
  const genFile = join(dir, "generation_config.json"), cfgFile = join(dir, "config.json");
  const gen = readJson(genFile) ?? {}, cfg = readJson(cfgFile) ?? {};
  const pick = (key: string) => (gen[key] !== undefined && gen[key] !== null ? { v: gen[key], f: genFile } : { v: cfg[key], f: cfgFile });
  const eos = pick("eos_token_id"), bos = pick("bos_token_id"), pad = pick("pad_token_id");
  const out: GenerationDefaults = { eosTokenId: ids(eos.v, "eos_token_id", eos.f), bosTokenId: ids(bos.v, "bos_token_id", bos.f)[0] ?? null, padTokenId: ids(pad.v, "pad_token_id", pad.f)[0] ?? null };
  const g = gen as Record<string, number | boolean | undefined>;
  if (typeof g.do_sample === "boolean") out.doSample = g.do_sample;
  if (typeof g.temperature === "number") out.temperature = g.temperature;
  if (typeof g.top_k === "number") out.topK = g.top_k;
  if (typeof g.top_p === "number") out.topP = g.top_p;
  if (typeof g.repetition_penalty === "number") out.repetitionPenalty = g.repetition_penalty;
  if (typeof g.max_new_tokens === "number") out.maxNewTokens = g.max_new_tokens;
  return out;
}
