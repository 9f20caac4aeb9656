// Which modules of a model an adapter config targets. Semantics follow PEFT's check_target_module_exists
// and inject_adapter (tuners_utils.py) so a config means the same thing here as in Python:
//   - exclude first: a string is a full-match regex, a list entry matches the exact name or a
//     "."-separated suffix; modules listed in modules_to_save (and everything under them) are never targets;
//   - a string target is a regex matched against the whole module path (re.fullmatch);
//   - a list entry matches the exact path (no layer filter, as in PEFT) or a "."-suffix of it, and
//     suffix matches are then filtered by layers_to_transform / layers_pattern;
//   - "all-linear" targets every Linear/Conv1D module except the output layer.
// Extension (Megatron-Bridge style): a list entry containing "*" is a glob over the whole path, "*"
// matching any characters including dots ("*.layers.0.*.linear_qkv"); such entries are layer-filtered
// like suffix matches.
// The module tree plugs in through MatchableModel / MatchOptions, so this file knows no module classes.

import { arrayArg, clip, describe, isArray, peftError, shownValue, stringsArg, typeError } from "./errors.js";
import { pyRegex, UnsafeRegexError } from "./pyregex.js";

/** PEFT's INCLUDE_LINEAR_LAYERS_SHORTHAND, compared case-insensitively as PEFT does. */
export const ALL_LINEAR = "all-linear";
/** Classifier heads PEFT leaves out of "all-linear" for SEQ_CLS models without output embeddings. */
export const SEQ_CLS_HEAD_NAMES: readonly string[] = ["score", "classifier"];

/** The config fields matching reads (LoraConfig and IA3Config both fit). */
export interface TargetConfig {
  targetModules?: string | readonly string[] | null;
  excludeModules?: string | readonly string[] | null;
  modulesToSave?: readonly string[] | null;
  layersToTransform?: number | readonly number[] | null;
  layersPattern?: string | readonly string[] | null;
  taskType?: string | null;
}

/** What a model must offer to be matched: its modules by dotted path ("" for the root). */
export interface MatchableModel {
  namedModules(): Iterable<[string, unknown]>;
  /** The output head (e.g. lm_head), never targeted by "all-linear". */
  getOutputEmbeddings?(): unknown;
}

export interface MatchOptions {
  /** Linear-like modules (Linear, Conv1D, Linear8bitLt, or adapter layers wrapping one): "all-linear". */
  isLinearLike(m: unknown): boolean;
  /** Module types the method can adapt; a target of any other type is ERR_UNSUPPORTED. */
  isSupported(m: unknown): boolean;
  /** A type name for messages. */
  typeName(m: unknown): string;
  /** Adapter layers already in the model: their internals (lora_A, base_layer, ...) are never targets. */
  isTunerLayer?(m: unknown): boolean;
  /** Listed in the ERR_UNSUPPORTED message. */
  supportedTypeNames?: readonly string[];
  /** Emit the process warnings about unmatched targets and unused excludes (default true). */
  warn?: boolean;
}

export interface MatchReport {
  /** Module paths to adapt, in model order. */
  targeted: string[];
  /** List entries of targetModules that led to no targeted module. */
  unmatchedTargets: string[];
  /** Module paths left out by excludeModules, modulesToSave or because they sit inside an adapter layer. */
  excluded: string[];
}

/** How one module path relates to a config: left out, not matched, or matched by these target entries. */
export type KeyMatch = { kind: "excluded" } | { kind: "unmatched" } | { kind: "matched"; entries: string[] };

const EXCLUDED: KeyMatch = { kind: "excluded" };
const UNMATCHED: KeyMatch = { kind: "unmatched" };

/**
 * Compile a Python regex from a config. A pattern JS cannot compile, or one the screen in pyregex.ts
 * refuses because it could take exponential (or high polynomial) time, is a config error naming its key;
 * a refused pattern is never run.
 */
