// adamwStep against PyTorch's AdamW worked out in float64 (step by step and over three steps, with and
// without weight decay, f32/bf16/f16 parameters), grad-null skipping, determinism and validation before
// any write.
import { afterEach, describe, expect, it } from "vitest";
import { PeftError, Tensor, backend } from "../lib/index.js";
import { adamwStep, type AdamWStepOptions } from "../lib/kernels.js";
import { FLOATS, ISAS, UNIT, forEachIsa, expectClose, expectError, expectSameBits, roundTo, tensorOf, uniform, type FloatDType } from "./helpers/numeric.js";

const E = UNIT.f32;
const threads = backend.threads;
afterEach(() => backend.setNumThreads(threads));

type Hyper = Omit<AdamWStepOptions, "step">;
const DEFAULTS: Hyper = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 1e-2 };

/** One AdamW step in float64 (torch.optim.AdamW), with error magnitudes for the f32 implementation. */
function refStep(p: Float64Array, g: ArrayLike<number>, m: Float64Array, v: Float64Array, step: number, h: Hyper) {
  const bc1 = 1 - h.beta1 ** step, bc2 = 1 - h.beta2 ** step;
  const out = { p: new Float64Array(p.length), m: new Float64Array(p.length), v: new Float64Array(p.length), pMag: new Float64Array(p.length), mMag: new Float64Array(p.length) };
  for (let i = 0; i < p.length; i++) {
    const decayed = p[i] * (1 - h.lr * h.weightDecay);
    const mi = h.beta1 * m[i] + (1 - h.beta1) * g[i];
    const vi = h.beta2 * v[i] + (1 - h.beta2) * g[i] * g[i];
    const denom = Math.sqrt(vi) / Math.sqrt(bc2) + h.eps;
    // PyTorch's lerp rounds 2·min(w, 1 - w)·|g - m| + |m_new| worth of f32 ulps (w = 1 - beta1)
    const w = 1 - h.beta1;
    const mMag = 2 * Math.min(w, 1 - w) * Math.abs(g[i] - m[i]) + Math.abs(mi);
    out.m[i] = mi;
    out.v[i] = vi;
    out.mMag[i] = mMag;
    out.p[i] = decayed - (h.lr / bc1) * (mi / denom);
    out.pMag[i] = Math.abs(decayed) + (h.lr / bc1) * (mMag / denom);
  }
  return out;
}

function state(n: number, dt: FloatDType, seed: number) {
  const { t: p } = tensorOf(uniform(n, -1, 1, seed), [n], dt);
  return { p, m: Tensor.zeros([n]), v: Tensor.zeros([n]) };
}

