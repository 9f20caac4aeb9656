// PEFT's merge_utils (task arithmetic, TIES, DARE, magnitude pruning) over flat f32 task tensors of one
// shape. Sums run in float64 and are rounded once into the output.
import { Tensor } from "../../tensor.js";
import { dropout } from "../../kernels.js";

export type MajoritySignMethod = "total" | "frequency";

/** A Philox (seed, stream) per random draw, handed out in a fixed order so a seeded merge repeats. */
export type DrawRng = () => { seed: number; stream: number };

/** Keeps the int(density·numel) entries of largest magnitude (PEFT's magnitude_based_pruning), in place. */
export function magnitudePrune(x: Float32Array, density: number): Float32Array {
  const k = Math.trunc(density * x.length);
  if (k <= 0) return x.fill(0);
  // |x| as f32 bits orders exactly like |x| (NaN above +Inf, as topk ranks NaN): select the k-th largest.
  const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const { threshold, above } = kthLargestAbsBits(bits, k);
  // Entries above the threshold stay, then ties at it in index order until k are kept.
  let ties = k - above;
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i] & 0x7fffffff;
    if (b < threshold || (b === threshold && ties-- <= 0)) bits[i] = 0;
  }
  return x;
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

// Merges run over blocks of this many entries: each task streams through a block while float64 sums stay
// in a small scratch array, instead of one inner loop over the tasks per entry.
const BLOCK = 2048;

/**
 * Σ wᵢ·xᵢ, or with a sign rule (TIES' disjoint merge) the sum over the tasks whose entry has the majority
 * sign, divided by how many those are. The majority sign is elected on the unweighted tasks ("total": the
 * sign of their sum; "frequency": of their sign count; ties go to +), as PEFT's calculate_majority_sign_mask.
 * Returns whether every merged entry is finite.
 */
export function mergeTasks(tasks: Float32Array[], weights: number[], out: Float32Array | Float64Array, sign?: MajoritySignMethod): boolean {
  const acc = new Float64Array(BLOCK);
  const elect = sign ? new Float64Array(BLOCK) : null;
  const count = sign ? new Float64Array(BLOCK) : null;
  let bad = 0;
  for (let s = 0; s < out.length; s += BLOCK) {
    const len = Math.min(BLOCK, out.length - s);
    acc.fill(0);
    if (elect && count) {
      elect.fill(0);
      count.fill(0);
      for (let j = 0; j < tasks.length; j++) {
        const x = tasks[j];
        if (sign === "total") for (let i = 0; i < len; i++) elect[i] += x[s + i];
        else for (let i = 0; i < len; i++) elect[i] += +(x[s + i] > 0) - +(x[s + i] < 0);
      }
      for (let i = 0; i < len; i++) elect[i] = elect[i] >= 0 ? 1 : -1;
      for (let j = 0; j < tasks.length; j++) {
        const x = tasks[j], w = weights[j];
        for (let i = 0; i < len; i++) {
          const v = x[s + i];
          const keep = +(v * elect[i] > 0); // the entry has the elected sign (zeros and NaN never do)
          acc[i] += keep * w * v;
          count[i] += keep;
        }
      }
      for (let i = 0; i < len; i++) acc[i] /= count[i] > 1 ? count[i] : 1;
    } else {
      for (let j = 0; j < tasks.length; j++) {
        const x = tasks[j], w = weights[j];
        for (let i = 0; i < len; i++) acc[i] += w * x[s + i];
      }
    }
    for (let i = 0; i < len; i++) {
      out[s + i] = acc[i];
      const o = out[s + i]; // as stored: an f32 output can overflow where the f64 sum did not
      bad += o - o; // NaN for NaN and ±Inf, else 0
    }
  }
  return bad === 0;
}
