// The numeric work of (IA)³ on dense layers (Linear, W (out, in); GPT-2's Conv1D, W (in, out)) and of merging
// any (IA)³ scale into a weight. y = ((x ⊙ inScale)·Wᵀ + b) ⊙ outScale, each scale optional (a layer uses one:
// the input side for feed-forward modules, the output side otherwise). Every caller goes through these
// functions only, so how they compute (composed ops here) can change without touching the layers.
import { Tensor } from "../../tensor.js";
import { linear, linearGradInput, linearGradWeight } from "../../ops.js";
import { sumRows } from "../../kernels.js";
import { ew, reduceRaw } from "../../functional/raw.js";
import { native } from "../../native.js";
import { peftError } from "../../errors.js";
import { inputGradFromScaled } from "./input-grad.js";

export interface Ia3LinearOptions {
  /** W stored (in, out) (Conv1D) rather than (out, in). */
  weightInOut: boolean;
  /** (in): multiplies x's features before the product. */
  inScale: Tensor | null;
  /** (out): multiplies the output features, bias included (PEFT scales base(x)). */
  outScale: Tensor | null;
  /** Whether a backward will need the output scale's gradient (keeps the unscaled output); default true. */
  keepUnscaled?: boolean;
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
function composedForward(x: Tensor, weight: Tensor, bias: Tensor | null, opts: Ia3LinearOptions): { y: Tensor; saved: Tensor[] } {
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

function composedBackward(dy: Tensor, x: Tensor, weight: Tensor, opts: Ia3LinearBackwardOptions): Tensor | null {
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
function composedMerge(t: Tensor, scales: readonly Tensor[], opts: { divide?: boolean; safe?: boolean; checkOnly?: boolean }): number {
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

// ---- the fused native kernels (native/cpu/ia3.cc, native/cuda/ia3_scale.cu): one scale side, on x's device;
// anything else composes ----

/** The one scale and its side, as the f32 vector the kernels take, or null when they cannot run this call. */
function fusedScale(x: Tensor, opts: Ia3LinearOptions, keep: Tensor[]): { l: Tensor; input: boolean } | null {
  const { inScale, outScale } = opts;
  if ((inScale === null) === (outScale === null)) return null;
  const s = (inScale ?? outScale)!;
  if (s.device !== x.device) return null;
  let l = s.shape.length === 1 ? s : s.reshape([-1]);
  if (l !== s) keep.push(l);
  if (l.dtype !== "f32") keep.push((l = l.to("f32")));
  return { l, input: inScale !== null };
}

function withFused<T>(x: Tensor, opts: Ia3LinearOptions, run: (f: { l: Tensor; input: boolean }) => T, fallback: () => T): T {
  const keep: Tensor[] = [];
  try {
    const f = fusedScale(x, opts, keep);
    return f ? run(f) : fallback();
  } finally {
    keep.forEach((t) => t.dispose());
  }
}

/**
 * The forward, y in x's dtype: the input scale applied as x is packed into the GEMM, the output scale in its
 * epilogue (no pass over x or y). `saved` holds what the backward needs besides x and W: the unscaled output
 * when there is an output scale whose gradient is wanted (Σ dy ⊙ (x·Wᵀ + b), which must not be recovered as
 * y / outScale: a zero scale would lose it).
 */
export function ia3LinearForward(x: Tensor, weight: Tensor, bias: Tensor | null, opts: Ia3LinearOptions): { y: Tensor; saved: Tensor[] } {
  return withFused(
    x,
    opts,
    ({ l, input }) => {
      const keepU = !input && opts.keepUnscaled !== false;
      const out = native.ia3Forward(Tensor.handle(x), Tensor.handle(weight), bias ? Tensor.handle(bias) : null, opts.weightInOut, Tensor.handle(l), input, keepU);
      if (!Array.isArray(out)) return { y: new Tensor(out), saved: [] };
      return { y: new Tensor(out[0]), saved: [new Tensor(out[1])] };
    },
    () => composedForward(x, weight, bias, opts),
  );
}

/** The backward: gradients accumulate into the tensors given; returns dx (dy's dtype) when wantDx, else null. */
export function ia3LinearBackward(dy: Tensor, x: Tensor, weight: Tensor, opts: Ia3LinearBackwardOptions): Tensor | null {
  return withFused(
    x,
    opts,
    ({ l, input }) => {
      const dl = input ? opts.dInScale : opts.dOutScale;
      const y0 = input ? null : (opts.saved[0] ?? null);
      if (dl && !input && !y0) throw peftError("ERR_STATE", "IA3 backward: the output scale became trainable after forward; run forward again");
      const dx = native.ia3Backward(
        Tensor.handle(dy), Tensor.handle(x), Tensor.handle(weight), null, opts.weightInOut, Tensor.handle(l), input,
        y0 ? Tensor.handle(y0) : null, opts.wantDx,
        opts.dW ? Tensor.handle(opts.dW) : null, opts.db ? Tensor.handle(opts.db) : null, dl ? Tensor.handle(dl) : null,
      );
      return dx ? new Tensor(dx) : null;
    },
    () => composedBackward(dy, x, weight, opts),
  );
}

/**
 * Merges (IA)³ scales into a weight or bias in place: t ⊙ Π s (or, for `divide`, t ⊘ Π (s + 1e-8), PEFT's
 * unmerge), the scales broadcast against t along one axis, combined in float64 and rounded once into t's
 * dtype in one pass. With `safe`, nothing is written unless every result is finite in t's dtype; `checkOnly`
 * (with safe) never writes. Returns the index of the first scale that makes t non-finite, or -1.
 */
export function ia3MergeInPlace(t: Tensor, scales: readonly Tensor[], opts: { divide?: boolean; safe?: boolean; checkOnly?: boolean } = {}): number {
  const view = scales.length ? axisView(t.shape, scales[0].shape) : null;
  if (!view || scales.some((s) => s.shape.join() !== scales[0].shape.join() || s.device !== t.device)) return composedMerge(t, scales, opts);
  const keep: Tensor[] = [];
  try {
    const flat = scales.map((s) => {
      let v = s.reshape([-1]);
      keep.push(v);
      if (v.dtype !== "f32") keep.push((v = v.to("f32")));
      return Tensor.handle(v);
    });
    return native.ia3Scale(Tensor.handle(t), view, flat, opts.divide === true, opts.safe === true, opts.checkOnly === true);
  } finally {
    keep.forEach((k) => k.dispose());
  }
}

/** t viewed as (outer, mid, inner) with the scale along mid: the scale's shape broadcasts along one axis of t. */
function axisView(t: readonly number[], s: readonly number[]): [number, number, number] | null {
  if (s.length !== t.length && s.length !== 1) return null;
  const full = s.length === t.length ? s : t.map((d, i) => (i === t.length - 1 ? s[0] : 1));
  const axes = full.map((d, i) => (d !== 1 ? i : -1)).filter((i) => i >= 0);
  if (axes.length > 1 || axes.some((i) => full[i] !== t[i])) return null;
  const prod = (a: readonly number[]) => a.reduce((p, d) => p * d, 1);
  if (!axes.length) return [prod(t), 1, 1]; // a single factor for every element
  const k = axes[0];
  return [prod(t.slice(0, k)), t[k], prod(t.slice(k + 1))];
}
