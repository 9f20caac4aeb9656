// bitsandbytes' 4-bit quantisation state (QuantState) on our side: quantise a weight into packed codes +
// absmax, optionally with the absmax itself quantised ("double quantisation", compress_statistics: the
// absmax minus its mean in 8-bit blocks of 256 with bitsandbytes' dynamic map), dequantise the statistics
// back to the f32 absmax the kernels read, and the packed `quant_state.bitsandbytes__<type>` tensor (the JSON
// of the non-tensor fields, as pack_dict_to_tensor writes it) transformers saves beside the weight.
import { Tensor, type DType } from "../tensor.js";
import { quant4Quantize } from "../ops.js";
import { peftError } from "../errors.js";
import { pyFloatRepr } from "../pyjson.js";

export type QuantType4 = "nf4" | "fp4";
export const BLOCKSIZES_4BIT = [32, 64, 128, 256, 512, 1024, 2048, 4096];
/** The block size bitsandbytes quantises the absmax with (quantize_blockwise(..., blocksize=256)). */
export const NESTED_BLOCKSIZE = 256;

const f = Math.fround;

/** get_4bit_type(quantType): the 16 code values in f32 (FP4's divided by 12). */
export function quant4Table(t: QuantType4): Float32Array {
  if (t === "nf4")
    return new Float32Array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
      -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224, 0.44070982933044434,
      0.5626170039176941, 0.7229568362236023, 1.0]);
  return new Float32Array([0, 0.0625, 8, 12, 4, 6, 2, 3, -0, -0.0625, -8, -12, -4, -6, -2, -3].map((v) => f(v / 12)));
}

// torch.linspace(start, end, steps, dtype=float32) by its scalar formula: f32 step, the first half counted
// from start, the second from end.
function linspaceF32(start: number, end: number, steps: number): Float32Array {
  const s = f(start), e = f(end), step = f(f(e - s) / (steps - 1)), half = Math.floor(steps / 2);
  const out = new Float32Array(steps);
  for (let i = 0; i < steps; i++) out[i] = i < half ? f(s + f(step * i)) : f(e - f(step * (steps - i - 1)));
  return out;
}

let dynamicMap: Float32Array | null = null;

/** create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), 256 values ascending. */
export function dynamicMap8(): Float32Array {
  if (dynamicMap) return dynamicMap;
  const data: number[] = [];
  for (let i = 0; i < 7; i++) {
    const b = linspaceF32(0.1, 1, 2 ** i + 1);
    const scale = f(10 ** (-6 + i));
    for (let j = 0; j + 1 < b.length; j++) {
      const mean = f(f(b[j] + b[j + 1]) / 2);
      data.push(f(scale * mean), f(-scale * mean));
    }
  }
  data.push(0, 1);
  data.sort((a, b) => a - b);
  return (dynamicMap = new Float32Array(data));
}

/** bitsandbytes' dQuantize<0>: the binary search over the 256-value map, then the midpoint comparison. */
function quantize8(code: Float32Array, x: number): number {
  let pivot = 127, upperPivot = 255, lowerPivot = 0;
  let lower = -1, upper = 1, val = code[pivot];
  for (let i = 64; i > 0; i >>= 1) {
    if (x > val) {
      lowerPivot = pivot, lower = val, pivot += i;
    } else {
      upperPivot = pivot, upper = val, pivot -= i;
    }
    val = code[pivot];
  }
  if (upperPivot === 255) upper = code[upperPivot];
  if (lowerPivot === 0) lower = code[lowerPivot];
  if (x > val) return x > f(f(upper + val) * 0.5) ? upperPivot : pivot;
  return x < f(f(lower + val) * 0.5) ? lowerPivot : pivot;
}

