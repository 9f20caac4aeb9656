// Differentiable reductions over any set of dimensions, with keepdim.
import { Tensor } from "../tensor.js";
import { native } from "../native.js";
import { record, wantsGrad } from "../autograd/record.js";
import { arrayArg, isArray, optionsArg, typeError } from "../errors.js";
import { ew, normDim, reduceRaw, tensorArg } from "./raw.js";
import { expand } from "./shape.js";
import { noGrad } from "../autograd/grad-mode.js";

export interface ReduceOptions {
  /** A dimension or a list of them (negative from the end); all of them when omitted. */
  dim?: number | readonly number[];
  keepdim?: boolean;
}

function dimsOf(x: Tensor, opts: ReduceOptions, op: string): number[] {
  if (opts === null || typeof opts !== "object") throw typeError(`${op}: options must be an object`);
  const d = opts.dim;
  if (d === undefined) return x.shape.map((_, i) => i);
  const list = typeof d === "number" ? [d] : d;
  if (!isArray(list)) throw typeError(`${op}: dim must be a number or an array of numbers`);
  return arrayArg(list, op, "dim", 16).map((v) => normDim(v, Math.max(x.shape.length, 1), op));
}

/** The reduced shape with the reduced dims kept as 1 (what a gradient is reshaped to before expanding). */
function keptShape(shape: readonly number[], dims: number[]): number[] {
  return shape.map((s, i) => (dims.includes(i) ? 1 : s));
}

/** g (of the reduced shape) broadcast back over x's shape, times an optional factor. */
function spread(g: Tensor, from: readonly number[], dims: number[], factor = 1): Tensor {
  const k = g.reshape(keptShape(from, dims));
  const e = noGrad(() => expand(k, from));
  k.dispose();
  if (factor === 1) return e;
  const s = ew("affine", [e], e.dtype, [factor, 0]);
  e.dispose();
  return s;
}

function count(shape: readonly number[], dims: number[]): number {
  return dims.reduce((a, d) => a * (shape[d] ?? 1), 1);
}

/** sum and mean: linear in x, so the gradient is g spread back over the reduced dims (÷ count for mean). */
function linearReduce(op: "sum" | "mean", name: string, x: Tensor, opts: ReduceOptions): Tensor {
  tensorArg(x, op, "x");
  const dims = dimsOf(x, opts, op);
  const { values } = reduceRaw(op, x, dims, opts.keepdim === true, x.dtype);
  if (!wantsGrad(x)) return values;
  const from = x.shape;
  const factor = op === "mean" ? 1 / count(from, dims) : 1;
  return record(name, [x], values, ([g]) => [g ? spread(g, from, dims, factor) : null]);
}

export function sum(x: Tensor, opts: ReduceOptions = {}): Tensor {
  return linearReduce("sum", "SumBackward", x, opts);
}

export function mean(x: Tensor, opts: ReduceOptions = {}): Tensor {
  return linearReduce("mean", "MeanBackward", x, opts);
}

/** Variance with Bessel's correction (1 by default, as torch.var; 0 for the population variance). */
export function variance(x: Tensor, opts: ReduceOptions & { correction?: number } = {}): Tensor {
  tensorArg(x, "var", "x");
  const dims = dimsOf(x, opts, "var");
  const correction = opts.correction ?? 1;
  const { values } = reduceRaw("var", x, dims, opts.keepdim === true, x.dtype, correction);
  if (!wantsGrad(x)) return values;
  const from = x.shape;
  return record("VarBackward", [x], values, ([g], [xs]) => {
    if (!g) return [null];
    // d var / dx = 2 (x - mean) / (N - correction)
    const { values: m } = reduceRaw("mean", xs, dims, true, xs.dtype);
    const centered = ew("sub", [xs, m], xs.dtype);
    m.dispose();
    const gs = spread(g, from, dims, 2 / (count(from, dims) - correction));
    const dx = ew("mul", [gs, centered], xs.dtype);
    gs.dispose();
    centered.dispose();
    return [dx];
  }, [x]);
}
export { variance as var_ };

function extreme(op: "max" | "min", x: Tensor, opts: ReduceOptions): Tensor {
  tensorArg(x, op, "x");
  const dims = dimsOf(x, opts, op);
  const keepdim = opts.keepdim === true;
  const { values, indices } = reduceRaw(op, x, dims, keepdim, x.dtype);
  if (!wantsGrad(x)) {
    indices?.dispose();
    return values;
  }
  const from = x.shape;
  const name = op === "max" ? "MaxBackward" : "MinBackward";
  if (indices && dims.length === 1) {
    // One dim: the gradient goes to the first extreme element of each slice (its index), as torch does.
    const d = dims[0];
    const out = record(name, [x], values, ([g], [idx]) => {
      if (!g) return [null];
      const dx = Tensor.zeros(from, { dtype: g.dtype });
      const gk = g.reshape(keptShape(from, dims));
      const ik = idx.reshape(keptShape(from, dims));
      native.scatterAdd(Tensor.handle(dx), d, Tensor.handle(ik), Tensor.handle(gk));
      gk.dispose();
      ik.dispose();
      return [dx];
    }, [indices]);
    indices.dispose();
    return out;
  }
  indices?.dispose();
  // Several dims: ties share the gradient evenly (torch's max() over everything).
  return record(name, [x], values, ([g], [xs, v]) => {
    if (!g) return [null];
    const vk = v.reshape(keptShape(from, dims));
    const mask = ew("eq", [xs, vk], g.dtype);
    vk.dispose();
    const { values: n } = reduceRaw("sum", mask, dims, true, g.dtype);
    const share = ew("div", [mask, n], g.dtype);
    mask.dispose();
    n.dispose();
    const gs = spread(g, from, dims);
    const dx = ew("mul", [gs, share], g.dtype);
    gs.dispose();
    share.dispose();
    return [dx];
  }, [x, values]);
}

export function max(x: Tensor, opts: ReduceOptions = {}): Tensor {
  return extreme("max", x, opts);
}

export function min(x: Tensor, opts: ReduceOptions = {}): Tensor {
  return extreme("min", x, opts);
}

/** Indices of the largest entries along dim (no gradient). */
export function argmax(x: Tensor, dim: number, opts: { keepdim?: boolean } = {}): Tensor {
  tensorArg(x, "argmax", "x");
  const d = normDim(dim, x.shape.length, "argmax");
  const { values, indices } = reduceRaw("max", x, [d], optionsArg(opts, "argmax").keepdim === true, x.dtype);
  values.dispose();
  return indices!;
}

