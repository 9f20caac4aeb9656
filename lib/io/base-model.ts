// Base models from safetensors checkpoints: build a tree of Linear/Embedding modules from a checkpoint's
// names and shapes (llama-style checkpoints), so adapters can be applied to, saved for and merged into real
// checkpoints. The tree is constructed empty (no random initialisation) and each weight is then read
// straight from the file into it (model-loader.ts), so the checkpoint's bytes are allocated once.
import { clip, peftError, typeError } from "../errors.js";
import { Tensor, describe, isDType, type DType } from "../tensor.js";
import { Embedding, Linear, Linear8bitLt, Module } from "../nn/index.js";
import { int8Threshold } from "./int8-quantize.js";
import { emptyLinear4bitFor, fourBitLayers } from "./prequantized.js";
import { skipInit } from "../init-mode.js";
import { openCheckpointLayout, type CheckpointLayout } from "./checkpoint-layout.js";
import { abortError, loadOptions, runLoadAsync, runLoadSync, type LoadProgress, type QuantizeHook } from "./model-loader.js";

export { loadModelWeights, loadModelWeightsAsync } from "./model-loader.js";

/** A node of a checkpoint-built tree: named children and parameters, no computation of its own. */
export class CheckpointModule extends Module {
  constructor(readonly kind = "Module") {
    super();
    if (typeof kind !== "string") throw typeError(`CheckpointModule: kind must be a string, got ${describe(kind)}`);
  }
  /** The kind for a message: the field is public, so it is not trusted to still be a string. */
  #kind(): string {
    return typeof this.kind === "string" ? clip(this.kind) : "CheckpointModule";
  }
  override forward(_x: Tensor): Tensor {
    throw peftError("ERR_UNSUPPORTED", `${this.#kind()}: a tree built from a checkpoint has no forward; run its Linear/Embedding layers directly`);
  }
  override describe(): string {
    return this.#kind() + "()";
  }
}

/** A module holding plain parameters (norm weights and the like). */
export class ParameterHolder extends CheckpointModule {
  constructor() {
    super("Parameters");
  }
}

/** The model builder's output: also answers getOutputEmbeddings() for "all-linear". */
class CheckpointModel extends CheckpointModule {
  override getOutputEmbeddings(): Module | undefined {
    for (const name of ["lm_head", "embed_out", "output"]) {
      try {
        return this.getSubmodule(name);
      } catch {
        /* not this one */
      }
    }
    return undefined;
  }
}

export interface BuildOptions {
  /** Floating-point weights in this dtype (converted on load); default: each tensor's dtype in the file. */
  dtype?: DType;
  onProgress?: (p: LoadProgress) => void;
  /** A hook, or "int8" (transformers' load_in_8bit: Linear layers quantised as they load; see LoadWeightsOptions). */
  quantize?: QuantizeHook | "int8" | "nf4" | "fp4";
  /** Outlier threshold of the int8 layers (quantize: "int8" only; default 6.0). */
  threshold?: number;
  /** Modules kept in full precision besides the output head (quantize: "int8", "nf4" or "fp4"). */
  skipModules?: string[];
  /** 4-bit options (quantize: "nf4" / "fp4" only; see LoadWeightsOptions). */
  blocksize?: number;
  compressStatistics?: boolean;
  computeDtype?: "f32" | "bf16" | "f16";
}

export interface BuildAsyncOptions extends BuildOptions {
  /** Aborting stops the load between reads and frees everything built so far. */
  signal?: AbortSignal;
}

function buildOptions<T extends BuildAsyncOptions>(options: T | undefined, op: string): Omit<Partial<T>, "quantize"> & { quantize?: QuantizeHook } {
  const opts = loadOptions(options, op);
  if (opts.dtype !== undefined && !isDType(opts.dtype)) throw typeError(`${op}: dtype must be a dtype name such as "bf16", got ${describe(opts.dtype)}`);
  return opts;
}

/**
 * Builds the module tree a checkpoint (a safetensors file, a shard index or a model directory) describes:
 * `<path>.weight` 2-D becomes a Linear (out, in) with `<path>.bias` if present, or an Embedding when the
 * path names an embedding; other parameters sit on plain holder modules. Weights come in the file's dtype
 * (or `dtype`), each allocated once and read straight from the file.
 */
export function buildModelFromCheckpoint(path: string, options: BuildOptions = {}): Module {
  const opts = buildOptions(options, "buildModelFromCheckpoint");
  using src = openCheckpointLayout(path, "buildModelFromCheckpoint");
  const root = emptyTree(src, opts.dtype, int8Threshold(opts.threshold, "buildModelFromCheckpoint"));
  try {
    runLoadSync(root, src, { onProgress: opts.onProgress, quantize: opts.quantize });
  } catch (e) {
    root.dispose();
    throw e;
  }
  return root;
}

/** buildModelFromCheckpoint with asynchronous reads, an AbortSignal and progress reports. */
export async function buildModelFromCheckpointAsync(path: string, options: BuildAsyncOptions = {}): Promise<Module> {
  const op = "buildModelFromCheckpointAsync";
  const opts = buildOptions(options, op);
  if (opts.signal?.aborted) throw abortError(opts.signal, op);
  using src = openCheckpointLayout(path, op);
  const root = emptyTree(src, opts.dtype, int8Threshold(opts.threshold, op));
  try {
    await runLoadAsync(root, src, { onProgress: opts.onProgress, quantize: opts.quantize, signal: opts.signal }, op);
  } catch (e) {
    root.dispose();
    throw e;
  }
  return root;
}