function compile(src: string, mode: "full" | "match", what: string): RegExp {
  try {
    return pyRegex(src, mode);
  } catch (err) {
    if (err instanceof UnsafeRegexError) throw peftError("ERR_CONFIG", `${what}: ${err.message}`);
    throw peftError("ERR_CONFIG", `${what}: invalid regular expression ${shownValue(src)}: ${(err as Error).message}`);
  }
}

/**
 * Megatron-Bridge's wildcard_match: the whole path must match, "*" standing for any characters.
 * Matched without a RegExp (a glob with many stars would be a regex with many overlapping `.*`): greedy
 * with a return to the last star only, at most O(pattern × key) steps.
 */
export function wildcardMatch(pattern: string, key: string): boolean {
  let p = 0, k = 0, star = -1, resume = 0;
  while (k < key.length) {
    if (p < pattern.length && pattern[p] === "*") {
      star = p++;
      resume = k;
    } else if (p < pattern.length && pattern[p] === key[k]) {
      p++;
      k++;
    } else if (star >= 0) {
      p = star + 1;
      k = ++resume;
    } else {
      return false;
    }
  }
  while (p < pattern.length && pattern[p] === "*") p++;
  return p === pattern.length;
}

/** A list entry against a path: exact name, "."-suffix, or (with "*") a glob over the whole path. */
function entryMatches(entry: string, key: string): boolean {
  return key === entry || key.endsWith("." + entry) || (entry.includes("*") && wildcardMatch(entry, key));
}

function isExcluded(config: TargetConfig, key: string): boolean {
  const ex = config.excludeModules;
  if (typeof ex === "string") {
    // PEFT tests `if config.exclude_modules:`, so "" excludes nothing.
    if (ex !== "" && compile(ex, "full", "excludeModules").test(key)) return true;
  } else if (ex && ex.some((e) => entryMatches(e, key))) {
    return true;
  }
  // PEFT never puts an adapter on (or inside) a module it also saves in full: the two would conflict.
  // The name is spliced into the regex unescaped, exactly as PEFT does.
  for (const m of config.modulesToSave ?? []) {
    if (compile(`(^|.*\\.)${m}($|\\..*)`, "match", "modulesToSave").test(key)) return true;
  }
  return false;
}

/**
 * PEFT's layer filter for suffix matches: the layer index is read from the path with
 * `.*\.{layers_pattern}\.(\d+)\.` (first pattern that matches), or `.*\.[^.]*\.(\d+)\.` when
 * layers_pattern is unset or empty. No index found means no match.
 */
function passesLayerFilter(config: TargetConfig, key: string): boolean {
  const want = config.layersToTransform;
  if (want === null || want === undefined) return true;
  if (typeof want !== "number" && want.length === 0) return true;
  const pat = config.layersPattern;
  // A named group: a layers_pattern with its own groups must not shift which group holds the index.
  const idx = "(?<peftLayerIndex>\\d+)";
  let m: RegExpExecArray | null = null;
  if (pat === null || pat === undefined || pat.length === 0) {
    m = compile(`.*\\.[^.]*\\.${idx}\\.`, "match", "layersPattern").exec(key);
  } else {
    for (const p of typeof pat === "string" ? [pat] : pat) {
      m = compile(`.*\\.${p}\\.${idx}\\.`, "match", "layersPattern").exec(key);
      if (m) break;
    }
  }
  if (!m) return false;
  const layer = Number.parseInt(m.groups!["peftLayerIndex"]!, 10);
  return typeof want === "number" ? layer === want : want.includes(layer);
}

