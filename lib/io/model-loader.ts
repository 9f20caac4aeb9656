// Loading a checkpoint into a model's parameters: every key, shape and dtype is checked before the first
// read, then each tensor is read from the file straight into its parameter's storage (no staging copy, no
// second allocation) when the dtypes agree, or through one temporary of that tensor's size when they do not.
// The same plan runs synchronously or asynchronously; the async driver checks an AbortSignal between reads
// and reports progress after each tensor. A quantize hook sees each module as soon as all of its own
// parameters are loaded and may put another module (an int8 layer) in its place, so a quantized model
// never holds more than one layer's full-precision weights beyond its own.
import { describe, optionsArg, peftError, typeError } from "../errors.js";
import { Module } from "../nn/module.js";
import { Tensor, transientBytes, type DType } from "../tensor.js";
import { openCheckpointLayout, type CheckpointLayout, type TensorPlace } from "./checkpoint-layout.js";
import { fdReader, readFully, readFullySync, runAsync, runSync, type IoPlan, type IoRequest } from "./file-io.js";
import { int8QuantizeHook } from "./int8-quantize.js";
import { QUANT4_OPTION_KEYS, quant4QuantizeHook, type Quant4LoadOptions } from "./nf4-quantize.js";
import { adoptPrequantized, type PrequantizedKind, type PrequantizedOptions } from "./prequantized.js";
import { native } from "../native.js";

/** What onProgress is told after each tensor. */
export interface LoadProgress {
  /** The file key just loaded. */
  name: string;
  loadedTensors: number;
  totalTensors: number;
  loadedBytes: number;
  totalBytes: number;
  /** The dtype in the file ("BF16", ...) and the parameter's: they differ when the value was converted. */
  fileDType: string;
  dtype: DType;
}

/**
 * Called once all of a module's own parameters are loaded (`path` is its place in the model; the root,
 * which has no place to be replaced in, is not offered). Returning a different module replaces it there
 * (the old one is disposed); null/undefined keeps it.
 */
export type QuantizeHook = (module: Module, path: string) => Module | null | undefined | void;

export interface LoadWeightsOptions {
  /** Prepended to each parameter name to form the file key. */
  prefix?: string;
  /** Every parameter present and no extra key (default true). */
  strict?: boolean;
  /**
   * A file dtype differing from the parameter's is converted on load (default true, as torch's
   * load_state_dict copies); false makes it an ERR_DTYPE before anything is read.
   */
  convert?: boolean;
  onProgress?: (p: LoadProgress) => void;
  /**
   * A hook, or "int8": every Linear outside the skipped modules becomes a Linear8bitLt as soon as its weight
   * is read (transformers' load_in_8bit), with `threshold` (default 6.0) and `skipModules` (besides lm_head);
   * "nf4" / "fp4": a Linear4bit instead (load_in_4bit), with `skipModules`, `blocksize`, `compressStatistics`, `computeDtype`.
   */
  quantize?: QuantizeHook | "int8" | "nf4" | "fp4";
  /** Outlier threshold of the int8 layers (quantize: "int8" only; default 6.0). */
  threshold?: number;
  /** Modules kept in full precision besides the output head (quantize: "int8", "nf4" or "fp4"). */
  skipModules?: string[];
  /** 4-bit block size (quantize: "nf4" / "fp4" only; default 64). */
  blocksize?: Quant4LoadOptions["blocksize"];
  /** Double quantisation of the 4-bit statistics (quantize: "nf4" / "fp4" only; default false). */
  compressStatistics?: Quant4LoadOptions["compressStatistics"];
  /** Compute dtype of the 4-bit layers (quantize: "nf4" / "fp4" only; default "f32"). */
  computeDtype?: Quant4LoadOptions["computeDtype"];
  /**
   * Settings of the layers a pre-quantized checkpoint holds (always loaded as such: a Linear stored as a
   * bitsandbytes 4-bit or int8 layer becomes a Linear4bit / Linear8bitLt before its codes are read; see
   * io/prequantized.ts). With such layers present, `quantize` must name their kind (it then changes nothing).
   */
  prequantized?: PrequantizedOptions;
}

export interface LoadWeightsAsyncOptions extends LoadWeightsOptions {
  /** Aborting stops the load between reads; the promise rejects with an AbortError (code ABORT_ERR). */
  signal?: AbortSignal;
}

