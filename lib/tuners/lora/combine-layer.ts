// One layer's factors for a weighted adapter (the body of PEFT's add_weighted_adapter loop): cat stacks
// the factors, the task-arithmetic types merge A's and B's separately, and the *_svd types truncate an SVD
// of the combined delta to the new rank.
import { Tensor } from "../../tensor.js";
import { matmul } from "../../ops.js";
import { scaleInPlace } from "../../kernels.js";
import { peftError } from "../../errors.js";
import type { ColMat } from "../../linalg/dense.js";
import { exactSvd, lowRankSvd, type TruncatedSvd } from "../../linalg/low-rank-svd.js";
import { randomizedSvd } from "../../linalg/randomized-svd.js";
import { factorLayoutOf, type FactorMatrices } from "./factor-layout.js";
import { magnitudePrune, mergeTasks, randomPrune, type DrawRng, type MajoritySignMethod } from "./merge-utils.js";
import type { LoraLayer } from "./layer.js";

export const COMBINATION_TYPES = [
  "svd", "linear", "cat", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd",
] as const;
export type CombinationType = (typeof COMBINATION_TYPES)[number];

/** What a type does to each task before merging, and whether the merge elects a sign (TIES). */
const RULES: Record<CombinationType, { prune: "magnitude" | "random" | null; sign: boolean }> = {
  svd: { prune: null, sign: false },
  linear: { prune: null, sign: false },
  cat: { prune: null, sign: false },
  ties: { prune: "magnitude", sign: true },
  ties_svd: { prune: "magnitude", sign: true },
  dare_linear: { prune: "random", sign: false },
  dare_linear_svd: { prune: "random", sign: false },
  dare_ties: { prune: "random", sign: true },
  dare_ties_svd: { prune: "random", sign: true },
  magnitude_prune: { prune: "magnitude", sign: false },
  magnitude_prune_svd: { prune: "magnitude", sign: false },
};

export function needsDensity(type: CombinationType): boolean {
  return RULES[type].prune !== null;
}

export interface CombineSpec {
  type: CombinationType;
  adapters: string[];
  weights: number[];
  /** The new adapter's rank (the SVD's truncation). */
  rank: number;
  density: number;
  majoritySignMethod: MajoritySignMethod;
  svdClamp: number | null;
  /** The SVD of a formed delta: randomized subspace iteration or the exact (O(m·n·min(m, n))) one. */
  svdMethod: "randomized" | "exact";
  draw: DrawRng;
  /** Called once when density ≥ 1 leaves a task unpruned (PEFT warns). */
  warnDensity: () => void;
}

/** Writes the new adapter `target` of `layer` from the spec's source adapters present in the layer. */
export function combineLayer(layer: LoraLayer, target: string, spec: CombineSpec, where: string): void {
  const layout = factorLayoutOf(layer);
  const sources = spec.adapters
    .map((name, i) => ({ name, weight: spec.weights[i] }))
    .filter((s) => layer.adapterNames.includes(s.name))
    .map((s) => ({ ...s, scaling: layer.scaling[s.name], f: layout.read(layer, s.name) }));
  if (!sources.length) throw peftError("ERR_STATE", `No matching LoRAs found in ${where}. Please raise an issue on GitHub.`);
  const { m, n } = sources[0].f;
  if (spec.type === "cat") {
    const cat = catFactors(sources.map((s) => ({ f: s.f, coef: s.weight * s.scaling })), m, n);
    layout.write(layer, target, cat.a, cat.b, cat.k);
  } else if (spec.type.endsWith("svd")) {
    const svd = spec.type === "svd" ? factoredSvd(sources, spec.rank) : fullDeltaSvd(sources, spec, m, n, where);
    const { a, b } = factorsOfSvd(svd, spec.svdClamp);
    layout.write(layer, target, a, b, svd.s.length);
  } else {
    const r = sources[0].f.r;
    if (sources.some((s) => s.f.r !== r))
      throw peftError("ERR_CONFIG", `All adapters must have the same r value when using combination_type linear, ties, dare_ties or dare_linear (${where} has ranks ${sources.map((s) => s.f.r).join(", ")}).`);
    // √|w·s| on both factors, the sign on A only: B·A then carries w·s once (PEFT, negative weights included).
    const coefs = sources.map((s) => s.weight * s.scaling);
    const wA = coefs.map((c) => Math.sqrt(Math.abs(c)) * (c >= 0 ? 1 : -1));
    const wB = coefs.map((c) => Math.sqrt(Math.abs(c)));
    const a = mergeAll(sources.map((s) => s.f.a), wA, spec);
    const b = mergeAll(sources.map((s) => s.f.b), wB, spec);
    layout.write(layer, target, a, b, r);
  }
}

/** PEFT's cat: A's rows (each scaled by weight·scaling) stacked, B's columns side by side. */
function catFactors(parts: { f: FactorMatrices; coef: number }[], m: number, n: number) {
  const k = parts.reduce((acc, p) => acc + p.f.r, 0);
  const a = new Float64Array(k * n);
  const b = new Float64Array(m * k);
  let row = 0;
  for (const { f, coef } of parts) {
    for (let i = 0; i < f.r * n; i++) a[row * n + i] = coef * f.a[i];
    for (let i = 0; i < m; i++) for (let j = 0; j < f.r; j++) b[i * k + row + j] = f.b[i * f.r + j];
    row += f.r;
  }
  return { a, b, k };
}