/** The full PEFT decision for one module path, with the target entries that matched it. */
export function matchModuleKey(config: TargetConfig, key: string): KeyMatch {
  if (isExcluded(config, key)) return EXCLUDED;
  const targets = config.targetModules;
  if (targets === null || targets === undefined) return UNMATCHED;
  if (typeof targets === "string") {
    return compile(targets, "full", "targetModules").test(key) ? { kind: "matched", entries: [targets] } : UNMATCHED;
  }
  // An exact name is taken as is; PEFT applies the layer filter only to suffix matches.
  const entries = targets.includes(key) ? [key] : [];
  const viaSuffix = targets.filter((t) => t !== key && entryMatches(t, key));
  const all = viaSuffix.length > 0 && passesLayerFilter(config, key) ? entries.concat(viaSuffix) : entries;
  return all.length > 0 ? { kind: "matched", entries: all } : UNMATCHED;
}

/** PEFT's check_target_module_exists: whether the module at `key` gets an adapter. */
export function checkTargetModuleExists(config: TargetConfig, key: string): boolean {
  const c = readTargetConfig(config, "checkTargetModuleExists");
  if (typeof key !== "string") throw typeError(`checkTargetModuleExists: key must be a string, got ${describe(key)}`);
  return matchModuleKey(c, key).kind === "matched";
}

function textOrList(v: unknown, op: string, name: string): string | string[] | null {
  if (v === null || v === undefined) return null;
  if (typeof v === "string") return v;
  if (!isArray(v)) throw typeError(`${op}: ${name} must be a string, an array of strings or null, got ${describe(v)}`);
  return stringsArg(v, op, name);
}

/**
 * The fields matching reads, each read once from a caller's config (a LoraConfig, an IA3Config or a plain
 * object) and type-checked, into a plain object of fresh arrays.
 */
function readTargetConfig(config: unknown, op: string): TargetConfig {
  if (config === null || typeof config !== "object") throw typeError(`${op}: config must be an object, got ${describe(config)}`);
  const c = config as Record<keyof TargetConfig, unknown>;
  const layers = c.layersToTransform;
  let layersToTransform: number | number[] | null = null;
  if (typeof layers === "number") layersToTransform = layers;
  else if (layers !== null && layers !== undefined) {
    if (!isArray(layers)) throw typeError(`${op}: layersToTransform must be a number, an array of numbers or null, got ${describe(layers)}`);
    const list = arrayArg(layers, op, "layersToTransform");
    list.forEach((n, i) => {
      if (typeof n !== "number") throw typeError(`${op}: layersToTransform[${i}] must be a number, got ${describe(n)}`);
    });
    layersToTransform = list as number[];
  }
  const modulesToSave = c.modulesToSave;
  const taskType = c.taskType;
  if (taskType !== null && taskType !== undefined && typeof taskType !== "string")
    throw typeError(`${op}: taskType must be a string or null, got ${describe(taskType)}`);
  return {
    targetModules: textOrList(c.targetModules, op, "targetModules"),
    excludeModules: textOrList(c.excludeModules, op, "excludeModules"),
    modulesToSave: modulesToSave === null || modulesToSave === undefined ? null : stringsArg(modulesToSave, op, "modulesToSave"),
    layersToTransform,
    layersPattern: textOrList(c.layersPattern, op, "layersPattern"),
    taskType: taskType ?? null,
  };
}

/** The options of findTargetModules, checked: the three callbacks it needs must be functions. */
function readMatchOptions(opts: unknown): MatchOptions {
  const op = "findTargetModules";
  if (opts === null || typeof opts !== "object") throw typeError(`${op}: options must be an object, got ${describe(opts)}`);
  const o = opts as Record<keyof MatchOptions, unknown>;
  for (const k of ["isLinearLike", "isSupported", "typeName"] as const)
    if (typeof o[k] !== "function") throw typeError(`${op}: options.${k} must be a function, got ${describe(o[k])}`);
  if (o.isTunerLayer !== undefined && typeof o.isTunerLayer !== "function")
    throw typeError(`${op}: options.isTunerLayer must be a function, got ${describe(o.isTunerLayer)}`);
  const supported = o.supportedTypeNames;
  return {
    isLinearLike: o.isLinearLike as MatchOptions["isLinearLike"],
    isSupported: o.isSupported as MatchOptions["isSupported"],
    typeName: o.typeName as MatchOptions["typeName"],
    isTunerLayer: o.isTunerLayer as MatchOptions["isTunerLayer"],
    supportedTypeNames: supported === undefined || supported === null ? undefined : stringsArg(supported, op, "options.supportedTypeNames"),
    warn: Boolean(o.warn ?? true),
  };
}

