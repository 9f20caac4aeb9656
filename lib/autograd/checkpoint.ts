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

/** y = fn(x), recomputed in backward instead of kept; fn must be deterministic given the generator state. */
export function checkpoint(fn: (x: Tensor) => Tensor, x: Tensor): Tensor {
  if (typeof fn !== "function") throw typeError("checkpoint: fn must be a function");
  if (!(x instanceof Tensor)) throw typeError("checkpoint: x must be a Tensor");
  if (!isGradEnabled()) return fn(x);
  const rng = getRngState();
  const y = noGrad(() => fn(x));
  // force: the block's parameters may want gradients even when x does not.
  return record(
    "CheckpointBackward",
    [x],
    y,
    ([g], [xs], [needX]) => {
      if (!g) return [null];
      const input = xs.detach();
      input.requiresGrad = needX;
      const now = getRngState();
      setRngState(rng);
      let out: Tensor;
      try {
        out = enableGrad(() => fn(input));
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
    [x],
    { force: true },
  );
}
