// Base models from safetensors checkpoints: load weights into an existing module tree (tensor by tensor, in
// place), or build a tree of Linear/Embedding modules from a checkpoint's names and shapes (llama-style
// checkpoints), so adapters can be applied to, saved for and merged into real checkpoints.
import { clip, peftError, typeError } from "../errors.js";
import { Tensor, describe, type DType } from "../tensor.js";
import { Embedding, Linear, Module } from "../nn/index.js";
import { openCheckpoint, type CheckpointSource } from "./checkpoint-source.js";

const TENSOR_DTYPES: Record<string, DType> = { F32: "f32", F16: "f16", BF16: "bf16", I8: "i8", U8: "u8", I32: "i32", I64: "i64" };

/**
 * Copies a checkpoint into `model`'s parameters in place: file key = prefix + parameter name. Strict by
 * default (every parameter present, no extra key), with shapes checked for all keys before anything is
 * copied; then one tensor at a time is read, copied and released.
 */
export function loadModelWeights(model: Module, path: string, opts: { prefix?: string; strict?: boolean } = {}): { missingKeys: string[]; unexpectedKeys: string[] } {
  if (!(model instanceof Module)) throw typeError("loadModelWeights: model must be a Module");
  if (opts === null || typeof opts !== "object") throw typeError(`loadModelWeights: options must be an object, got ${describe(opts)}`);
  const prefix = opts.prefix ?? "";
  if (typeof prefix !== "string") throw typeError(`loadModelWeights: prefix must be a string, got ${describe(prefix)}`);
  using src = openCheckpoint(path);
  const params = new Map([...model.namedParameters()].map(([n, t]) => [prefix + n, t]));
  const keys = new Set(src.keys());
  const missing = [...params.keys()].filter((k) => !keys.has(k));
  const unexpected = [...keys].filter((k) => !params.has(k));
  if (opts.strict !== false && (missing.length || unexpected.length)) {
    const list = (ks: string[]) => ks.slice(0, 8).join(", ") + (ks.length > 8 ? `, … (${ks.length} in all)` : "");
    throw peftError(
      "ERR_CHECKPOINT",
      `${path}: does not fit the model${prefix ? ` (key prefix "${prefix}")` : ""}: ` +
        [missing.length ? `missing: ${list(missing)}` : "", unexpected.length ? `unexpected: ${list(unexpected)}` : ""].filter(Boolean).join("; "),
    );
  }
  const pairs: [string, Tensor][] = [];
  for (const [k, t] of params) {
    if (!keys.has(k)) continue;
    const { shape, dtype } = src.info(k);
    if (shape.join() !== t.shape.join())
      throw peftError("ERR_SHAPE", `${path}: "${k}" has shape [${shape}] in the file but [${t.shape}] in the model`);
    if (!(dtype in TENSOR_DTYPES)) throw peftError("ERR_DTYPE", `${path}: "${k}" is ${dtype}, which has no tensor dtype`);
    pairs.push([k, t]);
  }
  for (const [k, t] of pairs) {
    using v = src.get(k);
    t.copyFrom(v);
  }
  return { missingKeys: missing, unexpectedKeys: unexpected };
}

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

/**
 * Builds the module tree a checkpoint describes: `<path>.weight` 2-D becomes a Linear (out, in) with
 * `<path>.bias` if present, or an Embedding when the path names an embedding; other parameters sit on plain
 * holder modules. Weights are read into the tree (in the file's dtype, or `dtype`).
 */
export function buildModelFromCheckpoint(path: string, opts: { dtype?: DType } = {}): Module {
  if (opts === null || typeof opts !== "object") throw typeError(`buildModelFromCheckpoint: options must be an object, got ${describe(opts)}`);
  using src = openCheckpoint(path);
  const root = new CheckpointModel("Model");
  const groups = new Map<string, Map<string, { dtype: string; shape: number[] }>>();
  for (const k of src.keys()) {
    const cut = k.lastIndexOf(".");
    const mod = cut < 0 ? "" : k.slice(0, cut);
    if (!groups.has(mod)) groups.set(mod, new Map());
    groups.get(mod)!.set(k.slice(cut + 1), src.info(k));
  }
  const dtypeOf = (d: string, key: string): DType => {
    const t = TENSOR_DTYPES[d];
    if (!t) throw peftError("ERR_DTYPE", `${path}: "${key}" is ${d}, which has no tensor dtype`);
    return opts.dtype && (t === "f32" || t === "f16" || t === "bf16") ? opts.dtype : t;
  };
  const kids: Children = new Map();
  for (const [mod, params] of groups) {
    const w = params.get("weight");
    let m: Module;
    const isLayer = w && w.shape.length === 2 && mod !== "" && [...params.keys()].every((n) => n === "weight" || n === "bias");
    if (isLayer && /(^|\.|_)(embed|embeddings|wte|wpe)[^.]*$/.test(mod)) {
      m = new Embedding(w.shape[0], w.shape[1], { dtype: dtypeOf(w.dtype, `${mod}.weight`) });
    } else if (isLayer) {
      m = new Linear(w.shape[1], w.shape[0], { bias: params.has("bias"), dtype: dtypeOf(w.dtype, `${mod}.weight`) });
    } else {
      m = mod === "" ? root : new ParameterHolder();
      for (const [n, info] of params) m.registerParameter(n, Tensor.zeros(info.shape, { dtype: dtypeOf(info.dtype, `${mod}.${n}`) }));
    }
    if (mod !== "") attach(root, mod, m, kids);
  }
  fill(root, src);
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

function fill(root: Module, src: CheckpointSource): void {
  for (const [name, t] of root.namedParameters()) {
    using v = src.get(name);
    t.copyFrom(v);
    t.requiresGrad = true;
  }
}