/** A model's modules, read once: namedModules() must give [path, module] pairs with string paths. */
function readModules(model: unknown): [string, unknown][] {
  const op = "findTargetModules";
  if (model === null || typeof model !== "object" || typeof (model as MatchableModel).namedModules !== "function")
    throw typeError(`${op}: model must be a Module (an object with namedModules()), got ${describe(model)}`);
  const it: unknown = (model as MatchableModel).namedModules();
  if (it === null || typeof it !== "object" || typeof (it as Iterable<unknown>)[Symbol.iterator] !== "function")
    throw typeError(`${op}: model.namedModules() must return an iterable, got ${describe(it)}`);
  const out: [string, unknown][] = [];
  for (const e of it as Iterable<unknown>) {
    if (!isArray(e) || typeof e[0] !== "string") throw typeError(`${op}: model.namedModules() must yield [path, module] pairs with string paths`);
    out.push([e[0], e[1]]);
  }
  return out;
}

/** A type name from the caller's typeName callback, safe for a message. */
function typeNameOf(opts: MatchOptions, m: unknown): string {
  const n: unknown = opts.typeName(m);
  return typeof n === "string" ? clip(n, 100) : shownValue(n);
}

/**
 * IA3: whether a targeted module is a feed-forward one (scaled on its input). A string is a full-match
 * regex; list entries are plain suffixes of the path (PEFT uses key.endswith(entry) here, without the
 * "." boundary that target matching has); "*" entries are globs.
 */
export function isFeedforwardModule(
  config: { feedforwardModules?: string | readonly string[] | null },
  key: string,
): boolean {
  const ff = config.feedforwardModules;
  if (ff === null || ff === undefined) return false;
  if (typeof ff === "string") return compile(ff, "full", "feedforwardModules").test(key);
  return ff.some((e) => key.endsWith(e) || (e.includes("*") && wildcardMatch(e, key)));
}

/**
 * PEFT's get_pattern_key for rank_pattern / alpha_pattern: the first key (in insertion order) that
 * matches the end of the path as `(.*\.)?(key)$`, or null when none does.
 */
export function getPatternKey(patternKeys: Iterable<string>, key: string): string | null {
  for (const k of patternKeys) {
    if (compile(`(.*\\.)?(${k})$`, "match", "pattern key").test(key)) return k;
  }
  return null;
}

function lastSegment(path: string): string {
  return path.slice(path.lastIndexOf(".") + 1);
}

/** "all-linear": every linear-like module but the output layer and adapter internals, in model order. */
function allLinearNames(
  model: MatchableModel,
  modules: readonly [string, unknown][],
  config: TargetConfig,
  opts: MatchOptions,
  insideTuner: (key: string) => boolean,
): string[] {
  const names = modules.filter(([n, m]) => n !== "" && !insideTuner(n) && opts.isLinearLike(m)).map(([n]) => n);
  let drop: Set<string>;
  const head = model.getOutputEmbeddings?.();
  if (head !== null && head !== undefined) {
    drop = new Set(modules.filter(([, m]) => m === head).map(([n]) => n));
  } else {
    drop = new Set(names.filter((n) => lastSegment(n) === "lm_head"));
    if (drop.size === 0 && config.taskType === "SEQ_CLS") {
      const top = SEQ_CLS_HEAD_NAMES.find((h) => modules.some(([n]) => n === h));
      if (top !== undefined) drop.add(top);
    }
  }
  return names.filter((n) => !drop.has(n));
}

