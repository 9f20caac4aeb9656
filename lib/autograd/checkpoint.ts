// Gradient checkpointing (torch.utils.checkpoint, non-reentrant in spirit): the forward of a block runs
// without recording, so none of its intermediates are kept; the block's one graph node saves only its input
// and, in backward, runs the block again with recording on and backpropagates through that fresh graph.
// Parameters inside the block are leaves of the fresh graph, so their .grad accumulates as without
// checkpointing. The random generator's position is restored for the rerun, so dropout draws the same masks.
import { Tensor } from "../tensor.js";
import { typeError } from "../errors.js";
import { getRngState, setRngState } from "../random.js";
import { enableGrad, isGradEnabled, noGrad } from "./grad-mode.js";
import { record } from "./record.js";

/**
 * y = fn(x, ...context), recomputed in backward instead of kept; fn must be deterministic given the
 * generator state. The context tensors (rope tables, masks) are kept for the rerun and get no gradient.
 */
export function checkpoint(fn: (x: Tensor, ...context: Tensor[]) => Tensor, x: Tensor, ...context: Tensor[]): Tensor {
  if (typeof fn !== "function") throw typeError("checkpoint: fn must be a function");
  if (!(x instanceof Tensor)) throw typeError("checkpoint: x must be a Tensor");
  context.forEach((t, i) => {
    if (!(t instanceof Tensor)) throw typeError(`checkpoint: context[${i}] must be a Tensor`);
  });
  if (!isGradEnabled()) return fn(x, ...context);
  const rng = getRngState();
  const y = noGrad(() => fn(x, ...context));
  // force: the block's parameters may want gradients even when x does not.
  return record(
    "CheckpointBackward",
    [x],
    y,
    ([g], [xs, ...kept], [needX]) => {
      if (!g) return [null];
      const input = xs.detach();
      input.requiresGrad = needX;
      const now = getRngState();
      setRngState(rng);
      let out: Tensor;
      try {
        out = enableGrad(() => fn(input, ...kept));
      } finally {
        setRngState(now);
      }
      try {
        if (out.requiresGrad) out.backward(g);
        const dx = needX ? input.grad : null;
        input.grad = null;
        return [dx];
      } finally {
        out.dispose();
        input.dispose();
      }
    },
    [x, ...context],
    { force: true },
  );
}
