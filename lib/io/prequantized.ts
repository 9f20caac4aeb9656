// Pre-quantized checkpoints (transformers' save_pretrained of a load_in_4bit / load_in_8bit model, e.g. the
// "-bnb-4bit" models people download): a Linear whose checkpoint entry is a bitsandbytes 4-bit layer
// (`weight` u8 packed codes, `weight.absmax`, `weight.quant_map`, optionally `weight.nested_absmax` and
// `weight.nested_quant_map`, and `weight.quant_state.bitsandbytes__<nf4|fp4>`, the quant state's JSON as u8) or
// an int8 layer (`weight` i8 + `SCB` + `weight_format`) is replaced by an empty Linear4bit / Linear8bitLt of
// that layout before anything is read, so the loader reads the codes straight into it: nothing is
// dequantised or quantised again. Which layers are quantized is read from the keys (a checkpoint may keep some
// layers, e.g. lm_head or llm_int8_skip_modules, in full precision).
import { peftError } from "../errors.js";
import { Linear } from "../nn/linear.js";
import { Linear4bit, type ComputeDtype4bit } from "../nn/linear4bit.js";
import { Linear8bitLt } from "../nn/linear8bit.js";
import type { Module } from "../nn/module.js";
import { Tensor, transientBytes, type DType } from "../tensor.js";
import { native } from "../native.js";
import type { CheckpointLayout } from "./checkpoint-layout.js";
import { readFullySync } from "./file-io.js";

export interface PrequantizedOptions {
  /** Compute dtype of the 4-bit layers (transformers' bnb_4bit_compute_dtype; default "f32"). */
  computeDtype?: ComputeDtype4bit;
  /** Outlier threshold of the int8 layers (transformers' llm_int8_threshold; default 6.0). */
  threshold?: number;
  /**
   * What the model's config.json says the checkpoint holds (its quantization_config): a checkpoint without
   * such layers, or with another kind, is an error before anything is read.
   */
  expect?: PrequantizedKind;
}

export type PrequantizedKind = "nf4" | "fp4" | "int8";

/** The layers put in place, by kind. */
export type PrequantizedFound = Record<PrequantizedKind, number>;

const QS = /^(.*)\.weight\.quant_state\.bitsandbytes__(nf4|fp4)$/;

/** A (small) tensor read whole from the checkpoint. */
export function readTensorSync(src: CheckpointLayout, key: string): Tensor {
  const info = src.info(key);
  const place = src.place(key)!;
  if (info.tensorDType === null) throw peftError("ERR_DTYPE", `${place.file}: "${key}" is ${info.dtype}, which has no tensor dtype`);
  const t = Tensor.zeros(info.shape, { dtype: info.tensorDType });
  const bytes = transientBytes(t, true);
  try {
    readFullySync(place.fd, bytes, place.layout.offset(place.t), place.file);
  } catch (e) {
    t.dispose();
    throw e;
  } finally {
    native.releaseBytes(bytes);
  }
  return t;
}

/** The file holding `key` (for messages). */
function fileOf(src: CheckpointLayout, key: string): string {
  return src.place(key)?.file ?? src.path;
}

/**
 * Checks the tensors a 4-bit layer at `p` (file key prefix) needs are there with bitsandbytes' dtypes; their
 * shapes are checked by the loader against the layer the quant state implies.
 */
function check4bitKeys(src: CheckpointLayout, p: string, nested: boolean): void {
  const need: [string, string[]][] = [
    [`${p}.weight`, ["u8"]],
    [`${p}.weight.absmax`, [nested ? "u8" : "f32"]],
    [`${p}.weight.quant_map`, ["f32"]],
    ...(nested ? ([[`${p}.weight.nested_absmax`, ["f32"]], [`${p}.weight.nested_quant_map`, ["f32"]]] as [string, string[]][]) : []),
  ];
  for (const [key, dtypes] of need) {
    if (!src.place(key))
      throw peftError("ERR_CHECKPOINT", `${src.path}: "${key}" is missing beside the 4-bit weight "${p}.weight" (its quant state${nested ? " is nested and" : ""} needs ${need.map(([k]) => k.slice(p.length + 1)).join(", ")})`);
    const info = src.info(key);
    if (!dtypes.includes(info.tensorDType ?? ""))
      throw peftError("ERR_DTYPE", `${fileOf(src, key)}: "${key}" is ${info.dtype}, expected ${dtypes.join(" or ")} for a bitsandbytes 4-bit layer${key.endsWith(".weight") ? " (bnb_4bit_quant_storage other than uint8 is not supported)" : ""}`);
  }
  if (!nested)
    for (const k of [`${p}.weight.nested_absmax`, `${p}.weight.nested_quant_map`])
      if (src.place(k)) throw peftError("ERR_CHECKPOINT", `${fileOf(src, k)}: "${k}" is present but the quant state of "${p}.weight" has no nested_offset (not double-quantised)`);
}

