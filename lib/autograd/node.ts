// A graph node: one differentiable call (a functional op, or a module's forward with its fused backward).
// It owns what its backward needs, saved for that call only, and knows where each input's gradient goes.
// Nodes are reference-counted by the tensors they produced and by the nodes downstream, so disposing a
// graph's outputs frees its saved tensors at once instead of at the next garbage collection.
import type { Tensor } from "../tensor.js";
import { peftError } from "../errors.js";
import { retain } from "./retain.js";

/** Where an input's gradient goes: a node's output slot, a leaf tensor's .grad, or nowhere. */
export type Edge = { node: Node; index: number } | { leaf: Tensor } | null;

/**
 * Gradients of the inputs from the gradients of the outputs (null where an output got none). `needs[i]`
 * says whether input i wants one; return null where it does not. Returned tensors belong to the engine.
 */
export type BackwardFn = (grads: (Tensor | null)[], saved: readonly Tensor[], needs: readonly boolean[]) => (Tensor | null)[];

export class Node {
  readonly name: string;
  readonly next: Edge[];
  readonly numOutputs: number;
  readonly #backward: BackwardFn;
  #saved: Tensor[];
  #sources: readonly Tensor[];
  #versions: number[];
  #refs = 0;
  #freed = false;

  constructor(name: string, next: Edge[], numOutputs: number, backward: BackwardFn, saved: readonly Tensor[]) {
    this.name = name;
    this.next = next;
    this.numOutputs = numOutputs;
    this.#backward = backward;
    for (const e of next) if (e && "node" in e) e.node.ref();
    this.#saved = saved.map(retain);
    this.#sources = saved;
    this.#versions = saved.map((t) => t.version);
  }

  ref(): void {
    this.#refs++;
  }

  /** Drops one reference; the last one frees the saved tensors and releases the nodes upstream. */
  unref(): void {
    if (--this.#refs > 0) return;
    this.freeSaved();
    for (let i = 0; i < this.next.length; i++) {
      const e = this.next[i];
      this.next[i] = null;
      if (e && "node" in e) e.node.unref();
    }
  }

  get freed(): boolean {
    return this.#freed;
  }

  freeSaved(): void {
    if (this.#freed) return;
    this.#freed = true;
    for (const t of this.#saved) t.dispose();
    this.#saved = [];
    this.#sources = [];
  }

  /**
   * The tensors (the caller's objects, not the node's own handles) saved when it was recorded, until they are
   * freed: a module's fused backward saves the parameters whose .grad it writes.
   */
  get savedSources(): readonly Tensor[] {
    return this.#sources;
  }

  apply(grads: (Tensor | null)[]): (Tensor | null)[] {
    if (this.#freed)
      throw peftError(
        "ERR_STATE",
        `${this.name}.backward: trying to backward through the graph a second time (or after its outputs were disposed); ` +
          "pass {retainGraph: true} to the first backward to keep it",
      );
    for (let i = 0; i < this.#saved.length; i++) {
      const now = this.#saved[i].version;
      if (now !== this.#versions[i])
        throw peftError(
          "ERR_STATE",
          `${this.name}.backward: a tensor saved for backward (input ${i}, shape [${this.#saved[i].shape.join(", ")}]) was modified ` +
            `by an in-place operation after the forward (version ${this.#versions[i]} -> ${now})`,
        );
    }
    return this.#backward(grads, this.#saved, this.next.map((e) => e !== null));
  }
}
