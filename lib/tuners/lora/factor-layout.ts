// How a LoRA layer's stored factors map to the matrices of its delta: A as (r, n), B as (m, r), with
// delta = B·A in the 2-D form the combination works on. Linear (A (r, in), B (out, r)), Conv2d (A (r, in,
// kh, kw), B (out, r, 1, 1): PEFT flattens the kernel into n) and Embedding (lora_embedding_A (r, num),
// lora_embedding_B (dim, r)) are all reshapes of that, the default; a layer type stored otherwise
// registers its own layout.
import { Tensor } from "../../tensor.js";
import { peftError, typeError } from "../../errors.js";
import { LoraLayer } from "./layer.js";

export interface FactorMatrices {
  /** A (r, n), row-major. */
  a: Float32Array;
  /** B (m, r), row-major. */
  b: Float32Array;
  r: number;
  m: number;
  n: number;
}

export interface FactorLayout {
  /** The adapter's factors as matrices, in fresh arrays (the combination prunes them in place). */
  read(layer: LoraLayer, adapter: string): FactorMatrices;
  /**
   * Stores matrices A (k, n) and B (m, k) (row-major, k ≤ the adapter's r) as the adapter's factors; rows of
   * A and columns of B past k are zero, so the delta is B·A whatever the adapter's r.
   */
  write(layer: LoraLayer, adapter: string, a: ArrayLike<number>, b: ArrayLike<number>, k: number): void;
}

const reshapeLayout: FactorLayout = {
  read(layer, adapter) {
    const { A, B } = layer.loraFactors(adapter);
    const r = layer.r[adapter];
    const n = A.numel / r, m = B.numel / r;
    if (A.shape[0] !== r || B.shape[1] !== r || !Number.isInteger(n) || !Number.isInteger(m))
      throw peftError("ERR_UNSUPPORTED", `${layer.constructor.name}: factors of shapes [${A.shape}] and [${B.shape}] are not A (r, …), B (…, r) with r = ${r}; register a FactorLayout for this layer type`);
    return { a: A.toFloat32Array(), b: B.toFloat32Array(), r, m, n };
  },
  write(layer, adapter, a, b, k) {
    const { A, B } = layer.loraFactors(adapter);
    const r = layer.r[adapter];
    const n = A.numel / r, m = B.numel / r;
    const a2 = new Float32Array(r * n);
    for (let i = 0; i < k * n; i++) a2[i] = a[i];
    const b2 = new Float32Array(m * r);
    for (let i = 0; i < m; i++) for (let j = 0; j < k; j++) b2[i * r + j] = b[i * k + j];
    using ta = Tensor.fromArray(a2, A.shape);
    using tb = Tensor.fromArray(b2, B.shape);
    A.copyFrom(ta);
    B.copyFrom(tb);
  },
};

const layouts = new Map<Function, FactorLayout>();

/** Uses `layout` for layers of `cls` (and its subclasses without a layout of their own). */
export function registerFactorLayout(cls: abstract new (...args: never[]) => LoraLayer, layout: FactorLayout): void {
  if (typeof cls !== "function") throw typeError(`registerFactorLayout: cls must be a LoraLayer class`);
  if (layout === null || typeof layout !== "object" || typeof layout.read !== "function" || typeof layout.write !== "function")
    throw typeError("registerFactorLayout: layout must have read and write functions");
  layouts.set(cls, layout);
}

export function factorLayoutOf(layer: LoraLayer): FactorLayout {
  for (let c = layer.constructor; c && c !== LoraLayer; c = Object.getPrototypeOf(c)) {
    const l = layouts.get(c);
    if (l) return l;
  }
  return reshapeLayout;
}