/** quantize_blockwise(a, code, blocksize) as the CUDA kernel: per block absmax, x·(1/absmax) in f32, dQuantize. */
export function quantizeBlockwise8(a: Float32Array, code: Float32Array, blocksize: number): { q: Uint8Array; absmax: Float32Array } {
  const blocks = Math.ceil(a.length / blocksize);
  const q = new Uint8Array(a.length), absmax = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    const i0 = b * blocksize, i1 = Math.min(a.length, i0 + blocksize);
    let m = 0;
    for (let i = i0; i < i1; i++) m = Math.max(m, Math.abs(a[i]));
    absmax[b] = m;
    const r = f(1 / m);
    for (let i = i0; i < i1; i++) q[i] = quantize8(code, f(a[i] * r));
  }
  return { q, absmax };
}

/** dequantize_blockwise + offset: code[q]·absmax in f32, plus the offset in f32. */
export function dequantizeBlockwise8(q: Uint8Array, absmax: Float32Array, code: Float32Array, blocksize: number, offset: number): Float32Array {
  const out = new Float32Array(q.length);
  const off = f(offset);
  for (let i = 0; i < q.length; i++) out[i] = f(f(code[q[i]] * absmax[Math.floor(i / blocksize)]) + off);
  return out;
}

/** The statistics of a 4-bit weight: plain f32 absmax, or the nested form. */
export interface Quant4Stats {
  /** f32 (blocks), or u8 (blocks) when nested. */
  absmax: Tensor;
  nested: { absmax: Tensor /* f32 */; code: Tensor /* f32 (256) */; offset: number; blocksize: number; dtype: string } | null;
}

/** Quantises the f32 absmax as bitsandbytes' compress_statistics does (offset = its mean, computed in f64 and rounded to f32). */
export function compressStatistics(absmax: Tensor): Quant4Stats {
  const a = absmax.toFloat32Array();
  let sum = 0;
  for (const v of a) sum += v;
  const offset = a.length ? f(sum / a.length) : 0;
  const shifted = a.map((v) => f(v - offset));
  const code = dynamicMap8();
  const { q, absmax: am2 } = quantizeBlockwise8(shifted, code, NESTED_BLOCKSIZE);
  return {
    absmax: Tensor.fromArray(q, [q.length], "u8"),
    nested: { absmax: Tensor.fromArray(am2, [am2.length], "f32"), code: Tensor.fromArray(code, [256], "f32"), offset, blocksize: NESTED_BLOCKSIZE, dtype: "float32" },
  };
}

/** The f32 absmax the kernels read: the tensor itself (a copy) when plain, else dequantised from the nested form. */
export function absmaxF32(stats: Quant4Stats): Tensor {
  if (!stats.nested) return stats.absmax.to("f32");
  const n = stats.nested;
  const q = stats.absmax.view() as Uint8Array;
  const out = dequantizeBlockwise8(q, n.absmax.toFloat32Array(), n.code.toFloat32Array(), n.blocksize, n.offset);
  return Tensor.fromArray(out, [out.length], "f32");
}

/** quantize_4bit(w, blocksize, compress_statistics, quant_type): [packed codes, statistics]. */
export function quantize4bit(w: Tensor, quantType: QuantType4, blocksize: number, compress: boolean): [Tensor, Quant4Stats] {
  const [packed, absmax] = quant4Quantize(w, quantType, blocksize);
  if (!compress) return [packed, { absmax, nested: null }];
  try {
    return [packed, compressStatistics(absmax)];
  } finally {
    absmax.dispose();
  }
}

// torch dtype names as QuantState.as_dict writes them (str(dtype).strip("torch.")).
const TORCH_NAMES: Record<string, DType> = { float32: "f32", float16: "f16", bfloat16: "bf16" };
export function torchDtypeName(d: DType): string {
  const name = Object.entries(TORCH_NAMES).find(([, v]) => v === d)?.[0];
  if (!name) throw peftError("ERR_DTYPE", `4-bit quant state: the weight dtype must be f32, f16 or bf16, got ${d}`);
  return name;
}
export function dtypeOfTorchName(s: unknown, what: string): DType {
  const d = typeof s === "string" ? TORCH_NAMES[s] : undefined;
  if (!d) throw peftError("ERR_CHECKPOINT", `${what}: dtype ${JSON.stringify(s)} is not one of float32, float16, bfloat16`);
  return d;
}