export interface LoadResult {
  missingKeys: string[];
  unexpectedKeys: string[];
}

interface Item {
  key: string;
  param: Tensor;
  place: TensorPlace;
  owner: Module;
  ownerPath: string;
}

interface Job {
  result: LoadResult;
  items: Item[];
  totalBytes: number;
  /** Parameters each module still waits for (modules the hook will see). */
  pending: Map<Module, number>;
  model: Module;
  opts: LoadOpts;
}

/** The options once checked: quantize is a hook ("int8" made into one; quantizeKind keeps the name). */
export type LoadOpts = Omit<Partial<LoadWeightsAsyncOptions>, "quantize"> & { quantize?: QuantizeHook; quantizeKind?: PrequantizedKind };

interface ReadRequest extends IoRequest {
  fd: number;
  file: string;
}

const list = (ks: string[]) => ks.slice(0, 8).join(", ") + (ks.length > 8 ? `, … (${ks.length} in all)` : "");

/** The options, each checked for its type; quantize: "int8" becomes its hook. */
export function loadOptions<T extends LoadWeightsAsyncOptions>(options: T | undefined, op: string): Omit<Partial<T>, "quantize"> & { quantize?: QuantizeHook; quantizeKind?: PrequantizedKind } {
  const given = optionsArg(options, op);
  if (given.prefix !== undefined && typeof given.prefix !== "string") throw typeError(`${op}: prefix must be a string, got ${describe(given.prefix)}`);
  if (given.onProgress !== undefined && typeof given.onProgress !== "function") throw typeError(`${op}: onProgress must be a function, got ${describe(given.onProgress)}`);
  const q = given.quantize;
  const four = q === "nf4" || q === "fp4";
  if (q !== undefined && q !== "int8" && !four && typeof q !== "function")
    throw typeError(`${op}: quantize must be "int8", "nf4", "fp4" or a function, got ${describe(q)}`);
  if (q !== "int8" && given.threshold !== undefined) throw peftError("ERR_CONFIG", `${op}: threshold applies to quantize: "int8" only`);
  if (q !== "int8" && !four && given.skipModules !== undefined) throw peftError("ERR_CONFIG", `${op}: skipModules applies to quantize: "int8", "nf4" or "fp4" only`);
  for (const k of QUANT4_OPTION_KEYS)
    if (!four && given[k] !== undefined) throw peftError("ERR_CONFIG", `${op}: ${k} applies to quantize: "nf4" or "fp4" only`);
  const hook: QuantizeHook | undefined = q === "int8" ? int8QuantizeHook(given, op) : four ? quant4QuantizeHook(q, given, op) : (q as QuantizeHook | undefined);
  const quantizeKind = typeof q === "string" ? (q as PrequantizedKind) : undefined;
  const opts = { ...given, quantize: hook, quantizeKind } as Omit<Partial<T>, "quantize"> & { quantize?: QuantizeHook; quantizeKind?: PrequantizedKind };
  if (opts.signal !== undefined && !(opts.signal instanceof AbortSignal)) throw typeError(`${op}: signal must be an AbortSignal, got ${describe(opts.signal)}`);
  return opts;
}

