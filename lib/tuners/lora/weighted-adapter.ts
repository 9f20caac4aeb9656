// LoraModel.addWeightedAdapter (PEFT's add_weighted_adapter): a new adapter made from existing ones by one
// of PEFT's combination types. The checks, the new adapter's config and its injection live here; each
// layer's factors come from combine-layer.ts.
import { arrayArg, clip, describe, optionsArg, peftError, shownValue, stringsArg, typeError } from "../../errors.js";
import { takeRng } from "../../random.js";
import { LoraConfig } from "./config.js";
import { LoraLayer } from "./layer.js";
import { combineLayer, COMBINATION_TYPES, needsDensity, type CombinationType, type CombineSpec } from "./combine-layer.js";
import type { DrawRng, MajoritySignMethod } from "./merge-utils.js";
import type { LoraModel } from "./model.js";

const OP = "addWeightedAdapter";

export interface WeightedAdapterOptions {
  /** PEFT's combination types; "svd" by default. One source adapter always combines as "linear". */
  combinationType?: CombinationType;
  /** The new rank for the *_svd types (default: the largest rank of the sources). */
  svdRank?: number | null;
  /** Quantile q in [0, 1]: the new factors are clamped to ± their q-quantile (default: no clamp). */
  svdClamp?: number | null;
  /** Accepted for PEFT compatibility; the truncated factors are the same either way. */
  svdFullMatrices?: boolean;
  /** Fraction of entries kept by the pruning types (ties, dare_*, magnitude_prune*), in [0, 1]. */
  density?: number | null;
  /** How TIES elects each entry's sign: "total" (sign of the sum) or "frequency" (the more common sign). */
  majoritySignMethod?: MajoritySignMethod;
  /**
   * The SVD of a formed delta (ties_svd, dare_*_svd, magnitude_prune_svd): "randomized" (default)
   * subspace iteration, or "exact", O(m·n·min(m, n)). svd itself never forms the delta: it is always exact.
   */
  svdMethod?: "randomized" | "exact";
  /** Seed of DARE's drop and of the randomized SVD's test matrix (default: the global generator's streams). */
  seed?: number;
}

interface Plan {
  type: CombinationType;
  rank: number;
  targetModules: string | string[];
}

export function addWeightedAdapter(model: LoraModel, adapters: string[], weights: number[], adapterName: string, options?: WeightedAdapterOptions): void {
  const names = stringsArg(adapters, OP, "adapters");
  const ws = arrayArg(weights, OP, "weights").map((w, i) => {
    if (typeof w !== "number" || !Number.isFinite(w)) throw typeError(`${OP}: weights[${i}] must be a finite number, got ${shownValue(w)}`);
    return w;
  });
  if (names.length !== ws.length) throw peftError("ERR_CONFIG", `${OP}: got ${names.length} adapters and ${ws.length} weights; pass one weight per adapter`);
  if (typeof adapterName !== "string" || !adapterName || adapterName.includes("."))
    throw peftError("ERR_CONFIG", `${OP}: adapter name must be a non-empty string without ".", got ${shownValue(adapterName)}`);
  const opts = readOptions(options);
  if (Object.hasOwn(model.peftConfig, adapterName)) {
    // PEFT returns without a word; the warning says why nothing changed.
    process.emitWarning(`${OP}: an adapter named ${clip(adapterName)} already exists; nothing was added`, { code: "PEFT_ADAPTER_EXISTS" });
    return;
  }
  const plan = checkAdapters(model, names, opts);
  if (needsDensity(plan.type)) checkDensity(plan.type, opts.density);

  const first = model.peftConfig[names[0]];
  // The new adapter's scaling is alpha / r = 1: every route folds the sources' scalings into its factors.
  // rsLoRA off too, or the scaling would be √r (the fix PEFT made in #3449).
  const config = new LoraConfig({
    ...first, r: plan.rank, loraAlpha: plan.rank, targetModules: plan.targetModules, rankPattern: {}, alphaPattern: {}, useRslora: false,
  });
  config.registerCustomModule(first.customModules ?? new Map());
  const before = { targeted: model.targetedModuleNames, unmatched: model.unmatchedTargets };
  model.injectAdapter(config, adapterName);
  try {
    let warned = false;
    const spec: CombineSpec = {
      type: plan.type, adapters: names, weights: ws, rank: plan.rank, density: opts.density ?? 1,
      majoritySignMethod: opts.majoritySignMethod, svdClamp: opts.svdClamp, svdMethod: opts.svdMethod, draw: drawer(opts.seed),
      warnDensity: () => {
        if (!warned) process.emitWarning(`The density ${opts.density} is greater than or equal to 1, no pruning will be performed.`, { code: "PEFT_DENSITY" });
        warned = true;
      },
    };
    for (const [key, m] of model.model.namedModules()) {
      if (!(m instanceof LoraLayer) || !m.adapterNames.includes(adapterName)) continue;
      combineLayer(m, adapterName, spec, key || "the model");
      // PEFT's _freeze_adapter: the new adapter starts frozen (setAdapter makes it trainable).
      const { A, B } = m.loraFactors(adapterName);
      A.requiresGrad = B.requiresGrad = false;
    }
    for (const [, w] of model.savedModules())
      if (w.adapterNames.includes(adapterName)) for (const p of w.modulesToSave.get(adapterName).parameters()) p.requiresGrad = false;
  } catch (e) {
    removeAdapter(model, adapterName);
    model.targetedModuleNames = before.targeted;
    model.unmatchedTargets = before.unmatched;
    throw e;
  }
}

