// What every adapter config shares: PEFT's base fields (PeftConfigMixin + PeftConfig), the key policy
// (known / known-but-unsupported / unknown), snake_case <-> camelCase, and writing PEFT's JSON text.
// Each method (lora/, ia3/) describes its own fields with a ConfigSpec; the logic lives here once.

import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { clip, isArray, peftError, shownValue, typeError } from "../errors.js";
import { pyJSONDumps } from "../pyjson.js";
import * as check from "./config-checks.js";

/** PEFT's TaskType values. */
export const TASK_TYPES = [
  "SEQ_CLS",
  "SEQ_2_SEQ_LM",
  "CAUSAL_LM",
  "TOKEN_CLS",
  "QUESTION_ANS",
  "FEATURE_EXTRACTION",
] as const;
export type TaskType = (typeof TASK_TYPES)[number];

/** The methods this package implements (values of `peft_type`). */
export type PeftType = "LORA" | "IA3" | "ADALORA"
  | "PROMPT_TUNING" | "P_TUNING" | "PREFIX_TUNING";

/** The file name PEFT reads and writes in an adapter directory. */
export const CONFIG_NAME = "adapter_config.json";

/**
 * The PEFT release whose adapter_config.json format (key set and value types) this package writes.
 * Written as `peft_version` for configs created here, so PEFT's version-gated loading logic sees the
 * format it is actually reading.
 */
export const PEFT_FORMAT_VERSION = "0.19.1";

/** "lora_alpha" -> "loraAlpha". */
export function snakeToCamel(key: string): string {
  return key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** "loraAlpha" -> "lora_alpha". */
export function camelToSnake(key: string): string {
  return key.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase());
}

/** A field this package implements: validated on the way in, written back by toJSON. */
export interface FieldSpec {
  /** PEFT's snake_case key. */
  key: string;
  /** Validates a value (named `name` in messages, as the caller spelled it) and returns what to store. */
  check: (value: unknown, name: string) => unknown;
  /** PEFT declares it `float`: written with Python's float repr (0 -> 0.0). */
  float?: boolean;
}

/**
 * A PEFT key this package does not implement. Python-falsy values (PEFT's defaults: false, null, {},
 * [], ...) are accepted and written back as read; anything else throws ERR_UNSUPPORTED.
 */
export interface UnsupportedSpec {
  key: string;
  /** Written by toJSON when the key was never given; what PEFT 0.19.1 writes by default. */
  default: unknown;
  /** A type check run first, for keys where PEFT rejects a wrong type outright. */
  checkType?: (value: unknown, name: string) => void;
}

export interface ConfigSpec {
  className: string;
  peftType: PeftType;
  fields: readonly FieldSpec[];
  unsupported: readonly UnsupportedSpec[];
}

/** Options every config accepts (PEFT's PeftConfigMixin + PeftConfig fields, camelCase). */
export interface PeftConfigOptions {
  taskType?: TaskType | null;
  inferenceMode?: boolean;
  baseModelNameOrPath?: string | null;
  revision?: string | null;
  autoMapping?: Record<string, unknown> | null;
  /** Defaults to PEFT_FORMAT_VERSION. */
  peftVersion?: string | null;
}

/** Fields of PEFT's PeftConfigMixin and PeftConfig, shared by every method. */
export const BASE_FIELDS: readonly FieldSpec[] = [
  { key: "task_type", check: checkTaskType },
  { key: "inference_mode", check: check.bool },
  { key: "base_model_name_or_path", check: check.optString },
  { key: "revision", check: check.optString },
  { key: "auto_mapping", check: check.optPlainObject },
  { key: "peft_version", check: check.optString },
];

function checkTaskType(value: unknown, name: string): TaskType | null {
  if (value === null || value === undefined) return null;
  if (typeof value !== "string") throw typeError(`${name} must be a string or null, got ${check.describe(value)}`);
  if (!(TASK_TYPES as readonly string[]).includes(value)) {
    throw peftError(
      "ERR_CONFIG",
      `Invalid task type: '${clip(value)}' (${name}). Must be one of the following task types: ${TASK_TYPES.join(", ")}.`,
    );
  }
  return value as TaskType;
}

// Unknown keys are warned about once per key name per process; repeating the warning for every config
// read (e.g. many adapters from a newer PEFT) would drown the useful first one.
const warnedUnknownKeys = new Set<string>();

function warnUnknownKey(className: string, key: string): void {
  if (warnedUnknownKeys.has(key)) return;
  warnedUnknownKeys.add(key);
  process.emitWarning(
    `${className}: unknown config key "${key}" is kept and written back unchanged but has no effect ` +
      `(written by a newer PEFT, or misspelled?)`,
    { code: "PEFT_UNKNOWN_CONFIG_KEY" },
  );
}

