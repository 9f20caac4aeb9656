// Differentiable shape ops. Tensors are always contiguous, so transpose/permute/expand/narrow copy (one
// strided-copy kernel); reshape/view/flatten/squeeze/unsqueeze share storage.
import { Tensor, describe, readShape } from "../tensor.js";
import { native, type NativeTensor } from "../native.js";
import { record, wantsGrad } from "../autograd/record.js";
import { arrayArg, isArray, lengthOf, peftError, shownValue, typeError } from "../errors.js";
import { broadcastShapes, normDim, shown, strided, stridedInto, stridesOf, sumTo, tensorArg } from "./raw.js";

export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  return tensorArg(x, "reshape", "x").reshape(shape);
}
export const view = reshape;

/** The tensor itself under a new handle (tensors are always contiguous). */
export function contiguous(x: Tensor): Tensor {
  tensorArg(x, "contiguous", "x");
  const y = x.detach();
  return wantsGrad(x) ? record("ContiguousBackward", [x], y, ([g]) => [g]) : y;
}

export function flatten(x: Tensor, startDim = 0, endDim = -1): Tensor {
  tensorArg(x, "flatten", "x");
  if (x.shape.length === 0) return x.reshape([1]);
  const s = normDim(startDim, x.shape.length, "flatten", "startDim"), e = normDim(endDim, x.shape.length, "flatten", "endDim");
  if (e < s) throw peftError("ERR_SHAPE", `flatten: endDim ${endDim} comes before startDim ${startDim}`);
  const mid = x.shape.slice(s, e + 1).reduce((a, b) => a * b, 1);
  return x.reshape([...x.shape.slice(0, s), mid, ...x.shape.slice(e + 1)]);
}

export function unsqueeze(x: Tensor, dim: number): Tensor {
  tensorArg(x, "unsqueeze", "x");
  const d = normDim(dim, x.shape.length + 1, "unsqueeze");
  return x.reshape([...x.shape.slice(0, d), 1, ...x.shape.slice(d)]);
}

/** Drops size-1 dimensions (all of them, or the one named). */
export function squeeze(x: Tensor, dim?: number): Tensor {
  tensorArg(x, "squeeze", "x");
  if (dim === undefined) return x.reshape(x.shape.filter((d) => d !== 1));
  const d = normDim(dim, x.shape.length, "squeeze");
  return x.shape[d] === 1 ? x.reshape([...x.shape.slice(0, d), ...x.shape.slice(d + 1)]) : x.reshape(x.shape);
}

/** Reorders the dimensions: out.shape[i] = x.shape[dims[i]]. */
export function permute(x: Tensor, dims: readonly number[]): Tensor {
  tensorArg(x, "permute", "x");
  const n = x.shape.length;
  if (!isArray(dims)) throw typeError(`permute: dims must be an array, got ${describe(dims)}`);
  const len = lengthOf(dims, "permute", "dims");
  if (len !== n) throw peftError("ERR_SHAPE", `permute: dims must list all ${n} dimensions, got ${len}`);
  const p = arrayArg(dims, "permute", "dims", 16).map((d) => normDim(d, n, "permute"));
  if (new Set(p).size !== n) throw peftError("ERR_SHAPE", `permute: dims [${p.join(", ")}] repeat a dimension`);
  const st = stridesOf(x.shape);
  const y = strided(x, p.map((d) => x.shape[d]), p.map((d) => st[d]), 0);
  if (!wantsGrad(x)) return y;
  const inverse = new Array<number>(n);
  p.forEach((d, i) => (inverse[d] = i));
  return record("PermuteBackward", [x], y, ([g]) => [g ? permute(g, inverse) : null]);
}

export function transpose(x: Tensor, dim0: number, dim1: number): Tensor {
  tensorArg(x, "transpose", "x");
  const n = x.shape.length;
  const a = normDim(dim0, n, "transpose", "dim0"), b = normDim(dim1, n, "transpose", "dim1");
  const p = Array.from({ length: n }, (_, i) => i);
  [p[a], p[b]] = [p[b], p[a]];
  return permute(x, p);
}

