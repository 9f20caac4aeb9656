// A base model saved as transformers' save_pretrained saves it: config.json (the model's config, plus the
// `quantization_config` BitsAndBytesConfig.to_dict() writes when the model holds bitsandbytes 4-bit or int8
// layers), the weights as model.safetensors or, above maxShardSize, as model-0000i-of-0000N.safetensors with
// model.safetensors.index.json, and the tokenizer and generation_config files of the directory the model was
// loaded from. Every file goes to a temporary name first and is renamed into place once all are written
// (weights first, config.json last), so a failure leaves the directory as it was; weight files of an earlier
// save that the new one does not list are removed afterwards (as transformers cleans the folder).
import { constants } from "node:fs";
import { copyFile, mkdir, open, readdir, realpath, rename, rmdir, unlink } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { describe, optionsArg, peftError, typeError } from "../errors.js";
import { Linear } from "../nn/linear.js";
import { Linear4bit } from "../nn/linear4bit.js";
import { Linear8bitLt } from "../nn/linear8bit.js";
import type { Module } from "../nn/module.js";
import { torchDtypeName } from "../nn/quant-4bit.js";
import { pyJSONDumps } from "../pyjson.js";
import { DTYPE_SIZE, type DType, type Tensor } from "../tensor.js";
import { readJsonObject } from "./json-file.js";
import { fileSystemFailure, writeTextDurable } from "./peft-checkpoint.js";
import { saveSafetensors, tempPath } from "./safetensors-write.js";

const CONFIG_NAME = "config.json";
export const SAFE_WEIGHTS_NAME = "model.safetensors";
export const SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json";

/** Files of the source directory that travel with the model (transformers' tokenizer and generation files). */
const COMPANION_FILES = [
  "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
  "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
];

/** config.json numbers that are Python floats (written "6.0", "10000.0" as transformers does). */
const FLOAT_KEYS = new Set([
  "rms_norm_eps", "rope_theta", "initializer_range", "attention_dropout", "rope_scaling.factor", "rope_scaling.low_freq_factor",
  "rope_scaling.high_freq_factor", "quantization_config.llm_int8_threshold",
]);

export interface SavePretrainedOptions {
  /**
   * Largest weight file before the weights are split into shards: bytes, or a size as transformers takes it
   * ("5GB" = 5·10^9 bytes, "500MB", "2GiB"); default "5GB". A tensor larger than this gets a shard of its own.
   */
  maxShardSize?: number | string;
}

/** What the model class gives the writer besides its tensors. */
export interface PretrainedSource {
  /** The model's config as transformers writes it (architectures, model_type, sizes…), without torch_dtype. */
  config: Record<string, unknown>;
  /** The dtype of the model's unquantised parameters (config.json's torch_dtype). */
  dtype: DType;
  /** The directory the model was loaded from: its other config.json keys and its tokenizer files are kept. */
  sourceDir: string | null;
}

const SIZE_UNITS: Record<string, number> = { B: 1, KB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12, KIB: 2 ** 10, MIB: 2 ** 20, GIB: 2 ** 30, TIB: 2 ** 40 };

/** maxShardSize in bytes: a positive integer, or "<number><unit>" with transformers' units (GB = 10^9, GiB = 2^30). */
export function parseShardSize(v: unknown, op: string): number {
  if (v === undefined) return 5e9;
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v) || v < 1) throw peftError("ERR_CONFIG", `${op}: maxShardSize must be a positive whole number of bytes, got ${v}`);
    return v;
  }
  if (typeof v !== "string") throw typeError(`${op}: maxShardSize must be a number of bytes or a string such as "5GB", got ${describe(v)}`);
  const m = /^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$/.exec(v);
  const unit = m ? SIZE_UNITS[m[2].toUpperCase()] : undefined;
  const bytes = m && unit ? Math.floor(Number(m[1]) * unit) : 0;
  if (!(bytes >= 1)) throw peftError("ERR_CONFIG", `${op}: maxShardSize ${JSON.stringify(v)} is not a size: use a number followed by B, KB, MB, GB, TB, KiB, MiB, GiB or TiB, e.g. "5GB"`);
  return bytes;
}

/** The modules kept in float among the linear layers (paths), as short as matching stays exact: "lm_head", not its path. */
export function skippedModules(plain: string[], all: string[]): string[] {
  const last = (p: string) => p.slice(p.lastIndexOf(".") + 1);
  const out: string[] = [];
  for (const p of plain) {
    const name = last(p);
    // A short name stands for every layer of that name, so only when none of them is quantised.
    const entry = all.every((q) => last(q) !== name || plain.includes(q)) ? name : p;
    if (!out.includes(entry)) out.push(entry);
  }
  return out;
}

/** What a BitsAndBytesConfig holds (the defaults are its own: fp4, no double quantisation, float32, 6.0). */
export interface BnbSettings {
  kind: "4bit" | "int8";
  quantType?: "nf4" | "fp4";
  doubleQuant?: boolean;
  computeDtype?: DType;
  threshold?: number;
  /** llm_int8_skip_modules: the module names kept in float (null: transformers' default, the output head). */
  skipModules: string[] | null;
}

