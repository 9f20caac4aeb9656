// Tensor: a thin class over the native handle. Shape/dtype/device are cached on the JS side; the data lives
// in reference-counted native storage shared by handles, reshapes and typed-array views.
import { native, type NativeTensor } from "./native.js";
import { describe, isArray, lengthOf, optionsArg, peftError, rangeError, shownValue, typeError } from "./errors.js";
import { takeRng } from "./random.js";
import { isInitSkipped } from "./init-mode.js";
import { track, untrack } from "./autograd/scope.js";
import { Node } from "./autograd/node.js";
import { record, wantsGrad } from "./autograd/record.js";
import { runBackward } from "./autograd/engine.js";

export type DType = "f32" | "f16" | "bf16" | "i8" | "u8" | "i32" | "i64";
export type Device = "cpu" | "cuda";
export const DTYPES: readonly DType[] = ["f32", "f16", "bf16", "i8", "u8", "i32", "i64"];
export const DTYPE_SIZE: Readonly<Record<DType, number>> = { f32: 4, f16: 2, bf16: 2, i8: 1, u8: 1, i32: 4, i64: 8 };

export function isDType(v: unknown): v is DType {
  return typeof v === "string" && (DTYPES as readonly string[]).includes(v);
}

function checkDType(v: unknown, what: string): DType {
  if (!isDType(v)) throw typeError(`${what}: dtype must be one of ${DTYPES.join(", ")}, got ${shownValue(v)}`);
  return v;
}

function checkDevice(v: unknown, what: string): Device {
  if (v !== "cpu" && v !== "cuda") throw typeError(`${what}: device must be "cpu" or "cuda", got ${shownValue(v)}`);
  return v;
}

// Plain arrays become Float64Array (exact for every JS number); typed arrays go through as they are.
function numericData(data: unknown, what: string): ArrayBufferView {
  if (ArrayBuffer.isView(data) && !(data instanceof DataView)) {
    if (data instanceof Uint16Array || data instanceof Int16Array || data instanceof Uint32Array ||
        data instanceof Uint8ClampedArray || data instanceof BigUint64Array) {
      return Float64Array.from(data as ArrayLike<number>, Number);
    }
    return data;
  }
  if (data === null || typeof data !== "object") throw typeError(`${what}: data must be an array of numbers, got ${describe(data)}`);
  const a = data as ArrayLike<unknown>;
  const n: unknown = a.length;
  if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 0) throw typeError(`${what}: data must be an array of numbers`);
  // A plain array this long (1 GiB as doubles) is a sparse array or a made-up length, not data.
  if (n > 2 ** 27) throw rangeError(`${what}: data has ${n} entries; pass a typed array for data this large`);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const v = a[i];
    if (typeof v !== "number") throw typeError(`${what}: data[${i}] must be a number, got ${typeof v}`);
    out[i] = v;
  }
  return out;
}

/**
 * A shape argument read once into a fresh array of plain numbers. Getters and proxy traps of the caller's
 * array run here, before any native code; the native side only ever sees arrays the library made.
 */
export function readShape(shape: unknown, op: string, name = "shape", allowInfer = false): number[] {
  if (!isArray(shape)) throw typeError(`${op}: ${name} must be an array of non-negative integers, got ${describe(shape)}`);
  const n = lengthOf(shape, op, name);
  if (n > 16) throw rangeError(`${op}: ${name} has ${n} dimensions; at most 16 are supported`);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const d: unknown = shape[i];
    if (typeof d !== "number") throw typeError(`${op}: ${name}[${i}] must be a number, got ${describe(d)}`);
    if (!Number.isSafeInteger(d) || (d < 0 && !(allowInfer && d === -1)))
      throw rangeError(`${op}: ${name}[${i}] must be a non-negative integer${allowInfer ? " or -1" : ""}, got ${d}`);
    out[i] = d;
  }
  return out;
}

