// PEFT's merge_utils (task arithmetic, TIES, DARE, magnitude pruning) over flat f32 task tensors of one
// shape. Sums run in float64 and are rounded once into the output.
import { Tensor } from "../../tensor.js";
import { dropout } from "../../kernels.js";

export type MajoritySignMethod = "total" | "frequency";

/** A Philox (seed, stream) per random draw, handed out in a fixed order so a seeded merge repeats. */
export type DrawRng = () => { seed: number; stream: number };

/** Keeps the int(density·numel) entries of largest magnitude (PEFT's magnitude_based_pruning); a copy. */
export function magnitudePrune(x: Float32Array, density: number): Float32Array {
  const k = Math.trunc(density * x.length);
  const out = new Float32Array(x.length);
  if (k <= 0) return out;
  // |x| as f32 bits orders exactly like |x| (NaN above +Inf, as topk ranks NaN): select the k-th largest.
  const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const { threshold, above } = kthLargestAbsBits(bits, k);
  // Entries above the threshold stay, then ties at it in index order until k are kept.
  let ties = k - above;
  for (let i = 0; i < x.length; i++) {
    const b = bits[i] & 0x7fffffff;
    if (b > threshold || (b === threshold && ties-- > 0)) out[i] = x[i];
  }
  return out;
}

/** The k-th largest of bits[i] & 0x7fffffff (k ≥ 1), and how many are strictly larger: two radix passes. */
function kthLargestAbsBits(bits: Uint32Array, k: number): { threshold: number; above: number } {
  const hi = new Uint32Array(1 << 16);
  for (let i = 0; i < bits.length; i++) hi[(bits[i] & 0x7fffffff) >>> 16]++;
  let above = 0, top = (1 << 16) - 1;
  while (above + hi[top] < k) above += hi[top--];
  const lo = new Uint32Array(1 << 16);
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i] & 0x7fffffff;
    if (b >>> 16 === top) lo[b & 0xffff]++;
  }
  let low = (1 << 16) - 1;
  while (above + lo[low] < k) above += lo[low--];
  return { threshold: ((top << 16) | low) >>> 0, above };
}

/**
 * DARE's random pruning with rescale: each entry kept with probability density and divided by it. That is
 * dropout with p = 1 − density, the same Philox draw our dropout makes.
 */
export function randomPrune(x: Float32Array, density: number, rng: { seed: number; stream: number }): Float32Array {
  using t = Tensor.fromArray(x, [x.length]);
  using y = dropout(t, 1 - density, rng.seed, rng.stream);
  return y.toFloat32Array();
}

/**
 * Σ wᵢ·xᵢ, or with a sign rule (TIES' disjoint merge) the sum over the tasks whose entry has the majority
 * sign, divided by how many those are. The majority sign is elected on the unweighted tasks ("total": the
 * sign of their sum; "frequency": of their sign count; ties go to +), as PEFT's calculate_majority_sign_mask.
 */
export function mergeTasks(tasks: Float32Array[], weights: number[], out: Float32Array | Float64Array, sign?: MajoritySignMethod): void {
  const n = out.length, t = tasks.length;
  for (let i = 0; i < n; i++) {
    if (sign === undefined) {
      let acc = 0;
      for (let j = 0; j < t; j++) acc += weights[j] * tasks[j][i];
      out[i] = acc;
      continue;
    }
    let vote = 0;
    for (let j = 0; j < t; j++) vote += sign === "total" ? tasks[j][i] : Math.sign(tasks[j][i]);
    const majority = vote >= 0 ? 1 : -1;
    let acc = 0, count = 0;
    for (let j = 0; j < t; j++) {
      const x = tasks[j][i];
      if (Math.sign(x) === majority) {
        acc += weights[j] * x;
        count++;
      }
    }
    out[i] = acc / Math.max(count, 1);
  }
}