/** The non-tensor fields of a QuantState. */
export interface QuantStateInfo {
  quantType: QuantType4;
  blocksize: number;
  dtype: DType;
  shape: [number, number];
  nested: { blocksize: number; dtype: string; offset: number } | null;
}

// json.dumps(obj) with Python's default separators; floats as Python's repr.
function pyDumps(v: unknown, floatKeys: Set<string>, key = ""): string {
  if (v === null) return "null";
  if (typeof v === "number") return floatKeys.has(key) ? pyFloatRepr(v) : String(v);
  if (typeof v === "string") return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map((x) => pyDumps(x, floatKeys)).join(", ")}]`;
  return `{${Object.entries(v as object).map(([k, x]) => `${JSON.stringify(k)}: ${pyDumps(x, floatKeys, k)}`).join(", ")}}`;
}

/** pack_dict_to_tensor(as_dict's non-tensor fields): the UTF-8 JSON bytes as a u8 tensor. */
export function packQuantState(info: QuantStateInfo): Tensor {
  const d: Record<string, unknown> = { quant_type: info.quantType, blocksize: info.blocksize, dtype: torchDtypeName(info.dtype), shape: info.shape };
  if (info.nested) Object.assign(d, { nested_blocksize: info.nested.blocksize, nested_dtype: info.nested.dtype, nested_offset: info.nested.offset });
  const bytes = new TextEncoder().encode(pyDumps(d, new Set(["nested_offset"])));
  return Tensor.fromArray(bytes, [bytes.length], "u8");
}

/** unpack_tensor_to_dict + QuantState.from_dict's checks, for a layer's quant_state tensor. */
export function unpackQuantState(t: Tensor, what: string): QuantStateInfo {
  if (t.dtype !== "u8") throw peftError("ERR_CHECKPOINT", `${what}: the quant_state tensor must be u8 (JSON bytes), got ${t.dtype}`);
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(t.view() as Uint8Array));
  } catch (e) {
    throw peftError("ERR_CHECKPOINT", `${what}: the quant_state tensor is not JSON: ${(e as Error).message}`);
  }
  if (typeof o !== "object" || o === null || Array.isArray(o)) throw peftError("ERR_CHECKPOINT", `${what}: the quant_state JSON must be an object`);
  const qt = o.quant_type;
  if (qt !== "nf4" && qt !== "fp4") throw peftError("ERR_UNSUPPORTED", `${what}: quant_type ${JSON.stringify(qt)} is not supported (nf4 or fp4)`);
  const bs = o.blocksize;
  if (typeof bs !== "number" || !BLOCKSIZES_4BIT.includes(bs)) throw peftError("ERR_CHECKPOINT", `${what}: blocksize ${JSON.stringify(bs)} is not one of ${BLOCKSIZES_4BIT.join(", ")}`);
  const shape = o.shape;
  if (!Array.isArray(shape) || shape.length !== 2 || !shape.every((d) => Number.isSafeInteger(d) && d >= 0))
    throw peftError("ERR_CHECKPOINT", `${what}: shape ${JSON.stringify(shape)} must be [out, in] of non-negative integers`);
  let nested: QuantStateInfo["nested"] = null;
  if ("nested_offset" in o || "nested_blocksize" in o) {
    const nb = o.nested_blocksize, off = o.nested_offset;
    if (typeof nb !== "number" || !Number.isSafeInteger(nb) || nb <= 0) throw peftError("ERR_CHECKPOINT", `${what}: nested_blocksize ${JSON.stringify(nb)} must be a positive integer`);
    if (typeof off !== "number" || !Number.isFinite(off)) throw peftError("ERR_CHECKPOINT", `${what}: nested_offset ${JSON.stringify(off)} must be a finite number`);
    dtypeOfTorchName(o.nested_dtype, `${what} (nested_dtype)`);
    nested = { blocksize: nb, dtype: o.nested_dtype as string, offset: off };
  }
  return { quantType: qt, blocksize: bs, dtype: dtypeOfTorchName(o.dtype, what), shape: [shape[0], shape[1]], nested };
}
