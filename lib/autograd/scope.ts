// tidy(): every tensor made inside fn is disposed when fn returns, except what fn returns (TF.js's
// contract). Tensors that live on past their creator (parameters, gradients, optimizer state, what a graph
// node or module saves for backward) are untracked by the code that keeps them.
import type { Tensor } from "../tensor.js";
import { isArray, typeError } from "../errors.js";

interface Scope {
  tensors: Set<Tensor>;
}

const scopes: Scope[] = [];

/** Called for every new Tensor object. */
export function track(t: Tensor): void {
  if (scopes.length) scopes[scopes.length - 1].tensors.add(t);
}

/** The tensor outlives the scope it was made in (kept by the library: saved, a parameter, a gradient). */
export function untrack(t: Tensor): Tensor {
  for (let i = scopes.length - 1; i >= 0; i--) if (scopes[i].tensors.delete(t)) break;
  return t;
}

// At most this many values of a result are looked at (a sparse array of length 2^32-1 is not walked).
const COLLECT_BUDGET = 1_000_000;

function collect(v: unknown, out: Set<Tensor>, isTensor: (v: unknown) => v is Tensor, depth = 0, budget = { left: COLLECT_BUDGET }): void {
  if (depth > 8 || v === null || typeof v !== "object" || budget.left <= 0) return;
  budget.left--;
  if (isTensor(v)) {
    out.add(v);
    return;
  }
  if (isArray(v)) {
    const n = Math.min(v.length, budget.left);
    for (let i = 0; i < n && budget.left > 0; i++) collect(v[i], out, isTensor, depth + 1, budget);
  } else if (Object.getPrototypeOf(v) === Object.prototype || v instanceof Map) {
    for (const x of v instanceof Map ? v.values() : Object.values(v)) {
      if (budget.left <= 0) return;
      collect(x, out, isTensor, depth + 1, budget);
    }
  }
}

/**
 * Runs fn; disposes every tensor created inside that is not part of its result (a tensor, or arrays, plain
 * objects and Maps of them, searched a few levels deep). Kept tensors move to the enclosing scope. An async
 * fn is refused: the scope would close before its tensors exist.
 */
export function tidyWith<T>(fn: () => T, isTensor: (v: unknown) => v is Tensor): T {
  if (typeof fn !== "function" || /^class\b/.test(Function.prototype.toString.call(fn))) throw typeError("tidy: expected a function");
  const scope: Scope = { tensors: new Set() };
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    scopes.pop();
    for (const t of scope.tensors) t.dispose();
    throw e;
  }
  scopes.pop();
  if (result instanceof Promise) {
    for (const t of scope.tensors) t.dispose();
    throw typeError("tidy: fn must be synchronous (it returned a Promise)");
  }
  const keep = new Set<Tensor>();
  collect(result, keep, isTensor);
  const parent = scopes[scopes.length - 1];
  for (const t of scope.tensors) {
    if (keep.has(t)) parent?.tensors.add(t);
    else t.dispose();
  }
  return result;
}
