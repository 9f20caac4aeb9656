// Backward: runs the nodes reachable from the roots in dependency order, sums gradients that meet, and
// accumulates into the leaves' .grad. Every intermediate gradient is disposed as soon as it is used.
import { Tensor } from "../tensor.js";
import { peftError } from "../errors.js";
import { addInPlace } from "../kernels.js";
import { noGrad } from "./grad-mode.js";
import { untrack } from "./scope.js";
import type { Node } from "./node.js";
import { retain } from "./retain.js";
import { notify } from "./observe.js";

function sum(a: Tensor, b: Tensor): Tensor {
  const out = a.to(a.dtype);
  addInPlace(out, b);
  return out;
}

function accumulateLeaf(leaf: Tensor, g: Tensor): void {
  if (g.device !== leaf.device) throw peftError("ERR_DEVICE", `backward: the gradient of a ${leaf.device} leaf came back on ${g.device}`);
  if (leaf.grad && !leaf.grad.disposed) {
    addInPlace(leaf.grad, g);
    g.dispose();
    return;
  }
  // The first gradient becomes .grad (in the leaf's dtype); it belongs to the leaf, not to any tidy scope.
  leaf.grad = untrack(g.dtype === leaf.dtype ? g : g.to(leaf.dtype));
  if (leaf.grad !== g) g.dispose();
}

/** The nodes reachable from `root`, each with the number of edges pointing at it from reachable nodes. */
function dependencies(root: Node): Map<Node, number> {
  const deps = new Map<Node, number>([[root, 0]]);
  const stack = [root];
  while (stack.length) {
    const n = stack.pop()!;
    for (const e of n.next) {
      if (!e || !("node" in e)) continue;
      const seen = deps.has(e.node);
      deps.set(e.node, (deps.get(e.node) ?? 0) + 1);
      if (!seen) stack.push(e.node);
    }
  }
  return deps;
}

function seedGradient(root: Tensor, grad: Tensor | undefined): Tensor {
  if (grad === undefined) {
    if (root.numel !== 1)
      throw peftError("ERR_SHAPE", `backward: grad can be implicitly created only for scalar outputs; this one has shape [${root.shape.join(", ")}]`);
    const one = untrack(Tensor.fromArray([1], root.shape, root.dtype));
    if (root.device === "cpu") return one;
    const moved = untrack(one.to(root.device));
    one.dispose();
    return moved;
  }
  if (!(grad instanceof Tensor)) throw peftError("ERR_STATE", "backward: grad must be a Tensor");
  if (grad.shape.join() !== root.shape.join())
    throw peftError("ERR_SHAPE", `backward: grad has shape [${grad.shape.join(", ")}] but the output has [${root.shape.join(", ")}]`);
  if (grad.device !== root.device) throw peftError("ERR_DEVICE", `backward: grad is on ${grad.device} but the output is on ${root.device}`);
  return retain(grad);
}

export function runBackward(root: Tensor, grad: Tensor | undefined, retainGraph: boolean): void {
  if (root.disposed) throw peftError("ERR_DISPOSED", "backward: the tensor has been disposed");
  if (!root.requiresGrad)
    throw peftError("ERR_STATE", "backward: the tensor does not require grad and has no grad_fn (was it computed under noGrad, or from tensors that need no gradient?)");
  const seed = seedGradient(root, grad);
  if (!notify.active()) return propagate(root, seed, retainGraph);
  try {
    propagate(root, seed, retainGraph);
  } catch (e) {
    notify.end(e);
    throw e;
  }
  notify.end(undefined);
}

function propagate(root: Tensor, seed: Tensor, retainGraph: boolean): void {
  // Backward itself records nothing (PyTorch's create_graph=false).
  noGrad(() => {
    const start = root.gradFn;
    if (!start) {
      if (notify.active()) notify.begin(new Set());
      accumulateLeaf(root, seed);
      return;
    }
    const deps = dependencies(start);
    if (notify.active()) notify.begin(new Set(deps.keys()));
    // The engine holds every node until it is done, so nothing upstream is freed while still pending.
    for (const n of deps.keys()) n.ref();
    const buffers = new Map<Node, (Tensor | null)[]>();
    buffers.set(start, Array.from({ length: start.numOutputs }, (_, i) => (i === root.gradIndex ? seed : null)));
    const ready: Node[] = [start];
    try {
      while (ready.length) {
        const node = ready.pop()!;
        const grads = buffers.get(node) ?? Array(node.numOutputs).fill(null);
        buffers.delete(node);
        let outs: (Tensor | null)[];
        try {
          outs = node.apply(grads);
        } finally {
          if (!retainGraph) node.freeSaved();
        }
        // A backward may hand an incoming gradient straight on, or the same tensor to two inputs: each use
        // gets its own handle, and incoming gradients not passed on are disposed.
        const used = new Set<Tensor>();
        const own = (g: Tensor): Tensor => {
          if (used.has(g)) return retain(g);
          used.add(g);
          return g;
        };
        for (let i = 0; i < node.next.length; i++) {
          const e = node.next[i];
          const g = outs[i] ?? null;
          if (e && "node" in e) {
            if (g) {
              const buf = buffers.get(e.node) ?? Array(e.node.numOutputs).fill(null);
              const have = buf[e.index];
              const mine = own(g);
              buf[e.index] = have ? sum(have, mine) : mine;
              if (have) {
                have.dispose();
                mine.dispose();
              }
              buffers.set(e.node, buf);
            }
            const left = deps.get(e.node)! - 1;
            deps.set(e.node, left);
            if (left === 0) ready.push(e.node);
          } else if (e && g) {
            accumulateLeaf(e.leaf, own(g));
          }
        }
        for (const g of outs) if (g && !used.has(g)) g.dispose();
        for (const g of grads) if (g && !used.has(g)) g.dispose();
        if (notify.active()) notify.nodeDone(node);
      }
    } finally {
      for (const buf of buffers.values()) for (const g of buf) g?.dispose();
      for (const n of deps.keys()) n.unref();
    }
  });
}