/** Broadcasts x to `shape` (size-1 dims repeat; -1 keeps a size), copied. */
export function expand(x: Tensor, shape: readonly number[]): Tensor {
  tensorArg(x, "expand", "x");
  shape = readShape(shape, "expand", "shape", true);
  const lead = shape.length - x.shape.length;
  if (lead < 0) throw peftError("ERR_SHAPE", `expand: cannot expand [${x.shape.join(", ")}] to fewer dimensions [${shape.join(", ")}]`);
  const target = shape.map((d, i) => (d === -1 && i >= lead ? x.shape[i - lead] : d));
  const out = broadcastShapes("expand", x.shape, target);
  if (out.join() !== target.join()) throw peftError("ERR_SHAPE", `expand: [${x.shape.join(", ")}] does not expand to [${shape.join(", ")}]`);
  const st = stridesOf(x.shape);
  const strides = target.map((d, i) => (i < lead || x.shape[i - lead] === 1 ? 0 : st[i - lead]));
  const y = strided(x, target, strides, 0);
  if (!wantsGrad(x)) return y;
  const from = x.shape;
  return record("ExpandBackward", [x], y, ([g]) => [g ? sumTo(g, from) : null]);
}

/** The slice [start, start + length) of dimension dim, copied. */
export function narrow(x: Tensor, dim: number, start: number, length: number): Tensor {
  tensorArg(x, "narrow", "x");
  const d = normDim(dim, x.shape.length, "narrow");
  for (const [v, n] of [[start, "start"], [length, "length"]] as const)
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0) throw typeError(`narrow: ${n} must be a non-negative integer, got ${shown(v)}`);
  if (start + length > x.shape[d]) throw peftError("ERR_SHAPE", `narrow: [${start}, ${start + length}) is outside dimension ${dim} of size ${x.shape[d]}`);
  const st = stridesOf(x.shape);
  const shape = x.shape.map((s, i) => (i === d ? length : s));
  const y = strided(x, shape, st, start * st[d]);
  if (!wantsGrad(x)) return y;
  const from = x.shape;
  return record("NarrowBackward", [x], y, ([g]) => {
    if (!g) return [null];
    const dx = Tensor.zeros(from, { dtype: g.dtype });
    stridedInto(g, dx, shape, stridesOf(from), start * stridesOf(from)[d]);
    return [dx];
  });
}

/** Joins tensors of equal shapes (but along dim) along dim. */
export function cat(tensors: readonly Tensor[], dim = 0): Tensor {
  const xs = tensorsArg(tensors, "cat");
  const n = xs[0].shape.length;
  const d = normDim(dim, n, "cat");
  for (const [i, t] of xs.entries())
    if (t.shape.length !== n || t.shape.some((s: number, j: number) => j !== d && s !== xs[0].shape[j]))
      throw peftError("ERR_SHAPE", `cat: tensors[${i}] has shape [${t.shape.join(", ")}], which does not match [${xs[0].shape.join(", ")}] outside dim ${d}`);
  const dtype = xs.every((t) => t.dtype === xs[0].dtype) ? xs[0].dtype : "f32";
  const sizes = xs.map((t) => t.shape[d]);
  const shape = xs[0].shape.map((s: number, j: number) => (j === d ? sizes.reduce((a, b) => a + b, 0) : s));
  const out = Tensor.zeros(shape, { dtype, device: xs[0].device });
  const st = stridesOf(shape);
  let at = 0;
  for (const t of xs) {
    stridedInto(t, out, [...t.shape], st, at * st[d]);
    at += t.shape[d];
  }
  if (!wantsGrad(...xs)) return out;
  return record("CatBackward", [...xs], out, ([g], _s, needs) => {
    if (!g) return xs.map(() => null);
    let off = 0;
    return sizes.map((len, i) => {
      const start = off;
      off += len;
      return needs[i] ? narrow(g, d, start, len) : null;
    });
  });
}

