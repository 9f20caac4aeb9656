// (IA)³ on Conv2d, composed from the convolution ops: y = conv2d(x ⊙ inScale, W, b) ⊙ outScale with the scales
// shaped (1, C, 1, 1) as PEFT stores them (input channels for feed-forward modules, output channels otherwise).
import type { Tensor } from "../../tensor.js";
import { conv2d, conv2dBackward, type Conv2dGeometry } from "../../ops.js";
import { addInPlace } from "../../kernels.js";
import { ew, reduceRaw } from "../../functional/raw.js";
import { inputGradFromScaled } from "./input-grad.js";
import type { Ia3LinearBackwardOptions } from "./kernels.js";

export interface Ia3ConvOptions {
  geometry: Conv2dGeometry;
  inScale: Tensor | null;
  outScale: Tensor | null;
}

/** The forward; `saved` holds the unscaled output when there is an output scale (its gradient needs it). */
export function ia3Conv2dForward(x: Tensor, weight: Tensor, bias: Tensor | null, opts: Ia3ConvOptions): { y: Tensor; saved: Tensor[] } {
  const xs = opts.inScale ? ew("mul", [x, opts.inScale], x.dtype) : x;
  try {
    const u = conv2d(xs, weight, bias, opts.geometry);
    if (!opts.outScale) return { y: u, saved: [] };
    return { y: ew("mul", [u, opts.outScale], u.dtype), saved: [u] };
  } finally {
    if (xs !== x) xs.dispose();
  }
}

/** Accumulates Σ over batch and pixels of a ⊙ b (f32) into `into` (1, C, 1, 1). */
function sumOfProduct(a: Tensor, b: Tensor, into: Tensor): void {
  using p = ew("mul", [a, b], "f32");
  using s = reduceRaw("sum", p, [0, 2, 3], true, "f32").values;
  addInPlace(into, s);
}

/** The backward, as ia3LinearBackward (dW, db, dInScale, dOutScale accumulate; dx when wantDx). */
export function ia3Conv2dBackward(dy: Tensor, x: Tensor, weight: Tensor, opts: Ia3ConvOptions & Omit<Ia3LinearBackwardOptions, "weightInOut" | "inScale" | "outScale">): Tensor | null {
  const { inScale, outScale, dInScale, dOutScale } = opts;
  if (dOutScale) sumOfProduct(dy, opts.saved[0], dOutScale);
  const du = outScale ? ew("mul", [dy, outScale], dy.dtype) : dy;
  const xs = inScale && opts.dW ? ew("mul", [x, inScale], x.dtype) : x;
  try {
    const needDxs = opts.wantDx || dInScale !== null;
    const dxs = conv2dBackward(du, opts.dW ? xs : x.shape, weight, opts.geometry, { wantDx: needDxs, dW: opts.dW, db: opts.db });
    if (!dxs) return null;
    if (dInScale) sumOfProduct(dxs, x, dInScale);
    return inputGradFromScaled(dxs, inScale, opts.wantDx);
  } finally {
    if (du !== dy) du.dispose();
    if (xs !== x) xs.dispose();
  }
}
