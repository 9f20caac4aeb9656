// DoRA (PEFT's tuners/lora/dora.py and the DoRA variants of variants.py): an adapter's output is rescaled per
// output feature by c = m / ‖W + s·B·A‖, the magnitude m trainable and the norm detached (DoRA paper §4.3).
// Over the running result q (without the base bias) of the adapters before it, PEFT's forward is
//   plain LoRA:                 q += s·B·A·drop(x)
//   DoRA, no dropout (or eval): q = c ⊙ (q + s·B·A·x)          (PEFT's `result - bias` trick: q includes the
//                                                               adapters before this one, as in PEFT)
//   DoRA with dropout:          q += (c − 1) ⊙ (xd·Wᵀ) + c ⊙ s·B·A·xd,  xd = drop(x)
// and y = q + bias. The layer kinds (dense, int8, 4-bit, Conv2d) differ only in how x meets W and A/B
// (DoraOps); this file runs the recurrence and its backward.
import { Tensor } from "../../tensor.js";
import { addInPlace, dropout } from "../../kernels.js";
import { ew, reduceRaw } from "../../functional/raw.js";
import { peftError } from "../../errors.js";
import { Module, gradOf } from "../../nn/index.js";

/** PEFT's lora.dora.DoraLinearLayer: holds one adapter's magnitude as its `weight` (`lora_magnitude_vector.<adapter>.weight`). */
export class DoraMagnitude extends Module {
  readonly weight: Tensor;

  constructor(weight: Tensor) {
    super();
    this.weight = this.registerParameter("weight", weight);
  }

  forward(_x: Tensor): Tensor {
    throw peftError("ERR_UNSUPPORTED", "DoraMagnitude has no forward: the LoRA layer that holds it applies it");
  }
}

/** How x meets the base weight and an adapter's A and B, for one layer kind (x in the layer's working form). */
export interface DoraOps {
  /** Dimensions of y summed for the magnitude's gradient (all but the output features). */
  readonly reduceDims: (y: Tensor) => number[];
  /** The base layer's own output without its bias (PEFT: `base_layer(x) - bias`), f32. */
  baseOut(x: Tensor): Tensor;
  /** xd through the base weight as PEFT's DoRA layer applies it to dropped-out inputs (the dequantised weight), f32. */
  weightOut(x: Tensor): Tensor;
  /** dx of either map above for dz (null unless wantDx); a trainable base weight gets dW from (dz, x). */
  baseGrad(dz: Tensor, x: Tensor, wantDx: boolean): Tensor | null;
  /** T = A(x), what B is applied to. */
  loraA(x: Tensor, A: Tensor): Tensor;
  /** B(T), f32. */
  loraB(T: Tensor, B: Tensor): Tensor;
  /** For u = B(A(xd)) and its gradient du: dA, dB accumulate (when given); returns dxd when wantDx. */
  loraGrad(du: Tensor, xd: Tensor, T: Tensor, A: Tensor, B: Tensor, dA: Tensor | null, dB: Tensor | null, wantDx: boolean): Tensor | null;
}

/** One adapter as a forward runs it. */
export interface DoraRun {
  A: Tensor;
  B: Tensor;
  scale: number;
  /** Dropout probability this call (0 in eval). */
  p: number;
  seed: number;
  stream: number;
  /** The magnitude (shaped to broadcast over y's output features); null for a plain LoRA adapter. */
  magnitude: Tensor | null;
  /** The detached norm ‖W + s·B·A‖ (the magnitude's shape), for DoRA adapters. */
  norm: Tensor | null;
}

/**
 * Runs the recurrence above on x (f32, the layer's working form). Returns q (f32, no bias) and what backward
 * needs: per adapter T, and for DoRA adapters also the pre-scale sum and the norm.
 */
export function doraForward(ops: DoraOps, x: Tensor, runs: DoraRun[]): { q: Tensor; saved: Tensor[] } {
  let q = ops.baseOut(x);
  const saved: Tensor[] = [];
  try {
    for (const a of runs) {
      using xd = a.p > 0 ? dropout(x, a.p, a.seed, a.stream) : null;
      const T = ops.loraA(xd ?? x, a.A);
      saved.push(T);
      using u = ops.loraB(T, a.B);
      if (!a.magnitude) {
        addInPlace(q, u, a.scale);
        continue;
      }
      using c = ew("div", [a.magnitude, a.norm!], "f32");
      if (!xd) {
        // q = c ⊙ (q + s·u); the pre-scale sum is kept for the magnitude's gradient.
        addInPlace(q, u, a.scale);
        const pre = q;
        saved.push(pre, a.norm!.reshape(a.norm!.shape));
        q = ew("mul", [pre, c], "f32");
      } else {
        // q += c ⊙ (zd + s·u) − zd with zd = xd·Wᵀ; the sum zd + s·u is kept for the magnitude's gradient.
        using zd = ops.weightOut(xd);
        const pre = ew("axpby", [zd, u], "f32", [1, a.scale]);
        saved.push(pre, a.norm!.reshape(a.norm!.shape));
        using cp = ew("mul", [pre, c], "f32");
        addInPlace(q, cp);
        addInPlace(q, zd, -1);
      }
    }
    return { q, saved };
  } catch (e) {
    q.dispose();
    saved.forEach((t) => t.dispose());
    throw e;
  }
}

