// Differentiable losses: each returns a 0-d f32 tensor whatever the input's dtype (the kernels accumulate in
// f32 or wider; bf16 mode keeps the loss f32 so small losses and their gradient scale are not rounded to
// bf16's 8 bits), whose backward scales the gradient the fused native kernel computed with the loss (in the
// input's dtype).
import { Tensor } from "../tensor.js";
import { crossEntropy as ceKernel, mseLoss as mseKernel, nllLoss as nllKernel, scaleInPlace, type LossResult } from "../kernels.js";
import { record, wantsGrad } from "../autograd/record.js";

function lossTensor(name: string, input: Tensor, r: LossResult): Tensor {
  // The kernel checked input (a Tensor) before r existed.
  const out = Tensor.fromArray([r.loss], [], "f32");
  if (!wantsGrad(input)) {
    r.grad.dispose();
    return out;
  }
  record(
    name,
    [input],
    out,
    ([g], [grad]) => {
      if (!g) return [null];
      const s = g.toFloat64Array()[0];
      const dx = grad.to(grad.dtype);
      if (s !== 1) scaleInPlace(dx, s);
      return [dx];
    },
    [r.grad],
  );
  r.grad.dispose();
  return out;
}

/** PyTorch's nll_loss (mean over non-ignored targets) as a differentiable scalar. */
export function nllLoss(logProbs: Tensor, target: Tensor, opts?: { ignoreIndex?: number }): Tensor {
  return lossTensor("NllLossBackward", logProbs, nllKernel(logProbs, target, opts));
}

/** PyTorch's cross_entropy with class targets (ignore index, label smoothing) as a differentiable scalar. */
export function crossEntropy(logits: Tensor, target: Tensor, opts?: { ignoreIndex?: number; labelSmoothing?: number }): Tensor {
  return lossTensor("CrossEntropyBackward", logits, ceKernel(logits, target, opts));
}

/** mean((y - target)^2) as a differentiable scalar (no gradient flows into target). */
export function mseLoss(y: Tensor, target: Tensor): Tensor {
  return lossTensor("MseLossBackward", y, mseKernel(y, target));
}
