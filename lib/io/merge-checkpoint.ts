// Merging a PEFT LoRA, AdaLoRA or IA3 adapter into a base checkpoint, tensor by tensor (memory bounded by the largest
// tensor): W' = W + scale·B·A (transposed for fan_in_fan_out) for LoRA targets (AdaLoRA's as B·(A ⊙ E)), W' = W ⊙ l (columns of
// feed-forward modules, rows and bias of the others) for IA3 targets; saved modules and saved biases replace
// their base tensors, everything else is copied; the output is one safetensors file (with, for an int8 output,
// a config.json beside it: merge-config.ts).
import { existsSync, realpathSync, statSync } from "node:fs";
import { join } from "node:path";
import { describe, optionsArg, peftError, typeError } from "../errors.js";
import { Tensor, type DType } from "../tensor.js";
import { LoraConfig } from "../tuners/lora/config.js";
import { applyLoraDeltas } from "../tuners/lora/delta.js";
import { IA3Config } from "../tuners/ia3/config.js";
import { planIa3Merge, ia3ScaleInto, type Ia3Plan } from "./merge-ia3.js";
import { AdaLoraConfig } from "../tuners/adalora/config.js";
import { planAdaLoraMerge } from "./merge-adalora.js";
import { openCheckpoint } from "./checkpoint-source.js";
import { readAdapterConfig, WEIGHTS_NAME } from "./peft-checkpoint.js";
import { CONFIG_NAME } from "../tuners/config.js";
import { loadSafetensorsSync, openSharded } from "./index.js";
import { SafetensorsStreamWriter, type TensorSpec } from "./safetensors-stream.js";
import { int8Quantize } from "../ops.js";
import { int8BasePath, linearPath, mergeInt8, quantizedPath, rowFormat } from "./merge-int8.js";
import { mergedConfigTarget, mergedConfigText, writeMergedConfig } from "./merge-config.js";

const PREFIX = "base_model.model.";
const FLOATS = new Set(["f32", "f16", "bf16"]);
const FILE_TO_DTYPE: Record<string, DType> = { F32: "f32", F16: "f16", BF16: "bf16", I8: "i8", U8: "u8", I32: "i32", I64: "i64" };

export interface MergeCheckpointOptions {
  base: string; // a safetensors file or a model.safetensors.index.json
  adapter: string; // a PEFT adapter directory
  out: string;
  /** Output dtype of floating tensors; "int8" quantises the linear weights (bitsandbytes' layout, the head and embeddings kept). */
  dtype?: "f32" | "f16" | "bf16" | "int8";
  force?: boolean;
  onProgress?: (done: number, total: number, name: string) => void;
}

export interface MergeSummary {
  tensors: number;
  merged: string[];
  replaced: string[];
  /**
   * The config.json beside an int8 output that describes it (the base directory's, with the int8
   * quantization_config): written by this merge, or already there with that content. Else null.
   */
  config: string | null;
}

/** One LoRA delta: A (r, K) and B (N, r) as matrices; `embedding` when W is the (K, N) layout (lora_embedding_A/B). */
interface Delta {
  A: Tensor;
  B: Tensor;
  scale: number;
  embedding: boolean;
}

interface Plan {
  lora: Map<string, Delta>; // base weight key -> delta
  replace: Map<string, Tensor>; // base key -> adapter tensor (saved modules, biases)
  ia3: Ia3Plan;
}

// lora_A.weight / lora_B.weight (Linear, Conv1D, Conv2d) and lora_embedding_A / lora_embedding_B (Embedding).
const LORA_KEY = /^(.*)\.(?:lora_([AB])\.weight|lora_embedding_([AB]))$/;

/** A tensor as a matrix over its first dimension (conv factors are 4-D); a view sharing its storage. */
function asMatrix(t: Tensor): Tensor {
  return t.reshape([t.shape[0], t.shape.length ? t.numel / Math.max(1, t.shape[0]) : 0]);
}