function levenshtein(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}

/** Up to five distinct names of adaptable modules, closest to what was asked for first. */
function candidateNames(
  modules: readonly [string, unknown][],
  targets: string | readonly string[],
  opts: MatchOptions,
): string[] {
  const leaves = [...new Set(modules.filter(([n, m]) => n !== "" && opts.isSupported(m)).map(([n]) => lastSegment(n)))];
  // Bounded: this only words an error message, and the target list and names come from a config file.
  const wanted = (typeof targets === "string" ? [targets] : targets).slice(0, 64).map((t) => lastSegment(t).slice(0, 256));
  const dist = (leaf: string) => wanted.reduce((d, w) => Math.min(d, levenshtein(w, leaf)), Infinity);
  return leaves
    .map((leaf, i) => ({ leaf, i, d: dist(leaf) }))
    .sort((x, y) => x.d - y.d || x.i - y.i)
    .slice(0, 5)
    .map((c) => c.leaf);
}

/** Python's str() of the value, as PEFT's messages show it. */
function pyStr(v: string | number | readonly (string | number)[]): string {
  if (typeof v === "string" || typeof v === "number") return clip(String(v));
  return "[" + v.slice(0, 20).map((x) => (typeof x === "string" ? `'${clip(x)}'` : String(x))).join(", ") + (v.length > 20 ? ", ...]" : "]");
}

function layerNotes(config: TargetConfig): string {
  let s = "";
  if (config.layersToTransform !== null && config.layersToTransform !== undefined) {
    s += ` Note: You specified 'layers_to_transform': ${pyStr(config.layersToTransform)}.`;
  }
  if (config.layersPattern !== null && config.layersPattern !== undefined) {
    s += ` You also specified 'layers_pattern': ${pyStr(config.layersPattern)}.`;
  }
  return s;
}

function candidatesNote(modules: readonly [string, unknown][], targets: string | readonly string[], opts: MatchOptions): string {
  const c = candidateNames(modules, targets, opts);
  return c.length > 0 ? ` Candidate modules: ${c.map((n) => clip(n)).join(", ")}.` : " The model has no module of a type that can be adapted.";
}

/**
 * Match a whole model: the module paths to adapt, the list entries that matched nothing (also reported
 * with one process warning), and what was excluded. Throws PeftError ERR_TARGET_NOT_FOUND when nothing
 * is targeted, ERR_UNSUPPORTED when a target's module type cannot be adapted, ERR_CONFIG when the config
 * has no targetModules (resolve defaults with mappings.ts first).
 */