/** The 4-bit layers a checkpoint holds: file key prefix -> its quant state's key. */
export function fourBitLayers(src: CheckpointLayout): Map<string, string> {
  const out = new Map<string, string>();
  for (const k of src.keys()) {
    const m = QS.exec(k);
    if (m) out.set(m[1], k);
  }
  return out;
}

/**
 * An empty Linear4bit of the quant state stored under `qsKey` for the layer at file key prefix `p`, its other
 * tensors checked to be there; `shape` (the model's [out, in]) must match the quant state's when given.
 */
export function emptyLinear4bitFor(src: CheckpointLayout, p: string, qsKey: string, opts: { bias: boolean; biasDtype?: DType; computeDtype?: ComputeDtype4bit; shape?: [number, number] }): Linear4bit {
  const state = readTensorSync(src, qsKey);
  try {
    const what = `${fileOf(src, qsKey)}: "${qsKey}"`;
    const q = Linear4bit.fromQuantState(state, { bias: opts.bias, biasDtype: opts.biasDtype, computeDtype: opts.computeDtype, what });
    try {
      if (qsKey !== `${p}.weight.quant_state.bitsandbytes__${q.quantType}`)
        throw peftError("ERR_CHECKPOINT", `${what}: the quant state holds quant_type ${q.quantType}, its key says otherwise`);
      if (opts.shape && (q.outFeatures !== opts.shape[0] || q.inFeatures !== opts.shape[1]))
        throw peftError("ERR_SHAPE", `${what}: the quant state's shape [${q.outFeatures}, ${q.inFeatures}] is not the model's [${opts.shape.join(", ")}] for ${p}`);
      check4bitKeys(src, p, q.compressStatistics);
    } catch (e) {
      q.dispose();
      throw e;
    }
    return q;
  } finally {
    state.dispose();
  }
}

/**
 * Replaces each plain Linear of `model` that the checkpoint stores as a bitsandbytes 4-bit or int8 layer (file
 * key = prefix + path) by an empty layer of that layout, and returns how many of each kind it put in place.
 */
export function adoptPrequantized(model: Module, src: CheckpointLayout, prefix: string, opts: PrequantizedOptions = {}): PrequantizedFound {
  const found: PrequantizedFound = { nf4: 0, fp4: 0, int8: 0 };
  const fourBit = fourBitLayers(src);
  if (fourBit.size > 0 || src.keys().some((k) => k.endsWith(".SCB"))) {
    const linears = [...model.namedModules()].filter(([path, m]) => path !== "" && m instanceof Linear && m.constructor === Linear) as [string, Linear][];
    for (const [path, lin] of linears) {
      const p = prefix + path;
      const qsKey = fourBit.get(p);
      if (qsKey !== undefined) {
        const q = emptyLinear4bitFor(src, p, qsKey, {
          bias: lin.bias !== null, biasDtype: lin.bias?.dtype, computeDtype: opts.computeDtype ?? "f32", shape: [lin.outFeatures, lin.inFeatures],
        });
        model.setSubmodule(path, q);
        found[q.quantType]++;
        continue;
      }
      const w = src.place(`${p}.weight`) ? src.info(`${p}.weight`) : null;
      if (w?.tensorDType === "i8" && src.place(`${p}.SCB`)) {
        if (w.shape.length !== 2 || w.shape[0] !== lin.outFeatures || w.shape[1] !== lin.inFeatures)
          throw peftError("ERR_SHAPE", `${fileOf(src, `${p}.weight`)}: "${p}.weight" has shape [${w.shape.join(", ")}] but the model's ${path} is [${lin.outFeatures}, ${lin.inFeatures}]`);
        model.setSubmodule(path, Linear8bitLt.empty(lin.inFeatures, lin.outFeatures, { bias: lin.bias !== null, dtype: lin.bias?.dtype, threshold: opts.threshold ?? 6.0 }));
        found.int8++;
      }
    }
  }
  if (opts.expect !== undefined) {
    const kinds = (Object.keys(found) as PrequantizedKind[]).filter((k) => found[k] > 0);
    if (kinds.length === 0)
      throw peftError("ERR_CHECKPOINT", `${src.path}: config.json's quantization_config says the weights are ${opts.expect}, but the checkpoint holds no bitsandbytes ${opts.expect === "int8" ? "int8 layer (weight + SCB)" : "4-bit layer (weight.quant_state.bitsandbytes__*)"} for the model's Linear layers`);
    const other = kinds.filter((k) => k !== opts.expect);
    if (other.length)
      throw peftError("ERR_CHECKPOINT", `${src.path}: config.json's quantization_config says ${opts.expect}, but the checkpoint holds ${other.map((k) => `${found[k]} ${k} layer(s)`).join(" and ")}`);
  }
  return found;
}

