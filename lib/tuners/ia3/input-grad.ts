// The last step of an (IA)³ backward with an input scale, shared by the dense and convolution paths.
import type { Tensor } from "../../tensor.js";
import { ew } from "../../functional/raw.js";

/**
 * dx from the gradient of the scaled input x ⊙ s: dxs ⊙ s in dxs's dtype (dxs itself without a scale), or null
 * when dx is not wanted. dxs is disposed unless it is what is returned.
 */
export function inputGradFromScaled(dxs: Tensor, inScale: Tensor | null, wantDx: boolean): Tensor | null {
  if (wantDx && !inScale) return dxs;
  const dx = wantDx ? ew("mul", [dxs, inScale!], dxs.dtype) : null;
  dxs.dispose();
  return dx;
}
