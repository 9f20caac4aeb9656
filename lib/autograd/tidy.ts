import { Tensor } from "../tensor.js";
import { tidyWith } from "./scope.js";

/** Runs fn and disposes every tensor it created except those in its result (TF.js's tidy). */
export function tidy<T>(fn: () => T): T {
  return tidyWith(fn, (v: unknown): v is Tensor => v instanceof Tensor);
}
