// Stateless forward/backward ops for tape-free training (the Module tree and AdamW call these). Each is a
// thin wrapper: argument types are checked here, dtypes/shapes/devices/ranges by the addon, which throws
// PeftError / TypeError / RangeError naming the op.
import { native, type NativeTensor } from "./native.js";
import { Tensor, handleOf, optionalHandle, describe, readShape } from "./tensor.js";
import { arrayArg, isArray, optionsArg, typeError } from "./errors.js";

export type Activation = "relu" | "gelu" | "gelu_tanh" | "silu";

function options<T extends object>(opts: T | undefined, op: string): Partial<T> {
  return optionsArg(opts, op, "opts");
}

function handles(ts: unknown, op: string, name: string, nullable: boolean): (NativeTensor | null)[] {
  if (!isArray(ts)) throw typeError(`${op}: ${name} must be an array of Tensors, got ${describe(ts)}`);
  return arrayArg(ts, op, name).map((t, i) => (nullable ? optionalHandle(t, op, `${name}[${i}]`) : handleOf(t, op, `${name}[${i}]`)));
}

/** y = act(x) in x's dtype; "gelu" is the exact erf form (PyTorch's default), "gelu_tanh" the tanh approximation. */
export function activation(kind: Activation, x: Tensor): Tensor {
  return new Tensor(native.activation(kind, handleOf(x, "activation", "x")));
}

/** dx = act'(x) * dy from the forward input x, in dy's dtype. */
export function activationBackward(kind: Activation, x: Tensor, dy: Tensor): Tensor {
  const op = "activationBackward";
  return new Tensor(native.activationBackward(kind, handleOf(x, op, "x"), handleOf(dy, op, "dy")));
}

/** log-softmax over the last dimension (max-subtracted, f32 accumulation), in x's dtype. */
export function logSoftmax(x: Tensor): Tensor {
  return new Tensor(native.logSoftmax(handleOf(x, "logSoftmax", "x")));
}

/** dx = dy - exp(y) * sum(dy) per row, from the forward output y; in dy's dtype. */
export function logSoftmaxBackward(y: Tensor, dy: Tensor): Tensor {
  const op = "logSoftmaxBackward";
  return new Tensor(native.logSoftmaxBackward(handleOf(y, op, "y"), handleOf(dy, op, "dy")));
}

/**
 * y = x * keep / (1 - p), keep = (u >= p) with u the Philox(seed, stream) uniform of each element. The
 * same (seed, stream) applied to dy is the backward. p in [0, 1); p == 0 returns a copy.
 */
export function dropout(x: Tensor, p: number, seed: number, stream: number): Tensor {
  return new Tensor(native.dropout(handleOf(x, "dropout", "x"), p, seed, stream));
}

/** The f32 mask dropout multiplies by: keep / (1 - p). */
export function dropoutMask(shape: readonly number[], p: number, seed: number, stream: number): Tensor {
  return new Tensor(native.dropoutMask(readShape(shape, "dropoutMask"), p, seed, stream));
}

/** Rows of weight (V, D) picked by i32/i64 ids of any shape: (...ids.shape, D) in weight's dtype. */
export function embedding(ids: Tensor, weight: Tensor): Tensor {
  return new Tensor(native.embedding(handleOf(ids, "embedding", "ids"), handleOf(weight, "embedding", "weight")));
}

/** dW[id] += dy rows (accumulating; the same result for any thread count). */
export function embeddingBackward(ids: Tensor, dy: Tensor, dW: Tensor): void {
  const op = "embeddingBackward";
  native.embeddingBackward(handleOf(ids, op, "ids"), handleOf(dy, op, "dy"), handleOf(dW, op, "dW"));
}

/** out[N] (+)= the sum of dy[..., N] over all leading rows (a bias gradient); accumulate defaults to true. */
export function sumRows(dy: Tensor, out: Tensor, opts?: { accumulate?: boolean }): void {
  const o = options(opts, "sumRows");
  native.sumRows(handleOf(dy, "sumRows", "dy"), handleOf(out, "sumRows", "out"), o.accumulate ?? true);
}

/** a += alpha * b in place (same shape; b may be another float dtype). */
export function addInPlace(a: Tensor, b: Tensor, alpha = 1): void {
  native.addInPlace(handleOf(a, "addInPlace", "a"), handleOf(b, "addInPlace", "b"), alpha);
}

/** a *= alpha in place. */
export function scaleInPlace(a: Tensor, alpha: number): void {
  native.scaleInPlace(handleOf(a, "scaleInPlace", "a"), alpha);
}

/** Elementwise a * b (same shape), in a's dtype. */
export function mul(a: Tensor, b: Tensor): Tensor {
  return new Tensor(native.mul(handleOf(a, "mul", "a"), handleOf(b, "mul", "b")));
}

/** Sets every element to value (rounded/saturated into a's dtype). */
export function fill(a: Tensor, value: number): void {
  native.fill(handleOf(a, "fill", "a"), value);
}

export interface LossResult {
  loss: number;
  grad: Tensor;
}

function lossResult(r: { loss: number; grad: NativeTensor }): LossResult {
  return { loss: r.loss, grad: new Tensor(r.grad) };
}

/**
 * PyTorch's nll_loss, mean over non-ignored targets: logProbs (M, C) with target (M), or (C) with a 0-d
 * target; grad in logProbs' dtype. Every target ignored gives NaN (as PyTorch) and a zero grad.
 */
export function nllLoss(logProbs: Tensor, target: Tensor, opts?: { ignoreIndex?: number }): LossResult {
  const o = options(opts, "nllLoss");
  return lossResult(native.nllLoss(handleOf(logProbs, "nllLoss", "logProbs"), handleOf(target, "nllLoss", "target"), o.ignoreIndex ?? -100));
}

/** PyTorch's cross_entropy with class targets (fused log-softmax + nll, label smoothing); grad w.r.t. the logits. */
export function crossEntropy(logits: Tensor, target: Tensor, opts?: { ignoreIndex?: number; labelSmoothing?: number }): LossResult {
  const op = "crossEntropy";
  const o = options(opts, op);
  return lossResult(native.crossEntropy(handleOf(logits, op, "logits"), handleOf(target, op, "target"), o.ignoreIndex ?? -100, o.labelSmoothing ?? 0));
}

/** mean((y - target)^2) over all elements; grad = 2 (y - target) / n in y's dtype. */
export function mseLoss(y: Tensor, target: Tensor): LossResult {
  return lossResult(native.mseLoss(handleOf(y, "mseLoss", "y"), handleOf(target, "mseLoss", "target")));
}

export interface AdamWStepOptions {
  step: number;
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

/**
 * One AdamW step (torch.optim.AdamW, amsgrad and maximize off) over every parameter whose grad is not
 * null, in one native call. Moments are f32 tensors shaped like their parameter; parameters and grads may
 * be f32/bf16/f16 (computed in f32, p rounded once). Everything is validated before anything changes.
 */
export function adamwStep(params: Tensor[], grads: (Tensor | null)[], expAvg: Tensor[], expAvgSq: Tensor[], opts: AdamWStepOptions): void {
  const op = "adamwStep";
  if (opts === null || typeof opts !== "object") throw typeError(`${op}: opts must be an object, got ${describe(opts)}`);
  native.adamwStep(
    handles(params, op, "params", false) as NativeTensor[],
    handles(grads, op, "grads", true),
    handles(expAvg, op, "expAvg", false) as NativeTensor[],
    handles(expAvgSq, op, "expAvgSq", false) as NativeTensor[],
    opts.step, opts.lr, opts.beta1, opts.beta2, opts.eps, opts.weightDecay,
  );
}
