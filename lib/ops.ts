// Dense ops over tensors. Each wrapper checks argument types here; the addon checks dtypes, shapes and
// devices and throws PeftError with the op's name.
import { native, type NativeTensor } from "./native.js";
import { Tensor, handleOf, optionalHandle, readShape } from "./tensor.js";
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

/** A 2-D convolution's geometry, every pair (height, width). */
export interface Conv2dGeometry {
  stride: readonly [number, number];
  padding: readonly [number, number];
  dilation: readonly [number, number];
  groups: number;
}

/** The array the addon takes: [strideH, strideW, padH, padW, dilationH, dilationW, groups]. */
export function geometryArray(g: Conv2dGeometry): number[] {
  return [g.stride[0], g.stride[1], g.padding[0], g.padding[1], g.dilation[0], g.dilation[1], g.groups];
}

/** y = conv2d(x, W) + b, NCHW, W (out, in / groups, kh, kw); y in x's dtype. */
export function conv2d(x: Tensor, weight: Tensor, bias: Tensor | null | undefined, geometry: Conv2dGeometry): Tensor {
  const op = "conv2d";
  return new Tensor(native.conv2d(handleOf(x, op, "x"), handleOf(weight, op, "weight"), optionalHandle(bias, op, "bias"), geometryArray(geometry)));
}

/**
 * The gradients of conv2d from dy: dW and db accumulate into the given tensors (null: not wanted); returns
 * dx (in dy's dtype) when wantDx, else null. Without dW, x's shape is enough.
 */
export function conv2dBackward(
  dy: Tensor,
  x: Tensor | readonly number[],
  weight: Tensor,
  geometry: Conv2dGeometry,
  opts: { wantDx?: boolean; dW?: Tensor | null; db?: Tensor | null } = {},
): Tensor | null {
  const op = "conv2dBackward";
  const o = optionsArg(opts, op);
  const dx = native.conv2dBackward(
    handleOf(dy, op, "dy"),
    x instanceof Tensor ? handleOf(x, op, "x") : readShape(x, op, "x"),
    handleOf(weight, op, "weight"),
    geometryArray(geometry),
    o.wantDx !== false,
    optionalHandle(o.dW, op, "dW"),
    optionalHandle(o.db, op, "db"),
  );
  return dx ? new Tensor(dx) : null;
}

/**
 * LLM.int8 quantisation of a weight (out, in) as bitsandbytes does it (rounded to f16, row absmax, round
 * half to even): [CB i8 (out, in), SCB f32 (out)]. A row holding NaN/inf is a RangeError naming it.
 */
export function int8Quantize(weight: Tensor): [Tensor, Tensor] {
  const [cb, scb] = native.int8Quantize(handleOf(weight, "int8Quantize", "weight"));
  return [new Tensor(cb), new Tensor(scb)];
}

/**
 * y = x·dequant(CB, SCB)ᵀ + b (+ u·bt) in x's dtype; input columns with any |x| >= threshold (> 0) in floating
 * point. `rank` adds u (rows of x, r) · bt (r, out), both f32, in the kernel's epilogue (fused LoRA). With
 * `rank.down` (LoRA's A, (r, in) f32; CPU, x f32) u is written instead of read: u = scale·x·downᵀ, computed in
 * the pass that quantises x.
 */
export function int8Linear(x: Tensor, cb: Tensor, scb: Tensor, bias: Tensor | null, threshold: number, rank?: { u: Tensor; bt: Tensor; down?: Tensor; scale?: number }): Tensor {
  const op = "int8Linear";
  const u = rank ? handleOf(rank.u, op, "u") : null, bt = rank ? handleOf(rank.bt, op, "bt") : null;
  const down = rank?.down ? handleOf(rank.down, op, "down") : null;
  return new Tensor(native.int8Linear(handleOf(x, op, "x"), handleOf(cb, op, "CB"), handleOf(scb, op, "SCB"), optionalHandle(bias, op, "bias"), threshold, u, bt, down, rank?.scale ?? 1));
}

/** dx = dy·dequant(CB, SCB) in dy's dtype (the int8 weight is widened as the GEMM packs it). */
export function int8LinearGradInput(dy: Tensor, cb: Tensor, scb: Tensor): Tensor {
  const op = "int8LinearGradInput";
  return new Tensor(native.int8LinearGradInput(handleOf(dy, op, "dy"), handleOf(cb, op, "CB"), handleOf(scb, op, "SCB")));
}

/** A 4-bit weight as the quant4 ops take it (see nn/quant-4bit.ts): codes, f32 absmax, and how to read them. */
export interface Quant4Operand {
  packed: Tensor;
  absmax: Tensor;
  quantType: "nf4" | "fp4";
  blocksize: number;
  /** (out, in) */
  shape: readonly [number, number];
  /** The dtype bitsandbytes dequantises into (the weight's when it was quantised): values are rounded to it. */
  dtype: "f32" | "f16" | "bf16";
  /** The compute dtype: values are then rounded to it. */
  computeDtype: "f32" | "bf16";
}

function quant4Args(w: Quant4Operand, op: string): [NativeTensor, NativeTensor, string, number, number, number, string, string] {
  return [handleOf(w.packed, op, "packed weight"), handleOf(w.absmax, op, "absmax"), w.quantType, w.blocksize, w.shape[0], w.shape[1], w.dtype, w.computeDtype];
}

/**
 * bitsandbytes' quantize_4bit of any float tensor (its values in row-major order): [packed codes u8 ((n + 1) / 2, 1),
 * absmax f32 (one per block)]. A NaN or infinite value is a RangeError naming it.
 */
export function quant4Quantize(weight: Tensor, quantType: "nf4" | "fp4", blocksize: number): [Tensor, Tensor] {
  const [p, a] = native.quant4Quantize(handleOf(weight, "quant4Quantize", "weight"), quantType, blocksize);
  return [new Tensor(p), new Tensor(a)];
}

/** The (out, in) weight as bitsandbytes' dequantize_4bit gives it (in w.dtype), stored in `dtype`. */
export function quant4Dequantize(w: Quant4Operand, dtype: "f32" | "f16" | "bf16" = "f32"): Tensor {
  return new Tensor(native.quant4Dequantize(...quant4Args(w, "quant4Dequantize"), dtype));
}

/** y = x·Wᵀ + b in x's dtype, W unpacked block by block into the GEMM's panels. */
export function quant4Linear(x: Tensor, w: Quant4Operand, bias: Tensor | null): Tensor {
  const op = "quant4Linear";
  return new Tensor(native.quant4Linear(handleOf(x, op, "x"), ...quant4Args(w, op), optionalHandle(bias, op, "bias")));
}

/** dx = dy·W in dy's dtype. */
export function quant4LinearGradInput(dy: Tensor, w: Quant4Operand): Tensor {
  const op = "quant4LinearGradInput";
  return new Tensor(native.quant4LinearGradInput(handleOf(dy, op, "dy"), ...quant4Args(w, op)));
}
