// Constructing modules "empty" (torch's meta-device / skip_init): inside a skipInit scope, random weight
// initialisation (Tensor.rand, Tensor.randn) allocates its storage without filling it, and draws no stream
// from the global generator. A model built this way and then loaded from a checkpoint allocates each weight
// once and writes it once (from the file); large allocations are fresh pages the kernel hands over only when
// the load writes them, so no memory is spent on values about to be overwritten. Every module class gets
// this for free as long as it initialises through Tensor.rand/randn (or takeRng + those), which all do.
import { typeError } from "./errors.js";
import { inMode } from "./mode-scope.js";

let depth = 0;

/** Whether random initialisation is skipped now (inside a skipInit scope). */
export function isInitSkipped(): boolean {
  return depth > 0;
}

/**
 * Runs fn with random initialisation skipped and returns its result, or (no argument) skips it until the
 * returned scope is disposed (`using _ = skipInit()`). Scopes nest. Parameters made inside hold zeros
 * (uninitialised in spirit: load them before use). Only construction belongs inside: in the scope every
 * Tensor.rand/randn is zeros and random ops (dropout) reuse one stream. fn must be synchronous; a promise
 * it returns would run its later part outside the scope, so it is refused.
 */
export function skipInit(): Disposable;
export function skipInit<T>(fn: () => T): T;
export function skipInit<T>(fn?: () => T): T | Disposable {
  if (fn !== undefined && typeof fn !== "function") throw typeError(`skipInit: expected a function or no argument, got ${fn === null ? "null" : typeof fn}`);
  const out = inMode(() => {
    depth++;
    return () => {
      depth--;
    };
  }, fn);
  if (out instanceof Promise) throw typeError("skipInit: fn returned a promise; construct modules synchronously inside the scope and load them after it");
  return out;
}
