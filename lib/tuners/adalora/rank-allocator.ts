// PEFT's RankAllocator (tuners/adalora/layer.py): after each optimizer step it smooths every adapter entry's
// sensitivity |p·∇p| (importance, EMA beta1) and its uncertainty (EMA beta2 of |ipt − importance|), lowers the
// total rank budget on a cubic schedule between tinit and total_step − tfinal, and at allocation steps zeroes the
// singular values (E) of the least important triplets so that only `budget` stay. The elementwise work runs in the
// native kernels; only the per-triplet scores (Σ ranks numbers) are ranked in JavaScript.
import { Tensor } from "../../tensor.js";
import { ew, reduceRaw } from "../../functional/raw.js";
import { describe, isArray, peftError, shownValue, typeError } from "../../errors.js";
import { Module } from "../../nn/index.js";
import { AdaLoraConfig, type AdaLoraRankPattern } from "./config.js";
import { AdaLoraLayer } from "./layer.js";

/** The allocator's smoothed statistics of one adapter tensor. */
interface Stats {
  expAvgIpt: Tensor;
  expAvgUnc: Tensor;
}

const FACTORS = ["lora_A", "lora_B", "lora_E"] as const;

/** The model's AdaLoRA layers holding `adapterName`, by path, sorted as PEFT sorts its name set. */
export function adaLoraLayers(model: Module, adapterName: string): [string, AdaLoraLayer][] {
  const out: [string, AdaLoraLayer][] = [];
  for (const [path, m] of model.namedModules()) if (m instanceof AdaLoraLayer && m.adapterNames.includes(adapterName)) out.push([path, m]);
  return out.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/** The rank pattern key of a layer: its path and lora_E (the adapter name left out, as PEFT saves it). */
export function rankPatternKey(path: string): string {
  return path ? `${path}.lora_E` : "lora_E";
}

/** A layer's mask in a rank pattern, under its saved key or PEFT's in-memory one (adapter name included). */
export function maskFor(pattern: AdaLoraRankPattern, path: string, adapterName: string): boolean[] | undefined {
  const key = rankPatternKey(path);
  if (Object.hasOwn(pattern, key)) return pattern[key];
  const full = `${key}.${adapterName}`;
  return Object.hasOwn(pattern, full) ? pattern[full] : undefined;
}

/** A training step number (a non-negative integer). */
function stepArg(step: unknown, op: string): number {
  if (typeof step !== "number" || !Number.isSafeInteger(step) || step < 0) throw typeError(`${op}: the step must be an integer >= 0, got ${shownValue(step)}`);
  return step;
}

function tensorOf(layer: AdaLoraLayer, which: (typeof FACTORS)[number], adapterName: string): Tensor {
  const { A, B, E } = layer.svdFactors(adapterName);
  return which === "lora_A" ? A : which === "lora_B" ? B : E;
}

export class RankAllocator {
  readonly config: AdaLoraConfig;
  readonly adapterName: string;
  readonly #model: Module;
  /** The total rank at the start (Σ of the layers' ranks) and at the end (targetR per layer). */
  readonly initBgt: number;
  readonly targetBgt: number;
  #stats = new Map<string, Stats>();

  constructor(model: Module, config: AdaLoraConfig, adapterName: string) {
    if (!(model instanceof Module)) throw typeError(`RankAllocator: model must be a Module, got ${describe(model)}`);
    if (!(config instanceof AdaLoraConfig)) throw typeError(`RankAllocator: config must be an AdaLoraConfig, got ${describe(config)}`);
    if (typeof adapterName !== "string") throw typeError(`RankAllocator: adapterName must be a string, got ${describe(adapterName)}`);
    this.#model = model;
    this.config = config;
    this.adapterName = adapterName;
    for (const [k, b] of [["beta1", config.beta1], ["beta2", config.beta2]] as const)
      if (!(b > 0 && b < 1)) throw peftError("ERR_CONFIG", `RankAllocator: ${k} must be in (0, 1), got ${b}`);
    const layers = adaLoraLayers(model, adapterName);
    this.initBgt = layers.reduce((s, [, l]) => s + l.svdFactors(adapterName).A.shape[0], 0);
    this.targetBgt = config.targetR * layers.length;
  }

  /** Forgets the smoothed statistics (PEFT's reset_ipt, after the final allocation). */
  resetIpt(): void {
    for (const s of this.#stats.values()) s.expAvgIpt.dispose(), s.expAvgUnc.dispose();
    this.#stats.clear();
  }

  /**
   * The total rank allowed at `step` and whether the E entries are masked to it then: the full budget up to tinit,
   * then budget = ⌊(init − target)·(1 − (step − tinit)/(total − tfinal − tinit))³ + target⌋ (masking every deltaT
   * steps), and the target (masking every step) after total − tfinal.
   */
  budgetSchedule(step: number): { budget: number; maskInd: boolean } {
    stepArg(step, "budgetSchedule");
    const { tinit, tfinal, deltaT } = this.config;
    const total = this.config.totalStep!;
    if (step <= tinit) return { budget: this.initBgt, maskInd: false };
    if (step > total - tfinal) return { budget: this.targetBgt, maskInd: true };
    const mulCoeff = 1 - (step - tinit) / (total - tfinal - tinit);
    // Python's int() truncates toward zero.
    const budget = Math.trunc((this.initBgt - this.targetBgt) * mulCoeff ** 3 + this.targetBgt);
    return { budget, maskInd: step % deltaT === 0 };
  }

  /** ipt = |p ⊙ ∇p| for the adapter's A, B and E in every layer, smoothed into the EMAs. */
  updateIpt(): void {
    const { beta1, beta2 } = this.config;
    for (const [path, layer] of adaLoraLayers(this.#model, this.adapterName)) {
      for (const which of FACTORS) {
        const p = tensorOf(layer, which, this.adapterName);
        const key = `${path}.${which}`;
        if (!p.grad)
          throw peftError("ERR_STATE", `updateAndAllocate: ${key} (adapter ${shownValue(this.adapterName)}) has no gradient; call it after backward and before zeroGrad`);
        let s = this.#stats.get(key);
        if (!s || s.expAvgIpt.shape.join() !== p.shape.join()) {
          if (s) s.expAvgIpt.dispose(), s.expAvgUnc.dispose();
          s = { expAvgIpt: Tensor.zeros(p.shape), expAvgUnc: Tensor.zeros(p.shape) };
          this.#stats.set(key, s);
        }
        using prod = ew("mul", [p, p.grad], "f32");
        using ipt = ew("abs", [prod], "f32");
        const avg = ew("axpby", [s.expAvgIpt, ipt], "f32", [beta1, 1 - beta1]);
        using diff = ew("sub", [ipt, avg], "f32");
        using dev = ew("abs", [diff], "f32");
        const unc = ew("axpby", [s.expAvgUnc, dev], "f32", [beta2, 1 - beta2]);
        s.expAvgIpt.dispose(), s.expAvgUnc.dispose();
        s.expAvgIpt = avg;
        s.expAvgUnc = unc;
      }
    }
  }

  /** A tensor's score per triplet: the mean over the other axis of importance ⊙ uncertainty. */
  #scores(key: string, dim: number | null): Float32Array {
    const s = this.#stats.get(key);
    if (!s) throw peftError("ERR_STATE", `updateAndAllocate: no importance recorded for ${key} yet (the first allocation must follow an update)`);
    using entry = ew("mul", [s.expAvgIpt, s.expAvgUnc], "f32");
    if (dim === null) return entry.toFloat32Array();
    const { values } = reduceRaw("mean", entry, [dim], false, "f32");
    using _ = values;
    return values.toFloat32Array();
  }

  /**
   * Zeroes the E entries of all but the `budget` most important triplets (score = E's + mean A row's + mean B
   * column's; masked: score <= the (initBgt − budget)-th smallest, ties included, as PEFT's kthvalue threshold) and
   * returns which triplets each layer kept.
   */
  maskToBudget(budget: number): AdaLoraRankPattern {
    if (typeof budget !== "number" || !Number.isSafeInteger(budget) || budget < 0) throw typeError(`maskToBudget: budget must be an integer >= 0, got ${shownValue(budget)}`);
    const layers = adaLoraLayers(this.#model, this.adapterName);
    const triplets = layers.map(([path]) => {
      const a = this.#scores(`${path}.lora_A`, 1), b = this.#scores(`${path}.lora_B`, 0), e = this.#scores(`${path}.lora_E`, null);
      // f32 sums in PEFT's order: E + (A + B).
      return Float32Array.from(e, (v, i) => Math.fround(v + Math.fround(a[i] + b[i])));
    });
    const k = this.initBgt - budget;
    let threshold = -Infinity;
    if (k > 0) {
      const all = Float32Array.from(triplets.flatMap((t) => [...t])).sort();
      if (k > all.length) throw peftError("ERR_STATE", `updateAndAllocate: the budget ${budget} leaves ${k} triplets to mask but the layers hold ${all.length}`);
      threshold = all[k - 1];
    }
    const pattern: AdaLoraRankPattern = {};
    layers.forEach(([path, layer], i) => {
      const keep = Array.from(triplets[i], (s) => !(s <= threshold));
      this.#applyMask(layer, keep);
      pattern[rankPatternKey(path)] = keep;
    });
    return pattern;
  }

  #applyMask(layer: AdaLoraLayer, keep: readonly boolean[]): void {
    const { E } = layer.svdFactors(this.adapterName);
    const e = E.toFloat32Array();
    if (keep.every((k, i) => k || e[i] === 0)) return;
    keep.forEach((k, i) => k || (e[i] = 0));
    using masked = Tensor.fromArray(e, E.shape);
    E.copyFrom(masked);
  }

  /** Updates the statistics (before total − tfinal) and masks to the step's budget when due (or `forceMask`). */
  updateAndAllocate(step: number, forceMask = false): { budget: number; rankPattern: AdaLoraRankPattern | null } {
    stepArg(step, "updateAndAllocate");
    if (step < this.config.totalStep! - this.config.tfinal) this.updateIpt();
    const { budget, maskInd } = this.budgetSchedule(step);
    return { budget, rankPattern: maskInd || forceMask ? this.maskToBudget(budget) : null };
  }

  /** Zeroes the E entries a rank pattern drops (keys with or without the adapter name). */
  maskUsingRankPattern(pattern: AdaLoraRankPattern): void {
    if (pattern === null || typeof pattern !== "object" || isArray(pattern)) throw typeError(`maskUsingRankPattern: expected a rank pattern object, got ${describe(pattern)}`);
    for (const [path, layer] of adaLoraLayers(this.#model, this.adapterName)) {
      const keep = maskFor(pattern, path, this.adapterName);
      if (!keep) throw peftError("ERR_STATE", `updateAndAllocate: the rank pattern has no entry for ${rankPatternKey(path)}`);
      const r = layer.svdFactors(this.adapterName).E.shape[0];
      if (keep.length !== r) throw peftError("ERR_STATE", `updateAndAllocate: the rank pattern for ${rankPatternKey(path)} has ${keep.length} entries but the layer has rank ${r}`);
      this.#applyMask(layer, keep);
    }
  }
}