/** transformers' BitsAndBytesConfig.to_dict(): every key it writes, in its spelling. */
export function bitsAndBytesConfigDict(s: BnbSettings): Record<string, unknown> {
  const four = s.kind === "4bit";
  return {
    _load_in_4bit: four,
    _load_in_8bit: !four,
    bnb_4bit_compute_dtype: torchDtypeName(s.computeDtype ?? "f32"),
    bnb_4bit_quant_storage: "uint8",
    bnb_4bit_quant_type: s.quantType ?? "fp4",
    bnb_4bit_use_double_quant: s.doubleQuant ?? false,
    llm_int8_enable_fp32_cpu_offload: false,
    llm_int8_has_fp16_weight: false,
    llm_int8_skip_modules: s.skipModules,
    llm_int8_threshold: s.threshold ?? 6.0,
    load_in_4bit: four,
    load_in_8bit: !four,
    quant_method: "bitsandbytes",
  };
}

/**
 * The quantization_config for the quantised layers `model` holds, or null for a model without any. Layers
 * whose settings one config cannot express together are refused.
 */
export function quantizationConfigOf(model: Module, op: string): Record<string, unknown> | null {
  const four: [string, Linear4bit][] = [], eight: [string, Linear8bitLt][] = [], plain: string[] = [];
  for (const [path, m] of model.namedModules()) {
    if (m instanceof Linear4bit) four.push([path, m]);
    else if (m instanceof Linear8bitLt) eight.push([path, m]);
    else if (m instanceof Linear && m.constructor === Linear) plain.push(path);
  }
  if (four.length === 0 && eight.length === 0) return null;
  if (four.length && eight.length)
    throw peftError("ERR_UNSUPPORTED", `${op}: the model holds both 4-bit (${four[0][0]}) and int8 (${eight[0][0]}) layers; a quantization_config describes one kind`);
  const same = <T>(layers: [string, T][], what: string, get: (l: T) => unknown): void => {
    const first = get(layers[0][1]);
    const other = layers.find(([, l]) => get(l) !== first);
    if (other) throw peftError("ERR_UNSUPPORTED", `${op}: ${layers[0][0]} has ${what} ${String(first)} but ${other[0]} has ${String(get(other[1]))}; a quantization_config gives every layer one`);
  };
  const all = [...four.map(([p]) => p), ...eight.map(([p]) => p), ...plain];
  const skipModules = plain.length ? skippedModules(plain, all) : null;
  if (eight.length) {
    same(eight, "threshold", (l) => l.threshold);
    return bitsAndBytesConfigDict({ kind: "int8", threshold: eight[0][1].threshold, skipModules });
  }
  same(four, "quant type", (l) => l.quantType);
  same(four, "double quantisation", (l) => l.compressStatistics);
  same(four, "compute dtype", (l) => l.computeDtype ?? "f32");
  const l = four[0][1];
  return bitsAndBytesConfigDict({ kind: "4bit", quantType: l.quantType, doubleQuant: l.compressStatistics, computeDtype: l.computeDtype ?? "f32", skipModules });
}

/** config.json text as transformers writes it (sorted keys, indent 2, Python's floats, a final newline). */
export function configJSONText(config: Record<string, unknown>): string {
  return pyJSONDumps(config, { floatKeys: FLOAT_KEYS }) + "\n";
}

/** config.json text: the source's keys, the model's config over them, torch_dtype and quantization_config. */
export function pretrainedConfigText(base: Record<string, unknown>, model: Module, src: Pick<PretrainedSource, "config" | "dtype">, op: string): string {
  // transformers 5 writes "dtype" where earlier versions wrote "torch_dtype": the source's spelling is kept.
  const dtypeKey = Object.hasOwn(base, "dtype") && !Object.hasOwn(base, "torch_dtype") ? "dtype" : "torch_dtype";
  const out: Record<string, unknown> = { ...base, ...src.config, [dtypeKey]: torchDtypeName(src.dtype) };
  delete out.quantization_config;
  const qc = quantizationConfigOf(model, op);
  if (qc) out.quantization_config = qc;
  return configJSONText(out);
}

/** huggingface_hub's split: tensors in order, a new shard when the next would pass `max`; one over it alone. */
export function splitShards(entries: [string, Tensor][], max: number): [string, Tensor][][] {
  const shards: [string, Tensor][][] = [];
  let cur: [string, Tensor][] = [], size = 0;
  for (const e of entries) {
    const bytes = e[1].numel * DTYPE_SIZE[e[1].dtype];
    if (bytes > max) {
      shards.push([e]);
      continue;
    }
    if (size + bytes > max && cur.length) shards.push(cur), (cur = []), (size = 0);
    cur.push(e);
    size += bytes;
  }
  if (cur.length || shards.length === 0) shards.push(cur);
  return shards;
}

const SHARD_NAME = /^model-\d{5}-of-\d{5}\.safetensors$/;

/** Keys of tuner layers: their weights are not the base model's (merge them first). */
const ADAPTER_KEY = /(^|\.)(base_layer|lora_[A-Za-z_]+|ia3_l|modules_to_save|original_module)(\.|$)/;

