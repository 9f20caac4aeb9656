// The numeric work of (IA)³ on dense layers (Linear, W (out, in); GPT-2's Conv1D, W (in, out)) and of merging
// any (IA)³ scale into a weight. y = ((x ⊙ inScale)·Wᵀ + b) ⊙ outScale, each scale optional (a layer uses one:
// the input side for feed-forward modules, the output side otherwise). Every caller goes through these
// functions only, so how they compute (composed ops here) can change without touching the layers.
import { Tensor } from "../../tensor.js";
import { linear, linearGradInput, linearGradWeight } from "../../ops.js";
import { sumRows } from "../../kernels.js";
import { ew, reduceRaw } from "../../functional/raw.js";
import { inputGradFromScaled } from "./input-grad.js";

export interface Ia3LinearOptions {
  /** W stored (in, out) (Conv1D) rather than (out, in). */
  weightInOut: boolean;
  /** (in): multiplies x's features before the product. */
  inScale: Tensor | null;
  /** (out): multiplies the output features, bias included (PEFT scales base(x)). */
  outScale: Tensor | null;
}

export interface Ia3LinearBackwardOptions extends Ia3LinearOptions {
  /** What ia3LinearForward returned as `saved`. */
  saved: readonly Tensor[];
  wantDx: boolean;
  /** Gradients accumulated into these when given (null: not wanted): W's and b's layouts, and (in) / (out). */
  dW: Tensor | null;
  db: Tensor | null;
  dInScale: Tensor | null;
  dOutScale: Tensor | null;
}

/**
 * The forward, y in x's dtype (x ⊙ inScale rounded to x's dtype first, as PEFT does). `saved` holds what the
 * backward needs besides x and W: the unscaled output when there is an output scale (its gradient is
 * Σ dy ⊙ (x·Wᵀ + b), which must not be recovered as y / outScale: a zero scale would lose it).
 */
export function ia3LinearForward(x: Tensor, weight: Tensor, bias: Tensor | null, opts: Ia3LinearOptions): { y: Tensor; saved: Tensor[] } {
  const { weightInOut, inScale, outScale } = opts;
  const xs = inScale ? ew("mul", [x, inScale], x.dtype) : x;
  try {
    const u = linear(xs, weight, bias, { weightInOut });
    if (!outScale) return { y: u, saved: [] };
    return { y: ew("mul", [u, outScale], u.dtype), saved: [u] };
  } finally {
    if (xs !== x) xs.dispose();
  }
}

/** Accumulates Σ over rows of a ⊙ b (f32) into `into` (1-D, a's last dimension). */
function sumRowsOfProduct(a: Tensor, b: Tensor, into: Tensor): void {
  using p = ew("mul", [a, b], "f32");
  sumRows(p, into, { accumulate: true });
}

/** The backward: gradients accumulate into the tensors given; returns dx (dy's dtype) when wantDx, else null. */
export function ia3LinearBackward(dy: Tensor, x: Tensor, weight: Tensor, opts: Ia3LinearBackwardOptions): Tensor | null {
  const { weightInOut, inScale, outScale, saved, dInScale, dOutScale } = opts;
  if (dOutScale) sumRowsOfProduct(dy, saved[0], dOutScale);
  const du = outScale ? ew("mul", [dy, outScale], dy.dtype) : dy;
  try {
    if (opts.db) sumRows(du, opts.db, { accumulate: true });
    if (opts.dW) {
      const xs = inScale ? ew("mul", [x, inScale], x.dtype) : x;
      try {
        linearGradWeight(du, xs, opts.dW, { accumulate: true, weightInOut });
      } finally {
        if (xs !== x) xs.dispose();
      }
    }
    if (!opts.wantDx && !dInScale) return null;
    const dxs = linearGradInput(du, weight, { weightInOut });
    if (dInScale) sumRowsOfProduct(dxs, x, dInScale);
    return inputGradFromScaled(dxs, inScale, opts.wantDx);
  } finally {
    if (du !== dy) du.dispose();
  }
}

/** Whether every element of t is finite (t − t is 0 for finite values and NaN otherwise). */
function allFinite(t: Tensor): boolean {
  using d = ew("sub", [t, t], "f32");
  const { values } = reduceRaw("sum", d, d.shape.map((_, i) => i), false, "f32");
  using v = values;
  return Number.isFinite(v.toFloat64Array()[0]);
}

/**
 * Merges (IA)³ scales into a weight or bias in place: t ⊙ s for each scale in turn (broadcast against t, each
 * product rounded into t's dtype, as PEFT's successive merges are), or for `divide` t ⊘ (s + 1e-8) (PEFT's
 * unmerge). With `safe`, nothing is written unless every step is finite; `checkOnly` (with safe) never writes.
 * Returns the index of the first scale that makes t non-finite, or -1.
 */
export function ia3MergeInPlace(t: Tensor, scales: readonly Tensor[], opts: { divide?: boolean; safe?: boolean; checkOnly?: boolean } = {}): number {
  let cur: Tensor = t;
  try {
    for (let i = 0; i < scales.length; i++) {
      const s = opts.divide ? ew("affine", [scales[i]], "f32", [1, 1e-8]) : scales[i];
      const next = ew(opts.divide ? "div" : "mul", [cur, s], t.dtype);
      if (s !== scales[i]) s.dispose();
      if (cur !== t) cur.dispose();
      cur = next;
      if (opts.safe && !allFinite(cur)) return i;
    }
    if (!opts.checkOnly && cur !== t) t.copyFrom(cur);
    return -1;
  } finally {
    if (cur !== t) cur.dispose();
  }
}