function pruneTask(x: Float32Array, spec: CombineSpec): Float32Array {
  const method = RULES[spec.type].prune;
  if (method === null) return x;
  if (spec.density >= 1) {
    spec.warnDensity();
    return x;
  }
  return method === "magnitude" ? magnitudePrune(x, spec.density) : randomPrune(x, spec.density, spec.draw());
}

function mergeAll(tasks: Float32Array[], weights: number[], spec: CombineSpec, out = new Float64Array(tasks[0].length)) {
  mergeTasks(tasks.map((t) => pruneTask(t, spec)), weights, out, RULES[spec.type].sign ? spec.majoritySignMethod : undefined);
  return out;
}

type Source = { weight: number; scaling: number; f: FactorMatrices };

/**
 * The coefficient of each adapter's B·A in the delta the *_svd types decompose. PEFT weights each adapter's
 * delta weight (which already carries its scaling) by weight·scaling, so the scaling counts twice there.
 */
const svdCoef = (s: Source) => s.weight * s.scaling * s.scaling;

/** svd without forming the delta: Σ cᵢ·Bᵢ·Aᵢ = [B₁ … Bₜ]·[c₁A₁; …; cₜAₜ], an exact low-rank SVD. */
function factoredSvd(sources: Source[], rank: number): TruncatedSvd {
  const { m, n } = sources[0].f;
  const p = sources.reduce((acc, s) => acc + s.f.r, 0);
  const L: ColMat = { m, n: p, data: new Float64Array(m * p) };
  const M: ColMat = { m: n, n: p, data: new Float64Array(n * p) };
  let col = 0;
  for (const s of sources) {
    const { a, b, r } = s.f;
    const c = svdCoef(s);
    for (let i = 0; i < m; i++) for (let j = 0; j < r; j++) L.data[(col + j) * m + i] = b[i * r + j];
    // A's rows are M's columns, already contiguous.
    for (let i = 0; i < r * n; i++) M.data[col * n + i] = c * a[i];
    col += r;
  }
  return lowRankSvd(L, M, rank);
}

/** The other *_svd types: each delta formed (f32, as PEFT's get_delta_weight), pruned, merged, then an SVD. */
function fullDeltaSvd(sources: Source[], spec: CombineSpec, m: number, n: number, where: string): TruncatedSvd {
  const tasks = sources.map((s) => {
    using a = Tensor.fromArray(s.f.a, [s.f.r, n]);
    using b = Tensor.fromArray(s.f.b, [m, s.f.r]);
    using d = matmul(b, a);
    scaleInPlace(d, s.scaling);
    return pruneTask(d.view() as Float32Array, spec);
  });
  using delta = Tensor.zeros([m, n]);
  const out = delta.view() as Float32Array;
  const finite = mergeTasks(tasks, sources.map((s) => s.weight * s.scaling), out, RULES[spec.type].sign ? spec.majoritySignMethod : undefined);
  if (!finite) throw peftError("ERR_STATE", `addWeightedAdapter: the combined delta of ${where} has NaN or infinite entries; it has no SVD`);
  // Drawn either way, so a seed gives the same DARE masks with either method.
  const rng = spec.draw();
  return spec.svdMethod === "exact" ? exactSvd(out, m, n, spec.rank) : randomizedSvd(delta, spec.rank, { rng });
}

/**
 * PEFT's new factors from the SVD: B = U·S, A = Vh; with a clamp q, both limited to ±(the q-quantile of all
 * their entries together), as PEFT does.
 */
function factorsOfSvd(svd: TruncatedSvd, clamp: number | null): { a: Float64Array; b: Float64Array } {
  const { us, v } = svd;
  const k = svd.s.length;
  const a = v.data; // V column-major (n × k) is Vh row-major (k × n)
  const b = new Float64Array(us.m * k);
  for (let j = 0; j < k; j++) for (let i = 0; i < us.m; i++) b[i * k + j] = us.data[j * us.m + i];
  if (clamp !== null && k > 0) {
    const hi = quantile([b, a], clamp);
    const lo = -hi;
    for (const x of [a, b]) for (let i = 0; i < x.length; i++) x[i] = Math.min(Math.max(x[i], lo), hi);
  }
  return { a, b };
}

/** torch.quantile's default (linear interpolation between the two nearest ranks) over several arrays. */
function quantile(parts: Float64Array[], q: number): number {
  const all = new Float64Array(parts.reduce((acc, p) => acc + p.length, 0));
  let o = 0;
  for (const p of parts) all.set(p, o), (o += p.length);
  all.sort();
  const pos = q * (all.length - 1);
  const lo = Math.floor(pos), hi = Math.ceil(pos);
  return all[lo] + (all[hi] - all[lo]) * (pos - lo);
}