/** Resolves one -1 in a reshape target to the size that keeps the element count, as PyTorch does. */
function inferDim(dims: number[], numel: number, op: string): number[] {
  const at = dims.indexOf(-1);
  if (at < 0) return dims;
  if (dims.indexOf(-1, at + 1) >= 0) throw rangeError(`${op}: only one dimension can be -1, got [${dims.join(", ")}]`);
  const rest = dims.reduce((a, d, i) => (i === at ? a : a * d), 1);
  if (rest === 0 || numel % rest !== 0)
    throw peftError("ERR_SHAPE", `${op}: cannot infer the -1 in [${dims.join(", ")}] for ${numel} elements`);
  const out = [...dims];
  out[at] = numel / rest;
  return out;
}

const handleKey = Symbol("node-peft.handle");

// Where the addon writes a new tensor's dtype, device and dims (at most 16): one buffer reused by every
// construction instead of a typed array allocated per tensor. Read at once, before any other JS runs.
const metaScratch = new Float64Array(2 + 16);

export class Tensor implements Disposable {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly device: Device;
  /** Leaves: whether backward accumulates into .grad. Results of recorded ops: set by the graph. */
  requiresGrad = false;
  #grad: Tensor | null = null;
  #gradFn: Node | null = null;
  #gradIndex = 0;
  // Only tensors this constructor made carry it: a Proxy around a Tensor, or an object made from
  // Tensor.prototype, is no Tensor (instanceof says so, see Symbol.hasInstance below).
  readonly #brand = true;
  private readonly [handleKey]: NativeTensor;

  /**
   * `x instanceof Tensor` holds only for tensors the library made: not for a Proxy around one (its traps
   * could hand out anything) nor for an object whose prototype is Tensor.prototype.
   */
  static [Symbol.hasInstance](v: unknown): boolean {
    return typeof v === "object" && v !== null && #brand in v && Function.prototype[Symbol.hasInstance].call(this, v);
  }

  /** Wraps a native handle; users make tensors with the static factories. */
  constructor(handle: NativeTensor) {
    const ndim = native.tensorMeta(handle, metaScratch);
    if (ndim < 0) throw typeError("Tensor: use Tensor.fromArray, Tensor.zeros or Tensor.randn");
    this[handleKey] = handle;
    this.dtype = DTYPES[metaScratch[0]];
    this.device = metaScratch[1] === 0 ? "cpu" : "cuda";
    const shape = new Array<number>(ndim);
    for (let i = 0; i < ndim; i++) shape[i] = metaScratch[2 + i];
    this.shape = Object.freeze(shape);
    track(this);
  }

  /** The accumulated gradient (a Tensor of this tensor's shape, or null). */
  get grad(): Tensor | null {
    return this.#grad;
  }

  set grad(g: Tensor | null) {
    if (g !== null && !(g instanceof Tensor)) throw typeError(`Tensor.grad must be a Tensor or null, got ${describe(g)}`);
    this.#grad = g;
  }

  /** The graph node that made this tensor (null for leaves and for anything made under noGrad). */
  get gradFn(): Node | null {
    return this.#gradFn;
  }

  /** Only null can be assigned (it cuts the tensor from its graph, as detach_() does); the graph sets nodes. */
  set gradFn(node: Node | null) {
    if (node === this.#gradFn) return;
    if (node !== null) throw typeError(`Tensor.gradFn is set by the autograd graph; only null can be assigned, got ${describe(node)}`);
    this.#release();
  }

  /** Which output of gradFn this tensor is. */
  get gradIndex(): number {
    return this.#gradIndex;
  }

  set gradIndex(_: number) {
    throw typeError("Tensor.gradIndex is set by the autograd graph");
  }

  /** A leaf: made by the user (or a parameter), not by a recorded op. */
  get isLeaf(): boolean {
    return this.#gradFn === null;
  }

  /** @internal Makes this tensor output `index` of a graph node. */
  attachGradFn(node: Node, index: number): void {
    if (!(node instanceof Node)) throw typeError(`Tensor.attachGradFn: node must be a graph node, got ${describe(node)}`);
    if (!Number.isSafeInteger(index) || index < 0) throw typeError(`Tensor.attachGradFn: index must be a non-negative integer, got ${shownValue(index)}`);
    node.ref();
    this.#release();
    this.#gradFn = node;
    this.#gradIndex = index;
    this.requiresGrad = true;
  }

  #release(): void {
    const node = this.#gradFn;
    this.#gradFn = null;
    this.#gradIndex = 0;
    node?.unref();
  }

