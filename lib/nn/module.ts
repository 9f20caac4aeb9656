// Module: the tree every model is built from. Children and parameters are registered by name (dotted paths
// as in PyTorch: "seq.0", "model.layers.3.mlp.up_proj"); forward keeps what backward needs while training.
import { Tensor, describe, type DType, type Device, isDType } from "../tensor.js";
import { PeftError, clip, isArray, optionsArg, peftError, shownValue, typeError } from "../errors.js";

export interface BackwardOptions {
  /** Whether the caller needs dx (false for a model's first layer: saves a whole GEMM). Default true. */
  inputGrad?: boolean;
}

import { retain } from "../autograd/retain.js";
import { untrack } from "../autograd/scope.js";
import { record, wantsGrad } from "../autograd/record.js";

export { retain };

function checkName(name: unknown, what: string): string {
  if (typeof name !== "string") throw typeError(`${what}: name must be a string, got ${describe(name)}`);
  if (name === "" || name.includes(".")) throw peftError("ERR_CONFIG", `${what}: name ${shownValue(name)} must be non-empty and contain no "."`);
  return name;
}

// Classes that exist only to be extended (TypeScript's `abstract` does not stop `new` from JavaScript).
const ABSTRACT = new WeakSet<object>();

/** Marks classes as bases only: constructing one directly is a TypeError naming it. */
export function markAbstract(...classes: object[]): void {
  for (const c of classes) ABSTRACT.add(c);
}

export abstract class Module implements Disposable {
  constructor() {
    if (ABSTRACT.has(new.target)) throw typeError(`${new.target.name} is a base class: construct one of its subclasses`);
  }

  training = true;
  readonly #modules = new Map<string, Module>();
  readonly #params = new Map<string, Tensor | null>();
  // Parameters registered as buffers: frozen, and kept in their dtype by to(dtype) (an int8 layer's scales).
  readonly #buffers = new Set<Tensor>();
  // What the last training forward kept for backward; null when no training forward is pending (an empty
  // list is a pending forward that needed no tensors, e.g. a frozen Linear).
  #saved: Tensor[] | null = null;

  /** The layer's tensor input, or a TypeError naming the module (built-in layers take one tensor). */
  protected input(x: unknown, name = "x"): Tensor {
    if (!(x instanceof Tensor)) throw typeError(`${this.constructor.name}.forward: ${name} must be a Tensor, got ${describe(x)}`);
    return x;
  }

  /** The gradient argument of backward, or a TypeError naming the module; `opts` checked to be an object. */
  protected gradInput(dy: unknown, opts: unknown): BackwardOptions {
    if (!(dy instanceof Tensor)) throw typeError(`${this.constructor.name}.backward: dy must be a Tensor, got ${describe(dy)}`);
    return optionsArg(opts as BackwardOptions | undefined, `${this.constructor.name}.backward`);
  }

  /** Any arguments and result (tensors, several inputs, options); the built-in layers take one tensor. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  abstract forward(...args: any[]): any;

  /** Returns dx (null where there is none) and accumulates parameter gradients. */
  backward(_dy: Tensor, _opts?: BackwardOptions): Tensor | null {
    throw peftError("ERR_UNSUPPORTED", `${this.constructor.name}.backward is not implemented`);
  }

  registerModule<M extends Module>(name: string, m: M): M {
    checkName(name, `${this.constructor.name}.registerModule`);
    if (!(m instanceof Module)) throw typeError(`${this.constructor.name}.registerModule(${shownValue(name)}): expected a Module, got ${describe(m)}`);
    if (this.#params.has(name)) throw peftError("ERR_CONFIG", `${this.constructor.name}.registerModule: ${shownValue(name)} is already a parameter`);
    this.#refuseCycle(m, `${this.constructor.name}.registerModule(${shownValue(name)})`);
    this.#modules.set(name, m);
    return m;
  }

  /** A module cannot hold itself or one of its ancestors: the tree would have no end. */
  #refuseCycle(m: Module, what: string): void {
    if (m === this || m.contains(this))
      throw peftError("ERR_CONFIG", `${what}: ${m === this ? "a module cannot contain itself" : "the module contains this one (a cycle)"}`);
  }

