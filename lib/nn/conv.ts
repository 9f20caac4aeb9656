// Conv2d (torch.nn.Conv2d): NCHW input, weight (out, in / groups, kh, kw), zero padding.
import { Tensor, type DType } from "../tensor.js";
import { conv2d, conv2dBackward, type Conv2dGeometry } from "../ops.js";
import { describe, isArray, optionsArg, peftError, shownValue, typeError } from "../errors.js";
import { Module, gradOf, type BackwardOptions } from "./module.js";
import { takeRng } from "../random.js";

export type Pair = number | readonly [number, number];

export interface Conv2dOptions {
  stride?: Pair;
  /** A number or pair, or PyTorch's "valid" (0) and "same" (stride 1; output as large as the input). */
  padding?: Pair | "valid" | "same";
  dilation?: Pair;
  groups?: number;
  bias?: boolean;
  /** Only "zeros" (PyTorch's default). */
  paddingMode?: "zeros";
  dtype?: DType;
  seed?: number;
}

/** A number or [h, w] pair of integers >= min, as a pair. */
export function pairArg(v: unknown, what: string, min: number): [number, number] {
  const pair = typeof v === "number" ? [v, v] : isArray(v) && v.length === 2 ? [v[0], v[1]] : null;
  if (!pair) throw typeError(`${what} must be a number or a [height, width] pair, got ${describe(v)}`);
  for (const n of pair)
    if (typeof n !== "number" || !Number.isSafeInteger(n) || n < min || n > 1 << 20)
      throw peftError("ERR_CONFIG", `${what} must hold integers >= ${min}, got ${shownValue(v)}`);
  return pair as [number, number];
}

/** PyTorch's "same": total padding d·(k − 1) per side pair; an odd total (PyTorch pads one more at the end) is refused. */
function samePadding(kernel: [number, number], dilation: [number, number], stride: [number, number], what: string): [number, number] {
  if (stride[0] !== 1 || stride[1] !== 1) throw peftError("ERR_CONFIG", `${what}: padding "same" is not supported for strided convolutions`);
  return [0, 1].map((i) => {
    const total = dilation[i] * (kernel[i] - 1);
    if (total % 2)
      throw peftError("ERR_UNSUPPORTED", `${what}: padding "same" with an even dilated kernel (${kernel.join("x")}, dilation ${dilation.join("x")}) needs uneven padding, which is not supported; pad explicitly`);
    return total / 2;
  }) as [number, number];
}

export class Conv2d extends Module {
  weight: Tensor;
  bias: Tensor | null;
  readonly inChannels: number;
  readonly outChannels: number;
  readonly kernelSize: [number, number];
  readonly stride: [number, number];
  readonly padding: [number, number];
  readonly dilation: [number, number];
  readonly groups: number;