  /**
   * Backpropagates from this tensor: `grad` defaults to 1 for a one-element tensor. Leaves that require
   * grad accumulate into `.grad`. Without `retainGraph` the graph's saved tensors are freed on the way, so a
   * second backward through it is an ERR_STATE error.
   */
  backward(grad?: Tensor, opts: { retainGraph?: boolean } = {}): void {
    runBackward(this, grad, opts?.retainGraph === true);
  }

  /** The same storage, cut from the graph: no gradFn, no gradient. */
  detach(): Tensor {
    return new Tensor(this[handleKey].reshape([...this.shape]));
  }

  static fromArray(data: ArrayLike<number> | ArrayBufferView, shape: readonly number[], dtype: DType = "f32"): Tensor {
    return new Tensor(native.fromArray(numericData(data, "Tensor.fromArray"), readShape(shape, "Tensor.fromArray"), checkDType(dtype, "Tensor.fromArray"), "cpu"));
  }

  /** Raw 16-bit floats (f16 or bf16 bit patterns), copied. */
  static fromBits(bits: Uint16Array, shape: readonly number[], dtype: "f16" | "bf16"): Tensor {
    if (!(bits instanceof Uint16Array)) throw typeError("Tensor.fromBits: bits must be a Uint16Array");
    if (dtype !== "f16" && dtype !== "bf16") throw typeError(`Tensor.fromBits: dtype must be "f16" or "bf16", got ${shownValue(dtype)}`);
    return new Tensor(native.fromBytes(bits, readShape(shape, "Tensor.fromBits"), dtype, "cpu"));
  }

  /** Raw storage bytes of any dtype (little-endian), copied. */
  static fromBytes(bytes: ArrayBufferView, shape: readonly number[], dtype: DType): Tensor {
    if (!ArrayBuffer.isView(bytes)) throw typeError("Tensor.fromBytes: bytes must be a typed array or Buffer");
    return new Tensor(native.fromBytes(bytes, readShape(shape, "Tensor.fromBytes"), checkDType(dtype, "Tensor.fromBytes"), "cpu"));
  }

  /** `touch`: fault the memory in now on the pool's threads (before a single-threaded fill, e.g. a file read). */
  static zeros(shape: readonly number[], options: { dtype?: DType; device?: Device; touch?: boolean } = {}): Tensor {
    const opts = optionsArg(options, "Tensor.zeros");
    const dims = readShape(shape, "Tensor.zeros");
    const dtype = checkDType(opts.dtype ?? "f32", "Tensor.zeros");
    return new Tensor(native.zeros(dims, dtype, checkDevice(opts.device ?? "cpu", "Tensor.zeros"), opts.touch === true));
  }

  /** Normal samples from the Philox generator; the same numbers for any thread count or device. */
  static randn(
    shape: readonly number[],
    options: { seed?: number; stream?: number; dtype?: DType; device?: Device; mean?: number; std?: number } = {},
  ): Tensor {
    const opts = optionsArg(options, "Tensor.randn");
    const dims = readShape(shape, "Tensor.randn");
    const dtype = checkDType(opts.dtype ?? "f32", "Tensor.randn");
    const device = checkDevice(opts.device ?? "cpu", "Tensor.randn");
    if (isInitSkipped()) return Tensor.zeros(dims, { dtype, device }); // constructed empty, loaded later
    const { seed, stream } = takeRng(opts.seed, "Tensor.randn", opts.stream);
    const mean = opts.mean ?? 0, std = opts.std ?? 1;
    return new Tensor(native.randn(dims, dtype, device, seed, stream, mean, std));
  }