async function copyDurable(from: string, to: string): Promise<void> {
  await copyFile(from, to, constants.COPYFILE_EXCL);
  const h = await open(to, "r+");
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

async function sameDir(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([realpath(a).catch(() => null), realpath(b).catch(() => null)]);
  return x !== null && x === y;
}

/** Saves `model` (its stateDict keys are transformers') into `dir` as save_pretrained does. */
export async function savePretrainedModel(model: Module, dir: unknown, options: SavePretrainedOptions | undefined, src: PretrainedSource, op: string): Promise<void> {
  if (typeof dir !== "string" || !dir) throw typeError(`${op}: dir must be a non-empty string, got ${dir === "" ? "an empty string" : describe(dir)}`);
  const opts = optionsArg(options, op);
  const unknown = Object.keys(opts).filter((k) => k !== "maxShardSize");
  if (unknown.length) throw peftError("ERR_CONFIG", `${op}: unknown option ${unknown.map((k) => JSON.stringify(k)).join(", ")} (maxShardSize is the one option)`);
  const maxShard = parseShardSize(opts.maxShardSize, op);
  const base = src.sourceDir ? await readJsonObject(join(src.sourceDir, CONFIG_NAME), "model config", "ERR_CONFIG").catch(() => ({})) : {};
  const configText = pretrainedConfigText(base, model, src, op);
  const sd = model.stateDict();
  const pending: { tmp: string; dest: string }[] = [];
  try {
    const adapterKey = Object.keys(sd).find((k) => ADAPTER_KEY.test(k));
    if (adapterKey)
      throw peftError("ERR_UNSUPPORTED", `${op}: the model holds adapter layers ("${adapterKey}"); merge them first (PeftModel.mergeAndUnload) or save the adapter with PeftModel.savePretrained`);
    const shards = splitShards(Object.entries(sd), maxShard);
    const n = shards.length;
    const names = n === 1 ? [SAFE_WEIGHTS_NAME] : shards.map((_, i) => `model-${String(i + 1).padStart(5, "0")}-of-${String(n).padStart(5, "0")}.safetensors`);
    const companions = src.sourceDir && !(await sameDir(src.sourceDir, dir)) ? COMPANION_FILES : [];
    let made: string | undefined, renamed = false;
    try {
      made = await mkdir(dir, { recursive: true });
      const stage = (name: string) => {
        const f = { tmp: tempPath(join(dir, name)), dest: join(dir, name) };
        pending.push(f);
        return f.tmp;
      };
      for (const [i, shard] of shards.entries()) await saveSafetensors(stage(names[i]), Object.fromEntries(shard), { format: "pt" });
      if (n > 1) {
        const weightMap = Object.fromEntries(shards.flatMap((s, i) => s.map(([k]) => [k, names[i]])));
        const totalSize = Object.values(sd).reduce((a, t) => a + t.numel * DTYPE_SIZE[t.dtype], 0);
        await writeTextDurable(stage(SAFE_WEIGHTS_INDEX_NAME), pyJSONDumps({ metadata: { total_size: totalSize }, weight_map: weightMap }) + "\n");
      }
      for (const name of companions) {
        const from = join(src.sourceDir!, name);
        const tmp = tempPath(join(dir, name));
        const copied = await copyDurable(from, tmp).then(() => true, (e: NodeJS.ErrnoException) => {
          if (e.code === "ENOENT" && e.path === from) return false;
          throw e;
        });
        if (copied) pending.push({ tmp, dest: join(dir, name) });
      }
      await writeTextDurable(stage(CONFIG_NAME), configText);
      // Weights, then the index and the other files, config.json last.
      renamed = true;
      while (pending.length) {
        await rename(pending[0].tmp, pending[0].dest);
        pending.shift();
      }
      // What an earlier save left: the single file or the index of the other layout, shards not listed now.
      // The index goes before the shards it lists, so no reader sees an index naming a missing shard.
      for (const name of (await readdir(dir)).sort((a, b) => Number(b === SAFE_WEIGHTS_INDEX_NAME) - Number(a === SAFE_WEIGHTS_INDEX_NAME))) {
        const stale = n === 1 ? name === SAFE_WEIGHTS_INDEX_NAME || SHARD_NAME.test(name) : name === SAFE_WEIGHTS_NAME || (SHARD_NAME.test(name) && !names.includes(name));
        if (stale) await unlink(join(dir, name));
      }
    } catch (e) {
      // Directories this save created go again while empty (rmdir never removes a file), deepest first.
      if (made !== undefined && !renamed) {
        await Promise.all(pending.map((f) => unlink(f.tmp).catch(() => {})));
        for (let d = resolve(dir); ; d = dirname(d)) if (!(await rmdir(d).then(() => true, () => false)) || d === resolve(made) || d === dirname(d)) break;
      }
      throw fileSystemFailure(e, dir);
    }
  } finally {
    await Promise.all(pending.map((f) => unlink(f.tmp).catch(() => {})));
    for (const t of Object.values(sd)) t.dispose();
  }
}