/** Σ over reduceDims of dq ⊙ pre, divided by the norm: the magnitude's gradient, accumulated into m.grad. */
function magnitudeGrad(ops: DoraOps, dq: Tensor, pre: Tensor, norm: Tensor, m: Tensor): void {
  using prod = ew("mul", [dq, pre], "f32");
  using s = reduceRaw("sum", prod, ops.reduceDims(prod), false, "f32").values;
  using s2 = s.reshape(m.shape);
  using g = ew("div", [s2, norm], "f32");
  addInPlace(gradOf(m), g);
}

/**
 * The backward of doraForward from dq = dy (f32): gradients of A, B and the magnitudes (those that require
 * one), a trainable base weight's through ops.baseGrad; returns dx (f32, x's working form) when wantDx.
 */
export function doraBackward(ops: DoraOps, dy: Tensor, x: Tensor, saved: Tensor[], runs: DoraRun[], wantDx: boolean): Tensor | null {
  // Slice saved per adapter: T, then pre and norm for DoRA adapters.
  const parts: { T: Tensor; pre?: Tensor; norm?: Tensor }[] = [];
  let k = 0;
  for (const a of runs) parts.push(a.magnitude ? { T: saved[k++], pre: saved[k++], norm: saved[k++] } : { T: saved[k++] });
  let dq = dy;
  let dx: Tensor | null = null;
  const addDx = (g: Tensor | null) => {
    if (!g) return;
    if (dx) addInPlace(dx, g), g.dispose();
    else dx = g;
  };
  try {
    for (let i = runs.length - 1; i >= 0; i--) {
      const a = runs[i], { T, pre, norm } = parts[i];
      const dA = a.A.requiresGrad ? gradOf(a.A) : null, dB = a.B.requiresGrad ? gradOf(a.B) : null;
      const m = a.magnitude;
      if (m && pre && norm && m.requiresGrad) magnitudeGrad(ops, dq, pre, norm, m);
      using xd = a.p > 0 ? dropout(x, a.p, a.seed, a.stream) : null;
      // The adapter's u enters q as s·u (LoRA) or c ⊙ s·u (DoRA): its gradient is s·dq or (s·c) ⊙ dq, one pass.
      using c = m ? ew("div", [m, norm!], "f32") : null;
      using sc = c ? scaled(c, a.scale) : null;
      using g = sc ? ew("mul", [dq, sc], "f32") : scaled(dq, a.scale);
      const dxd = ops.loraGrad(g, xd ?? x, T, a.A, a.B, dA, dB, wantDx);
      let back = dxd;
      if (c && xd) {
        // The (c − 1) ⊙ zd term: dzd = (c − 1) ⊙ dq through the base weight.
        using c1 = ew("affine", [c], "f32", [1, -1]);
        using dz = ew("mul", [dq, c1], "f32");
        const dzx = ops.baseGrad(dz, xd, wantDx);
        if (back && dzx) addInPlace(back, dzx), dzx.dispose();
        else back ??= dzx;
      }
      if (back && xd) {
        const b2 = dropout(back, a.p, a.seed, a.stream);
        back.dispose();
        back = b2;
      }
      addDx(back);
      // Without dropout DoRA scaled the whole running result: the adapters before it see c ⊙ dq.
      if (c && !xd) {
        const next = ew("mul", [dq, c], "f32");
        if (dq !== dy) dq.dispose();
        dq = next;
      }
    }
    addDx(ops.baseGrad(dq, x, wantDx));
    return dx;
  } catch (e) {
    (dx as Tensor | null)?.dispose();
    throw e;
  } finally {
    if (dq !== dy) dq.dispose();
  }
}

/** s·t as a new f32 tensor. */
function scaled(t: Tensor, s: number): Tensor {
  return ew("affine", [t], "f32", [s, 0]);
}
