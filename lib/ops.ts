// Dense ops over tensors. Each wrapper checks argument types here; the addon checks dtypes, shapes and
// devices and throws PeftError with the op's name.
import { native } from "./native.js";
import { Tensor, handleOf, optionalHandle } from "./tensor.js";
import { optionsArg } from "./errors.js";

/** Where a weight keeps its dimensions: (out, in) as torch.nn.Linear, or (in, out) as GPT-2's Conv1D. */
export interface WeightLayout {
  weightInOut?: boolean;
}

/** y = x·Wᵀ + b with W stored (out, in) (or x·W + b with W stored (in, out)); y in x's dtype. */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null, opts: WeightLayout = {}): Tensor {
  const inOut = optionsArg(opts, "linear").weightInOut === true;
  return new Tensor(
    native.linear(handleOf(x, "linear", "x"), handleOf(weight, "linear", "weight"), optionalHandle(bias, "linear", "bias"), inOut),
  );
}

/** dx = dy·W for y = x·Wᵀ; dx in dy's dtype. */
export function linearGradInput(dy: Tensor, weight: Tensor, opts: WeightLayout = {}): Tensor {
  const inOut = optionsArg(opts, "linearGradInput").weightInOut === true;
  return new Tensor(
    native.linearGradInput(handleOf(dy, "linearGradInput", "dy"), handleOf(weight, "linearGradInput", "weight"), inOut),
  );
}

/** dW += dyᵀ·x (or = when accumulate is false), rounded once into dW's dtype. */
export function linearGradWeight(dy: Tensor, x: Tensor, dW: Tensor, options: { accumulate?: boolean } & WeightLayout = {}): void {
  const opts = optionsArg(options, "linearGradWeight");
  native.linearGradWeight(
    handleOf(dy, "linearGradWeight", "dy"),
    handleOf(x, "linearGradWeight", "x"),
    handleOf(dW, "linearGradWeight", "dW"),
    opts.accumulate ?? true,
    opts.weightInOut === true,
  );
}

/** op(a)·op(b) for 2-D tensors; the result in a's dtype. */
export function matmul(a: Tensor, b: Tensor, opts: { transA?: boolean; transB?: boolean } = {}): Tensor {
  const o = optionsArg(opts, "matmul");
  return new Tensor(native.matmul(handleOf(a, "matmul", "a"), handleOf(b, "matmul", "b"), o.transA === true, o.transB === true));
}
