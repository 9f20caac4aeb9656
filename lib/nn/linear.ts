// Linear (torch.nn.Linear: weight (out, in)) and Conv1D (GPT-2: weight (in, out)); both y = x·W(ᵀ) + b.
import { Tensor, type DType } from "../tensor.js";
import { linear, linearGradInput, linearGradWeight } from "../ops.js";
import { sumRows } from "../kernels.js";
import { optionsArg, peftError, typeError } from "../errors.js";
import { Module, gradOf, markAbstract, type BackwardOptions } from "./module.js";
import { takeRng } from "../random.js";

function checkFeatures(n: unknown, what: string): number {
  if (typeof n !== "number") throw typeError(`${what} must be a number`);
  if (!Number.isSafeInteger(n) || n < 0) throw peftError("ERR_CONFIG", `${what} must be a non-negative integer, got ${n}`);
  return n;
}

/** Shared forward/backward of a dense layer; subclasses say where the weight keeps its dimensions. */
export abstract class DenseBase extends Module {
  abstract weight: Tensor;
  abstract bias: Tensor | null;
  protected abstract readonly weightInOut: boolean;

  forward(x: Tensor): Tensor {
    this.input(x);
    const y = linear(x, this.weight, this.bias, { weightInOut: this.weightInOut });
    return this.weightLayerOutput(x, y, this.weight, this.bias, (g, xs, wantDx, w) => this.gradients(g, xs, wantDx, w));
  }

  override backward(dy: Tensor, options: BackwardOptions = {}): Tensor | null {
    const opts = this.gradInput(dy, options);
    const [x] = this.saved();
    const dx = this.gradients(dy, x, opts.inputGrad !== false, this.weight);
    this.releaseSaved();
    return dx;
  }

  /** dW and db accumulate into .grad (when trainable); returns dx when asked for. */
  protected gradients(dy: Tensor, x: Tensor | undefined, wantDx: boolean, weight: Tensor): Tensor | null {
    const layout = { weightInOut: this.weightInOut };
    if (this.weight.requiresGrad) {
      if (!x) throw peftError("ERR_STATE", `${this.describe()}.backward: the weight was frozen during forward; run forward again after unfreezing it`);
      linearGradWeight(dy, x, gradOf(this.weight), { accumulate: true, ...layout });
    }
    if (this.bias?.requiresGrad) sumRows(dy, gradOf(this.bias), { accumulate: true });
    return wantDx ? linearGradInput(dy, weight, layout) : null;
  }
}

export class Linear extends DenseBase {
  weight: Tensor;
  bias: Tensor | null;
  readonly inFeatures: number;
  readonly outFeatures: number;
  protected readonly weightInOut = false;

  /** PyTorch's init: kaiming_uniform(a=√5) for the weight, U(±1/√in) for the bias. */
  constructor(inFeatures: number, outFeatures: number, options: { bias?: boolean; dtype?: DType; seed?: number } = {}) {
    super();
    const opts = optionsArg(options, "Linear");
    this.inFeatures = checkFeatures(inFeatures, "Linear: inFeatures");
    this.outFeatures = checkFeatures(outFeatures, "Linear: outFeatures");
    const bound = inFeatures > 0 ? 1 / Math.sqrt(inFeatures) : 0;
    // Weight and bias draw from two streams of one seed, so a seeded layer is reproducible.
    const rng = takeRng(opts.seed, "Linear");
    const dtype = opts.dtype ?? "f32";
    this.weight = this.registerParameter(
      "weight",
      Tensor.rand([outFeatures, inFeatures], { seed: rng.seed, stream: rng.stream * 2, lo: -bound, hi: bound, dtype }),
    );
    this.bias =
      opts.bias === false
        ? null
        : this.registerParameter("bias", Tensor.rand([outFeatures], { seed: rng.seed, stream: rng.stream * 2 + 1, lo: -bound, hi: bound, dtype }));
    if (opts.bias === false) this.registerParameter("bias", null);
  }

  override clone(): Linear {
    const c = new Linear(this.inFeatures, this.outFeatures, { bias: this.bias !== null, dtype: this.weight.dtype });
    return c.copyParametersFrom(this);
  }

  override extraRepr(): string {
    return `in_features=${this.inFeatures}, out_features=${this.outFeatures}, bias=${this.bias ? "True" : "False"}`;
  }
}

/**
 * GPT-2's Conv1D (transformers' `Conv1D(nf, nx)`): nf output features, nx input features, weight stored
 * (in, out) = (nx, nf); init N(0, 0.02), bias zeros.
 */
export class Conv1D extends DenseBase {
  weight: Tensor;
  bias: Tensor;
  readonly nx: number;
  readonly nf: number;
  protected readonly weightInOut = true;

  constructor(nf: number, nx: number, options: { dtype?: DType; seed?: number } = {}) {
    super();
    const opts = optionsArg(options, "Conv1D");
    this.nf = checkFeatures(nf, "Conv1D: nf");
    this.nx = checkFeatures(nx, "Conv1D: nx");
    const dtype = opts.dtype ?? "f32";
    this.weight = this.registerParameter("weight", Tensor.randn([nx, nf], { seed: opts.seed, std: 0.02, dtype }));
    this.bias = this.registerParameter("bias", Tensor.zeros([nf], { dtype }));
  }

  override clone(): Conv1D {
    return new Conv1D(this.nf, this.nx, { dtype: this.weight.dtype }).copyParametersFrom(this);
  }

  override extraRepr(): string {
    return `nf=${this.nf}, nx=${this.nx}`;
  }
}

markAbstract(DenseBase);
