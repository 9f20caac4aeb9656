// Quantising while loading (transformers' load_in_8bit): each Linear is replaced by a Linear8bitLt as soon as
// its weight is read, so the model never holds more than one layer's full-precision weight beyond its int8
// form. Defaults as transformers' BitsAndBytesConfig: llm_int8_threshold 6.0, the output head (lm_head) kept
// in full precision, plus llm_int8_skip_modules.
import { describe, isArray, rangeError, typeError } from "../errors.js";
import { Linear } from "../nn/linear.js";
import { Linear8bitLt } from "../nn/linear8bit.js";
import type { Module } from "../nn/module.js";
import type { QuantizeHook } from "./model-loader.js";

export interface Int8LoadOptions {
  /** Outlier threshold of the int8 layers (default 6.0, transformers' llm_int8_threshold). */
  threshold?: number;
  /** Module names kept in full precision besides the output head: a name matches a path equal to it or ending in "." + it. */
  skipModules?: string[];
}

/** The output head transformers' get_keys_to_not_convert keeps for causal LMs. */
export const INT8_DEFAULT_SKIP = ["lm_head"];

export function int8Threshold(t: unknown, op: string): number {
  if (t === undefined) return 6.0;
  if (typeof t !== "number") throw typeError(`${op}: threshold must be a number, got ${describe(t)}`);
  if (!(t >= 0) || !Number.isFinite(t)) throw rangeError(`${op}: threshold must be a finite number >= 0, got ${t}`);
  return t;
}

export function int8SkipModules(s: unknown, op: string): string[] {
  if (s === undefined) return [...INT8_DEFAULT_SKIP];
  if (!isArray(s) || s.some((x) => typeof x !== "string")) throw typeError(`${op}: skipModules must be an array of strings, got ${describe(s)}`);
  return [...INT8_DEFAULT_SKIP, ...(s as string[])];
}

/** Whether a module path is one of `skip` (the name itself, or a dotted component of the path). */
export function skipped(path: string, skip: string[]): boolean {
  return skip.some((s) => path === s || path.endsWith("." + s) || path.startsWith(s + ".") || path.includes("." + s + "."));
}

/** The loader hook for `quantize: "int8"`: Linear -> Linear8bitLt outside the skipped modules. */
export function int8QuantizeHook(options: Int8LoadOptions, op: string): QuantizeHook {
  const threshold = int8Threshold(options.threshold, op);
  const skip = int8SkipModules(options.skipModules, op);
  return (m: Module, path: string) => {
    if (!(m instanceof Linear) || m.constructor !== Linear || skipped(path, skip)) return undefined;
    return Linear8bitLt.fromLinear(m, { threshold });
  };
}
