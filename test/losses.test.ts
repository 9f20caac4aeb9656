// nllLoss, crossEntropy and mseLoss against float64 references (PyTorch's mean reduction, ignore_index,
// label_smoothing), finite differences of the reference loss, thread-count determinism and bad input.
import { afterEach, describe, expect, it } from "vitest";
import { PeftError, Tensor, backend } from "../lib/index.js";
import { crossEntropy, mseLoss, nllLoss } from "../lib/kernels.js";
import { logSoftmaxRef, FLOATS, UNIT, forEachIsa, expectClose, expectError, expectSameBits, numericGrad, tensorOf, tolIn, uniform } from "./helpers/numeric.js";

const E = UNIT.f32;
const threads = backend.threads;
afterEach(() => backend.setNumThreads(threads));

/** Targets in [0, C) with every `every`-th one replaced by `ignore`. */
function targets(M: number, C: number, seed: number, ignore = -100, every = 0): number[] {
  return uniform(M, 0, C, seed).map((u, i) => (every && i % every === 1 ? ignore : Math.floor(u)));
}


/** PyTorch's F.cross_entropy(reduction="mean", ignore_index, label_smoothing) in float64. */
function crossEntropyRef(x: ArrayLike<number>, t: number[], C: number, ignore: number, eps: number): number {
  const M = t.length, lp = logSoftmaxRef(x, M, C);
  let nll = 0, smooth = 0, count = 0;
  t.forEach((ti, r) => {
    if (ti === ignore) return;
    count++;
    nll -= lp[r * C + ti];
    for (let c = 0; c < C; c++) smooth -= lp[r * C + c];
  });
  const mean = nll / count;
  return eps > 0 ? (1 - eps) * mean + (smooth / count) * (eps / C) : mean;
}

describe("nllLoss", () => {
  for (const dt of FLOATS)
    it(`mean over non-ignored targets, grad -1/count at each target, ${dt}`, () => {
      for (const [M, C] of [[1, 1], [7, 17], [33, 7], [127, 33], [17, 127]]) {
        for (const [ignore, every] of [[-100, 0], [-100, 3], [0, 0]]) {
          const { t: lp, v: lpv } = tensorOf(uniform(M * C, -9, 0, M + C), [M, C], dt);
          const tv = targets(M, C, M * C, ignore, every);
          const target = Tensor.fromArray(tv, [M], "i64");
          const { loss, grad } = nllLoss(lp, target, ignore === -100 ? {} : { ignoreIndex: ignore });
          expect(grad.dtype).toBe(dt);
          expect(grad.shape).toEqual([M, C]);
          const kept = tv.map((t, r) => [t, r]).filter(([t]) => t !== ignore);
          const want = -kept.reduce((a, [t, r]) => a + lpv[r * C + t], 0) / kept.length;
          const gwant = new Float64Array(M * C);
          for (const [t, r] of kept) gwant[r * C + t] = -1 / kept.length;
          if (kept.length === 0) {
            expect(loss).toBeNaN();
          } else {
            expect(Math.abs(loss - want)).toBeLessThanOrEqual(1e-14 * (1 + Math.abs(want)));
          }
          expectClose(grad.toFloat64Array(), gwant, (i) => tolIn(dt, gwant[i], E), `nll grad ${dt} ${M}x${C}`);
          // the loss is linear in logProbs: central differences of the reference
          const fd = numericGrad((v) => -kept.reduce((a, [t, r]) => a + v[r * C + t], 0) / kept.length, lpv);
          if (kept.length) expectClose(grad.toFloat64Array(), fd, (i) => tolIn(dt, fd[i], E) + 1e-9, "FD");
        }
      }
    });

  it("takes (C) log-probs with a 0-d target, i32 targets, and an empty batch (NaN like PyTorch)", () => {
    const lp = Tensor.fromArray([-1, -2, -3], [3]);
    const r = nllLoss(lp, Tensor.fromArray([2], [], "i32"));
    expect(r.loss).toBe(3);
    expect(r.grad.toArray()).toEqual([0, 0, -1]);
    const e = nllLoss(Tensor.zeros([0, 5]), Tensor.zeros([0], { dtype: "i64" }));
    expect(e.loss).toBeNaN();
    expect(e.grad.shape).toEqual([0, 5]);
    const all = nllLoss(Tensor.fromArray([-1, -2, -3, -4], [2, 2]), Tensor.fromArray([-100, -100], [2], "i64"));
    expect(all.loss).toBeNaN();
    expect(all.grad.toArray()).toEqual([0, 0, 0, 0]);
  });

  it("rejects bad input", () => {
    const lp = Tensor.zeros([2, 3]);
    expectError(() => nllLoss(lp, Tensor.fromArray([0, 3], [2], "i64")), RangeError, "ERR_OUT_OF_RANGE",
      /nllLoss: target\[1\] = 3 is out of range for 3 classes \(expected 0 <= target < 3 or ignoreIndex -100\)/);
    expectError(() => nllLoss(lp, Tensor.fromArray([-1, 0], [2], "i32")), RangeError, "ERR_OUT_OF_RANGE", /nllLoss: target\[0\] = -1/);
    expectError(() => nllLoss(lp, Tensor.fromArray([0, 1], [2])), PeftError, "ERR_DTYPE", /nllLoss: target must be i32 or i64, got f32/);
    expectError(() => nllLoss(lp, Tensor.fromArray([0, 1, 1], [3], "i64")), PeftError, "ERR_SHAPE",
      /nllLoss: target must have shape \[2\] for logProbs of shape \[2, 3\], got \[3\]/);
    expectError(() => nllLoss(Tensor.zeros([3]), Tensor.fromArray([1], [1], "i64")), PeftError, "ERR_SHAPE", /nllLoss: target must have shape \[\]/);
    expectError(() => nllLoss(Tensor.zeros([2, 3, 4]), Tensor.zeros([2], { dtype: "i64" })), PeftError, "ERR_SHAPE", /nllLoss: logProbs must have 1 to 2 dimensions/);
    expectError(() => nllLoss(Tensor.zeros([2, 3], { dtype: "i32" }), Tensor.zeros([2], { dtype: "i64" })), PeftError, "ERR_DTYPE", /nllLoss: logProbs must be f32/);
    expectError(() => nllLoss(lp, Tensor.zeros([2], { dtype: "i64" }), { ignoreIndex: 0.5 }), RangeError, "ERR_OUT_OF_RANGE", /nllLoss: ignoreIndex must be an integer/);
    expectError(() => nllLoss(lp, Tensor.zeros([2], { dtype: "i64" }), { ignoreIndex: "1" as unknown as number }), TypeError, "ERR_INVALID_ARG_TYPE", /nllLoss: ignoreIndex must be a number/);
    expectError(() => nllLoss(lp, [0, 1] as unknown as Tensor), TypeError, "ERR_INVALID_ARG_TYPE", /nllLoss: target must be a Tensor/);
    expectError(() => nllLoss(lp, Tensor.zeros([2], { dtype: "i64" }), 3 as unknown as object), TypeError, "ERR_INVALID_ARG_TYPE", /nllLoss: opts must be an object/);
  });
});

