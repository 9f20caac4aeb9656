// Thin wrappers over the native functional kernels (no graph), and the helpers every differentiable op
// shares: dtype promotion, strides, reducing a broadcast gradient back to an input's shape.
import { native } from "../native.js";
import { Tensor, handleOf, type DType } from "../tensor.js";
import { peftError, shownValue, typeError } from "../errors.js";

export type Operand = Tensor | number;

/** A value for an error message (errors.ts's shownValue: never throws, never long). */
export const shown = shownValue;

/** PyTorch's promotion among float dtypes: equal dtypes stay, any mix computes and returns f32. */
export function promote(...ts: Tensor[]): DType {
  const first = ts[0].dtype;
  return ts.every((t) => t.dtype === first) ? first : "f32";
}

/** A Tensor argument, checked as every op checks one (handleOf's TypeError naming op and argument). */
export function tensorArg(v: unknown, op: string, name: string): Tensor {
  handleOf(v, op, name);
  return v as Tensor;
}

export function numberArg(v: unknown, op: string, name: string): number {
  if (typeof v !== "number") throw typeError(`${op}: ${name} must be a number, got ${shown(v)}`);
  return v;
}

/** One elementwise kernel call: broadcasting inputs, f32 math, `dtype` out. */
export function ew(op: string, inputs: Tensor[], dtype: DType, scalars: number[] = []): Tensor {
  return new Tensor(native.elementwise(op, inputs.map((t, i) => handleOf(t, op, `input ${i}`)), dtype, scalars));
}

/** Row-major element strides of a shape. */
export function stridesOf(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/** A dimension index, negative counting from the end, checked against ndim. */
export function normDim(dim: unknown, ndim: number, op: string, name = "dim"): number {
  if (typeof dim !== "number" || !Number.isInteger(dim)) throw typeError(`${op}: ${name} must be an integer, got ${shown(dim)}`);
  const d = dim < 0 ? dim + ndim : dim;
  if (d < 0 || d >= ndim) throw peftError("ERR_SHAPE", `${op}: ${name} ${dim} is out of range for ${ndim} dimensions`);
  return d;
}

/** Raw reduction (no graph). */
export function reduceRaw(op: string, x: Tensor, dims: number[], keepdim: boolean, dtype: DType, correction = 1) {
  const r = native.reduce(op, handleOf(x, op, "x"), dims, keepdim, correction, dtype);
  return { values: new Tensor(r.values), indices: r.indices ? new Tensor(r.indices) : null };
}

/**
 * g summed over the dimensions it was broadcast along, to `shape` (PyTorch's sum_to_size). Returns g itself
 * when the shapes already agree (the caller hands it on or disposes it).
 */
export function sumTo(g: Tensor, shape: readonly number[]): Tensor {
  if (g.shape.length === shape.length && g.shape.every((d, i) => d === shape[i])) return g;
  const lead = g.shape.length - shape.length;
  const dims: number[] = [];
  for (let i = 0; i < g.shape.length; i++) if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) dims.push(i);
  const { values } = reduceRaw("sum", g, dims, true, g.dtype);
  const out = values.reshape(shape);
  values.dispose();
  return out;
}

/** The broadcast shape of several shapes, or ERR_SHAPE naming the op. */
export function broadcastShapes(op: string, ...shapes: (readonly number[])[]): number[] {
  const n = Math.max(...shapes.map((s) => s.length));
  const out = new Array<number>(n).fill(1);
  for (const s of shapes)
    for (let i = 0; i < s.length; i++) {
      const j = n - s.length + i, d = s[i];
      if (d === out[j] || d === 1) continue;
      if (out[j] !== 1) throw peftError("ERR_SHAPE", `${op}: shapes ${shapes.map((x) => `[${x.join(", ")}]`).join(" and ")} do not broadcast`);
      out[j] = d;
    }
  return out;
}

/** Copies a strided view of x (no graph). */
export function strided(x: Tensor, shape: number[], strides: number[], offset: number): Tensor {
  return new Tensor(native.copyStrided(handleOf(x, "copyStrided", "src"), shape, strides, offset, null, [], 0));
}

/** Writes src into the strided view of dst, in place (no graph). */
export function stridedInto(src: Tensor, dst: Tensor, shape: number[], dstStrides: number[], dstOffset: number): void {
  native.copyStrided(handleOf(src, "copyStrided", "src"), shape, stridesOf(shape), 0, handleOf(dst, "copyStrided", "dst"), dstStrides, dstOffset);
}