function planMerge(config: LoraConfig, adapterTensors: Record<string, Tensor>, adapterDir: string): Plan {
  const lora = new Map<string, Delta>();
  const replace = new Map<string, Tensor>();
  for (const [key, t] of Object.entries(adapterTensors)) {
    if (!key.startsWith(PREFIX)) throw peftError("ERR_CHECKPOINT", `${adapterDir}: adapter key "${key}" does not start with "${PREFIX}"`);
    const rest = key.slice(PREFIX.length);
    const m = LORA_KEY.exec(rest);
    if (!m) {
      if (/\.lora_/.test(rest)) throw peftError("ERR_UNSUPPORTED", `${adapterDir}: adapter key "${key}" is a LoRA variant this merge does not support`);
      replace.set(rest, t);
      continue;
    }
    const [, path, dense, emb] = m;
    const embedding = emb !== undefined;
    const which = dense ?? emb;
    if (lora.has(`${path}.weight`)) continue;
    const name = (x: string) => `${PREFIX}${path}.${embedding ? `lora_embedding_${x}` : `lora_${x}.weight`}`;
    const A = adapterTensors[name("A")], B = adapterTensors[name("B")];
    if (!A || !B) throw peftError("ERR_CHECKPOINT", `${adapterDir}: ${path} has ${name(which).slice(PREFIX.length + path.length + 1)} but not its pair`);
    const r = config.rankFor(path);
    const conv = !embedding && A.shape.length === 4;
    if (conv && B.shape.length === 4 && B.shape[1] !== r && B.shape[1] > 0 && r % B.shape[1] === 0)
      throw peftError("ERR_UNSUPPORTED", `${adapterDir}: ${path}: a convolution with groups > 1 (lora_B [${B.shape}]); PEFT does not merge those either`);
    const shapeOk = conv
      ? A.shape[0] === r && B.shape.length === 4 && B.shape[1] === r && B.shape[2] === 1 && B.shape[3] === 1
      : A.shape.length === 2 && A.shape[0] === r && B.shape.length === 2 && B.shape[1] === r;
    if (!shapeOk)
      throw peftError("ERR_CHECKPOINT", `${adapterDir}: ${path}: ${name("A").slice(PREFIX.length)} [${A.shape}] / ${name("B").slice(PREFIX.length)} [${B.shape}] do not have rank ${r} from the config`);
    const alpha = config.alphaFor(path);
    lora.set(`${path}.weight`, { A: asMatrix(A), B: asMatrix(B), scale: config.useRslora ? alpha / Math.sqrt(r) : alpha / r, embedding });
  }
  return { lora, replace, ia3: { scales: new Map(), required: [] } };
}

/**
 * Whether a base weight is stored (in, out) (GPT-2's Conv1D, or an embedding's (num, dim)) rather than (out, in):
 * read from the shapes, with the config's fan_in_fan_out deciding only for square weights (PEFT forces the
 * flag per layer type). A convolution's weight counts as (out, in·kh·kw).
 */
function storedInOut(key: string, shape: readonly number[], d: Delta, fanInFanOut: boolean): boolean {
  const inF = d.A.shape[1], outF = d.B.shape[0];
  const rows = shape[0], cols = shape.slice(1).reduce((a, b) => a * b, 1);
  const asOutIn = shape.length >= 2 && rows === outF && cols === inF, asInOut = shape.length === 2 && rows === inF && cols === outF;
  if (d.embedding && asInOut) return true;
  if (!d.embedding && asOutIn && asInOut) return fanInFanOut;
  if (!d.embedding && (asOutIn || asInOut)) return asInOut;
  throw peftError("ERR_SHAPE", `"${key}" has shape [${shape}] but the adapter maps ${inF} -> ${outF} features`);
}

