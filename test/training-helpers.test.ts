// LR schedules against transformers' formulas written out in float64 (as in transformers/optimization.py,
// stepped like torch's LambdaLR), and clipGradNorm against torch.nn.utils.clip_grad_norm_'s definition
// (norm of per-tensor norms, coefficient maxNorm / (total + 1e-6) clamped at 1) computed in float64.
import { describe, expect, it } from "vitest";
import {
  AdamW, LRScheduler, Tensor, clipGradNorm, getConstantScheduleWithWarmup, getCosineScheduleWithWarmup, getLinearScheduleWithWarmup,
} from "../lib/index.js";
import { uniform } from "./helpers/numeric.js";
import { errorCode as code } from "./helpers/errors.js";
import { distIndex, runNode } from "./helpers/child.js";

// transformers' lr lambdas, transcribed.
const linear = (w: number, n: number) => (s: number) => (s < w ? s / Math.max(1, w) : Math.max(0, (n - s) / Math.max(1, n - w)));
const cosine = (w: number, n: number, cycles = 0.5) => (s: number) => {
  if (s < w) return s / Math.max(1, w);
  const progress = (s - w) / Math.max(1, n - w);
  return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * cycles * 2 * progress)));
};
const constant = (w: number) => (s: number) => (s < w ? s / Math.max(1, w) : 1);

function lrs(make: (o: AdamW) => LRScheduler, steps: number, base = 3e-4): number[] {
  const opt = new AdamW([Tensor.zeros([1])], { lr: base });
  const sched = make(opt);
  const out = [opt.lr];
  for (let i = 0; i < steps; i++) {
    sched.step();
    out.push(opt.lr);
    expect(sched.getLastLr()).toEqual([opt.lr]);
  }
  return out;
}

describe("learning-rate schedules", () => {
  const cases: [string, (o: AdamW) => LRScheduler, (s: number) => number][] = [];
  for (const [w, n] of [[0, 10], [3, 10], [10, 10], [4, 1], [1, 0]]) {
    cases.push([`linear warmup ${w} total ${n}`, (o) => getLinearScheduleWithWarmup(o, w, n), linear(w, n)]);
    cases.push([`cosine warmup ${w} total ${n}`, (o) => getCosineScheduleWithWarmup(o, w, n), cosine(w, n)]);
    cases.push([`constant warmup ${w}`, (o) => getConstantScheduleWithWarmup(o, w), constant(w)]);
  }
  cases.push(["cosine with 2.5 cycles", (o) => getCosineScheduleWithWarmup(o, 2, 20, { numCycles: 2.5 }), cosine(2, 20, 2.5)]);
  for (const [name, make, ref] of cases)
    it(`${name}: lr = base · lambda(step) at construction and after every step`, () => {
      const got = lrs(make, 25);
      expect(got).toEqual(got.map((_, s) => 3e-4 * ref(s)));
    });

  it("the optimizer steps with the scheduled lr; stateDict round-trips the position", () => {
    const p = Tensor.fromArray([1], [1]);
    const opt = new AdamW([p], { lr: 0.1, weightDecay: 0 });
    const sched = getLinearScheduleWithWarmup(opt, 2, 4);
    expect(opt.lr).toBe(0); // step 0 of a warmup
    p.grad = Tensor.fromArray([1], [1]);
    opt.step();
    expect(p.toArray()).toEqual([1]); // lr 0: no move
    sched.step();
    expect(opt.lr).toBe(0.05);
    const saved = sched.stateDict();
    expect(saved).toEqual({ last_epoch: 1, base_lrs: [0.1], _last_lr: [0.05], schedule: { name: "linear", numWarmupSteps: 2, numTrainingSteps: 4 } });
    const other = getLinearScheduleWithWarmup(new AdamW([Tensor.zeros([1])], { lr: 0.1 }), 2, 4);
    other.loadStateDict(JSON.parse(JSON.stringify(saved)));
    other.step();
    sched.step();
    expect(other.getLastLr()).toEqual(sched.getLastLr());
    expect(code(() => getCosineScheduleWithWarmup(new AdamW([Tensor.zeros([1])]), 2, 4).loadStateDict(saved))).toBe("ERR_CHECKPOINT");
    expect(code(() => other.loadStateDict({ ...saved, last_epoch: -2 }))).toBe("ERR_CONFIG");
    expect(code(() => other.loadStateDict({ ...saved, base_lrs: [] }))).toBe("ERR_CHECKPOINT");
    expect(code(() => other.loadStateDict(null as never))).toBe("ERR_INVALID_ARG_TYPE");
  });

  it("a custom lambda, and bad arguments", () => {
    const opt = new AdamW([Tensor.zeros([1])], { lr: 2 });
    const s = new LRScheduler(opt, (step) => 0.5 ** step);
    s.step();
    s.step();
    expect(opt.lr).toBe(0.5);
    expect(code(() => new LRScheduler(opt, (() => "x") as never))).toBe("ERR_CONFIG");
    expect(code(() => new LRScheduler({} as never, () => 1))).toBe("ERR_INVALID_ARG_TYPE");
    expect(code(() => new LRScheduler(opt, 3 as never))).toBe("ERR_INVALID_ARG_TYPE");
    expect(code(() => getLinearScheduleWithWarmup({ lr: 1 } as never, 1, 2))).toBe("ERR_INVALID_ARG_TYPE");
    expect(code(() => getLinearScheduleWithWarmup(opt, -1, 2))).toBe("ERR_CONFIG");
    expect(code(() => getLinearScheduleWithWarmup(opt, 1.5, 2))).toBe("ERR_CONFIG");
    expect(code(() => getLinearScheduleWithWarmup(opt, "1" as never, 2))).toBe("ERR_INVALID_ARG_TYPE");
    expect(code(() => getCosineScheduleWithWarmup(opt, 1, 2, { numCycles: -1 }))).toBe("ERR_CONFIG");
    expect(code(() => getCosineScheduleWithWarmup(opt, 1, 2, { numCycles: "1" as never }))).toBe("ERR_INVALID_ARG_TYPE");
    expect(code(() => getCosineScheduleWithWarmup(opt, 1, 2, null as never))).toBe("ERR_INVALID_ARG_TYPE");
  });
});

