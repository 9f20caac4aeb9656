// checkpoint(fn, x, ...context): the block's forward runs without a graph and is rerun in backward. Gradients
// for x and for parameters inside the block equal those without checkpointing, dropout included (the
// generator's position is restored for the rerun); context tensors are kept for the rerun; nothing is
// recorded under noGrad.
import { describe, expect, it } from "vitest";
import { F, Tensor, checkpoint, enableGrad, isGradEnabled, manualSeed, noGrad } from "../lib/index.js";

function leaf(shape: number[], seed: number): Tensor {
  const t = Tensor.randn(shape, { seed });
  t.requiresGrad = true;
  return t;
}

describe("checkpoint", () => {
  const block = (w: Tensor) => (x: Tensor, scale: Tensor) => F.mul(F.dropout(F.silu(F.matmul(x, w)), 0.3), scale);

  it("gives the gradients of the plain block, dropout included", () => {
    const run = (ckpt: boolean) => {
      manualSeed(5);
      const x = leaf([7, 5], 1), w = leaf([5, 3], 2), scale = Tensor.fromArray([2], [1]);
      const f = block(w);
      const y = ckpt ? checkpoint(f, x, scale) : f(x, scale);
      F.sum(F.mul(y, y)).backward();
      const out = [y, x.grad!, w.grad!].map((t) => Array.from(t.toFloat32Array()));
      for (const t of [x, w, scale, y]) t.dispose();
      return out;
    };
    const [y0, dx0, dw0] = run(false), [y1, dx1, dw1] = run(true);
    expect(y1).toEqual(y0);
    expect(dx1).toEqual(dx0);
    expect(dw1).toEqual(dw0);
    expect(y0.some((v) => v === 0)).toBe(true); // dropout did drop
  });

  it("records nothing under noGrad; parameters get gradients even when x needs none", () => {
    const w = leaf([5, 3], 2), x = Tensor.randn([4, 5], { seed: 3 }), one = Tensor.fromArray([1], [1]);
    const y = noGrad(() => checkpoint(block(w), x, one));
    expect(y.requiresGrad).toBe(false);
    const z = checkpoint((a) => F.matmul(a, w), x);
    F.sum(z).backward();
    expect(w.grad).not.toBeNull();
    for (const t of [w, x, one, y, z]) t.dispose();
  });

  it("enableGrad turns recording on inside noGrad and restores it", () => {
    noGrad(() => {
      expect(isGradEnabled()).toBe(false);
      expect(enableGrad(() => isGradEnabled())).toBe(true);
      expect(isGradEnabled()).toBe(false);
    });
    expect(() => checkpoint(null as never, Tensor.zeros([1]))).toThrow(TypeError);
    expect(() => checkpoint((a) => a, Tensor.zeros([1]), 3 as never)).toThrow(/context\[0\] must be a Tensor/);
  });
});