  /** PyTorch's init: kaiming_uniform(a=√5) for the weight and U(±1/√fan_in) for the bias, fan_in = in/groups·kh·kw. */
  constructor(inChannels: number, outChannels: number, kernelSize: Pair, options: Conv2dOptions = {}) {
    super();
    const opts = optionsArg(options, "Conv2d");
    for (const [n, what] of [[inChannels, "inChannels"], [outChannels, "outChannels"]] as const) {
      if (typeof n !== "number") throw typeError(`Conv2d: ${what} must be a number, got ${describe(n)}`);
      if (!Number.isSafeInteger(n) || n < 1) throw peftError("ERR_CONFIG", `Conv2d: ${what} must be a positive integer, got ${shownValue(n)}`);
    }
    const groups = opts.groups ?? 1;
    if (typeof groups !== "number" || !Number.isSafeInteger(groups) || groups < 1)
      throw peftError("ERR_CONFIG", `Conv2d: groups must be a positive integer, got ${shownValue(groups)}`);
    if (inChannels % groups || outChannels % groups)
      throw peftError("ERR_CONFIG", `Conv2d: groups (${groups}) must divide inChannels (${inChannels}) and outChannels (${outChannels})`);
    if (opts.paddingMode !== undefined && opts.paddingMode !== "zeros")
      throw peftError("ERR_UNSUPPORTED", `Conv2d: paddingMode ${shownValue(opts.paddingMode)} is not supported (only "zeros")`);
    this.inChannels = inChannels;
    this.outChannels = outChannels;
    this.groups = groups;
    this.kernelSize = pairArg(kernelSize, "Conv2d: kernelSize", 1);
    this.stride = pairArg(opts.stride ?? 1, "Conv2d: stride", 1);
    this.dilation = pairArg(opts.dilation ?? 1, "Conv2d: dilation", 1);
    const p = opts.padding ?? 0;
    this.padding = p === "valid" ? [0, 0] : p === "same" ? samePadding(this.kernelSize, this.dilation, this.stride, "Conv2d") : pairArg(p, "Conv2d: padding", 0);
    const fanIn = (inChannels / groups) * this.kernelSize[0] * this.kernelSize[1];
    const bound = 1 / Math.sqrt(fanIn);
    const rng = takeRng(opts.seed, "Conv2d");
    const dtype = opts.dtype ?? "f32";
    const shape = [outChannels, inChannels / groups, ...this.kernelSize];
    this.weight = this.registerParameter("weight", Tensor.rand(shape, { seed: rng.seed, stream: rng.stream * 2, lo: -bound, hi: bound, dtype }));
    this.bias =
      opts.bias === false
        ? this.registerParameter("bias", null)
        : this.registerParameter("bias", Tensor.rand([outChannels], { seed: rng.seed, stream: rng.stream * 2 + 1, lo: -bound, hi: bound, dtype }));
  }

  get geometry(): Conv2dGeometry {
    return { stride: this.stride, padding: this.padding, dilation: this.dilation, groups: this.groups };
  }

  forward(x: Tensor): Tensor {
    this.input(x);
    const y = conv2d(x, this.weight, this.bias, this.geometry);
    // Without x (a frozen weight keeps none), dx needs only x's shape.
    const xShape = x.shape;
    this.#lastShape = xShape;
    return this.weightLayerOutput(x, y, this.weight, this.bias, (g, xs, wantDx, w) => this.gradients(g, xs ?? xShape, wantDx, w));
  }

  #lastShape: readonly number[] = [];

  override backward(dy: Tensor, options: BackwardOptions = {}): Tensor | null {
    const opts = this.gradInput(dy, options);
    const [x] = this.saved();
    const dx = this.gradients(dy, x ?? this.#lastShape, opts.inputGrad !== false, this.weight);
    this.releaseSaved();
    return dx;
  }

  /** dW and db accumulate into .grad (when trainable); returns dx when asked for. */
  protected gradients(dy: Tensor, x: Tensor | readonly number[], wantDx: boolean, weight: Tensor): Tensor | null {
    const trainW = this.weight.requiresGrad;
    if (trainW && !(x instanceof Tensor))
      throw peftError("ERR_STATE", `${this.describe()}.backward: the weight was frozen during forward; run forward again after unfreezing it`);
    return conv2dBackward(dy, x, weight, this.geometry, {
      wantDx,
      dW: trainW ? gradOf(this.weight) : null,
      db: this.bias?.requiresGrad ? gradOf(this.bias) : null,
    });
  }

  override clone(): Conv2d {
    const c = new Conv2d(this.inChannels, this.outChannels, this.kernelSize, {
      ...this.geometry,
      bias: this.bias !== null,
      dtype: this.weight.dtype,
    });
    return c.copyParametersFrom(this);
  }

  override extraRepr(): string {
    const pair = (p: readonly number[]) => `(${p.join(", ")})`;
    let s = `${this.inChannels}, ${this.outChannels}, kernel_size=${pair(this.kernelSize)}, stride=${pair(this.stride)}`;
    if (this.padding.some((v) => v)) s += `, padding=${pair(this.padding)}`;
    if (this.dilation.some((v) => v !== 1)) s += `, dilation=${pair(this.dilation)}`;
    if (this.groups !== 1) s += `, groups=${this.groups}`;
    if (!this.bias) s += ", bias=False";
    return s;
  }
}
