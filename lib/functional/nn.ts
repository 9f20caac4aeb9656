// Differentiable layers as functions: linear, embedding, activations, logSoftmax, dropout. Each is one
// graph node over the same fused kernels the modules use.
import { Tensor } from "../tensor.js";
import { native } from "../native.js";
import { linear as linearKernel, linearGradInput, linearGradWeight } from "../ops.js";
import {
  activation, activationBackward, dropout as dropoutKernel, embedding as embeddingKernel, embeddingBackward,
  logSoftmax as logSoftmaxKernel, logSoftmaxBackward, sumRows,
} from "../kernels.js";
import { record, wantsGrad } from "../autograd/record.js";
import { takeRng } from "../random.js";
import { optionsArg, peftError, typeError } from "../errors.js";
import { ew, normDim, reduceRaw, shown, tensorArg } from "./raw.js";
import { readShape } from "../tensor.js";
import { transpose } from "./shape.js";
import { add, mul, rsqrt, sub } from "./elementwise.js";
import { mean, variance } from "./reduce.js";

/** y = x·Wᵀ + b (W stored (out, in)); gradients for x, W and b. */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null): Tensor {
  tensorArg(x, "linear", "x");
  tensorArg(weight, "linear", "weight");
  const y = linearKernel(x, weight, bias ?? null);
  if (!wantsGrad(x, weight, bias)) return y;
  return record("LinearBackward", [x, weight, bias ?? null], y, ([g], [xs, w], [needX, needW, needB]) => {
    if (!g) return [null, null, null];
    const dx = needX ? linearGradInput(g, w) : null;
    let dw: Tensor | null = null;
    if (needW) {
      dw = Tensor.zeros(w.shape, { dtype: w.dtype, device: w.device });
      linearGradWeight(g, xs, dw, { accumulate: false });
    }
    let db: Tensor | null = null;
    if (needB) {
      db = Tensor.zeros([w.shape[0]], { dtype: bias!.dtype, device: w.device });
      sumRows(g, db, { accumulate: false });
    }
    return [dx, dw, db];
  }, [x, weight]);
}

function unary(kind: "relu" | "gelu" | "gelu_tanh" | "silu", name: string) {
  return (x: Tensor): Tensor => {
    tensorArg(x, kind, "x");
    const y = activation(kind, x);
    if (!wantsGrad(x)) return y;
    return record(name, [x], y, ([g], [xs]) => [g ? activationBackward(kind, xs, g) : null], [x]);
  };
}

export const relu = unary("relu", "ReluBackward");
export const silu = unary("silu", "SiluBackward");
/** GELU, erf form (approximate: "tanh" for the tanh form), as torch.nn.functional.gelu. */
export function gelu(x: Tensor, opts: { approximate?: "none" | "tanh" } = {}): Tensor {
  return (optionsArg(opts, "gelu").approximate === "tanh" ? geluTanh : geluErf)(x);
}
const geluErf = unary("gelu", "GeluBackward");
const geluTanh = unary("gelu_tanh", "GeluBackward");

/** log-softmax over the last dimension. */
export function logSoftmax(x: Tensor): Tensor {
  tensorArg(x, "logSoftmax", "x");
  const y = logSoftmaxKernel(x);
  if (!wantsGrad(x)) return y;
  return record("LogSoftmaxBackward", [x], y, ([g], [ys]) => [g ? logSoftmaxBackward(ys, g) : null], [y]);
}

/** Inverted dropout with a fresh Philox stream (the same mask regenerated in backward); identity when !training. */
export function dropout(x: Tensor, p = 0.5, opts: { training?: boolean } = {}): Tensor {
  tensorArg(x, "dropout", "x");
  if (opts === null || typeof opts !== "object") throw typeError("dropout: options must be an object");
  if (typeof p !== "number" || !(p >= 0 && p < 1)) throw typeError(`dropout: p must be a number in [0, 1), got ${shown(p)}`);
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
  tensorArg(ids, "embedding", "ids");
  tensorArg(weight, "embedding", "weight");
  const y = embeddingKernel(ids, weight);
  if (!wantsGrad(weight)) return y;
  return record("EmbeddingBackward", [weight], y, ([g], [idx, w]) => {
    if (!g) return [null];
    const dw = Tensor.zeros(w.shape, { dtype: w.dtype, device: w.device });
    embeddingBackward(idx, g, dw);
    return [dw];
  }, [ids, weight]);
}

/** Composes ops, disposing the intermediates (the graph keeps what it saved); returns the last result. */
function chain(steps: ((prev: Tensor) => Tensor)[], x: Tensor): Tensor {
  let h = x;
  for (const step of steps) {
    const next = step(h);
    if (h !== x) h.dispose();
    h = next;
  }
  return h;
}