type Options = Required<Pick<WeightedAdapterOptions, "combinationType" | "majoritySignMethod" | "svdMethod">> & {
  svdRank: number | null;
  svdClamp: number | null;
  density: number | null;
  seed: number | undefined;
};

const OPTION_KEYS = ["combinationType", "svdRank", "svdClamp", "svdFullMatrices", "density", "majoritySignMethod", "svdMethod", "seed"];

function readOptions(options: WeightedAdapterOptions | undefined): Options {
  const o = optionsArg(options, OP);
  // A misspelt or snake_case key would otherwise be ignored and the defaults used in silence.
  for (const key of Object.keys(o))
    if (!OPTION_KEYS.includes(key)) throw peftError("ERR_CONFIG", `${OP}: unknown option ${shownValue(key)}; the options are ${OPTION_KEYS.join(", ")}`);
  const oneOf = <T extends string>(name: string, v: unknown, allowed: readonly T[], dflt: T): T => {
    if (v === undefined) return dflt;
    if (typeof v !== "string") throw typeError(`${OP}: ${name} must be a string, got ${describe(v)}`);
    if (!(allowed as readonly string[]).includes(v)) throw peftError("ERR_CONFIG", `${OP}: invalid ${name} ${shownValue(v)}; expected one of ${allowed.join(", ")}`);
    return v as T;
  };
  const optNumber = (name: string, v: unknown, ok: (x: number) => boolean, what: string): number | null => {
    if (v === undefined || v === null) return null;
    if (typeof v !== "number") throw typeError(`${OP}: ${name} must be a number, got ${describe(v)}`);
    if (!ok(v)) throw peftError("ERR_CONFIG", `${OP}: ${name} must be ${what}, got ${shownValue(v)}`);
    return v;
  };
  const combinationType = oneOf("combinationType", o.combinationType, COMBINATION_TYPES, "svd");
  const majoritySignMethod = oneOf("majoritySignMethod", o.majoritySignMethod, ["total", "frequency"] as const, "total");
  const svdMethod = oneOf("svdMethod", o.svdMethod, ["randomized", "exact"] as const, "randomized");
  const svdRank = optNumber("svdRank", o.svdRank, (x) => Number.isSafeInteger(x) && x > 0, "a positive integer");
  const svdClamp = optNumber("svdClamp", o.svdClamp, (x) => x >= 0 && x <= 1, "a quantile in [0, 1]");
  // PEFT's prune: "Density should be >= 0"; a density above 1 prunes nothing (with a warning).
  const density = optNumber("density", o.density, (x) => x >= 0 && x !== Infinity, "a finite number >= 0");
  if (o.svdFullMatrices !== undefined && typeof o.svdFullMatrices !== "boolean") throw typeError(`${OP}: svdFullMatrices must be a boolean, got ${describe(o.svdFullMatrices)}`);
  const seed = o.seed === undefined ? undefined : takeRng(o.seed, OP).seed;
  return { combinationType, majoritySignMethod, svdMethod, svdRank, svdClamp, density, seed };
}