  /** Uniform samples in [lo, hi) (weight init). */
  static rand(shape: readonly number[], options: { seed?: number; stream?: number; dtype?: DType; lo?: number; hi?: number } = {}): Tensor {
    const opts = optionsArg(options, "Tensor.rand");
    const dims = readShape(shape, "Tensor.rand");
    const dtype = checkDType(opts.dtype ?? "f32", "Tensor.rand");
    if (isInitSkipped()) return Tensor.zeros(dims, { dtype }); // constructed empty, loaded later
    const { seed, stream } = takeRng(opts.seed, "Tensor.rand", opts.stream);
    const lo = opts.lo ?? 0, hi = opts.hi ?? 1;
    return new Tensor(native.randUniform(dims, dtype, seed, stream, lo, hi));
  }

  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  get disposed(): boolean {
    return this[handleKey].disposed();
  }

  /** A copy as f32 (any dtype; ints convert exactly up to 2^24). */
  toFloat32Array(): Float32Array {
    return this[handleKey].toFloat32Array();
  }

  /** A copy as f64 (exact for every dtype but i64 beyond 2^53). */
  toFloat64Array(): Float64Array {
    return this[handleKey].toFloat64Array();
  }

  /** Plain nested-free number array (a copy). */
  toArray(): number[] {
    return Array.from(this.toFloat64Array());
  }

  /**
   * A zero-copy typed array over the host storage (f16/bf16 as raw Uint16Array bits). It stays valid after
   * dispose(). Writes through it change the tensor, so cached derived forms (packed weights) are dropped.
   */
  view(): Float32Array | Int8Array | Uint8Array | Int32Array | BigInt64Array | Uint16Array {
    return this[handleKey].view();
  }

  /** A zero-copy byte view of the storage; `writable` marks the tensor as about to change. */
  bytes(opts: { writable?: boolean } = {}): Uint8Array {
    return this[handleKey].bytes(optionsArg(opts, "Tensor.bytes").writable === true, false);
  }

  /** A new tensor in another dtype or on another device. */
  to(target: DType | Device): Tensor {
    if (!isDType(target) && target !== "cpu" && target !== "cuda")
      throw typeError(`Tensor.to: target must be a dtype or "cpu"/"cuda", got ${shownValue(target)}`);
    return new Tensor(this[handleKey].to(target));
  }

  /** Same storage, another shape (same element count). */
  reshape(shape: readonly number[]): Tensor {
    const dims = inferDim(readShape(shape, "reshape", "shape", true), this.numel, "reshape");
    const out = new Tensor(this[handleKey].reshape(dims));
    if (!wantsGrad(this)) return out;
    const from = this.shape;
    return record("ReshapeBackward", [this], out, ([g]) => [g ? g.reshape(from) : null]);
  }

  /** Copies src into this tensor in place (same shape; dtype converted). */
  copyFrom(src: Tensor): void {
    this[handleKey].copyFrom(handleOf(src, "copyFrom", "src"));
  }

  /** True when both tensors share storage (a reshape, a state-dict entry). */
  sharesStorage(other: Tensor): boolean {
    return other instanceof Tensor && this[handleKey].sharesStorage(other[handleKey]);
  }

  /** Storage version: bumped by every native write path. */
  get version(): number {
    return this[handleKey].version();
  }

  /** Frees the native memory now (views keep theirs); a graph this tensor came from is released too. */
  dispose(): void {
    this[handleKey].dispose();
    this.#release();
    untrack(this);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(", ")}], ${this.device}${this.disposed ? ", disposed" : ""})`;
  }

  /** @internal */
  static handle(t: Tensor): NativeTensor {
    return t[handleKey];
  }
}

/**
 * The library's own zero-copy access for a file read or write that finishes before the tensor is used
 * again. Unlike bytes(), the buffer does not count as a live view, so the packed-weight cache stays on.
 * @internal
 */
export function transientBytes(t: Tensor, writable: boolean): Uint8Array {
  return Tensor.handle(t).bytes(writable, true);
}

/** The native handle of a Tensor argument, or a TypeError naming the op and argument. */
export function handleOf(t: unknown, op: string, name: string): NativeTensor {
  if (!(t instanceof Tensor)) throw typeError(`${op}: ${name} must be a Tensor, got ${describe(t)}`);
  return Tensor.handle(t);
}

/** Like handleOf, but null/undefined pass through as null. */
export function optionalHandle(t: unknown, op: string, name: string): NativeTensor | null {
  return t === null || t === undefined ? null : handleOf(t, op, name);
}

export { describe };

