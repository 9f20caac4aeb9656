// Error types with stable codes, shaped like Node's own errors (`err.code`).

export type PeftErrorCode =
  | "ERR_SHAPE"
  | "ERR_DTYPE"
  | "ERR_DEVICE"
  | "ERR_NOT_ON_DEVICE"
  | "ERR_DISPOSED"
  | "ERR_TENSOR_BUSY"
  | "ERR_CONFIG"
  | "ERR_UNSUPPORTED"
  | "ERR_CHECKPOINT"
  | "ERR_SAFETENSORS"
  | "ERR_TARGET_NOT_FOUND"
  | "ERR_STATE" // an operation out of order: backward without a training forward, backward while merged
  | "ERR_GRADCHECK" // gradcheck: an analytic gradient disagrees with finite differences
  | "ERR_DISTRIBUTED" // distributed: no MPI module, a failed collective, ranks that disagree
  | "ERR_NATIVE";

export class PeftError extends Error {
  readonly code: string;
  /** Non-string arguments (from JavaScript callers) are coerced without running their code. */
  constructor(code: string, message: string) {
    super(typeof message === "string" ? message : message === undefined ? "" : shownValue(message));
    this.name = "PeftError";
    this.code = typeof code === "string" ? code : "ERR_UNKNOWN";
  }
}

export function peftError(code: PeftErrorCode, message: string): PeftError {
  return new PeftError(code, message);
}

/** A wrong argument type, as Node reports it. */
export function typeError(message: string): TypeError {
  const e = new TypeError(message) as TypeError & { code: string };
  e.code = "ERR_INVALID_ARG_TYPE";
  return e;
}

/** A value outside what is allowed (sizes that overflow, an ISA the CPU lacks). */
export function rangeError(message: string): RangeError {
  const e = new RangeError(message) as RangeError & { code: string };
  e.code = "ERR_OUT_OF_RANGE";
  return e;
}

// ---- safe pieces of error messages, and argument checks every public entry point shares ----

/** `s` cut to `max` characters (with an ellipsis), so a message never carries a huge user string. */
export function clip(s: string, max = 100): string {
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

/**
 * What kind of value v is, for an error message ("null", "an array", a class name, "string", ...). Never
 * throws and never runs more user code than a constructor lookup (revoked proxies and throwing getters are
 * "an object").
 */
export function describe(v: unknown): string {
  if (v === null) return "null";
  try {
    if (Array.isArray(v)) return "an array";
    if (typeof v === "object") {
      const name: unknown = (v as object).constructor?.name;
      return typeof name === "string" && name !== "" ? clip(name, 64) : "an object";
    }
  } catch {
    return "an object";
  }
  return typeof v;
}

/**
 * A value for an error message: numbers, booleans and small bigints as written, strings quoted and clipped,
 * anything else by kind (describe). Never throws, never long.
 */
export function shownValue(v: unknown): string {
  switch (typeof v) {
    case "number":
    case "boolean":
      return String(v);
    case "bigint":
      return v > -(10n ** 30n) && v < 10n ** 30n ? `${String(v)}n` : "a bigint";
    case "string":
      return JSON.stringify(clip(v));
    case "undefined":
      return "undefined";
    case "symbol":
      return "a symbol";
    default:
      return describe(v);
  }
}

/** An optional options object: undefined is `{}`; null or a non-object is a TypeError naming the op. */
export function optionsArg<T extends object>(opts: T | undefined, op: string, name = "options"): Partial<T> {
  if (opts === undefined) return {};
  if (opts === null || typeof opts !== "object") throw typeError(`${op}: ${name} must be an object, got ${describe(opts)}`);
  return opts;
}

/**
 * An array argument read once into a fresh dense array: `.length` is read once and a length above `max`
 * is refused before any element is read (a sparse array of length 2^32-1 is not walked).
 */
export function arrayArg(v: unknown, op: string, name: string, max = 1_000_000): unknown[] {
  if (!isArray(v)) throw typeError(`${op}: ${name} must be an array, got ${describe(v)}`);
  const n = lengthOf(v, op, name);
  if (n > max) throw rangeError(`${op}: ${name} has ${n} entries; at most ${max} are accepted`);
  const out = new Array<unknown>(n);
  for (let i = 0; i < n; i++) out[i] = v[i];
  return out;
}

/** Array.isArray, false for a revoked proxy (where it throws). */
export function isArray(v: unknown): v is unknown[] {
  try {
    return Array.isArray(v);
  } catch {
    return false;
  }
}

/** An array's length, read once; a proxy reporting anything but a valid length is a TypeError. */
export function lengthOf(v: unknown[], op: string, name: string): number {
  const n: unknown = v.length;
  if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 0) throw typeError(`${op}: ${name} has an invalid length`);
  return n;
}

/** arrayArg whose entries must all be strings. */
export function stringsArg(v: unknown, op: string, name: string, max = 1_000_000): string[] {
  const list = arrayArg(v, op, name, max);
  for (let i = 0; i < list.length; i++)
    if (typeof list[i] !== "string") throw typeError(`${op}: ${name}[${i}] must be a string, got ${describe(list[i])}`);
  return list as string[];
}
