// Whether ops record graph nodes. noGrad() turns recording off (inference, optimizer updates, evaluation).
import { typeError } from "../errors.js";
import { inMode } from "../mode-scope.js";

let enabled = true;

export function isGradEnabled(): boolean {
  return enabled;
}

/**
 * Runs fn without recording a graph and returns its result, or (no argument) turns recording off until the
 * returned scope is disposed (`using _ = noGrad()`). Scopes nest; the previous mode comes back on dispose.
 */
export function noGrad(): Disposable;
export function noGrad<T>(fn: () => T): T;
export function noGrad<T>(fn?: () => T): T | Disposable {
  if (fn !== undefined && typeof fn !== "function") throw typeError(`noGrad: expected a function or no argument, got ${fn === null ? "null" : typeof fn}`);
  return inMode(() => {
    const was = enabled;
    enabled = false;
    return () => {
      enabled = was;
    };
  }, fn);
}

/**
 * Runs fn with recording on whatever the mode around it (torch.enable_grad): what a backward that recomputes
 * a forward (gradient checkpointing) needs, since backward itself runs with recording off.
 */
export function enableGrad<T>(fn: () => T): T {
  if (typeof fn !== "function") throw typeError(`enableGrad: expected a function, got ${fn === null ? "null" : typeof fn}`);
  const was = enabled;
  enabled = true;
  try {
    return fn();
  } finally {
    enabled = was;
  }
}
