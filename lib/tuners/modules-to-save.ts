// modulesToSave (PEFT's ModulesToSaveWrapper): the original module frozen, one trainable copy per adapter,
// exactly one copy active; with adapters disabled (or none active) the original runs.
import { Tensor } from "../tensor.js";
import { clip, describe, isArray, peftError, shownValue, stringsArg, typeError } from "../errors.js";
import { Module, ModuleDict, type BackwardOptions } from "../nn/index.js";

function setTrainable(m: Module, on: boolean): void {
  for (const p of m.parameters()) p.requiresGrad = on;
}

export class ModulesToSaveWrapper extends Module {
  readonly originalModule: Module;
  readonly modulesToSave: ModuleDict;
  #active: string | null = null;
  #disabled = false;
  #ran: Module | null = null;

  constructor(original: Module, adapterName: string) {
    super();
    this.originalModule = this.registerModule("original_module", original);
    this.modulesToSave = this.registerModule("modules_to_save", new ModuleDict());
    this.#active = adapterName;
    this.update(adapterName);
  }

  get activeAdapter(): string | null {
    return this.#active;
  }

  get adapterNames(): string[] {
    return this.modulesToSave.keys();
  }

  /** Adds a trainable copy for an adapter (once); the original stays frozen. */
  update(adapterName: string): void {
    if (!this.adapterNames.includes(adapterName)) {
      const copy = this.originalModule.clone();
      setTrainable(copy, false);
      this.modulesToSave.set(adapterName, copy);
    }
    setTrainable(this.originalModule, false);
    if (adapterName === this.#active) setTrainable(this.modulesToSave.get(adapterName), true);
  }

  /** The module forward runs now. */
  get activeModule(): Module {
    if (this.#disabled || this.#active === null || !this.adapterNames.includes(this.#active)) return this.originalModule;
    return this.modulesToSave.get(this.#active);
  }

  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  override forward(...args: any[]): any {
    this.#ran = this.activeModule;
    return this.#ran.forward(...args);
  }

  override backward(dy: Tensor, opts?: BackwardOptions): Tensor | null {
    if (!this.#ran) throw peftError("ERR_STATE", `${this.describe()}.backward: call forward in training mode first`);
    return this.#ran.backward(dy, opts);
  }

  setAdapter(names: string | string[]): void {
    if (typeof names !== "string" && !isArray(names)) throw typeError(`setAdapter: expected an adapter name or an array of names, got ${describe(names)}`);
    const list = typeof names === "string" ? [names] : stringsArg(names, "setAdapter", "names");
    if (list.length > 1) throw peftError("ERR_CONFIG", `Attempted to set multiple (${clip(list.slice(0, 10).join(", "), 200)}) adapters at once for modules_to_save.`);
    const [name] = list;
    if (!this.adapterNames.includes(name))
      throw peftError("ERR_CONFIG", `Adapter ${typeof name === "string" ? clip(name) : shownValue(name)} not found in ${clip(JSON.stringify(this.adapterNames), 200)}`);
    if (this.#active !== null && this.adapterNames.includes(this.#active)) setTrainable(this.modulesToSave.get(this.#active), false);
    setTrainable(this.modulesToSave.get(name), true);
    this.#active = name;
  }

  enableAdapters(enabled: boolean): void {
    this.#disabled = !enabled;
    if (enabled) {
      setTrainable(this.originalModule, false);
      if (this.#active !== null && this.adapterNames.includes(this.#active)) setTrainable(this.modulesToSave.get(this.#active), true);
    } else {
      setTrainable(this.originalModule, true);
      setTrainable(this.modulesToSave, false);
    }
  }

  /** Drops an adapter's copy (disposed); `next` becomes active when the dropped one was. */
  deleteAdapter(name: string, next: string | null): void {
    if (!this.adapterNames.includes(name)) return;
    const copy = this.modulesToSave.delete(name);
    copy?.dispose();
    if (this.#active === name) {
      this.#active = next !== null && this.adapterNames.includes(next) ? next : null;
      if (this.#active !== null) setTrainable(this.modulesToSave.get(this.#active), true);
    }
  }

  /** What replaces the wrapper when the model is unloaded: the active copy (PEFT's behaviour). */
  unloadTarget(): Module {
    return this.#active !== null && this.adapterNames.includes(this.#active) ? this.modulesToSave.get(this.#active) : this.originalModule;
  }
}