function checkDensity(type: CombinationType, density: number | null): void {
  if (density === null) throw peftError("ERR_CONFIG", `${OP}: combinationType "${type}" prunes; pass a density in [0, 1]`);
  // DARE rescales the kept entries by 1 / density: at 0 that is 0 / 0 (PEFT returns NaN factors).
  if (density === 0 && type.startsWith("dare")) throw peftError("ERR_CONFIG", `${OP}: combinationType "${type}" needs density > 0 (DARE divides the kept entries by it)`);
}

/** PEFT's _check_add_weighted_adapter: the sources, the combination type, the new rank and target modules. */
function checkAdapters(model: LoraModel, names: string[], opts: Options): Plan {
  if (!names.length) throw peftError("ERR_CONFIG", "Found no adapter matching the names in []");
  for (const n of names) if (!Object.hasOwn(model.peftConfig, n)) throw peftError("ERR_CONFIG", `Adapter ${clip(n)} does not exist`);
  // Adapters with their own copies of one module cannot be merged there.
  let shared = 0;
  for (const [, w] of model.savedModules()) if (names.filter((n) => w.adapterNames.includes(n)).length > 1) shared++;
  if (shared)
    throw peftError("ERR_CONFIG", `Cannot add weighted adapters if they target the same module with modules_to_save, but found ${shared} such instance(s).`);
  const type: CombinationType = names.length === 1 ? "linear" : opts.combinationType;
  // The rank to allocate: a config's largest, rank_pattern included.
  const ranks = names.map((n) => Math.max(model.peftConfig[n].r, ...Object.values(model.peftConfig[n].rankPattern)));
  let rank: number;
  if (["linear", "ties", "dare_ties", "dare_linear", "magnitude_prune"].includes(type)) {
    if (new Set(ranks).size !== 1)
      throw peftError("ERR_CONFIG", "All adapters must have the same r value when using combination_type linear, ties, dare_ties or dare_linear.");
    rank = ranks[0];
  } else if (type === "cat") {
    rank = ranks.reduce((a, b) => a + b, 0);
  } else {
    rank = opts.svdRank ?? Math.max(...ranks);
  }
  return { type, rank, targetModules: unionOfTargets(model, names) };
}

/** Regex targets joined as alternatives, lists merged (first-seen order); a mix is an error, as in PEFT. */
function unionOfTargets(model: LoraModel, names: string[]): string | string[] {
  const targets = names.map((n) => resolvedTargets(model, n));
  const kinds = new Set(targets.map((t) => typeof t));
  if (kinds.size > 1)
    throw peftError("ERR_CONFIG", "all adapter configs should follow the same target modules type. Combining adapters with `target_modules` type being a mix of list/set and string is not supported.");
  if (typeof targets[0] === "string") return (targets as string[]).map((t) => `(${t})`).join("|");
  return [...new Set((targets as string[][]).flat())];
}

/** An adapter's target modules; "all-linear" as the modules it was put on (PEFT stores that set too). */
function resolvedTargets(model: LoraModel, name: string): string | string[] {
  const t = model.peftConfig[name].targetModules;
  if (typeof t === "string" && t.toLowerCase() === "all-linear")
    return [...model.model.namedModules()].filter(([, m]) => m instanceof LoraLayer && m.adapterNames.includes(name)).map(([k]) => k);
  return t ?? [];
}

/** (seed, stream) per draw: the explicit seed's streams 0, 1, …, or the global generator's next streams. */
function drawer(seed: number | undefined): DrawRng {
  let stream = 0;
  return () => (seed === undefined ? takeRng(undefined, OP) : takeRng(seed, OP, stream++));
}

/** Undoes a failed injection: the new adapter's weights, copies and config go. */
function removeAdapter(model: LoraModel, name: string): void {
  for (const l of model.loraLayers()) if (l.adapterNames.includes(name)) l.deleteAdapter(name);
  for (const [, w] of model.savedModules()) w.deleteAdapter(name, w.adapterNames.find((n) => n !== name) ?? null);
  delete model.peftConfig[name];
}
