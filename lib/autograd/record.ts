// Recording: an op or module forward calls record() with its inputs and outputs; a node is attached to the
// outputs when grad mode is on and some input (or, for modules, some parameter) wants a gradient.
import type { Tensor } from "../tensor.js";
import { isGradEnabled } from "./grad-mode.js";
import { Node, type BackwardFn, type Edge } from "./node.js";

/** Whether a call with these inputs records a node. */
export function wantsGrad(...inputs: (Tensor | null | undefined)[]): boolean {
  if (!isGradEnabled()) return false;
  for (const t of inputs) if (t && t.requiresGrad) return true;
  return false;
}

function edgeOf(t: Tensor | null | undefined): Edge {
  if (!t || !t.requiresGrad) return null;
  return t.gradFn ? { node: t.gradFn, index: t.gradIndex } : { leaf: t };
}

export interface RecordOptions {
  /** Record even when no input wants a gradient (a module whose parameters do: its backward fills their .grad). */
  force?: boolean;
}

/**
 * Attaches a node computing `backward` to the outputs (which then require grad) and returns them. `saved`
 * are kept (their own handles, version-checked) until the graph is consumed or its outputs disposed.
 */
export function record<T extends Tensor | Tensor[]>(
  name: string,
  inputs: (Tensor | null | undefined)[],
  outputs: T,
  backward: BackwardFn,
  saved: readonly Tensor[] = [],
  opts: RecordOptions = {},
): T {
  if (!isGradEnabled()) return outputs;
  const next = inputs.map(edgeOf);
  if (!opts.force && next.every((e) => e === null)) return outputs;
  const outs = Array.isArray(outputs) ? outputs : [outputs];
  const node = new Node(name, next, outs.length, backward, saved);
  outs.forEach((o, i) => o.attachGradFn(node, i));
  return outputs;
}
