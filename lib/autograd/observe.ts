// Observers of backward passes: told which graph nodes a backward will run, when each has run (its
// gradients, parameters' .grad included, are then written) and when the pass ends. Data-parallel training
// uses them to start exchanging a parameter's gradient as soon as no pending node can still add to it.
import type { Node } from "./node.js";

export interface BackwardObserver {
  /** Before the first node runs: every node this backward will run. */
  begin?(nodes: ReadonlySet<Node>): void;
  /** After `node`'s backward has run and its gradients have been accumulated. */
  nodeDone?(node: Node): void;
  /** After the last node, or after a node threw (`error` set); also for a backward with no node. */
  end?(error: unknown): void;
}

const observers = new Set<BackwardObserver>();

/** Registers an observer of every later backward; returns the function that removes it. */
export function observeBackward(o: BackwardObserver): () => void {
  observers.add(o);
  return () => observers.delete(o);
}

/** @internal (the engine's calls) */
export const notify = {
  active: (): boolean => observers.size > 0,
  begin(nodes: ReadonlySet<Node>): void {
    for (const o of observers) o.begin?.(nodes);
  },
  nodeDone(node: Node): void {
    for (const o of observers) o.nodeDone?.(node);
  },
  end(error: unknown): void {
    for (const o of observers) o.end?.(error);
  },
};
