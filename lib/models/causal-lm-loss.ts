// The causal LM loss as transformers computes it (ForCausalLMLoss): labels shifted left by one (position t
// predicts labels[t + 1], the last position predicts nothing), -100 ignored, the mean over what is left, in
// f32 whatever the logits' dtype. One graph node over the fused cross-entropy kernel, which accumulates in
// f32 and returns the gradient in the logits' dtype: bf16 logits are never widened into an f32 copy.
import { Tensor } from "../tensor.js";
import { crossEntropy, scaleInPlace } from "../kernels.js";
import { record, wantsGrad } from "../autograd/record.js";

export const IGNORE_INDEX = -100;

/** labels[:, 1:] padded with -100 at the end, flattened to [B·T]. */
function shiftedLabels(labels: Tensor): Tensor {
  const [B, T] = labels.shape;
  const src = labels.toFloat64Array();
  const out = new Int32Array(B * T).fill(IGNORE_INDEX);
  for (let b = 0; b < B; b++) for (let t = 0; t + 1 < T; t++) out[b * T + t] = src[b * T + t + 1];
  return Tensor.fromArray(out, [B * T], "i32");
}

/** logits [B, T, V], labels [B, T] (checked by the caller) -> a 0-d f32 loss. */
export function causalLMLoss(logits: Tensor, labels: Tensor): Tensor {
  const [B, T, V] = logits.shape;
  const target = shiftedLabels(labels);
  const flat = logits.reshape([B * T, V]);
  const r = crossEntropy(flat, target, { ignoreIndex: IGNORE_INDEX });
  target.dispose();
  const out = Tensor.fromArray([r.loss], [], "f32");
  if (!wantsGrad(flat)) {
    flat.dispose();
    r.grad.dispose();
    return out;
  }
  record("CrossEntropyBackward", [flat], out, ([g], [grad]) => {
    if (!g) return [null];
    const s = g.toFloat64Array()[0];
    // d loss / d logits for a unit upstream gradient is the saved tensor itself: hand on a second handle to
    // it (the node keeps its own, so a retained graph can run again); any other scale needs a copy.
    if (s === 1) return [grad.detach()];
    const dx = grad.to(grad.dtype);
    scaleInPlace(dx, s);
    return [dx];
  }, [r.grad]);
  r.grad.dispose();
  flat.dispose();
  return out;
}