describe("crossEntropy", () => {
  for (const dt of FLOATS)
    it(`log-softmax + nll with ignoreIndex and label smoothing, against the reference and finite differences, ${dt}, every kernel path`, () => forEachIsa((isa) => {
      for (const [M, C] of [[1, 1], [1, 7], [7, 17], [33, 7], [17, 127], [2, 1000]]) {
        for (const eps of [0, 0.1, 1]) {
          for (const every of [0, 3]) {
            const { t: x, v: xv } = tensorOf(uniform(M * C, -6, 6, M * C + every), [M, C], dt);
            const tv = targets(M, C, M + C, -100, every);
            const { loss, grad } = crossEntropy(x, Tensor.fromArray(tv, [M], "i32"), { labelSmoothing: eps });
            expect(grad.dtype).toBe(dt);
            const count = tv.filter((t) => t !== -100).length;
            const want = crossEntropyRef(xv, tv, C, -100, eps);
            // row sums of C exponentials in f32 lanes: ~(C/16 + 8) roundings relative to 1 + |loss|
            const ltol = (C / 16 + 16) * E * (1 + Math.abs(want));
            if (count === 0) expect(loss).toBeNaN();
            else expect(Math.abs(loss - want), `loss M=${M} C=${C} eps=${eps}`).toBeLessThanOrEqual(ltol);
            // analytic gradient: (softmax - (1 - eps) onehot - eps / C) / count
            const lp = logSoftmaxRef(xv, M, C), gwant = new Float64Array(M * C), mag = new Float64Array(M * C), rel = new Float64Array(M * C);
            tv.forEach((t, r) => {
              if (t === -100) return;
              let m = -Infinity;
              for (let c = 0; c < C; c++) m = Math.max(m, xv[r * C + c]);
              for (let c = 0; c < C; c++) {
                const i = r * C + c, p = Math.exp(lp[i]), on = c === t ? 1 - eps : 0;
                gwant[i] = (p - on - eps / C) / count;
                mag[i] = (p + on + eps / C) / count;
                rel[i] = (p / (p + on + eps / C)) * (Math.abs(xv[i] - m) + Math.abs(lp[i]) + C / 16 + 8) * E + 2 * E;
              }
            });
            const gtol = (i: number) => tolIn(dt, gwant[i], rel[i], mag[i]);
            expectClose(grad.toFloat64Array(), gwant, gtol, `grad ${dt} M=${M} C=${C} eps=${eps}`);
            if (M * C <= 300 && count > 0) {
              const fd = numericGrad((v) => crossEntropyRef(v, tv, C, -100, eps), xv);
              expectClose(grad.toFloat64Array(), fd, (i) => gtol(i) + 1e-8, `FD ${dt} M=${M} C=${C} eps=${eps} ${isa}`);
            }
          }
        }
      }
    }));

  it("PyTorch's value for a hand-computed case, and (C) logits with a 0-d target", () => {
    // logits [[1, 2, 3], [4, 5, 6]], targets [0, 2], label_smoothing 0.1, worked out by hand
    const x = Tensor.fromArray([1, 2, 3, 4, 5, 6], [2, 3]);
    const { loss } = crossEntropy(x, Tensor.fromArray([0, 2], [2], "i64"), { labelSmoothing: 0.1 });
    const ls = Math.log(Math.exp(-2) + Math.exp(-1) + 1);
    const nll = (2 + ls + ls) / 2, smooth = ((2 + 1 + 0 + 3 * ls) * 2) / 2;
    expect(loss).toBeCloseTo(0.9 * nll + (0.1 / 3) * smooth, 6);
    const one = crossEntropy(Tensor.fromArray([1, 2, 3], [3]), Tensor.fromArray([1], [], "i64"));
    expect(one.loss).toBeCloseTo(1 + ls, 6);
    expect(one.grad.shape).toEqual([3]);
  });

  it("stays exact for a large common offset and an -inf logit (no smoothing), ignores ignoreIndex inside [0, C)", () => {
    const base = [0.5, -1.25, 2, 0.75, 3, -2];
    const { t: big } = tensorOf(base.map((v) => v + 8192), [2, 3], "f32");
    const t = Tensor.fromArray([2, 0], [2], "i64");
    const a = crossEntropy(big, t, { labelSmoothing: 0.2 }), b = crossEntropy(Tensor.fromArray(base, [2, 3]), t, { labelSmoothing: 0.2 });
    expect(Math.abs(a.loss - b.loss)).toBeLessThan(8 * E);
    expectClose(a.grad.toFloat64Array(), b.grad.toFloat64Array(), () => 8 * E);
    const inf = crossEntropy(Tensor.fromArray([-Infinity, 1, 2], [1, 3]), Tensor.fromArray([2], [1], "i64"));
    expect(inf.loss).toBeCloseTo(Math.log(1 + Math.exp(-1)), 6);
    expect(inf.grad.toArray()[0]).toBe(0);
    const ign = crossEntropy(Tensor.fromArray(base, [2, 3]), Tensor.fromArray([1, 0], [2], "i64"), { ignoreIndex: 0 });
    expect(ign.loss).toBeCloseTo(-logSoftmaxRef(base, 2, 3)[1], 6);
    expect(ign.grad.toArray().slice(3)).toEqual([0, 0, 0]);
    const none = crossEntropy(Tensor.fromArray(base, [2, 3]), Tensor.fromArray([-100, -100], [2], "i64"), { labelSmoothing: 0.1 });
    expect(none.loss).toBeNaN();
    expect(none.grad.toArray()).toEqual([0, 0, 0, 0, 0, 0]);
  });

  it("is the same for any thread count", () => {
    const x = Tensor.randn([3001, 33], { seed: 4 });
    const t = Tensor.fromArray(targets(3001, 33, 5, -100, 7), [3001], "i64");
    backend.setNumThreads(1);
    const a = crossEntropy(x, t, { labelSmoothing: 0.1 });
    backend.setNumThreads(2);
    const b = crossEntropy(x, t, { labelSmoothing: 0.1 });
    expect(Object.is(a.loss, b.loss)).toBe(true);
    expectSameBits(a.grad.toFloat32Array(), b.grad.toFloat32Array(), "grad");
  });

  it("rejects bad input", () => {
    const x = Tensor.zeros([2, 3]), t = Tensor.fromArray([0, 1], [2], "i64");
    for (const s of [-0.1, 1.5, NaN])
      expectError(() => crossEntropy(x, t, { labelSmoothing: s }), RangeError, "ERR_OUT_OF_RANGE", /crossEntropy: labelSmoothing must be in \[0, 1\]/);
    expectError(() => crossEntropy(x, t, { labelSmoothing: "0.1" as unknown as number }), TypeError, "ERR_INVALID_ARG_TYPE", /crossEntropy: labelSmoothing must be a number/);
    expectError(() => crossEntropy(x, Tensor.fromArray([0, 7], [2], "i64")), RangeError, "ERR_OUT_OF_RANGE", /crossEntropy: target\[1\] = 7 is out of range for 3 classes/);
    expectError(() => crossEntropy(x, Tensor.fromArray([0, 1], [1, 2], "i64")), PeftError, "ERR_SHAPE", /crossEntropy: target must have shape \[2\] for logits of shape \[2, 3\], got \[1, 2\]/);
    expectError(() => crossEntropy(x, Tensor.fromArray([0, 1], [2], "u8")), PeftError, "ERR_DTYPE", /crossEntropy: target must be i32 or i64, got u8/);
    expectError(() => crossEntropy(Tensor.zeros([2, 3], { dtype: "i8" }), t), PeftError, "ERR_DTYPE", /crossEntropy: logits must be f32/);
    expectError(() => crossEntropy(Tensor.zeros([]), Tensor.zeros([], { dtype: "i64" })), PeftError, "ERR_SHAPE", /crossEntropy: logits must have 1 to 2 dimensions/);
    expectError(() => crossEntropy(null as unknown as Tensor, t), TypeError, "ERR_INVALID_ARG_TYPE", /crossEntropy: logits must be a Tensor/);
  });
});