/** Python truthiness, which is what PEFT's `if config.x:` checks test. */
export function pyTruthy(v: unknown): boolean {
  if (v === null || v === undefined || v === false || v === 0 || v === "") return false;
  if (Array.isArray(v)) return v.length > 0;
  if (typeof v === "object") return Object.keys(v as object).length > 0;
  return true;
}

/**
 * Base of LoraConfig and IA3Config. Subclasses declare their fields as camelCase properties with PEFT's
 * defaults, then call `load()` from their constructor (after field initializers have run).
 */
export abstract class PeftConfigBase {
  taskType: TaskType | null = null;
  inferenceMode = false;
  baseModelNameOrPath: string | null = null;
  revision: string | null = null;
  autoMapping: Record<string, unknown> | null = null;
  peftVersion: string | null = PEFT_FORMAT_VERSION;

  /** Keys this package does not know, kept as read and written back by toJSON. */
  declare readonly extraKeys: Record<string, unknown>;
  /** Known-but-unsupported keys as read (always default-equivalent), written back by toJSON. */
  declare readonly unsupportedKeys: Record<string, unknown>;

  constructor() {
    // Not enumerable, so `new LoraConfig({ ...cfg, r: 16 })` copies exactly the option fields.
    hide(this, "extraKeys", {});
    hide(this, "unsupportedKeys", {});
  }

  protected abstract get spec(): ConfigSpec;

  get peftType(): PeftType {
    return this.spec.peftType;
  }

  private allFields(): readonly FieldSpec[] {
    return [...BASE_FIELDS, ...this.spec.fields];
  }

  /** Reads a config PEFT wrote (snake_case keys), as the class it is called on. */
  static fromJSON<T extends PeftConfigBase>(this: new () => T, obj: object): T {
    const c = new this();
    c.load(obj, "json");
    return c;
  }

  /** Reads `dir/adapter_config.json`, as the class it is called on. */
  static async fromPretrained<T extends PeftConfigBase>(this: new () => T, dir: string): Promise<T> {
    const c = new this();
    c.load(await readConfigFile(dir), "json");
    return c;
  }

  /**
   * Apply options (`from` = "options": camelCase keys) or a PEFT JSON object (`from` = "json": snake_case
   * keys), then check the rules that span several fields.
   */
  protected load(input: unknown, from: "options" | "json"): void {
    const { className, peftType } = this.spec;
    if (input === null || typeof input !== "object" || isArray(input)) {
      throw typeError(`${className}: expected ${from === "json" ? "a config object" : "an options object"}, got ${check.describe(input)}`);
    }
    const fields = this.allFields();
    const byKey = new Map(fields.map((f) => [f.key, f]));
    const unsupported = new Map(this.spec.unsupported.map((u) => [u.key, u]));
    const self = this as unknown as Record<string, unknown>;

    for (const [name, value] of Object.entries(input)) {
      if (value === undefined) continue;
      const deep = check.tooDeep(value, name);
      if (deep !== null) {
        throw peftError("ERR_CONFIG", `${className}: ${deep} is nested more than ${check.MAX_CONFIG_DEPTH} levels deep (or refers to itself)`);
      }
      const key = from === "json" ? name : camelToSnake(name);
      if (from === "options" && name.includes("_") && (byKey.has(name) || unsupported.has(name))) {
        throw peftError("ERR_CONFIG", `${className}: unknown option "${name}"; did you mean "${snakeToCamel(name)}"?`);
      }
      if (key === "peft_type") {
        if (value !== peftType) {
          throw peftError("ERR_CONFIG", `${className}: ${name} is ${shownValue(value)}, expected "${peftType}"`);
        }
        continue;
      }
      const field = byKey.get(key);
      if (field) {
        self[snakeToCamel(key)] = field.check(value, name);
        continue;
      }
      const u = unsupported.get(key);
      if (u) {
        u.checkType?.(value, name);
        if (pyTruthy(value)) {
          throw peftError(
            "ERR_UNSUPPORTED",
            `${className}: ${name} = ${shownValue(value)} is not supported by node-peft; ` +
              `only the PEFT default (${JSON.stringify(u.default)}) is accepted`,
          );
        }
        check.defineKey(this.unsupportedKeys, key, value);
        continue;
      }
      if (from === "json" && key === "runtime_config") {
        // PEFT drops it too: runtime settings are never meant to be stored in a file.
        continue;
      }
      warnUnknownKey(className, key);
      // Any string is a key here ("__proto__" and "constructor" included), kept as an own property.
      check.defineKey(this.extraKeys, key, value);
    }
    this.validate();
  }

