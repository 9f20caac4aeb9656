// A handle of the library's own on a tensor's storage, outside any tidy() scope: what is saved for backward
// and what modules keep must survive the caller disposing theirs.
import { Tensor } from "../tensor.js";
import { untrack } from "./scope.js";

export function retain(t: Tensor): Tensor {
  return untrack(t.detach());
}