describe("adamwStep", () => {
  it("first step by hand: p(1 - lr·wd) - lr·g/(|g| + eps)", () => {
    for (const wd of [0, 0.01]) {
      const p = Tensor.fromArray([1, -2, 0.5], [3]), g = Tensor.fromArray([0.5, -4, 1e-3], [3]);
      const m = Tensor.zeros([3]), v = Tensor.zeros([3]);
      adamwStep([p], [g], [m], [v], { step: 1, lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: wd });
      // with zero moments the bias corrections cancel: m̂ = g, v̂ = g²
      const want = [1 * (1 - 0.1 * wd) - 0.1 * 0.5 / (0.5 + 1e-8), -2 * (1 - 0.1 * wd) + 0.1 * 4 / (4 + 1e-8), 0.5 * (1 - 0.1 * wd) - 0.1 * 1e-3 / (1e-3 + 1e-8)];
      expectClose(p.toFloat64Array(), want, (i) => 4 * E * (Math.abs(want[i]) + 0.1));
      const g3 = Math.fround(1e-3); // the f32 the tensor holds
      expectClose(m.toFloat64Array(), [0.05, -0.4, 0.1 * g3], (i) => 2 * E * [0.05, 0.4, 1e-4][i]);
      expectClose(v.toFloat64Array(), [0.00025, 0.016, 0.001 * g3 * g3], (i) => 4 * E * [0.00025, 0.016, 1e-9][i]);
    }
  });

  for (const dt of FLOATS)
    for (const h of [{ ...DEFAULTS, weightDecay: 0 }, { ...DEFAULTS, lr: 0.05, weightDecay: 0.5 }, { lr: 0.3, beta1: 0.3, beta2: 0.5, eps: 1e-3, weightDecay: 0.1 }])
      it(`three steps match float64 AdamW step by step, ${dt} params, lr ${h.lr} wd ${h.weightDecay} betas ${h.beta1}/${h.beta2}, paths ${ISAS.join(", ")}`, () => forEachIsa((isa) => {
        const sizes = [1, 7, 17, 33, 127, 0, 1000];
        const st = sizes.map((n, k) => state(n, dt, 10 + k));
        for (let step = 1; step <= 3; step++) {
          const grads = sizes.map((n, k) => tensorOf(uniform(n, -2, 2, 100 * step + k), [n], k % 2 ? "f32" : dt));
          const before = st.map((s) => ({ p: s.p.toFloat64Array(), m: s.m.toFloat64Array(), v: s.v.toFloat64Array(), pv: s.p.version }));
          adamwStep(st.map((s) => s.p), grads.map((g) => g.t), st.map((s) => s.m), st.map((s) => s.v), { step, ...h });
          st.forEach((s, k) => {
            const b = before[k], r = refStep(b.p, grads[k].v, b.m, b.v, step, h);
            const what = `${dt} n=${sizes[k]} step ${step} ${isa}`;
            expectClose(s.m.toFloat64Array(), r.m, (i) => 2 * E * r.mMag[i] + 1e-45, `m ${what}`);
            expectClose(s.v.toFloat64Array(), r.v, (i) => 4 * E * r.v[i] + 1e-45, `v ${what}`);
            // the update carries the moments' and denominator's roundings (~12 f32 ulps), p one rounding into dt
            expectClose(s.p.toFloat64Array(), r.p, (i) => 12 * E * r.pMag[i] + UNIT[dt] * Math.abs(r.p[i]) + 1e-45, `p ${what}`);
            if (sizes[k]) expect(s.p.version).toBeGreaterThan(b.pv);
          });
        }
      }));

  it("three steps track the float64 trajectory (bf16 parameters rounded after every step)", () => {
    for (const dt of ["f32", "bf16"] as const) {
      const n = 33, h = { ...DEFAULTS, lr: 0.01, weightDecay: 0.1 };
      const s = state(n, dt, 3);
      let p = s.p.toFloat64Array(), m = new Float64Array(n), v = new Float64Array(n);
      for (let step = 1; step <= 3; step++) {
        const g = uniform(n, -1, 1, step);
        adamwStep([s.p], [Tensor.fromArray(g, [n])], [s.m], [s.v], { step, ...h });
        const r = refStep(p, g, m, v, step, h);
        (p = dt === "bf16" ? roundTo(r.p, "bf16") : r.p), (m = r.m), (v = r.v);
      }
      // bf16: a rounding may fall on the other side of a tie-break once in a while: one bf16 ulp
      expectClose(s.p.toFloat64Array(), p, (i) => (dt === "bf16" ? 2 ** -7 * Math.abs(p[i]) : 64 * E * (Math.abs(p[i]) + 0.03)), `trajectory ${dt}`);
    }
  });

  it("weight decay is decoupled: applied to p before the Adam update, not added to the gradient", () => {
    const p = Tensor.fromArray([2], [1]), m = Tensor.zeros([1]), v = Tensor.zeros([1]);
    adamwStep([p], [Tensor.fromArray([1], [1])], [m], [v], { step: 1, lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 0, weightDecay: 0.5 });
    // AdamW: 2·(1 - 0.05) - 0.1 = 1.8; L2-style Adam would give 2 - 0.1 = 1.9 (grad 2 normalises to 1)
    expect(p.toArray()[0]).toBeCloseTo(1.8, 6);
  });

  it("skips entries whose grad is null without touching them", () => {
    const a = state(17, "f32", 1), b = state(7, "bf16", 2);
    const bp = b.p.toFloat32Array(), bv = b.p.version, mv = b.m.version;
    const ap = a.p.toFloat32Array();
    adamwStep([a.p, b.p], [Tensor.fromArray(uniform(17, -1, 1, 5), [17]), null], [a.m, b.m], [a.v, b.v], { step: 1, ...DEFAULTS });
    expectSameBits(b.p.toFloat32Array(), bp, "skipped param");
    expect(b.p.version).toBe(bv);
    expect(b.m.version).toBe(mv);
    expect(b.m.toArray().every((x) => x === 0) && b.v.toArray().every((x) => x === 0)).toBe(true);
    expect(a.p.toFloat32Array()).not.toEqual(ap);
    // every grad null: nothing happens at all
    adamwStep([a.p], [null], [a.m], [a.v], { step: 2, ...DEFAULTS });
    adamwStep([], [], [], [], { step: 1, ...DEFAULTS });
  });

  it("is the same for any thread count", () => {
    const run = (t: number) => {
      backend.setNumThreads(t);
      const sizes = [1 << 18, 5, 33, 1000];
      const st = sizes.map((n, k) => state(n, k % 2 ? "bf16" : "f32", k));
      for (let step = 1; step <= 2; step++)
        adamwStep(st.map((s) => s.p), sizes.map((n, k) => Tensor.randn([n], { seed: step * 10 + k })), st.map((s) => s.m), st.map((s) => s.v), { step, ...DEFAULTS });
      return st.flatMap((s) => [s.p.toFloat32Array(), s.m.toFloat32Array(), s.v.toFloat32Array()]);
    };
    const a = run(1), b = run(2);
    a.forEach((x, i) => expectSameBits(x, b[i], `tensor ${i}`));
  });

  describe("validates everything before touching memory", () => {
    const opts = { step: 1, ...DEFAULTS };
    // A well-formed first entry; the bad one comes last, so a partial update would show in entry 0.
    function setup() {
      const good = state(7, "f32", 1);
      const g0 = Tensor.fromArray(uniform(7, -1, 1, 2), [7]);
      const bad = state(5, "f32", 3);
      const g1 = Tensor.fromArray(uniform(5, -1, 1, 4), [5]);
      const snapshot = () => [good.p, good.m, good.v, bad.p, bad.m, bad.v].map((t) => t.toFloat32Array());
      return { good, g0, bad, g1, before: snapshot(), snapshot };
    }
    type S = ReturnType<typeof setup>;
    const cases: [string, (s: S) => void, new (...a: never[]) => Error, string, RegExp][] = [
      ["params not an array", (s) => adamwStep(s.good.p as unknown as Tensor[], [s.g0], [s.good.m], [s.good.v], opts), TypeError, "ERR_INVALID_ARG_TYPE", /adamwStep: params must be an array of Tensors/],
      ["grads length", (s) => adamwStep([s.good.p, s.bad.p], [s.g0], [s.good.m, s.bad.m], [s.good.v, s.bad.v], opts), PeftError, "ERR_SHAPE", /adamwStep: grads has 1 entries but params has 2/],
      ["expAvgSq length", (s) => adamwStep([s.good.p, s.bad.p], [s.g0, s.g1], [s.good.m, s.bad.m], [s.good.v], opts), PeftError, "ERR_SHAPE", /adamwStep: expAvgSq has 1 entries but params has 2/],
      ["a non-tensor", (s) => adamwStep([s.good.p, {} as Tensor], [s.g0, s.g1], [s.good.m, s.bad.m], [s.good.v, s.bad.v], opts), TypeError, "ERR_INVALID_ARG_TYPE", /adamwStep: params\[1\] must be a Tensor/],
      ["a non-tensor grad", (s) => adamwStep([s.good.p, s.bad.p], [s.g0, 3 as unknown as Tensor], [s.good.m, s.bad.m], [s.good.v, s.bad.v], opts), TypeError, "ERR_INVALID_ARG_TYPE", /adamwStep: grads\[1\] must be a Tensor/],
      ["a bf16 moment", (s) => adamwStep([s.good.p, s.bad.p], [s.g0, s.g1], [s.good.m, s.bad.m.to("bf16")], [s.good.v, s.bad.v], opts), PeftError, "ERR_DTYPE", /adamwStep: expAvg\[1\] must be f32 .*got bf16/],
      ["a moment of another shape", (s) => adamwStep([s.good.p, s.bad.p], [s.g0, s.g1], [s.good.m, s.bad.m], [s.good.v, Tensor.zeros([5, 1])], opts), PeftError, "ERR_SHAPE", /adamwStep: expAvgSq\[1\] has shape \[5, 1\] but params\[1\] has shape \[5\]/],
      ["a grad of another shape", (s) => adamwStep([s.good.p, s.bad.p], [s.g0, Tensor.zeros([6])], [s.good.m, s.bad.m], [s.good.v, s.bad.v], opts), PeftError, "ERR_SHAPE", /adamwStep: grads\[1\] has shape \[6\] but params\[1\] has shape \[5\]/],
      ["an integer param", (s) => adamwStep([s.good.p, Tensor.zeros([5], { dtype: "i32" })], [s.g0, s.g1], [s.good.m, s.bad.m], [s.good.v, s.bad.v], opts), PeftError, "ERR_DTYPE", /adamwStep: params\[1\] must be f32, f16 or bf16, got i32/],
      ["an integer grad", (s) => adamwStep([s.good.p, s.bad.p], [s.g0, Tensor.zeros([5], { dtype: "i8" })], [s.good.m, s.bad.m], [s.good.v, s.bad.v], opts), PeftError, "ERR_DTYPE", /adamwStep: grads\[1\] must be f32/],
      ["a param twice", (s) => adamwStep([s.good.p, s.good.p], [s.g0, s.g0.reshape([7])], [s.good.m, Tensor.zeros([7])], [s.good.v, Tensor.zeros([7])], opts), TypeError, "ERR_INVALID_ARG_VALUE", /adamwStep: params\[1\] shares storage with params\[0\]/],
      ["a reshaped param twice", (s) => adamwStep([s.good.p, s.good.p.reshape([7, 1])], [s.g0, null], [s.good.m, Tensor.zeros([7, 1])], [s.good.v, Tensor.zeros([7, 1])], opts), TypeError, "ERR_INVALID_ARG_VALUE", /params\[1\] shares storage with params\[0\]/],
      ["a shared moment", (s) => adamwStep([s.good.p, s.bad.p], [s.g0, s.g1], [s.good.m, s.bad.m], [s.good.v, s.bad.m], opts), TypeError, "ERR_INVALID_ARG_VALUE", /adamwStep: expAvgSq\[1\] shares storage with expAvg\[1\]/],
      ["a grad that is a param", (s) => adamwStep([s.good.p, s.bad.p], [s.g0, s.bad.p], [s.good.m, s.bad.m], [s.good.v, s.bad.v], opts), TypeError, "ERR_INVALID_ARG_VALUE", /adamwStep: grads\[1\] shares storage with params\[1\]/],
      ["step 0", (s) => adamwStep([s.good.p], [s.g0], [s.good.m], [s.good.v], { ...opts, step: 0 }), RangeError, "ERR_OUT_OF_RANGE", /adamwStep: step must be an integer in \[1, /],
      ["step 1.5", (s) => adamwStep([s.good.p], [s.g0], [s.good.m], [s.good.v], { ...opts, step: 1.5 }), RangeError, "ERR_OUT_OF_RANGE", /adamwStep: step/],
      ["lr < 0", (s) => adamwStep([s.good.p], [s.g0], [s.good.m], [s.good.v], { ...opts, lr: -1 }), RangeError, "ERR_OUT_OF_RANGE", /adamwStep: lr must be in \[0, inf\), got -1/],
      ["lr NaN", (s) => adamwStep([s.good.p], [s.g0], [s.good.m], [s.good.v], { ...opts, lr: NaN }), RangeError, "ERR_OUT_OF_RANGE", /adamwStep: lr/],
      ["beta1 1", (s) => adamwStep([s.good.p], [s.g0], [s.good.m], [s.good.v], { ...opts, beta1: 1 }), RangeError, "ERR_OUT_OF_RANGE", /adamwStep: beta1 must be in \[0, 1\), got 1/],
      ["beta2 < 0", (s) => adamwStep([s.good.p], [s.g0], [s.good.m], [s.good.v], { ...opts, beta2: -0.5 }), RangeError, "ERR_OUT_OF_RANGE", /adamwStep: beta2/],
      ["eps < 0", (s) => adamwStep([s.good.p], [s.g0], [s.good.m], [s.good.v], { ...opts, eps: -1e-8 }), RangeError, "ERR_OUT_OF_RANGE", /adamwStep: eps/],
      ["weightDecay inf", (s) => adamwStep([s.good.p], [s.g0], [s.good.m], [s.good.v], { ...opts, weightDecay: Infinity }), RangeError, "ERR_OUT_OF_RANGE", /adamwStep: weightDecay/],
      ["lr a string", (s) => adamwStep([s.good.p], [s.g0], [s.good.m], [s.good.v], { ...opts, lr: "0.1" as unknown as number }), TypeError, "ERR_INVALID_ARG_TYPE", /adamwStep: lr must be a number/],
      ["opts missing", (s) => adamwStep([s.good.p], [s.g0], [s.good.m], [s.good.v], undefined as unknown as AdamWStepOptions), TypeError, "ERR_INVALID_ARG_TYPE", /adamwStep: opts must be an object/],
      ["a disposed moment", (s) => {
        s.bad.v.dispose();
        adamwStep([s.good.p, s.bad.p], [s.g0, s.g1], [s.good.m, s.bad.m], [s.good.v, s.bad.v], opts);
      }, PeftError, "ERR_DISPOSED", /adamwStep: expAvgSq\[1\] has been disposed/],
    ];
    for (const [name, call, cls, code, msg] of cases)
      it(name, () => {
        const s = setup();
        expectError(() => call(s), cls, code, msg);
        const after = [s.good.p, s.good.m, s.good.v].map((t) => t.toFloat32Array());
        expect(after.length).toBe(3);
        after.forEach((t, i) => expectSameBits(t, s.before[i], `entry 0 tensor ${i} unchanged`));
      });
  });
});
