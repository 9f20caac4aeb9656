// A dtype conversion that stays in the graph (tensor.to(dtype) with autograd): the gradient comes back
// converted to the input's dtype. The model uses it to compute the loss on f32 logits in bf16 mode.
import type { Tensor, DType } from "../tensor.js";
import { record, wantsGrad } from "../autograd/record.js";

export function castTo(x: Tensor, dtype: DType): Tensor {
  if (x.dtype === dtype) return x;
  const y = x.to(dtype);
  if (!wantsGrad(x)) return y;
  const from = x.dtype;
  return record("ToCopyBackward", [x], y, ([g]) => [g ? g.to(from) : null]);
}