/** The tree with every parameter allocated but not filled. */
function emptyTree(src: CheckpointLayout, dtype: DType | undefined, int8Threshold: number): Module {
  const groups = new Map<string, Map<string, { dtype: DType; shape: number[] }>>();
  // bitsandbytes' 4-bit layers: their keys ("weight.absmax", ...) hold dots, so they are not grouped by the last one.
  const fourBit = fourBitLayers(src);
  const ofFourBit = (k: string) => {
    for (const suffix of [".bias", ".weight"]) if (k.endsWith(suffix) && fourBit.has(k.slice(0, -suffix.length))) return true;
    for (let at = k.indexOf(".weight."); at >= 0; at = k.indexOf(".weight.", at + 1)) if (fourBit.has(k.slice(0, at))) return true;
    return false;
  };
  for (const k of src.keys()) {
    if (fourBit.size && ofFourBit(k)) continue;
    const cut = k.lastIndexOf(".");
    const mod = cut < 0 ? "" : k.slice(0, cut);
    const info = src.info(k);
    if (info.tensorDType === null) throw peftError("ERR_DTYPE", `${src.path}: "${k}" is ${info.dtype}, which has no tensor dtype`);
    const floating = info.tensorDType === "f32" || info.tensorDType === "f16" || info.tensorDType === "bf16";
    if (!groups.has(mod)) groups.set(mod, new Map());
    groups.get(mod)!.set(k.slice(cut + 1), { dtype: dtype && floating ? dtype : info.tensorDType, shape: info.shape });
  }
  const root = new CheckpointModel("Model");
  try {
    skipInit(() => {
      const kids: Children = new Map();
      for (const [p, qsKey] of fourBit) {
        const bias = src.place(`${p}.bias`) ? src.info(`${p}.bias`) : null;
        const biasDtype = bias?.tensorDType ?? undefined;
        const q = emptyLinear4bitFor(src, p, qsKey, { bias: bias !== null, biasDtype: dtype && biasDtype ? dtype : biasDtype });
        attach(root, p, q, kids);
      }
      for (const [mod, params] of groups) {
        const w = params.get("weight");
        let m: Module;
        const isLayer = w && w.shape.length === 2 && mod !== "" && [...params.keys()].every((n) => n === "weight" || n === "bias");
        // bitsandbytes' int8 layer as transformers saves it: weight i8 (out, in), SCB, weight_format, bias.
        const isInt8 = w && w.shape.length === 2 && w.dtype === "i8" && mod !== "" && params.has("SCB") &&
          [...params.keys()].every((n) => ["weight", "bias", "SCB", "weight_format"].includes(n));
        if (isInt8) {
          m = Linear8bitLt.empty(w.shape[1], w.shape[0], { bias: params.has("bias"), dtype: params.get("bias")?.dtype, threshold: int8Threshold });
        } else if (isLayer && /(^|\.|_)(embed|embeddings|wte|wpe)[^.]*$/.test(mod)) {
          m = new Embedding(w.shape[0], w.shape[1], { dtype: w.dtype });
        } else if (isLayer) {
          m = new Linear(w.shape[1], w.shape[0], { bias: params.has("bias"), dtype: w.dtype });
        } else {
          m = mod === "" ? root : new ParameterHolder();
          for (const [n, info] of params) m.registerParameter(n, Tensor.zeros(info.shape, { dtype: info.dtype }));
        }
        if (mod !== "") attach(root, mod, m, kids);
      }
    });
  } catch (e) {
    root.dispose();
    throw e;
  }
  return root;
}

// Children of the nodes attach() made, by name: Module lists its children only as an iterator, and a linear
// search per path made building a model of n layers under one parent O(n^2) (20,000 layers: 45 s).
type Children = Map<Module, Map<string, Module>>;

function childrenOf(kids: Children, node: Module): Map<string, Module> {
  let c = kids.get(node);
  if (!c) kids.set(node, (c = new Map()));
  return c;
}

// Places `m` at a dotted path, making container nodes on the way (and replacing a holder made earlier).
function attach(root: Module, path: string, m: Module, kids: Children): void {
  const parts = path.split(".");
  let node = root;
  for (let i = 0; i < parts.length - 1; i++) {
    const here = childrenOf(kids, node);
    let child = here.get(parts[i]);
    if (!child) {
      child = node.registerModule(parts[i], new CheckpointModule(/^\d+$/.test(parts[i + 1]) ? "ModuleList" : "Module"));
      here.set(parts[i], child);
    }
    node = child;
  }
  const last = parts[parts.length - 1];
  const here = childrenOf(kids, node);
  const existing = here.get(last);
  if (existing) {
    // A container made for deeper paths that also has parameters of its own: move its children over.
    for (const [n, c] of existing.namedChildren()) m.registerModule(n, c);
    node.setSubmodule(last, m, { dispose: false });
    kids.set(m, kids.get(existing) ?? new Map());
    kids.delete(existing);
  } else {
    node.registerModule(last, m);
  }
  here.set(last, m);
}