/** The options with their types checked (a library call has no command line in front of it). */
function checkedOptions(options: unknown): MergeCheckpointOptions {
  const o = optionsArg(options as MergeCheckpointOptions, "mergeCheckpoint");
  for (const k of ["base", "adapter", "out"] as const)
    if (typeof o[k] !== "string" || !o[k]) throw typeError(`mergeCheckpoint: options.${k} must be a non-empty path string, got ${describe(o[k])}`);
  if (o.dtype !== undefined && !["f32", "f16", "bf16", "int8"].includes(o.dtype as string))
    throw typeError(`mergeCheckpoint: options.dtype must be "f32", "f16", "bf16" or "int8", got ${describe(o.dtype)}`);
  if (o.onProgress !== undefined && typeof o.onProgress !== "function") throw typeError(`mergeCheckpoint: options.onProgress must be a function`);
  return o as MergeCheckpointOptions;
}

/** The files a merge reads: the base (index and every shard) and the adapter's weights and config. */
function mergeInputs(opts: MergeCheckpointOptions): { path: string; what: string }[] {
  const inputs = [
    { path: join(opts.adapter, WEIGHTS_NAME), what: "the adapter's weights" },
    { path: join(opts.adapter, CONFIG_NAME), what: "the adapter's config" },
    { path: opts.adapter, what: "the adapter directory" },
  ];
  if (opts.base.endsWith(".json")) {
    inputs.push({ path: opts.base, what: "the base checkpoint's index" });
    using s = openSharded(opts.base);
    for (const shard of s.shards()) inputs.push({ path: shard, what: "a shard of the base checkpoint" });
  } else {
    inputs.push({ path: opts.base, what: "the base checkpoint" });
  }
  return inputs;
}

/** Device and inode of what `path` names (through symlinks), or null when nothing is there. */
function identity(path: string): { dev: number; ino: number; real: string } | null {
  try {
    const st = statSync(path);
    return { dev: st.dev, ino: st.ino, real: realpathSync(path) };
  } catch {
    return null;
  }
}

/**
 * Refuses an output that is one of the merge's inputs, whatever path leads to it (relative, through
 * symlinks, a hard link): the merge reads the inputs while it writes, and --force must never turn a merge
 * into the loss of the base or the adapter.
 */
function refuseInputAsOutput(opts: MergeCheckpointOptions): void {
  const out = identity(opts.out);
  if (!out) return; // nothing there yet, so it is none of the inputs (they all exist)
  for (const input of mergeInputs(opts)) {
    const id = identity(input.path);
    if (id && ((id.dev === out.dev && id.ino === out.ino) || id.real === out.real)) {
      throw peftError(
        "ERR_CHECKPOINT",
        `--out ${opts.out} is ${input.what} (${input.path}); write the merged model to another file (refused even with --force)`,
      );
    }
  }
}

/**
 * Merges and writes `out` (refused when it exists, unless `force`, and always when it is one of the
 * inputs); tensor work is synchronous and bounded.
 */
export async function mergeCheckpoint(options: MergeCheckpointOptions): Promise<MergeSummary> {
  const opts = checkedOptions(options);
  refuseInputAsOutput(opts);
  if (existsSync(opts.out) && !opts.force) throw peftError("ERR_CHECKPOINT", `${opts.out} exists; pass --force to overwrite it`);
  const config = await readAdapterConfig(opts.adapter);
  if (!(config instanceof LoraConfig) && !(config instanceof IA3Config) && !(config instanceof AdaLoraConfig))
    throw peftError("ERR_UNSUPPORTED", `${opts.adapter}: peft_type ${(config as { peftType?: string }).peftType} cannot be merged by this command (LORA, IA3 and ADALORA only)`);
  const weightsPath = join(opts.adapter, WEIGHTS_NAME);
  if (!existsSync(weightsPath)) throw peftError("ERR_CHECKPOINT", `${opts.adapter}: no ${WEIGHTS_NAME}`);
  const adapterTensors = loadSafetensorsSync(weightsPath);
  let done: Merged;
  try {
    done = runMerge(opts, config, adapterTensors);
  } finally {
    for (const t of Object.values(adapterTensors)) t.dispose();
  }
  const { configFor, ...summary } = done;
  if (configFor?.text) await writeMergedConfig(configFor.to, configFor.text);
  return { ...summary, config: configFor?.to ?? null };
}