/** Matches parameters to file keys and checks everything a read could trip on; reads nothing. */
function prepare(model: Module, src: CheckpointLayout, opts: LoadOpts): Job {
  const prefix = opts.prefix ?? "";
  const wanted = new Map<string, { param: Tensor; owner: Module; ownerPath: string }>();
  const seen = new Set<Tensor>();
  for (const [path, m] of model.namedModules()) {
    for (const [name, param] of m.namedParameters("", { recurse: false })) {
      if (seen.has(param)) continue; // a tied weight loads once, under its first name
      seen.add(param);
      const key = m.stateKey(name);
      wanted.set(prefix + (path ? `${path}.${key}` : key), { param, owner: m, ownerPath: path });
    }
  }
  const keys = src.keys();
  const inFile = new Set(keys);
  const missing = [...wanted.keys()].filter((k) => !inFile.has(k));
  const unexpected = keys.filter((k) => !wanted.has(k));
  if (opts.strict !== false && (missing.length || unexpected.length)) {
    throw peftError(
      "ERR_CHECKPOINT",
      `${src.path}: does not fit the model${prefix ? ` (key prefix "${prefix}")` : ""}: ` +
        [missing.length ? `missing: ${list(missing)}` : "", unexpected.length ? `unexpected: ${list(unexpected)}` : ""].filter(Boolean).join("; "),
    );
  }
  const items: Item[] = [];
  const pending = new Map<Module, number>();
  let totalBytes = 0;
  for (const [key, w] of wanted) {
    const place = src.place(key);
    if (!place) continue;
    const { layout, t } = place;
    const shape = layout.shape(t);
    if (shape.join() !== w.param.shape.join())
      throw peftError("ERR_SHAPE", `${src.path}: "${key}" has shape [${shape}] in the file but [${w.param.shape}] in the model`);
    const dtype = layout.tensorDType(t);
    if (dtype === null) throw peftError("ERR_DTYPE", `${place.file}: "${key}" is ${layout.dtype(t)}, which has no tensor dtype`);
    if (dtype !== w.param.dtype && opts.convert === false)
      throw peftError("ERR_DTYPE", `${place.file}: "${key}" is ${layout.dtype(t)} in the file but ${w.param.dtype} in the model (convert: false)`);
    if (w.param.disposed) throw peftError("ERR_DISPOSED", `${src.path}: the model's parameter for "${key}" has been disposed`);
    items.push({ key, ...w, place });
    totalBytes += layout.byteLength(t);
    if (w.ownerPath !== "") pending.set(w.owner, (pending.get(w.owner) ?? 0) + 1);
  }
  // File order: each file is read front to back.
  items.sort((a, b) => (a.place.file < b.place.file ? -1 : a.place.file > b.place.file ? 1 : a.place.layout.offset(a.place.t) - b.place.layout.offset(b.place.t)));
  return { result: { missingKeys: missing, unexpectedKeys: unexpected }, items, totalBytes, pending, model, opts };
}

// Large tensors are read in pieces of this size so an abort is seen within one piece.
const SEGMENT = 64 << 20;

function* readInto(bytes: Uint8Array, place: TensorPlace): IoPlan<void> {
  const pos = place.layout.offset(place.t);
  for (let at = 0; at < bytes.length; at += SEGMENT) {
    const buf = bytes.subarray(at, Math.min(bytes.length, at + SEGMENT));
    yield { buf, pos: pos + at, fd: place.fd, file: place.file } as ReadRequest;
  }
}

/** The reads, in file order; after each tensor: progress, then the hook for a module now complete. */
function* loadPlan(job: Job): IoPlan<LoadResult> {
  const { opts } = job;
  let loadedBytes = 0;
  let loadedTensors = 0;
  for (const it of job.items) {
    const { layout, t } = it.place;
    const fileDType = layout.tensorDType(t)!;
    if (fileDType === it.param.dtype && it.param.device === "cpu") {
      const bytes = transientBytes(it.param, true);
      try {
        yield* readInto(bytes, it.place);
      } finally {
        native.releaseBytes(bytes); // the view would otherwise keep the storage until it is collected
      }
    } else {
      const tmp = Tensor.zeros(it.param.shape, { dtype: fileDType });
      const bytes = transientBytes(tmp, true);
      try {
        yield* readInto(bytes, it.place);
        it.param.copyFrom(tmp);
      } finally {
        native.releaseBytes(bytes);
        tmp.dispose();
      }
    }
    loadedBytes += layout.byteLength(t);
    opts.onProgress?.({
      name: it.key,
      loadedTensors: ++loadedTensors,
      totalTensors: job.items.length,
      loadedBytes,
      totalBytes: job.totalBytes,
      fileDType: layout.dtype(t),
      dtype: it.param.dtype,
    });
    const left = (job.pending.get(it.owner) ?? 0) - 1;
    job.pending.set(it.owner, left);
    if (left === 0 && opts.quantize) swapIn(job.model, it.owner, it.ownerPath, opts.quantize);
  }
  return job.result;
}

function swapIn(model: Module, m: Module, path: string, hook: QuantizeHook): void {
  const next: unknown = hook(m, path);
  if (next === undefined || next === null || next === m) return;
  if (!(next instanceof Module)) throw typeError(`quantize hook: expected a Module, null or undefined for ${JSON.stringify(path)}, got ${describe(next)}`);
  model.setSubmodule(path, next);
}