describe("mseLoss", () => {
  for (const dt of FLOATS)
    it(`mean of squares, grad 2 (y - t) / n in y's dtype, odd sizes and empty, ${dt}`, () => {
      for (const shape of [[1], [7], [17, 3], [33], [127, 5], [0], [2, 0, 3]]) {
        const n = shape.reduce((a, b) => a * b, 1);
        for (const tdt of ["f32", dt] as const) {
          const { t: y, v: yv } = tensorOf(uniform(n, -3, 3, n), shape, dt);
          const { t: tg, v: tv } = tensorOf(uniform(n, -3, 3, n + 1), shape, tdt);
          const { loss, grad } = mseLoss(y, tg);
          expect(grad.dtype).toBe(dt);
          expect(grad.shape).toEqual(shape);
          if (n === 0) {
            expect(loss).toBeNaN();
            continue;
          }
          const want = yv.reduce((a, v, i) => a + (v - tv[i]) ** 2, 0) / n;
          // y - t rounds once in f32, then squares and sums in double
          expect(Math.abs(loss - want)).toBeLessThanOrEqual(3 * E * want + 1e-300);
          const gwant = Array.from(yv, (v, i) => (2 * (v - tv[i])) / n);
          expectClose(grad.toFloat64Array(), gwant, (i) => tolIn(dt, gwant[i], 3 * E), `grad ${dt}/${tdt} ${shape}`);
          if (n <= 200) {
            const fd = numericGrad((v) => v.reduce((a, vi, i) => a + (vi - tv[i]) ** 2, 0) / n, yv);
            expectClose(grad.toFloat64Array(), fd, (i) => tolIn(dt, fd[i], 3 * E) + 1e-9, "FD");
          }
        }
      }
    });

  it("is the same for any thread count", () => {
    const y = Tensor.randn([1 << 18], { seed: 1 }), t = Tensor.randn([1 << 18], { seed: 2 });
    backend.setNumThreads(1);
    const a = mseLoss(y, t);
    backend.setNumThreads(2);
    const b = mseLoss(y, t);
    expect(Object.is(a.loss, b.loss)).toBe(true);
    expectSameBits(a.grad.toFloat32Array(), b.grad.toFloat32Array(), "grad");
  });

  it("rejects bad input", () => {
    expectError(() => mseLoss(Tensor.zeros([3]), Tensor.zeros([3, 1])), PeftError, "ERR_SHAPE", /mseLoss: target has shape \[3, 1\] but y has shape \[3\]/);
    expectError(() => mseLoss(Tensor.zeros([3]), Tensor.zeros([3], { dtype: "i32" })), PeftError, "ERR_DTYPE", /mseLoss: target must be f32/);
    expectError(() => mseLoss(Tensor.zeros([3], { dtype: "i64" }), Tensor.zeros([3])), PeftError, "ERR_DTYPE", /mseLoss: y must be f32/);
    expectError(() => mseLoss(Tensor.zeros([3]), 3 as unknown as Tensor), TypeError, "ERR_INVALID_ARG_TYPE", /mseLoss: target must be a Tensor/);
  });
});
