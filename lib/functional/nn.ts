// Differentiable layers as functions: linear, embedding, activations, logSoftmax, dropout. Each is one
// graph node over the same fused kernels the modules use.
import { Tensor } from "../tensor.js";
import { linear as linearKernel, linearGradInput, linearGradWeight } from "../ops.js";
import {
  activation, activationBackward, dropout as dropoutKernel, embedding as embeddingKernel, embeddingBackward,
  logSoftmax as logSoftmaxKernel, logSoftmaxBackward, sumRows,
} from "../functional.js";
import { record, wantsGrad } from "../autograd/record.js";
import { takeRng } from "../random.js";
import { typeError } from "../errors.js";

/** y = x·Wᵀ + b (W stored (out, in)); gradients for x, W and b. */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null): Tensor {
  const y = linearKernel(x, weight, bias ?? null);
  if (!wantsGrad(x, weight, bias)) return y;
  return record("LinearBackward", [x, weight, bias ?? null], y, ([g], [xs, w], [needX, needW, needB]) => {
    if (!g) return [null, null, null];
    const dx = needX ? linearGradInput(g, w) : null;
    let dw: Tensor | null = null;
    if (needW) {
      dw = Tensor.zeros(w.shape, { dtype: w.dtype });
      linearGradWeight(g, xs, dw, { accumulate: false });
    }
    let db: Tensor | null = null;
    if (needB) {
      db = Tensor.zeros([w.shape[0]], { dtype: bias!.dtype });
      sumRows(g, db, { accumulate: false });
    }
    return [dx, dw, db];
  }, [x, weight]);
}

function unary(kind: "relu" | "gelu" | "gelu_tanh" | "silu", name: string) {
  return (x: Tensor): Tensor => {
    const y = activation(kind, x);
    if (!wantsGrad(x)) return y;
    return record(name, [x], y, ([g], [xs]) => [g ? activationBackward(kind, xs, g) : null], [x]);
  };
}

export const relu = unary("relu", "ReluBackward");
export const silu = unary("silu", "SiluBackward");
/** GELU, erf form (approximate: "tanh" for the tanh form), as torch.nn.functional.gelu. */
export function gelu(x: Tensor, opts: { approximate?: "none" | "tanh" } = {}): Tensor {
  return (opts.approximate === "tanh" ? geluTanh : geluErf)(x);
}
const geluErf = unary("gelu", "GeluBackward");
const geluTanh = unary("gelu_tanh", "GeluBackward");

/** log-softmax over the last dimension. */
export function logSoftmax(x: Tensor): Tensor {
  const y = logSoftmaxKernel(x);
  if (!wantsGrad(x)) return y;
  return record("LogSoftmaxBackward", [x], y, ([g], [ys]) => [g ? logSoftmaxBackward(ys, g) : null], [y]);
}

/** Inverted dropout with a fresh Philox stream (the same mask regenerated in backward); identity when !training. */
export function dropout(x: Tensor, p = 0.5, opts: { training?: boolean } = {}): Tensor {
  if (typeof p !== "number" || !(p >= 0 && p < 1)) throw typeError(`dropout: p must be a number in [0, 1), got ${p}`);
  if (opts.training === false || p === 0) {
    const y = x.detach();
    return wantsGrad(x) ? record("DropoutBackward", [x], y, ([g]) => [g]) : y;
  }
  const { seed, stream } = takeRng(undefined, "dropout");
  const y = dropoutKernel(x, p, seed, stream);
  if (!wantsGrad(x)) return y;
  return record("DropoutBackward", [x], y, ([g]) => [g ? dropoutKernel(g, p, seed, stream) : null]);
}

/** Rows of weight picked by integer ids; the gradient goes to weight only. */
export function embedding(ids: Tensor, weight: Tensor): Tensor {
  const y = embeddingKernel(ids, weight);
  if (!wantsGrad(weight)) return y;
  return record("EmbeddingBackward", [weight], y, ([g], [idx, w]) => {
    if (!g) return [null];
    const dw = Tensor.zeros(w.shape, { dtype: w.dtype });
    embeddingBackward(idx, g, dw);
    return [dw];
  }, [ids, weight]);
}
