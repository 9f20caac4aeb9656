// Containers: Sequential (runs children in order and back), ModuleList and ModuleDict (hold children).
import { Tensor } from "../tensor.js";
import { arrayArg, peftError, shownValue, typeError } from "../errors.js";
import { Module, type BackwardOptions } from "./module.js";

/** A child index for at(): an integer (a negative one or one past the end is ERR_TARGET_NOT_FOUND there). */
function indexArg(i: unknown, op: string): string {
  if (typeof i !== "number" || !Number.isInteger(i)) throw typeError(`${op}: index must be an integer, got ${shownValue(i)}`);
  return String(i);
}

export class Sequential extends Module {
  readonly #count: number;

  constructor(...modules: Module[]) {
    super();
    modules.forEach((m, i) => this.registerModule(String(i), m));
    this.#count = modules.length;
  }

  get length(): number {
    return this.#count;
  }

  /** The i-th child as registered now (setSubmodule("3", m) replaces it). */
  at(i: number): Module {
    return this.getSubmodule(indexArg(i, "Sequential.at"));
  }

  #children(): Module[] {
    return Array.from({ length: this.#count }, (_, i) => this.at(i));
  }

  // Intermediate activations are ours: each is disposed once the next layer has taken what it needs.
  forward(x: Tensor): Tensor {
    this.input(x);
    let h = x;
    for (const m of this.#children()) {
      const next = m.forward(h);
      if (h !== x) h.dispose();
      h = next;
    }
    return h === x ? x.reshape(x.shape) : h;
  }

  override backward(dy: Tensor, options: BackwardOptions = {}): Tensor | null {
    const opts = this.gradInput(dy, options);
    const kids = this.#children();
    let g: Tensor | null = dy;
    for (let i = kids.length - 1; i >= 0; i--) {
      if (!g) throw peftError("ERR_STATE", `Sequential.backward: layer ${i + 1} returned no gradient for layer ${i}`);
      const inputGrad = i > 0 || opts.inputGrad !== false;
      const next: Tensor | null = kids[i].backward(g, { inputGrad });
      if (g !== dy) g.dispose();
      g = next;
    }
    return g === dy ? dy.reshape(dy.shape) : g;
  }
}

export class ModuleList extends Module {
  #count = 0;

  constructor(modules: Module[] = []) {
    super();
    for (const m of arrayArg(modules, "ModuleList", "modules")) this.append(m as Module);
  }

  append(m: Module): this {
    this.registerModule(String(this.#count++), m);
    return this;
  }

  get length(): number {
    return this.#count;
  }

  at(i: number): Module {
    return this.getSubmodule(indexArg(i, "ModuleList.at"));
  }

  *[Symbol.iterator](): Iterator<Module> {
    for (let i = 0; i < this.#count; i++) yield this.at(i);
  }

  forward(_x: Tensor): Tensor {
    throw peftError("ERR_UNSUPPORTED", "ModuleList has no forward: call its modules from your model's forward");
  }
}

export class ModuleDict extends Module {
  constructor(modules: Record<string, Module> = {}) {
    super();
    if (modules === null || typeof modules !== "object") throw typeError("ModuleDict: expected a record of modules");
    for (const [k, m] of Object.entries(modules)) this.registerModule(k, m);
  }

  get(key: string): Module {
    return this.getSubmodule(key);
  }

  set(key: string, m: Module): void {
    this.registerModule(key, m);
  }

  /** Removes and returns the module (undisposed). */
  delete(key: string): Module | undefined {
    return this.unregisterModule(key);
  }

  keys(): string[] {
    return [...this.namedChildren()].map(([k]) => k);
  }

  forward(_x: Tensor): Tensor {
    throw peftError("ERR_UNSUPPORTED", "ModuleDict has no forward: call its modules from your model's forward");
  }
}

/** torch.nn.ParameterDict: parameters by key (PEFT keeps lora_embedding_A/B this way). */
export class ParameterDict extends Module {
  get(key: string): Tensor {
    const t = [...this.namedParameters("", { recurse: false })].find(([k]) => k === key)?.[1];
    if (!t) throw peftError("ERR_TARGET_NOT_FOUND", `ParameterDict: no parameter ${shownValue(key)}`);
    return t;
  }

  set(key: string, t: Tensor): void {
    this.registerParameter(key, t);
  }

  /** Removes and returns the parameter (undisposed). */
  delete(key: string): Tensor | undefined {
    return this.unregisterParameter(key) ?? undefined;
  }

  keys(): string[] {
    return [...this.namedParameters("", { recurse: false })].map(([k]) => k);
  }

  forward(_x: Tensor): Tensor {
    throw peftError("ERR_UNSUPPORTED", "ParameterDict has no forward");
  }
}