export function findTargetModules(model: MatchableModel, config: TargetConfig, options: MatchOptions): MatchReport {
  const opts = readMatchOptions(options);
  config = readTargetConfig(config, "findTargetModules");
  const targets = config.targetModules;
  if (targets === null || targets === undefined) {
    throw peftError(
      "ERR_CONFIG",
      "targetModules is not set: pass targetModules, or a modelType with known defaults (see defaultTargetModules)",
    );
  }
  const modules = readModules(model);
  const tunerPrefixes = opts.isTunerLayer
    ? modules.filter(([n, m]) => n !== "" && opts.isTunerLayer!(m)).map(([n]) => n + ".")
    : [];
  const insideTuner = (key: string) => tunerPrefixes.some((p) => key.startsWith(p));

  const allLinear = typeof targets === "string" && targets.toLowerCase() === ALL_LINEAR;
  const effective: TargetConfig = allLinear
    ? { ...pick(config), targetModules: allLinearNames(model, modules, config, opts, insideTuner) }
    : config;
  if (allLinear && (effective.targetModules as string[]).length === 0) {
    throw peftError(
      "ERR_TARGET_NOT_FOUND",
      `Target modules ${clip(targets as string)} not found in the base model: it has no Linear or Conv1D module besides the output layer.`,
    );
  }

  const targeted: string[] = [];
  const excluded: string[] = [];
  const hit = new Set<string>();
  let unmatchedCount = 0;
  for (const [key, m] of modules) {
    if (key === "") continue;
    if (insideTuner(key)) {
      excluded.push(key);
      continue;
    }
    const r = matchModuleKey(effective, key);
    if (r.kind === "excluded") excluded.push(key);
    else if (r.kind === "unmatched") unmatchedCount++;
    else {
      if (!opts.isSupported(m)) {
        const supported = opts.supportedTypeNames?.length
          ? ` Currently, only the following module types are supported: ${clip(opts.supportedTypeNames.join(", "), 500)}.`
          : "";
        throw peftError(
          "ERR_UNSUPPORTED",
          `Target module ${clip(key)} (${typeNameOf(opts, m)}) is not supported.${supported}`,
        );
      }
      targeted.push(key);
      for (const e of r.entries) hit.add(e);
    }
  }

  if (targeted.length === 0) {
    const outside = modules.filter(([n]) => !insideTuner(n));
    if (excluded.length > 0 && unmatchedCount === 0) {
      throw peftError(
        "ERR_TARGET_NOT_FOUND",
        "All modules were excluded. This is likely unintended. " +
          "Check your `target_modules`, `exclude_modules` and `modules_to_save` configuration.",
      );
    }
    if (typeof targets !== "string" && targets.length === 0) {
      throw peftError("ERR_CONFIG", "targetModules is an empty list: no module can be targeted.");
    }
    if (excluded.length === 0) {
      throw peftError(
        "ERR_TARGET_NOT_FOUND",
        `Target modules ${formatTargets(targets)} not found in the base model. ` +
          "Please check the target modules and try again." +
          layerNotes(config) +
          candidatesNote(outside, targets, opts),
      );
    }
    throw peftError(
      "ERR_TARGET_NOT_FOUND",
      "No modules were targeted for adaptation. " +
        "This might be caused by a combination of mismatched target modules and excluded modules. " +
        "Please check your `target_modules` and `exclude_modules` configuration. You may also have " +
        "only targeted modules that are marked to be saved (`modules_to_save`)." +
        layerNotes(config) +
        candidatesNote(outside, targets, opts),
    );
  }

  const unmatchedTargets = typeof targets === "string" ? [] : targets.filter((t) => !hit.has(t));
  const warn = opts.warn ?? true;
  if (warn && unmatchedTargets.length > 0) {
    process.emitWarning(
      `Target modules ${formatTargets(unmatchedTargets)} matched no module of the base model ` +
        `(${targeted.length} module(s) were targeted by the other entries).`,
      { code: "PEFT_UNMATCHED_TARGET_MODULES" },
    );
  }
  const ex = config.excludeModules;
  if (warn && ex && ex.length > 0 && excluded.length === 0) {
    process.emitWarning(
      `You have passed excludeModules=${formatTargets(ex)} but no modules were excluded. ` +
        "Please check that excludeModules was set correctly.",
      { code: "PEFT_UNUSED_EXCLUDE_MODULES" },
    );
  }
  return { targeted, unmatchedTargets, excluded };
}

/** PEFT prints target_modules as a Python set: {'q_proj', 'v_proj'}. */
function formatTargets(t: string | readonly string[]): string {
  return typeof t === "string" ? clip(t) : "{" + t.slice(0, 20).map((x) => `'${clip(x)}'`).join(", ") + (t.length > 20 ? ", ...}" : "}");
}

/** The fields matching reads, copied off a config object (class getters and methods left behind). */
function pick(c: TargetConfig): TargetConfig {
  return {
    targetModules: c.targetModules ?? null,
    excludeModules: c.excludeModules ?? null,
    modulesToSave: c.modulesToSave ?? null,
    layersToTransform: c.layersToTransform ?? null,
    layersPattern: c.layersPattern ?? null,
    taskType: c.taskType ?? null,
  };
}
