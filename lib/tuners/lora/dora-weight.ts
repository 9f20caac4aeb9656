// The base weight as DoRA reads it (PEFT's dequantize_module_weight): f32, whatever the base stores. Dense
// layers, convolutions and embeddings give their weight; an int8 base (Linear8bitLt) its dequantised CB·SCB/127;
// any other base with a `dequantizeWeight()` method (a 4-bit base) what that returns, f32 (out, in).
import { Tensor } from "../../tensor.js";
import { describe, peftError } from "../../errors.js";
import { Module, Linear8bitLt, Conv1D, Embedding } from "../../nn/index.js";
import { int8Dequantize } from "./int8-dequantize.js";

export interface BaseWeight {
  /** f32, in the base's stored shape: (out, in), Conv1D's (in, out), Conv2d's (out, in / g, kh, kw), Embedding's (num, dim). */
  weight: Tensor;
  /** Whether `weight` is a fresh tensor the caller disposes (false: the live parameter itself). */
  owned: boolean;
  /** Whether the stored layout is (in, out): the output features are its last dimension (Conv1D, Embedding). */
  inOut: boolean;
}

/** A base layer that can hand out its weight dequantised (f32 (out, in)). */
interface Dequantizable {
  dequantizeWeight(): Tensor;
}

function isDequantizable(m: unknown): m is Dequantizable {
  return typeof (m as { dequantizeWeight?: unknown })?.dequantizeWeight === "function";
}

/** The base weight in f32 (see BaseWeight); throws ERR_UNSUPPORTED for a base without one. */
export function baseWeightF32(base: Module): BaseWeight {
  if (isDequantizable(base)) {
    const w = base.dequantizeWeight();
    if (!(w instanceof Tensor) || w.dtype !== "f32" || w.shape.length !== 2)
      throw peftError("ERR_STATE", `${describe(base)}.dequantizeWeight() must return an f32 (out, in) Tensor, got ${describe(w)}`);
    return { weight: w, owned: true, inOut: false };
  }
  if (base instanceof Linear8bitLt) return { weight: int8Dequantize(base.weight, base.SCB), owned: true, inOut: false };
  const w = (base as Module & { weight?: unknown }).weight;
  if (!(w instanceof Tensor)) throw peftError("ERR_UNSUPPORTED", `DoRA: the base layer ${describe(base)} has no weight to decompose`);
  const inOut = base instanceof Conv1D || base instanceof Embedding;
  if (w.dtype === "f32") return { weight: w, owned: false, inOut };
  if (w.dtype !== "bf16" && w.dtype !== "f16") throw peftError("ERR_DTYPE", `DoRA: the base layer ${describe(base)} has a ${w.dtype} weight (f32, bf16 or f16 expected, or a dequantizeWeight() method)`);
  return { weight: w.to("f32"), owned: true, inOut };
}
