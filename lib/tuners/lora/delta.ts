// W ± Σ scale·B·A in place (one pass over W, the sum rounded once into W's dtype): what merge, unmerge and
// the CLI's checkpoint merge all do.
import { Tensor } from "../../tensor.js";
import { native } from "../../native.js";
import { handleOf } from "../../tensor.js";

export interface LoraDelta {
  A: Tensor; // (r, in)
  B: Tensor; // (out, r)
  scale: number;
}

/**
 * Adds (sign 1) or subtracts (sign -1) the deltas. With `safe`, nothing is written unless the result is finite
 * in W's dtype (an f16 sum past 65504 is not); `checkOnly` (with safe) never writes. Returns the index of the
 * first delta that makes W non-finite, or -1.
 */
export function applyLoraDeltas(
  weight: Tensor,
  deltas: LoraDelta[],
  opts: { weightInOut?: boolean; sign?: 1 | -1; safe?: boolean; checkOnly?: boolean } = {},
): number {
  const adapters = deltas.map((d, i) => ({
    A: handleOf(d.A, "applyLoraDeltas", `deltas[${i}].A`),
    B: handleOf(d.B, "applyLoraDeltas", `deltas[${i}].B`),
    scale: d.scale,
    p: 0,
    seed: 0,
    stream: 0,
  }));
  return native.loraMerge(handleOf(weight, "applyLoraDeltas", "weight"), opts.weightInOut === true, adapters, opts.sign ?? 1, opts.safe === true, opts.checkOnly === true);
}
