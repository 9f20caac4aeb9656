// Quantising to 4 bits while loading (transformers' load_in_4bit): each Linear becomes a Linear4bit as soon as
// its weight is read, so the model never holds more than one layer's full-precision weight beyond its 4-bit
// form. Defaults as transformers' BitsAndBytesConfig: block size 64, bnb_4bit_use_double_quant false,
// bnb_4bit_compute_dtype float32; the output head (lm_head) and `skipModules` stay in full precision.
import { describe, peftError, typeError } from "../errors.js";
import { Linear } from "../nn/linear.js";
import { Linear4bit, type ComputeDtype4bit } from "../nn/linear4bit.js";
import { BLOCKSIZES_4BIT, type QuantType4 } from "../nn/quant-4bit.js";
import type { Module } from "../nn/module.js";
import type { QuantizeHook } from "./model-loader.js";
import { int8SkipModules, skipped } from "./int8-quantize.js";

export interface Quant4LoadOptions {
  /** Module names kept in full precision besides the output head (as int8's). */
  skipModules?: string[];
  /** Values per absmax (default 64). */
  blocksize?: number;
  /** Quantise the absmax too (transformers' bnb_4bit_use_double_quant; default false). */
  compressStatistics?: boolean;
  /** The layers' compute dtype (transformers' bnb_4bit_compute_dtype; default "f32"). */
  computeDtype?: ComputeDtype4bit;
}

/** The 4-bit options a loader takes besides quantize and skipModules. */
export const QUANT4_OPTION_KEYS = ["blocksize", "compressStatistics", "computeDtype"] as const;

/** The loader hook for `quantize: "nf4"` / `"fp4"`: Linear -> Linear4bit outside the skipped modules. */
export function quant4QuantizeHook(quantType: QuantType4, options: Quant4LoadOptions, op: string): QuantizeHook {
  const skip = int8SkipModules(options.skipModules, op);
  const blocksize = options.blocksize ?? 64;
  if (!BLOCKSIZES_4BIT.includes(blocksize)) throw peftError("ERR_CONFIG", `${op}: blocksize must be one of ${BLOCKSIZES_4BIT.join(", ")}, got ${String(blocksize)}`);
  const compressStatistics = options.compressStatistics ?? false;
  if (typeof compressStatistics !== "boolean") throw typeError(`${op}: compressStatistics must be a boolean, got ${describe(compressStatistics)}`);
  const computeDtype = options.computeDtype ?? "f32";
  if (computeDtype !== "f32" && computeDtype !== "bf16" && computeDtype !== "f16")
    throw peftError("ERR_CONFIG", `${op}: computeDtype must be "f32", "bf16" or "f16", got ${String(computeDtype)}`);
  // Checked once here, so a bad option fails before anything is read.
  return (m: Module, path: string) => {
    if (!(m instanceof Linear) || m.constructor !== Linear || skipped(path, skip)) return undefined;
    return Linear4bit.fromLinear(m, { quantType, blocksize, compressStatistics, computeDtype });
  };
}