/** torch's clip_grad_norm_ in float64: returns the total norm and the clipped gradients. */
function refClip(grads: Float64Array[], maxNorm: number, p: number): { total: number; out: Float64Array[] } {
  const norm = (v: ArrayLike<number>) => {
    if (p === Infinity) return Array.from(v).reduce((a, x) => Math.max(a, Math.abs(x)), 0);
    let s = 0;
    for (let i = 0; i < v.length; i++) s += Math.abs(v[i]!) ** p;
    return s ** (1 / p);
  };
  const total = norm(grads.map(norm));
  const coef = Math.min(1, maxNorm / (total + 1e-6));
  return { total, out: grads.map((g) => g.map((x) => Math.fround(x * coef))) };
}

describe("clipGradNorm", () => {
  const sizes = [1, 7, 17, 33, 127];
  for (const p of [2, 1, 3, Infinity])
    for (const maxNorm of [0.1, 1e6])
      it(`order ${p}, maxNorm ${maxNorm}: total norm and scaled gradients as torch defines them`, () => {
        const params = sizes.map((n, i) => {
          const t = Tensor.zeros([n]);
          t.grad = Tensor.fromArray(uniform(n, -2, 2, 10 * i + p), [n]);
          return t;
        });
        params.push(Tensor.zeros([3])); // no gradient: skipped
        const grads = params.filter((t) => t.grad).map((t) => t.grad!.toFloat64Array());
        const want = refClip(grads, maxNorm, p);
        const total = clipGradNorm(params, maxNorm, { normType: p === Infinity ? "inf" : p });
        expect(Math.abs(total - want.total)).toBeLessThanOrEqual(1e-12 * want.total);
        params.filter((t) => t.grad).forEach((t, i) => {
          const got = t.grad!.toFloat64Array();
          got.forEach((x, j) => expect(Math.abs(x - want.out[i]![j]!)).toBeLessThanOrEqual(2 ** -23 * Math.abs(want.out[i]![j]!)));
        });
      });

  it("bf16/f16 gradients, a single tensor, no gradients, empty tensors", () => {
    for (const dtype of ["bf16", "f16"] as const) {
      const t = Tensor.zeros([4], { dtype });
      t.grad = Tensor.fromArray([3, 4, 0, 0], [4], dtype);
      expect(clipGradNorm(t, 1)).toBe(5);
      const g = t.grad.toArray();
      expect(Math.abs(g[0]! - 0.6)).toBeLessThan(0.01);
    }
    expect(clipGradNorm([Tensor.zeros([2])], 1)).toBe(0);
    expect(clipGradNorm([], 1)).toBe(0);
    const e = Tensor.zeros([0]);
    e.grad = Tensor.zeros([0]);
    expect(clipGradNorm(new Set([e]), 1)).toBe(0);
  });

  it("non-finite norms: scaled by NaN as torch does, or an error when asked", () => {
    const t = Tensor.zeros([2]);
    t.grad = Tensor.fromArray([Infinity, 1], [2]);
    expect(code(() => clipGradNorm([t], 1, { errorIfNonfinite: true }))).toBe("ERR_CONFIG");
    expect(t.grad.toArray()).toEqual([Infinity, 1]);
    expect(clipGradNorm([t], 1)).toBe(Infinity);
    expect(t.grad.toArray()).toEqual([NaN, 0]); // coefficient 1 / inf = 0: inf · 0 is NaN
  });

  it("gradients on the (emulated) cuda device are measured and scaled too", () => {
    const r = runNode(
      `const { Tensor, clipGradNorm } = await import(${JSON.stringify(distIndex)});
      const t = Tensor.zeros([2], { device: "cuda" });
      t.grad = Tensor.fromArray([3, 4], [2]).to("cuda");
      console.log(JSON.stringify({ total: clipGradNorm([t], 1), device: t.grad.device, g: t.grad.toArray() }));`,
      { NODE_PEFT_CUDA: "emu" },
    );
    expect(r.status, r.stderr).toBe(0);
    const { total, device, g } = JSON.parse(r.stdout);
    expect([total, device]).toEqual([5, "cuda"]);
    expect(g).toEqual([Math.fround(3 / (5 + 1e-6)), Math.fround(4 / (5 + 1e-6))]);
  });

  it("bad arguments are coded errors", () => {
    const t = Tensor.zeros([1]);
    expect(code(() => clipGradNorm(null as never, 1))).toBe("ERR_INVALID_ARG_TYPE");
    expect(code(() => clipGradNorm([t, 3 as never], 1))).toBe("ERR_INVALID_ARG_TYPE");
    expect(code(() => clipGradNorm([t], "1" as never))).toBe("ERR_INVALID_ARG_TYPE");
    expect(code(() => clipGradNorm([t], -1))).toBe("ERR_CONFIG");
    expect(code(() => clipGradNorm([t], NaN))).toBe("ERR_CONFIG");
    expect(code(() => clipGradNorm([t], 1, { normType: 0 }))).toBe("ERR_CONFIG");
    expect(code(() => clipGradNorm([t], 1, { normType: "2" as never }))).toBe("ERR_INVALID_ARG_TYPE");
    expect(code(() => clipGradNorm([t], 1, null as never))).toBe("ERR_INVALID_ARG_TYPE");
  });
});
