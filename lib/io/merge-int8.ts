// The int8 side of the checkpoint merge: a base stored as bitsandbytes writes it (`X.weight` i8, `X.SCB` f32,
// `X.weight_format` u8) has its LoRA delta merged as PEFT's Linear8bitLt merge does (dequantise CB·SCB/127,
// add s·B·A in f32, requantise), and `--dtype int8` quantises the floating linear weights as quantize:
// "int8" loading does (every 2-D `.weight` outside the output head and embeddings), adding SCB and
// weight_format beside them.
import { Tensor } from "../tensor.js";
import { int8Quantize } from "../ops.js";
import { applyLoraDeltas, type LoraDelta } from "../tuners/lora/delta.js";
import { int8Dequantize } from "../tuners/lora/bnb.js";
import { INT8_DEFAULT_SKIP, skipped } from "./int8-quantize.js";

/** `X` of an int8 base layer's `X.weight` or `X.SCB` key (both present in the base), or null. */
export function int8BasePath(key: string, dtypeOf: (k: string) => string | undefined): string | null {
  const m = /^(.*)\.(weight|SCB)$/.exec(key);
  if (!m) return null;
  const path = m[1];
  return dtypeOf(`${path}.weight`) === "I8" && dtypeOf(`${path}.SCB`) !== undefined ? path : null;
}

/** `X` when `X.weight` is a linear layer's weight (2-D, not an embedding's), else null. */
export function linearPath(key: string, shape: readonly number[]): string | null {
  if (shape.length !== 2 || !key.endsWith(".weight")) return null;
  const path = key.slice(0, -".weight".length);
  return /(^|\.)(embed[^.]*|wte|wpe)$/.test(path) ? null : path;
}

/** `X` when `X.weight` (2-D, floating) is one `--dtype int8` quantises: not the output head nor an embedding. */
export function quantizedPath(key: string, shape: readonly number[], floating: boolean): string | null {
  const path = floating ? linearPath(key, shape) : null;
  return path === null || skipped(path, INT8_DEFAULT_SKIP) ? null : path;
}

/** PEFT's int8 merge of one base layer: the requantised [CB, SCB] of dequant(CB, SCB) + s·B·A. */
export function mergeInt8(cb: Tensor, scb: Tensor, delta: LoraDelta): [Tensor, Tensor] {
  using w = int8Dequantize(cb, scb);
  applyLoraDeltas(w, [delta]);
  return int8Quantize(w);
}

/** bitsandbytes' weight_format tag for the "row" layout its int8 weights are stored in. */
export function rowFormat(): Tensor {
  return Tensor.fromArray([0], [], "u8");
}