const COMPUTE_DTYPES: Record<string, ComputeDtype4bit> = { float32: "f32", bfloat16: "bf16", float16: "f16" };

/**
 * The settings a config.json's `quantization_config` (transformers' BitsAndBytesConfig.to_dict) gives the
 * pre-quantized layers, or undefined when it has none. `file` names config.json in errors.
 */
export function prequantizedOptionsOf(config: Record<string, unknown>, file: string): PrequantizedOptions | undefined {
  const qc = config.quantization_config;
  if (qc === undefined || qc === null) return undefined;
  const fail = (key: string, what: string, code: "ERR_CONFIG" | "ERR_UNSUPPORTED" = "ERR_CONFIG"): never => {
    throw peftError(code, `${file}: "quantization_config${key ? "." + key : ""}" ${what}`);
  };
  if (typeof qc !== "object" || Array.isArray(qc)) fail("", `must be an object, got ${JSON.stringify(qc)}`);
  const q = qc as Record<string, unknown>;
  if (q.quant_method !== undefined && q.quant_method !== "bitsandbytes")
    fail("quant_method", `is ${JSON.stringify(q.quant_method)}: only bitsandbytes 4-bit and int8 checkpoints load`, "ERR_UNSUPPORTED");
  for (const k of ["load_in_4bit", "load_in_8bit", "bnb_4bit_use_double_quant"])
    if (q[k] !== undefined && typeof q[k] !== "boolean") fail(k, `must be true or false, got ${JSON.stringify(q[k])}`);
  if (q.load_in_4bit === true && q.load_in_8bit === true) fail("", "sets both load_in_4bit and load_in_8bit");
  if (q.load_in_4bit === true) {
    const type = q.bnb_4bit_quant_type ?? "fp4"; // BitsAndBytesConfig's default
    if (type !== "nf4" && type !== "fp4") fail("bnb_4bit_quant_type", `is ${JSON.stringify(type)} (nf4 or fp4 expected)`, "ERR_UNSUPPORTED");
    const storage = q.bnb_4bit_quant_storage ?? "uint8";
    if (storage !== "uint8") fail("bnb_4bit_quant_storage", `is ${JSON.stringify(storage)}: only uint8 storage of the packed codes is supported`, "ERR_UNSUPPORTED");
    const cdt = q.bnb_4bit_compute_dtype ?? "float32";
    const computeDtype = typeof cdt === "string" ? COMPUTE_DTYPES[cdt.replace(/^torch\./, "")] : undefined;
    if (!computeDtype) fail("bnb_4bit_compute_dtype", `is ${JSON.stringify(cdt)} (float32, bfloat16 or float16 expected)`, "ERR_UNSUPPORTED");
    return { expect: type as PrequantizedKind, computeDtype };
  }
  if (q.load_in_8bit === true) {
    const t = q.llm_int8_threshold ?? 6.0;
    if (typeof t !== "number" || !(t >= 0) || !Number.isFinite(t)) fail("llm_int8_threshold", `must be a finite number >= 0, got ${JSON.stringify(t)}`);
    return { expect: "int8", threshold: t as number };
  }
  return undefined;
}