/** A summary, and the config.json an int8 output has beside it (text null: the one there says the same). */
type Merged = Omit<MergeSummary, "config"> & { configFor: { to: string; text: string | null } | null };

function runMerge(opts: MergeCheckpointOptions, config: LoraConfig | IA3Config | AdaLoraConfig, adapterTensors: Record<string, Tensor>): Merged {
  const noIa3 = { scales: new Map(), required: [] };
  const plan: Plan =
    config instanceof LoraConfig
      ? planMerge(config, adapterTensors, opts.adapter)
      : config instanceof AdaLoraConfig
        ? { ...planAdaLoraMerge(config, adapterTensors, opts.adapter), ia3: noIa3 }
        : { lora: new Map(), ...planIa3Merge(config, adapterTensors, opts.adapter) };
  try {
    return writeMerged(opts, config, plan);
  } finally {
    for (const d of plan.lora.values()) d.A.dispose(), d.B.dispose();
  }
}

function writeMerged(opts: MergeCheckpointOptions, config: LoraConfig | IA3Config | AdaLoraConfig, plan: Plan): Merged {
  using src = openCheckpoint(opts.base);
  const keys = src.keys();
  const have = new Set(keys);
  const unused = [...plan.lora.keys(), ...plan.replace.keys(), ...plan.ia3.required].filter((k) => !have.has(k));
  if (unused.length)
    throw peftError("ERR_CHECKPOINT", `${opts.adapter}: ${unused.length} adapter tensors have no base tensor in ${opts.base}: ${unused.slice(0, 5).join(", ")}`);
  const dtypeOf = (k: string) => (have.has(k) ? src.info(k).dtype : undefined);
  const toInt8 = opts.dtype === "int8";
  const quantized = new Set<string>(); // module paths whose floating weight --dtype int8 quantises
  const specs: TensorSpec[] = [];
  for (const k of keys) {
    const info = src.info(k);
    const dt = Object.hasOwn(FILE_TO_DTYPE, info.dtype) ? FILE_TO_DTYPE[info.dtype] : undefined;
    if (!dt) throw peftError("ERR_DTYPE", `${opts.base}: "${k}" is ${info.dtype}, which this merge cannot write`);
    const q = toInt8 ? quantizedPath(k, info.shape, FLOATS.has(dt)) : null;
    if (q !== null && !have.has(`${q}.SCB`)) {
      // bitsandbytes' layout: weight i8, SCB f32 (one scale per row), weight_format u8 0 ("row")
      quantized.add(q);
      specs.push({ name: k, shape: info.shape, dtype: "i8" }, { name: `${q}.SCB`, shape: [info.shape[0]], dtype: "f32" }, { name: `${q}.weight_format`, shape: [], dtype: "u8" });
      continue;
    }
    // --dtype int8 keeps the tensors it does not quantise (norms, embeddings, the head) in their dtype, as transformers does
    specs.push({ name: k, shape: info.shape, dtype: opts.dtype && !toInt8 && FLOATS.has(dt) ? (opts.dtype as DType) : dt });
  }
  for (const [k, t] of plan.replace)
    if (t.shape.join() !== src.info(k).shape.join())
      throw peftError("ERR_SHAPE", `${opts.adapter}: saved "${k}" has shape [${t.shape}] but the base has [${src.info(k).shape}]`);
  // An int8 output gets its own config.json (checked now: nothing is merged into a file that cannot be completed).
  const linears = specs.flatMap((s) => (s.dtype === "i8" || FLOATS.has(s.dtype) ? (linearPath(s.name, s.shape) ?? []) : []));
  const int8 = new Set(specs.filter((s) => s.name.endsWith(".SCB")).map((s) => s.name.slice(0, -".SCB".length)));
  const target = int8.size ? mergedConfigTarget(opts.base, opts.out) : null;
  const configFor = target && { to: target.to, text: mergedConfigText(target, linears, linears.filter((p) => !int8.has(p)), opts.force === true) };
  const inOut = config.fanInFanOut;
  // Tensors made ahead of their turn (an int8 layer's SCB or CB, the new SCB and weight_format) until written.
  const pending = new Map<string, Tensor>();
  const outLayout = (k: string, shape: readonly number[], d: Delta) => {
    if (storedInOut(k, shape, d, inOut) || d.embedding) throw peftError("ERR_UNSUPPORTED", `"${k}": an int8 weight is stored (out, in); this adapter's delta is (in, out)`);
  };
  const writer = new SafetensorsStreamWriter(opts.out, specs);
  const summary: Merged = { tensors: specs.length, merged: [], replaced: [], configFor };
  try {
    specs.forEach((spec, i) => {
      const k = spec.name;
      let out = pending.get(k);
      pending.delete(k);
      if (!out) out = mergedTensor(k, spec);
      if (out.dtype !== spec.dtype) {
        const conv = out.to(spec.dtype);
        out.dispose();
        out = conv;
      }
      writer.write(k, out);
      out.dispose();
      opts.onProgress?.(i + 1, specs.length, k);
    });
    writer.close();
  } catch (e) {
    writer.abort();
    for (const t of pending.values()) t.dispose();
    throw e;
  }
  return summary;

  function mergedTensor(k: string, spec: TensorSpec): Tensor {
    using base = src.get(k);
    const int8Path = int8BasePath(k, dtypeOf);
    const int8Delta = int8Path !== null ? plan.lora.get(`${int8Path}.weight`) : undefined;
    if (int8Path !== null && int8Delta) {
      // PEFT's Linear8bitLt merge; the pair is made at whichever of weight / SCB comes first.
      const wk = `${int8Path}.weight`, sk = `${int8Path}.SCB`;
      using cb = k === wk ? base.reshape(base.shape) : src.get(wk);
      using scb = k === sk ? base.reshape(base.shape) : src.get(sk);
      outLayout(wk, cb.shape, int8Delta);
      const [cb2, scb2] = mergeInt8(cb, scb, int8Delta);
      summary.merged.push(wk);
      pending.set(k === wk ? sk : wk, k === wk ? scb2 : cb2);
      return k === wk ? cb2 : scb2;
    }
    const delta = plan.lora.get(k);
    const scale = plan.ia3.scales.get(k);
    const q = k.endsWith(".weight") ? k.slice(0, -".weight".length) : null;
    let out: Tensor;
    if (scale) {
      out = base.to("f32"); // merged in f32, rounded once into the output dtype
      ia3ScaleInto(out, k, scale, inOut);
      summary.merged.push(k);
    } else if (delta) {
      out = base.to("f32"); // merged in f32, rounded once into the output dtype
      using w = asMatrix(out);
      const weightInOut = storedInOut(k, base.shape, delta, inOut);
      if (q !== null && quantized.has(q) && weightInOut) outLayout(k, base.shape, delta);
      applyLoraDeltas(w, [delta], { weightInOut });
      summary.merged.push(k);
    } else if (plan.replace.has(k)) {
      out = plan.replace.get(k)!.to(spec.dtype === "i8" ? "f32" : spec.dtype);
      summary.replaced.push(k);
    } else {
      out = base.dtype === spec.dtype ? base.reshape(base.shape) : base.to(spec.dtype === "i8" ? "f32" : spec.dtype);
    }
    if (q === null || !quantized.has(q)) return out;
    // --dtype int8: quantised as quantize: "int8" loading does, SCB and weight_format written next
    const [cb, scb] = int8Quantize(out.dtype === "f32" ? out : out.to("f32"));
    out.dispose();
    pending.set(`${q}.SCB`, scb);
    pending.set(`${q}.weight_format`, rowFormat());
    return cb;
  }
}