/** An AbortError as Node's own APIs raise one (name AbortError, code ABORT_ERR, the reason as cause). */
export function abortError(signal: AbortSignal, what: string): Error {
  return Object.assign(new Error(`${what}: the operation was aborted`, { cause: signal.reason }), { name: "AbortError", code: "ABORT_ERR" });
}

/**
 * Puts the checkpoint's pre-quantized layers in place. A quantize option naming their kind then has nothing
 * left to do (the layers the checkpoint keeps in full precision stay so, as transformers loads them, with a
 * warning); another kind is an ERR_CONFIG.
 */
export function withPrequantized(model: Module, src: CheckpointLayout, opts: LoadOpts, op: string): LoadOpts {
  const found = adoptPrequantized(model, src, opts.prefix ?? "", opts.prequantized);
  const kinds = (Object.keys(found) as PrequantizedKind[]).filter((k) => found[k] > 0);
  if (!kinds.length || opts.quantizeKind === undefined) return opts;
  const held = kinds.map((k) => `${found[k]} ${k} layer(s)`).join(" and ");
  if (kinds.length > 1 || kinds[0] !== opts.quantizeKind)
    throw peftError("ERR_CONFIG", `${op}: quantize: "${opts.quantizeKind}" but ${src.path} is already quantized (${held}); drop the quantize option`);
  process.emitWarning(`${op}: ${src.path} is already quantized (${held}); quantize: "${opts.quantizeKind}" leaves the layers it keeps in full precision as they are`, { code: "PEFT_PREQUANTIZED_CHECKPOINT" });
  return { ...opts, quantize: undefined };
}

/** Runs the plan with synchronous reads. */
export function runLoadSync(model: Module, src: CheckpointLayout, opts: LoadOpts): LoadResult {
  const plan = loadPlan(prepare(model, src, opts));
  return runSync(plan, (r) => readFullySync((r as ReadRequest).fd, r.buf, r.pos, (r as ReadRequest).file));
}

/** Runs the plan with asynchronous reads, checking `signal` before each. */
export function runLoadAsync(model: Module, src: CheckpointLayout, opts: LoadOpts, what: string): Promise<LoadResult> {
  const plan = loadPlan(prepare(model, src, opts));
  const readers = new Map<number, ReturnType<typeof fdReader>>();
  return runAsync(plan, async (r) => {
    const { fd, file } = r as ReadRequest;
    if (opts.signal?.aborted) throw abortError(opts.signal, what);
    if (!readers.has(fd)) readers.set(fd, fdReader(fd));
    await readFully(readers.get(fd)!, r.buf, r.pos, file);
  });
}

/**
 * Copies a checkpoint (a safetensors file, a shard index, or a model directory) into `model`'s parameters in
 * place: file key = prefix + parameter name. Strict by default; keys, shapes and dtypes are checked for
 * every tensor before anything is read. A failure part-way leaves the parameters read so far loaded.
 */
export function loadModelWeights(model: Module, path: string, options: LoadWeightsOptions = {}): LoadResult {
  if (!(model instanceof Module)) throw typeError(`loadModelWeights: model must be a Module, got ${describe(model)}`);
  const opts = loadOptions(options, "loadModelWeights");
  using src = openCheckpointLayout(path, "loadModelWeights");
  return runLoadSync(model, src, withPrequantized(model, src, opts, "loadModelWeights"));
}

/** loadModelWeights with asynchronous reads, an AbortSignal and progress reports. */
export async function loadModelWeightsAsync(model: Module, path: string, options: LoadWeightsAsyncOptions = {}): Promise<LoadResult> {
  if (!(model instanceof Module)) throw typeError(`loadModelWeightsAsync: model must be a Module, got ${describe(model)}`);
  const opts = loadOptions(options, "loadModelWeightsAsync");
  if (opts.signal?.aborted) throw abortError(opts.signal, "loadModelWeightsAsync");
  using src = openCheckpointLayout(path, "loadModelWeightsAsync");
  return await runLoadAsync(model, src, withPrequantized(model, src, opts, "loadModelWeightsAsync"), "loadModelWeightsAsync");
}
