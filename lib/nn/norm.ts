// RMSNorm (LlamaRMSNorm): x / sqrt(mean(x², last dim) + eps) · weight, statistics in f32, the output in x's
// dtype. The computation is F.rmsNorm (one graph node with a fused backward for x and weight).
import { Tensor, type DType } from "../tensor.js";
import { optionsArg, peftError, typeError } from "../errors.js";
import { rmsNorm } from "../functional/index.js";
import { Module } from "./module.js";

export class RMSNorm extends Module {
  weight: Tensor;
  readonly normalizedShape: number;
  readonly eps: number;

  /** weight starts at ones, as torch's. */
  constructor(hiddenSize: number, options: { eps?: number; dtype?: DType } = {}) {
    super();
    const opts = optionsArg(options, "RMSNorm");
    if (typeof hiddenSize !== "number") throw typeError("RMSNorm: hiddenSize must be a number");
    if (!Number.isSafeInteger(hiddenSize) || hiddenSize < 1) throw peftError("ERR_CONFIG", `RMSNorm: hiddenSize must be a positive integer, got ${hiddenSize}`);
    const eps = opts.eps ?? 1e-6;
    if (typeof eps !== "number" || !(eps >= 0)) throw typeError(`RMSNorm: eps must be a non-negative number, got ${String(eps)}`);
    this.normalizedShape = hiddenSize;
    this.eps = eps;
    this.weight = this.registerParameter("weight", Tensor.fromArray(new Float32Array(hiddenSize).fill(1), [hiddenSize], opts.dtype ?? "f32"));
  }

  forward(x: Tensor): Tensor {
    this.input(x);
    if (x.shape[x.shape.length - 1] !== this.normalizedShape)
      throw peftError("ERR_SHAPE", `${this.describe()}.forward: x's last dimension is ${x.shape[x.shape.length - 1]}, expected ${this.normalizedShape}`);
    return rmsNorm(x, this.weight, this.eps);
  }

  override clone(): RMSNorm {
    return new RMSNorm(this.normalizedShape, { eps: this.eps, dtype: this.weight.dtype }).copyParametersFrom(this);
  }

  override extraRepr(): string {
    return `(${this.normalizedShape},), eps=${this.eps}`;
  }
}
