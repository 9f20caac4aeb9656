// Value checks for config fields. Each takes the value and the key as the caller spelled it (camelCase
// option or snake_case JSON key), so every message names the offending key. Wrong JavaScript types are
// TypeError (code ERR_INVALID_ARG_TYPE); well-typed but invalid values are PeftError ERR_CONFIG, the
// counterpart of the ValueError PEFT raises.

import { isArray, lengthOf, peftError, shownValue, typeError } from "../errors.js";
import { pyRegex, UnsafeRegexError } from "../pyregex.js";

/** A short description of a value for error messages (never throws, never long). */
export function describe(v: unknown): string {
  if (v === null) return "null";
  if (isArray(v)) return "an array";
  if (typeof v === "string" || typeof v === "number" || typeof v === "boolean" || typeof v === "bigint") return `${typeof v} ${shownValue(v)}`;
  return typeof v === "object" ? "an object" : typeof v;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (v === null || typeof v !== "object" || isArray(v)) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

export function bool(v: unknown, name: string): boolean {
  if (typeof v !== "boolean") throw typeError(`${name} must be a boolean, got ${describe(v)}`);
  return v;
}

export function optString(v: unknown, name: string): string | null {
  if (v === null) return null;
  if (typeof v !== "string") throw typeError(`${name} must be a string or null, got ${describe(v)}`);
  return v;
}

export function optPlainObject(v: unknown, name: string): Record<string, unknown> | null {
  if (v === null) return null;
  if (!isPlainObject(v)) throw typeError(`${name} must be an object or null, got ${describe(v)}`);
  return { ...v };
}

export function int(v: unknown, name: string): number {
  if (typeof v !== "number") throw typeError(`${name} must be an integer, got ${describe(v)}`);
  if (!Number.isSafeInteger(v)) throw peftError("ERR_CONFIG", `${name} must be an integer, got ${v}`);
  return v;
}

/** LoRA's rank: PEFT's layers reject r <= 0 ("`r` should be a positive integer value"). */
export function positiveInt(v: unknown, name: string): number {
  const n = int(v, name);
  if (n <= 0) throw peftError("ERR_CONFIG", `${name} must be a positive integer, got ${n}`);
  return n;
}

export function finiteNumber(v: unknown, name: string): number {
  if (typeof v !== "number") throw typeError(`${name} must be a number, got ${describe(v)}`);
  if (!Number.isFinite(v)) throw peftError("ERR_CONFIG", `${name} must be a finite number, got ${v}`);
  return v;
}

/** A dropout probability: 1 would zero the whole adapter path, so [0, 1). */
export function dropout(v: unknown, name: string): number {
  const p = finiteNumber(v, name);
  if (!(p >= 0 && p < 1)) throw peftError("ERR_CONFIG", `${name} must be in [0, 1), got ${p}`);
  return p;
}

export function oneOf<T extends string>(values: readonly T[]): (v: unknown, name: string) => T {
  return (v, name) => {
    if (typeof v !== "string") throw typeError(`${name} must be one of ${values.join(", ")}, got ${describe(v)}`);
    if (!(values as readonly string[]).includes(v)) {
      throw peftError("ERR_CONFIG", `${name} must be one of ${values.map((x) => `"${x}"`).join(", ")}, got "${v}"`);
    }
    return v as T;
  };
}

/**
 * A Python regex that must compile here too, and pass the screen against patterns that could take
 * exponential (or high polynomial) time to match; a bad one is a config error, not a crash or a hang
 * during matching.
 */
export function regex(v: string, name: string, mode: "full" | "match" = "full"): string {
  try {
    pyRegex(v, mode);
  } catch (err) {
    if (err instanceof UnsafeRegexError) throw peftError("ERR_CONFIG", `${name}: ${err.message}`);
    throw peftError("ERR_CONFIG", `${name}: invalid regular expression ${JSON.stringify(v)}: ${(err as Error).message}`);
  }
  return v;
}

/** Sets an own data property, whatever the key ("__proto__" included): for keys read from files. */
export function defineKey<T>(obj: Record<string, T>, key: string, value: T): void {
  Object.defineProperty(obj, key, { value, writable: true, enumerable: true, configurable: true });
}

/** How deep a config value may nest (objects and arrays inside the top-level config object). */
export const MAX_CONFIG_DEPTH = 64;

/**
 * How many entries (array entries and object properties, counted each time they are reached) a config value
 * may hold in all: a sparse array of length 2^32-1 is refused unread, and a value reaching itself many ways
 * is not walked for ever.
 */
export const MAX_CONFIG_ITEMS = 1_000_000;

function tooLarge(path: string) {
  return peftError("ERR_CONFIG", `${path}: a config value may hold at most ${MAX_CONFIG_ITEMS} entries in all`);
}

function pathStep(path: string, key: string | number): string {
  if (typeof key === "number") return `${path}[${key}]`;
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key.length > 64 ? key.slice(0, 64) + "…" : key)}]`;
}

/**
 * The key path of the first value nested deeper than `max` levels under `value` (which sits at `path`),
 * or null. Iterative, so neither a 100,000-deep value nor a cycle can overflow the stack. Arrays holding
 * more than MAX_CONFIG_ITEMS entries in all are ERR_CONFIG, before their entries are read.
 */
export function tooDeep(value: unknown, path: string, max = MAX_CONFIG_DEPTH): string | null {
  const stack: [unknown, string, number][] = [[value, path, 1]];
  let items = 0;
  while (stack.length) {
    const [v, p, depth] = stack.pop()!;
    if (v === null || typeof v !== "object") continue;
    if (depth > max) return p;
    if (isArray(v)) {
      const n = lengthOf(v, "config", p);
      if ((items += n) > MAX_CONFIG_ITEMS) throw tooLarge(p);
      for (let i = n - 1; i >= 0; i--) stack.push([v[i], pathStep(p, i), depth + 1]);
    } else {
      const entries = Object.entries(v);
      if ((items += entries.length) > MAX_CONFIG_ITEMS) throw tooLarge(p);
      for (let i = entries.length - 1; i >= 0; i--) stack.push([entries[i]![1], pathStep(p, entries[i]![0]), depth + 1]);
    }
  }
  return null;
}

function stringArray(v: unknown, name: string): string[] {
  if (!isArray(v)) throw typeError(`${name} must be an array of strings, got ${describe(v)}`);
  v.forEach((x, i) => {
    if (typeof x !== "string") throw typeError(`${name}[${i}] must be a string, got ${describe(x)}`);
  });
  return [...(v as string[])];
}

/**
 * target_modules / exclude_modules / feedforward_modules: null, a regex string, or a list of names.
 * PEFT stores lists as sets, so duplicates are dropped (first occurrence kept, for a stable file).
 */
export function optRegexOrNames(v: unknown, name: string): string | string[] | null {
  if (v === null) return null;
  if (typeof v === "string") return regex(v, name);
  if (v instanceof Set) v = [...v];
  if (!isArray(v)) throw typeError(`${name} must be a string, an array of strings or null, got ${describe(v)}`);
  return [...new Set(stringArray(v, name))];
}

export function optStringList(v: unknown, name: string): string[] | null {
  if (v === null) return null;
  return stringArray(v, name);
}

/**
 * modules_to_save: null or a list of module names. Matching splices each name into a regex unescaped
 * (`(^|.*\.)name($|\..*)`, as PEFT does), so each must make a valid, safe pattern there.
 */
export function optModuleNames(v: unknown, name: string): string[] | null {
  const list = optStringList(v, name);
  list?.forEach((m, i) => regex(`(^|.*\\.)${m}($|\\..*)`, `${name}[${i}]`, "match"));
  return list;
}

/** layers_to_transform: null, one layer index, or a list of them. */
export function optLayerIndexes(v: unknown, name: string): number | number[] | null {
  if (v === null) return null;
  const one = (x: unknown, n: string): number => {
    const i = int(x, n);
    if (i < 0) throw peftError("ERR_CONFIG", `${n} must be a non-negative layer index, got ${i}`);
    return i;
  };
  if (isArray(v)) return v.map((x, i) => one(x, `${name}[${i}]`));
  if (typeof v !== "number") throw typeError(`${name} must be an integer, an array of integers or null, got ${describe(v)}`);
  return one(v, name);
}

/** layers_pattern: null, or one or more names of the layer list (inserted into a regex, as PEFT does). */
export function optLayersPattern(v: unknown, name: string): string | string[] | null {
  if (v === null) return null;
  const compiles = (p: string, n: string) => regex(`.*\\.${p}\\.(\\d+)\\.`, n, "match") && p;
  if (typeof v === "string") return compiles(v, name);
  return stringArray(v, name).map((p, i) => compiles(p, `${name}[${i}]`));
}

/**
 * rank_pattern / alpha_pattern: {module-name-or-regex: value}. Keys are matched as PEFT's
 * get_pattern_key does (`(.*\.)?(key)$`), so they must compile. null reads as {} (PEFT's default).
 */
export function patternMap(value: (v: unknown, name: string) => number) {
  return (v: unknown, name: string): Record<string, number> => {
    if (v === null) return {};
    if (!isPlainObject(v)) throw typeError(`${name} must be an object mapping module names to numbers, got ${describe(v)}`);
    const out: Record<string, number> = {};
    for (const [k, x] of Object.entries(v)) {
      regex(`(.*\\.)?(${k})$`, `${name} key ${JSON.stringify(k)}`, "match");
      // Keys are module names or patterns from a file: "__proto__" or "constructor" are keys like any other.
      defineKey(out, k, value(x, `${name}[${JSON.stringify(k)}]`));
    }
    return out;
  };
}