  /** Registers a parameter (trainable by default, like torch.nn.Parameter); null keeps the slot empty. */
  registerParameter(name: string, t: Tensor | null): Tensor {
    checkName(name, `${this.constructor.name}.registerParameter`);
    if (t !== null && !(t instanceof Tensor))
      throw typeError(`${this.constructor.name}.registerParameter(${shownValue(name)}): expected a Tensor or null, got ${describe(t)}`);
    if (this.#modules.has(name)) throw peftError("ERR_CONFIG", `${this.constructor.name}.registerParameter: ${shownValue(name)} is already a module`);
    if (t) {
      t.requiresGrad = true;
      untrack(t); // parameters outlive any tidy() scope they were made in
    }
    this.#params.set(name, t);
    return t as Tensor;
  }

  /**
   * Registers a frozen tensor that belongs in the state dict (as a parameter does) but is never trained and
   * keeps its dtype through to(dtype): an int8 layer's scales and format tag.
   */
  protected registerBuffer(name: string, t: Tensor): Tensor {
    this.registerParameter(name, t);
    t.requiresGrad = false;
    this.#buffers.add(t);
    return t;
  }

  /** Removes a child from the registry (and from own properties pointing at it); returns it undisposed. */
  protected unregisterModule(name: string): Module | undefined {
    const m = this.#modules.get(name);
    this.#modules.delete(name);
    if (m) this.#replaceOwnRefs(m, undefined);
    return m;
  }

  protected unregisterParameter(name: string): Tensor | null | undefined {
    const t = this.#params.get(name);
    this.#params.delete(name);
    return t;
  }

  *namedChildren(): Iterable<[string, Module]> {
    yield* this.#modules;
  }

  /** "" for this module (or `prefix`), then every descendant by dotted path (each module once, as PyTorch). */
  namedModules(prefix = ""): Iterable<[string, Module]> {
    if (typeof prefix !== "string") throw typeError(`namedModules: prefix must be a string, got ${describe(prefix)}`);
    return this.#walk(prefix, new Set());
  }

  // Depth-first, parents before children, each module once; an explicit stack, so a deep tree cannot
  // overflow the call stack.
  *#walk(prefix: string, seen: Set<Module>): Iterable<[string, Module]> {
    if (seen.has(this)) return;
    seen.add(this);
    yield [prefix, this];
    const stack: [string, Iterator<[string, Module]>][] = [[prefix, this.#modules.entries()]];
    while (stack.length) {
      const [path, it] = stack[stack.length - 1];
      const r = it.next();
      if (r.done) {
        stack.pop();
        continue;
      }
      const [name, child] = r.value;
      if (seen.has(child)) continue;
      seen.add(child);
      const here = path ? `${path}.${name}` : name;
      yield [here, child];
      stack.push([here, child.#modules.entries()]);
    }
  }

  /** Parameters by dotted path (each tensor once). */
  namedParameters(prefix = "", opts: { recurse?: boolean } = {}): Iterable<[string, Tensor]> {
    if (typeof prefix !== "string") throw typeError(`namedParameters: prefix must be a string, got ${describe(prefix)}`);
    return this.#parameters(prefix, optionsArg(opts, "namedParameters").recurse !== false);
  }

  *#parameters(prefix: string, recurse: boolean): Iterable<[string, Tensor]> {
    const seen = new Set<Tensor>();
    const modules: Iterable<[string, Module]> = recurse ? this.#walk(prefix, new Set()) : [[prefix, this]];
    for (const [path, m] of modules) {
      for (const [name, t] of m.#params) {
        if (!t || seen.has(t)) continue;
        seen.add(t);
        yield [path ? `${path}.${name}` : name, t];
      }
    }
  }

  *parameters(): Iterable<Tensor> {
    for (const [, t] of this.namedParameters()) yield t;
  }

  /**
   * The module at a dotted path. `T` names its type for the caller (`getSubmodule<Linear>("fc")`); pass the
   * class (`getSubmodule("fc", Linear)`) to have it checked as well (ERR_TARGET_NOT_FOUND otherwise).
   */
  getSubmodule<T extends Module = Module>(path: string, type?: abstract new (...args: never[]) => T): T {
    if (typeof path !== "string") throw typeError(`getSubmodule: path must be a string, got ${describe(path)}`);
    const m = this.#submoduleAt(path);
    if (type !== undefined) {
      if (typeof type !== "function") throw typeError(`getSubmodule: type must be a class, got ${describe(type)}`);
      if (!(m instanceof type))
        throw peftError("ERR_TARGET_NOT_FOUND", `getSubmodule(${shownValue(path)}): is a ${m.constructor.name}, not a ${clip(type.name || "(anonymous class)")}`);
    }
    return m as T;
  }

  #submoduleAt(path: string): Module {
    if (path === "") return this;
    let m: Module = this;
    const parts = path.split(".");
    for (let i = 0; i < parts.length; i++) {
      const next = m.#modules.get(parts[i]);
      if (!next) {
        const here = parts.slice(0, i).join(".") || "(root)";
        const names = [...m.#modules.keys()];
        throw peftError(
          "ERR_TARGET_NOT_FOUND",
          `getSubmodule(${shownValue(path)}): ${clip(here)} (${m.constructor.name}) has no child ${shownValue(parts[i])}` +
            (names.length ? `; its children: ${names.slice(0, 10).map((n) => clip(n)).join(", ")}` : "; it has no children"),
        );
      }
      m = next;
    }
    return m;
  }

  /**
   * Replaces the child at `path` in the registry and in every own property of its parent that referred to
   * the old child, so a custom model's forward (`this.fc.forward(x)`) calls the new module. What the old module
   * held is disposed, except what the new one still reaches (an adapter wrapping its base layer, or a base
   * layer taking its adapter's place), or nothing when `dispose` is false.
   */
  setSubmodule(path: string, m: Module, opts: { dispose?: boolean } = {}): void {
    if (typeof path !== "string") throw typeError(`setSubmodule: path must be a string, got ${describe(path)}`);
    if (!(m instanceof Module)) throw typeError(`setSubmodule(${shownValue(path)}): expected a Module, got ${describe(m)}`);
    const dispose = optionsArg(opts, "setSubmodule").dispose !== false;
    const cut = path.lastIndexOf(".");
    const parent = this.getSubmodule(cut < 0 ? "" : path.slice(0, cut));
    const name = path.slice(cut + 1);
    const old = parent.#modules.get(name);
    if (!old) throw peftError("ERR_TARGET_NOT_FOUND", `setSubmodule(${shownValue(path)}): there is no module at this path to replace`);
    // The module replacing a child may be that child's descendant (a layer unwrapped), never an ancestor.
    if (m === parent || m.contains(parent)) parent.#refuseCycle(m, `setSubmodule(${shownValue(path)})`);
    parent.#modules.set(name, m);
    parent.#replaceOwnRefs(old, m);
    if (dispose) disposeDropped(old, m);
  }

  /**
   * A deep copy with its own parameters (what modulesToSave trains). Layers override this; a module type
   * without it cannot be saved as a trainable copy.
   */
  clone(): Module {
    throw peftError("ERR_UNSUPPORTED", `${this.constructor.name} has no clone(): implement it to use this module in modulesToSave`);
  }

  /** Copies every parameter's values and requiresGrad flag from `src` (same structure) into this module. */
  protected copyParametersFrom(src: Module): this {
    const mine = new Map(this.namedParameters());
    for (const [name, t] of src.namedParameters()) {
      const dst = mine.get(name);
      if (!dst) throw peftError("ERR_STATE", `${this.constructor.name}.clone: the copy has no parameter "${name}"`);
      dst.copyFrom(t);
      dst.requiresGrad = t.requiresGrad;
    }
    this.training = src.training;
    return this;
  }

  /** True when `m` is this module or one of its descendants. */
  contains(m: Module): boolean {
    for (const [, x] of this.namedModules()) if (x === m) return true;
    return false;
  }

  #replaceOwnRefs(old: unknown, next: unknown): void {
    for (const key of Object.keys(this)) {
      if ((this as Record<string, unknown>)[key] === old) (this as Record<string, unknown>)[key] = next;
    }
  }

  /**
   * The key the tensor registered here as `name` has in state dicts and checkpoint files: the name itself,
   * unless the layer's file keys hold dots (a 4-bit layer's "weight.absmax", registered as "absmax").
   */
  stateKey(name: string): string {
    return name;
  }

  /** Whether `t` is one of this module's own buffers (frozen state beside the weight, not a parameter as torch counts them). */
  isBuffer(t: Tensor): boolean {
    return this.#buffers.has(t);
  }

  /** Every tensor once, by its state-dict key (dotted path + stateKey), with the module that holds it. */
  *namedStateTensors(prefix = ""): Iterable<[string, Tensor, Module]> {
    const seen = new Set<Tensor>();
    for (const [path, m] of this.namedModules(prefix)) {
      for (const [name, t] of m.#params) {
        if (!t || seen.has(t)) continue;
        seen.add(t);
        const key = m.stateKey(name);
        yield [path ? `${path}.${key}` : key, t, m];
      }
    }
  }

  /** Handles sharing the live storage, by state-dict key; disposing them never frees the model's weights. */
  stateDict(): Record<string, Tensor> {
    const out: Record<string, Tensor> = {};
    for (const [key, t] of this.namedStateTensors()) out[key] = retain(t);
    return out;
  }

  /**
   * Copies tensors into the parameters in place. Strict by default: missing and unexpected keys are an error
   * (listing them with shapes) and nothing is copied unless every shape matches.
   */
  loadStateDict(record: Record<string, Tensor>, options: { strict?: boolean } = {}): { missingKeys: string[]; unexpectedKeys: string[] } {
    const opts = optionsArg(options, "loadStateDict");
    const sd = tensorEntries(record, "loadStateDict");
    const own = new Map([...this.namedStateTensors()].map(([k, t]) => [k, t]));
    const missing = [...own.keys()].filter((k) => !sd.has(k));
    const unexpected = [...sd.keys()].filter((k) => !own.has(k));
    const fmt = (k: string, t: unknown) => `${clip(k)} ${t instanceof Tensor ? `[${t.shape.join(", ")}] ${t.dtype}` : t === undefined ? "" : `(${describe(t)})`}`.trim();
    if (opts.strict !== false && (missing.length || unexpected.length)) {
      const parts: string[] = [];
      if (missing.length) parts.push(`missing keys: ${missing.slice(0, 10).map((k) => fmt(k, own.get(k))).join(", ")}${missing.length > 10 ? `, … (${missing.length})` : ""}`);
      if (unexpected.length) parts.push(`unexpected keys: ${unexpected.slice(0, 10).map((k) => fmt(k, sd.get(k))).join(", ")}${unexpected.length > 10 ? `, … (${unexpected.length})` : ""}`);
      throw peftError("ERR_CHECKPOINT", `loadStateDict (${this.constructor.name}): ${parts.join("; ")}`);
    }
    // Everything is checked before the first copy, so a failure leaves every weight as it was.
    const pairs: [Tensor, Tensor][] = [];
    for (const [k, dst] of own) {
      if (!sd.has(k)) continue;
      const src = sd.get(k);
      if (!(src instanceof Tensor)) throw typeError(`loadStateDict: ${shownValue(k)} must be a Tensor, got ${describe(src)}`);
      if (src.disposed) throw peftError("ERR_DISPOSED", `loadStateDict: ${shownValue(k)} has been disposed`);
      if (src.shape.length !== dst.shape.length || src.shape.some((d, i) => d !== dst.shape[i]))
        throw peftError("ERR_SHAPE", `loadStateDict: ${shownValue(k)} has shape [${src.shape.join(", ")}] in the state dict but [${dst.shape.join(", ")}] in the model`);
      const isFloat = (d: DType) => d === "f32" || d === "f16" || d === "bf16";
      if (isFloat(src.dtype) !== isFloat(dst.dtype))
        throw peftError("ERR_DTYPE", `loadStateDict: ${shownValue(k)} is ${src.dtype} in the state dict but ${dst.dtype} in the model`);
      pairs.push([dst, src]);
    }
    for (const [dst, src] of pairs) dst.copyFrom(src);
    return { missingKeys: missing, unexpectedKeys: unexpected };
  }

  train(mode = true): this {
    for (const [, m] of this.namedModules()) m.training = mode;
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /** Converts floating-point parameters to a dtype, or moves every parameter to a device. */
  to(target: DType | Device): this {
    const isDevice = target === "cpu" || target === "cuda";
    if (!isDevice && !isDType(target)) throw typeError(`Module.to: target must be a dtype or device, got ${shownValue(target)}`);
    for (const [, m] of this.namedModules()) {
      for (const [name, t] of m.#params) {
        if (!t) continue;
        const floating = t.dtype === "f32" || t.dtype === "f16" || t.dtype === "bf16";
        if ((isDevice && t.device === target) || (!isDevice && (!floating || t.dtype === target || m.#buffers.has(t)))) continue;
        const next = t.to(target);
        next.requiresGrad = t.requiresGrad;
        if (m.#buffers.delete(t)) m.#buffers.add(next);
        m.#params.set(name, next);
        m.#replaceOwnRefs(t, next);
        t.grad?.dispose();
        t.dispose();
      }
      m.releaseSaved();
    }
    return this;
  }

  /** Drops every gradient (they are reallocated on the next backward). */
  zeroGrad(): void {
    for (const t of this.parameters()) {
      t.grad?.dispose();
      t.grad = null;
    }
  }

  /** Releases parameters, gradients and saved activations of the whole tree. */
  dispose(): void {
    for (const [, m] of this.namedModules()) {
      m.releaseSaved();
      for (const [, t] of m.#params) {
        t?.grad?.dispose();
        if (t) t.grad = null;
        t?.dispose();
      }
    }
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  // ---- saved activations (what backward needs) ----

  /**
   * The tail of a weight layer's forward (Linear, Conv1D, Conv2d): in training, keeps x for backward only when
   * the weight is trainable (x is needed for dW only; a frozen weight needs nothing but itself); with autograd,
   * one node per call whose backward, `gradients(dy, x or undefined, wantDx, the weight as saved)`, is the same
   * fused kernels the tape-free backward runs.
   */
  protected weightLayerOutput(
    x: Tensor,
    y: Tensor,
    weight: Tensor,
    bias: Tensor | null,
    gradients: (dy: Tensor, x: Tensor | undefined, wantDx: boolean, weight: Tensor) => Tensor | null,
  ): Tensor {
    const needX = weight.requiresGrad;
    if (!this.training) this.releaseSaved();
    else if (needX) this.save(x);
    else this.save();
    if (!wantsGrad(x, weight, bias)) return y;
    return record(
      `${this.constructor.name}Backward`,
      [x],
      y,
      ([g], saved, [needDx]) => [g ? gradients(g, needX ? saved[1] : undefined, needDx, saved[0]) : null],
      needX ? [weight, x] : [weight],
      { force: true },
    );
  }

  /**
   * Marks a training forward and keeps our own handles on the tensors backward needs (released by backward
   * or the next forward). Call it even with nothing to keep: backward checks that a forward happened.
   */
  protected save(...ts: Tensor[]): void {
    this.releaseSaved();
    this.#saved = ts.map(retain);
  }

  /** The saved tensors, or an ERR_STATE error naming the module when there was no training forward. */
  protected saved(): Tensor[] {
    if (!this.#saved)
      throw peftError("ERR_STATE", `${this.describe()}.backward: nothing saved for backward; call forward in training mode first`);
    return this.#saved;
  }

  protected hasSaved(): boolean {
    return this.#saved !== null;
  }

  releaseSaved(): void {
    for (const t of this.#saved ?? []) t.dispose();
    this.#saved = null;
  }

  // ---- printing ----

  /** One line of settings, as PyTorch's extra_repr. */
  extraRepr(): string {
    return "";
  }

  describe(): string {
    return `${this.constructor.name}(${this.extraRepr()})`;
  }

  toString(): string {
    return this.#repr(new Set());
  }

  // PyTorch's nested repr. A module met again below itself (only a subclass bypassing registerModule could
  // make a cycle) is named, not printed again; past 64 levels the rest is elided.
  #repr(above: Set<Module>): string {
    const kids = [...this.#modules];
    if (!kids.length) return this.describe();
    const extra = this.extraRepr();
    above.add(this);
    const lines = kids.map(([name, m]) => {
      const inner = above.has(m) ? `${m.constructor.name}(…cycle)` : above.size >= 64 ? `${m.constructor.name}(…)` : m.#repr(above);
      return `  (${name}): ${inner.split("\n").join("\n  ")}`;
    });
    above.delete(this);
    return `${this.constructor.name}(${extra ? `\n  ${extra}` : ""}\n${lines.join("\n")}\n)`;
  }

  /** The output head, for targetModules "all-linear" (models override). */
  getOutputEmbeddings?(): Module | undefined;
}

/**
 * Disposes what `dropped` holds that `kept` does not reach: replacing an adapter layer by its own base layer
 * frees the adapter weights and keeps the base weights.
 */
export function disposeDropped(dropped: Module, kept: Module): void {
  const keep = new Set<Module>();
  for (const [, m] of kept.namedModules()) keep.add(m);
  const keepParams = new Set(kept.parameters());
  for (const [, m] of dropped.namedModules()) {
    if (keep.has(m)) continue;
    m.releaseSaved();
    for (const [, t] of m.namedParameters("", { recurse: false })) {
      if (keepParams.has(t)) continue;
      t.grad?.dispose();
      t.grad = null;
      t.dispose();
    }
  }
}

/** Accumulates into a parameter's gradient, allocating it (zeros, the parameter's dtype) on first use. */
export function gradOf(p: Tensor): Tensor {
  // A gradient belongs to its parameter, whatever tidy() scope the backward ran in.
  if (!p.grad) p.grad = untrack(Tensor.zeros(p.shape, { dtype: p.dtype, device: p.device }));
  return p.grad;
}

export { PeftError };

/**
 * A record of tensors read once into a Map of its own enumerable entries: getters run here, before anything
 * is checked or copied, and names such as "constructor" or "__proto__" are plain keys, not prototype lookups.
 */
export function tensorEntries(record: unknown, op: string): Map<string, unknown> {
  if (record === null || typeof record !== "object" || isArray(record))
    throw typeError(`${op}: expected a record of tensors, got ${describe(record)}`);
  return new Map(Object.entries(record));
}

markAbstract(Module);