  /** Cross-field rules (PEFT's __post_init__); throws PeftError ERR_CONFIG. */
  protected abstract validate(): void;

  /**
   * The object PEFT writes as adapter_config.json: snake_case keys, `peft_type`, every key PEFT 0.19.1
   * writes for this method, plus unknown keys kept from the input; keys sorted.
   * JSON.stringify orders integer-like keys first whatever their insertion order, so use
   * configToJSONString for the exact file text.
   */
  toJSON(): Record<string, unknown> {
    const self = this as unknown as Record<string, unknown>;
    // Fields are public and may have been changed since loading: a value too deep (or cyclic) to write
    // is a config error here, before any recursive copy could overflow the stack.
    const parts: [string, unknown][] = [
      ...Object.entries(this.extraKeys),
      ...Object.entries(this.unsupportedKeys),
      ...this.allFields().map((f): [string, unknown] => [f.key, self[snakeToCamel(f.key)]]),
    ];
    for (const [key, value] of parts) {
      const deep = check.tooDeep(value, key);
      if (deep !== null) {
        throw peftError(
          "ERR_CONFIG",
          `${this.spec.className}: ${deep} is nested more than ${check.MAX_CONFIG_DEPTH} levels deep (or refers to itself); cannot write it`,
        );
      }
    }
    const out: Record<string, unknown> = { ...this.extraKeys };
    for (const f of this.allFields()) out[f.key] = toPlain(self[snakeToCamel(f.key)]);
    for (const u of this.spec.unsupported) {
      out[u.key] = structuredClone(Object.hasOwn(this.unsupportedKeys, u.key) ? this.unsupportedKeys[u.key] : u.default);
    }
    out["peft_type"] = this.spec.peftType;
    return sortKeysDeep(out) as Record<string, unknown>;
  }

  /** Keys PEFT declares as float (written as 0.0 rather than 0). */
  floatKeys(): ReadonlySet<string> {
    return new Set(this.allFields().filter((f) => f.float).map((f) => f.key));
  }
}

/** Define a non-enumerable, writable own property (bookkeeping that is not an option). */
export function hide(obj: object, key: string, value: unknown): void {
  Object.defineProperty(obj, key, { value, writable: true, enumerable: false, configurable: true });
}

/** Copies arrays and objects so toJSON never hands out live internal state. */
function toPlain(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(toPlain);
  if (v !== null && typeof v === "object") {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toPlain(x)]));
  }
  return v;
}

function sortKeysDeep(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeysDeep);
  if (v !== null && typeof v === "object") {
    const keys = Object.keys(v).sort();
    return Object.fromEntries(keys.map((k) => [k, sortKeysDeep((v as Record<string, unknown>)[k])]));
  }
  return v;
}

/**
 * The adapter_config.json text: PEFT's json.dumps(indent=2, sort_keys=True) (Python's number and
 * escaping rules included), plus a final newline as in the project's reference fixture. PEFT itself
 * writes no final newline; JSON readers, PEFT's included, ignore it.
 */
export function configToJSONString(cfg: PeftConfigBase): string {
  if (!(cfg instanceof PeftConfigBase)) throw typeError(`configToJSONString: expected a LoraConfig or IA3Config, got ${check.describe(cfg)}`);
  return pyJSONDumps(cfg.toJSON(), { floatKeys: cfg.floatKeys() }) + "\n";
}

/** Read and parse `dir/adapter_config.json`, with errors that name the file. */
export async function readConfigFile(dir: string): Promise<Record<string, unknown>> {
  if (typeof dir !== "string") throw typeError(`dir must be a string, got ${check.describe(dir)}`);
  const file = join(dir, CONFIG_NAME);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "file not found" : (err as Error).message;
    throw peftError("ERR_CONFIG", `Can't find '${CONFIG_NAME}' at '${dir}': ${why}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw peftError("ERR_CONFIG", `${file} is not valid JSON: ${(err as Error).message}`);
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw peftError("ERR_CONFIG", `${file} must hold a JSON object, got ${check.describe(parsed)}`);
  }
  checkConfigDepth(parsed as Record<string, unknown>, file);
  return parsed as Record<string, unknown>;
}

/**
 * Refuses a parsed config file whose values nest more than MAX_CONFIG_DEPTH levels deep (ERR_CONFIG naming
 * the file and the key path): nothing downstream (validation, toJSON, writing it back) then recurses deeply.
 */
export function checkConfigDepth(obj: Record<string, unknown>, file: string): void {
  for (const [key, value] of Object.entries(obj)) {
    const deep = check.tooDeep(value, key);
    if (deep !== null) {
      throw peftError("ERR_CONFIG", `${file}: ${deep} is nested more than ${check.MAX_CONFIG_DEPTH} levels deep`);
    }
  }
}