/** Joins tensors of one shape along a new dimension dim. */
export function stack(tensors: readonly Tensor[], dim = 0): Tensor {
  const xs = tensorsArg(tensors, "stack");
  if (typeof dim !== "number" || !Number.isInteger(dim)) throw typeError(`stack: dim must be an integer, got ${shown(dim)}`);
  const parts = xs.map((t) => unsqueeze(t, dim < 0 ? dim + t.shape.length + 1 : dim));
  const out = cat(parts, dim < 0 ? dim + xs[0].shape.length + 1 : dim);
  for (const p of parts) p.dispose();
  return out;
}

/** Pieces along dim: of `size` each (the last may be shorter) or of the listed sizes. */
export function split(x: Tensor, sizes: number | readonly number[], dim = 0): Tensor[] {
  tensorArg(x, "split", "x");
  const d = normDim(dim, x.shape.length, "split");
  const total = x.shape[d];
  let list: number[];
  if (typeof sizes === "number") {
    if (!Number.isInteger(sizes) || sizes <= 0) throw typeError(`split: size must be a positive integer, got ${sizes}`);
    list = [];
    for (let at = 0; at < total; at += sizes) list.push(Math.min(sizes, total - at));
  } else {
    if (!isArray(sizes)) throw typeError(`split: sizes must be a number or an array of numbers, got ${describe(sizes)}`);
    const all = arrayArg(sizes, "split", "sizes");
    for (let i = 0; i < all.length; i++)
      if (typeof all[i] !== "number" || !Number.isInteger(all[i]) || (all[i] as number) < 0)
        throw peftError("ERR_SHAPE", `split: sizes[${i}] must be a non-negative integer, got ${shownValue(all[i])}`);
    list = all as number[];
    if (list.reduce((a, b) => a + b, 0) !== total)
      throw peftError("ERR_SHAPE", `split: sizes (${list.length} of them) do not add up to dimension ${dim}'s ${total}`);
  }
  let at = 0;
  return list.map((len) => {
    const piece = narrow(x, d, at, len);
    at += len;
    return piece;
  });
}

/** A non-empty array of Tensors, read once (its length bounded before any entry is read). */
function tensorsArg(v: unknown, op: string): Tensor[] {
  if (!isArray(v)) throw typeError(`${op}: expected a non-empty array of Tensors, got ${describe(v)}`);
  const list = arrayArg(v, op, "tensors");
  if (!list.length) throw typeError(`${op}: expected a non-empty array of Tensors`);
  list.forEach((t, i) => tensorArg(t, op, `tensors[${i}]`));
  return list as Tensor[];
}

function indexTensor(t: unknown, op: string): Tensor {
  const idx = tensorArg(t, op, "index");
  if (idx.dtype !== "i32" && idx.dtype !== "i64") throw peftError("ERR_DTYPE", `${op}: index must be i32 or i64, got ${idx.dtype}`);
  return idx;
}

/**
 * An op that picks entries of x along dim by an integer index (kernel), whose backward adds the gradient
 * back at the same places into zeros (accumulate, in place).
 */
function indexed(
  op: string,
  name: string,
  kernel: (x: NativeTensor, dim: number, index: NativeTensor) => NativeTensor,
  accumulate: (dst: NativeTensor, dim: number, index: NativeTensor, src: NativeTensor) => void,
) {
  return (x: Tensor, dim: number, index: Tensor): Tensor => {
    tensorArg(x, op, "x");
    const d = normDim(dim, x.shape.length, op);
    const idx = indexTensor(index, op);
    const y = new Tensor(kernel(Tensor.handle(x), d, Tensor.handle(idx)));
    if (!wantsGrad(x)) return y;
    const from = x.shape;
    return record(name, [x], y, ([g], [i]) => {
      if (!g) return [null];
      const dx = Tensor.zeros(from, { dtype: g.dtype });
      accumulate(Tensor.handle(dx), d, Tensor.handle(i), Tensor.handle(g));
      return [dx];
    }, [idx]);
  };
}

/** Entries of x along dim picked by a 1-D index (torch.index_select). */
export const indexSelect = indexed("indexSelect", "IndexSelectBackward", native.indexSelect, native.indexAdd);

/** torch.gather: out[i][j][k] = x[i][index[i][j][k]][k] for dim 1. */
export const gather = indexed("gather", "GatherBackward", native.gather, native.scatterAdd);