/** softmax over `dim` (default the last): one node whose backward is y·(g − Σ g·y). */
export function softmax(x: Tensor, dim = -1): Tensor {
  tensorArg(x, "softmax", "x");
  const n = x.shape.length;
  const d = normDim(dim, Math.max(n, 1), "softmax");
  if (n > 1 && d !== n - 1) return chain([(t) => transpose(t, d, n - 1), (t) => softmax(t), (t) => transpose(t, d, n - 1)], x);
  const ls = logSoftmaxKernel(x);
  const y = ew("exp", [ls], x.dtype);
  ls.dispose();
  if (!wantsGrad(x)) return y;
  return record("SoftmaxBackward", [x], y, ([g], [ys]) => {
    if (!g) return [null];
    const gy = ew("mul", [g, ys], ys.dtype);
    const { values: s } = reduceRaw("sum", gy, [Math.max(ys.shape.length - 1, 0)], true, ys.dtype);
    gy.dispose();
    const diff = ew("sub", [g, s], ys.dtype);
    s.dispose();
    const dx = ew("mul", [diff, ys], ys.dtype);
    diff.dispose();
    return [dx];
  }, [y]);
}

/** log-softmax over `dim` (default the last). */
export function logSoftmaxDim(x: Tensor, dim = -1): Tensor {
  tensorArg(x, "logSoftmax", "x");
  const n = x.shape.length;
  const d = normDim(dim, Math.max(n, 1), "logSoftmax");
  if (n > 1 && d !== n - 1) return chain([(t) => transpose(t, d, n - 1), (t) => logSoftmax(t), (t) => transpose(t, d, n - 1)], x);
  return logSoftmax(x);
}

/** torch.nn.functional.layer_norm over the trailing `normalizedShape` dims (population variance). */
export function layerNorm(x: Tensor, normalizedShape: readonly number[], opts: { weight?: Tensor | null; bias?: Tensor | null; eps?: number } = {}): Tensor {
  tensorArg(x, "layerNorm", "x");
  if (opts === null || typeof opts !== "object") throw typeError("layerNorm: options must be an object");
  if (opts.eps !== undefined && typeof opts.eps !== "number") throw typeError("layerNorm: eps must be a number");
  const ns = readShape(normalizedShape, "layerNorm", "normalizedShape");
  if (!ns.length) throw typeError("layerNorm: normalizedShape must be a non-empty array");
  const k = ns.length;
  if (x.shape.slice(-k).join() !== ns.join())
    throw peftError("ERR_SHAPE", `layerNorm: the trailing dims of [${x.shape.join(", ")}] are not [${ns.join(", ")}]`);
  const dims = Array.from({ length: k }, (_, i) => x.shape.length - k + i);
  const eps = opts.eps ?? 1e-5;
  const mu = mean(x, { dim: dims, keepdim: true });
  const centered = sub(x, mu);
  mu.dispose();
  const v = variance(x, { dim: dims, keepdim: true, correction: 0 });
  const inv = chain([(t) => add(t, eps), (t) => rsqrt(t)], v);
  v.dispose();
  const steps: ((t: Tensor) => Tensor)[] = [(t) => mul(t, inv)];
  if (opts.weight) steps.push((t) => mul(t, opts.weight!));
  if (opts.bias) steps.push((t) => add(t, opts.bias!));
  const y = chain(steps, centered);
  centered.dispose();
  inv.dispose();
  return y;
}

/** x / sqrt(mean(x², last dim) + eps) · weight (LLaMA's RMSNorm): one node over the fused kernel, y in x's dtype. */
export function rmsNorm(x: Tensor, weight: Tensor | null, eps = 1e-6): Tensor {
  tensorArg(x, "rmsNorm", "x");
  const w = weight === null || weight === undefined ? null : tensorArg(weight, "rmsNorm", "weight");
  if (typeof eps !== "number") throw typeError("rmsNorm: eps must be a number");
  const [yh, rh] = native.rmsNorm(Tensor.handle(x), w ? Tensor.handle(w) : null, eps);
  const y = new Tensor(yh), rstd = new Tensor(rh);
  if (!wantsGrad(x, w)) {
    rstd.dispose();
    return y;
  }
  record("RmsNormBackward", [x, w], y, ([g], [xs, rs, ws], [needX, needW]) => {
    if (!g) return [null, null];
    const [dx, dw] = native.rmsNormBackward(Tensor.handle(xs), ws ? Tensor.handle(ws) : null, Tensor.handle(rs), Tensor.handle(g), needX, needW);
    return [dx ? new Tensor(dx) : null, dw ? new Tensor(dw) : null];
  }, w ? [x, rstd, w] : [x, rstd]);
  rstd.dispose();
  return y;
}
