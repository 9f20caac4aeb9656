// SVDLinear (AdaLoRA on Linear and Conv1D) against float64 references of PEFT's formulas: the forward
// base(x) + (x·(A ⊙ E)ᵀ·Bᵀ)·scaling/(ranknum + 1e-5), its backward (dx, dA, dE, dB) as one graph node, merge and
// unmerge, PEFT's init, rank pruning, and bad inputs.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Conv1D, Linear, PeftError, SVDLinear, Tensor, manualSeed } from "../lib/index.js";
import { expectClose, expectError } from "./helpers/numeric.js";
import { values } from "./helpers/nn-reference.js";

beforeEach(() => void vi.spyOn(process, "emitWarning").mockImplementation(() => {}));
afterEach(() => vi.restoreAllMocks());

const U = 2 ** -24; // f32 unit roundoff

interface Ref {
  x: Float64Array; W: Float64Array; b: Float64Array; A: Float64Array; E: Float64Array; B: Float64Array;
  M: number; K: number; N: number; r: number; s: number; inOut: boolean;
}

/** A layer with every tensor set to deterministic values (E non-zero: the zero init would hide A's part). */
function setUp(M: number, K: number, N: number, r: number, inOut: boolean, alpha = 6) {
  const base = inOut ? new Conv1D(N, K) : new Linear(K, N);
  const l = new SVDLinear(base, { r, loraAlpha: alpha });
  const set = (t: Tensor, seed: number) => t.copyFrom(Tensor.fromArray(values(t.numel, seed), t.shape));
  set(base.weight, 1);
  set(base.bias!, 2);
  const { A, E, B } = l.svdFactors("default");
  set(A, 3), set(E, 4), set(B, 5);
  const x = Tensor.fromArray(values(M * K, 6), [M, K]);
  // PEFT: scaling = lora_alpha; divided by ranknum + 1e-5 (f32), ranknum = r.
  const s = alpha / Math.fround(r + Math.fround(1e-5));
  const ref: Ref = {
    x: x.toFloat64Array(), W: base.weight.toFloat64Array(), b: base.bias!.toFloat64Array(),
    A: A.toFloat64Array(), E: E.toFloat64Array(), B: B.toFloat64Array(), M, K, N, r, s, inOut,
  };
  return { l, x, ref };
}

const w = (R: Ref, n: number, k: number) => (R.inOut ? R.W[k * R.N + n] : R.W[n * R.K + k]);

/** y and the magnitude its rounding acts on, in float64. */
function refForward(R: Ref) {
  const { M, K, N, r } = R;
  const T = new Float64Array(M * r), Tabs = new Float64Array(M * r);
  for (let m = 0; m < M; m++)
    for (let j = 0; j < r; j++)
      for (let k = 0; k < K; k++) {
        const a = R.A[j * K + k] * R.E[j];
        T[m * r + j] += R.x[m * K + k] * a;
        Tabs[m * r + j] += Math.abs(R.x[m * K + k] * a);
      }
  const y = new Float64Array(M * N), mag = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = R.b[n], a = Math.abs(R.b[n]);
      for (let k = 0; k < K; k++) s += R.x[m * K + k] * w(R, n, k), a += Math.abs(R.x[m * K + k] * w(R, n, k));
      for (let j = 0; j < r; j++) s += R.s * T[m * r + j] * R.B[n * r + j], a += R.s * Tabs[m * r + j] * Math.abs(R.B[n * r + j]);
      y[m * N + n] = s;
      mag[m * N + n] = a;
    }
  return { y, mag };
}

/** dx, dA, dE, dB of Σ dy ⊙ y (dA' = s·(dy·B)ᵀ·x; dA = dA' ⊙ E; dE = Σ_k dA' ⊙ A; dB = s·dyᵀ·x·A'ᵀ). */
function refBackward(R: Ref, dy: Float64Array) {
  const { M, K, N, r, s } = R;
  const G = new Float64Array(M * r); // dy·B
  for (let m = 0; m < M; m++) for (let j = 0; j < r; j++) for (let n = 0; n < N; n++) G[m * r + j] += dy[m * N + n] * R.B[n * r + j];
  const dx = new Float64Array(M * K);
  for (let m = 0; m < M; m++)
    for (let k = 0; k < K; k++) {
      let v = 0;
      for (let n = 0; n < N; n++) v += dy[m * N + n] * w(R, n, k);
      for (let j = 0; j < r; j++) v += s * G[m * r + j] * R.A[j * K + k] * R.E[j];
      dx[m * K + k] = v;
    }
  const dAe = new Float64Array(r * K);
  for (let j = 0; j < r; j++) for (let k = 0; k < K; k++) for (let m = 0; m < M; m++) dAe[j * K + k] += s * G[m * r + j] * R.x[m * K + k];
  const dA = dAe.map((v, i) => v * R.E[Math.floor(i / K)]);
  const dE = new Float64Array(r);
  for (let j = 0; j < r; j++) for (let k = 0; k < K; k++) dE[j] += dAe[j * K + k] * R.A[j * K + k];
  const dB = new Float64Array(N * r);
  for (let n = 0; n < N; n++)
    for (let j = 0; j < r; j++)
      for (let m = 0; m < M; m++) {
        let t = 0;
        for (let k = 0; k < K; k++) t += R.x[m * K + k] * R.A[j * K + k] * R.E[j];
        dB[n * r + j] += s * dy[m * N + n] * t;
      }
  return { dx, dA, dE, dB };
}

// An f32 result of sums over at most `steps` terms: |error| <= steps·u·Σ|terms| (plus one rounding per factor
// product), so (steps + 4)·u·mag bounds it; mag is the same sum over absolute values.
const tol = (steps: number, mag: number) => (steps + 4) * U * mag + 1e-30;
const absSum = (v: Float64Array) => v.reduce((s, x) => s + Math.abs(x), 0);

describe("SVDLinear forward and backward (float64 references of PEFT's formulas)", () => {
  for (const inOut of [false, true])
    for (const [M, K, N, r] of [[5, 7, 17, 3], [1, 33, 1, 1], [0, 7, 5, 2], [17, 127, 7, 12]] as const) {
      it(`${inOut ? "Conv1D" : "Linear"} M=${M} K=${K} N=${N} r=${r}`, () => {
        const { l, x, ref } = setUp(M, K, N, r, inOut);
        l.train();
        const y = l.forward(x);
        expect(y.shape).toEqual([M, N]);
        const { y: want, mag } = refForward(ref);
        expectClose(y.toFloat64Array(), want, (i) => tol(K + r, mag[i]), "y");
        const dyv = values(M * N, 7);
        const dx = l.backward(Tensor.fromArray(dyv, [M, N]))!;
        const g = refBackward(ref, dyv);
        const { A, E, B } = l.svdFactors("default");
        // Each gradient is a sum over M·N·K·r products at most; the magnitude bound uses the inputs' absolute values.
        const scale = (absSum(dyv) + 1) * (absSum(ref.x) + 1) * ref.s * (absSum(ref.B) + 1) * (absSum(ref.A) + 1) * U * (K + N + M + r + 8);
        expectClose(dx.toFloat64Array(), g.dx, () => scale, "dx");
        expectClose(A.grad!.toFloat64Array(), g.dA, () => scale, "dA");
        expectClose(E.grad!.toFloat64Array(), g.dE, () => scale, "dE");
        expectClose(B.grad!.toFloat64Array(), g.dB, () => scale, "dB");
        expect(l.baseLayer.weight.grad).toBeNull();
      });
    }

  it("the relative error is small where it counts: a well-scaled case to 1e-5", () => {
    const { l, x, ref } = setUp(9, 33, 17, 4, false);
    l.train();
    const { y: want } = refForward(ref);
    expectClose(l.forward(x).toFloat64Array(), want, (i) => 1e-5 * (1 + Math.abs(want[i])), "y");
    const dyv = values(9 * 17, 8);
    l.backward(Tensor.fromArray(dyv, [9, 17]));
    const g = refBackward(ref, dyv);
    const { E } = l.svdFactors("default");
    expectClose(E.grad!.toFloat64Array(), g.dE, (i) => 1e-5 * (1 + Math.abs(g.dE[i])), "dE");
  });

  it("with autograd: one graph node, the same gradients; bf16 inputs give bf16 outputs and f32 adapter gradients", () => {
    const { l, x, ref } = setUp(5, 7, 6, 3, false);
    l.train();
    x.requiresGrad = true;
    const y = l.forward(x);
    expect(y.gradFn?.name).toBe("SVDLinearBackward");
    const dyv = values(30, 9);
    y.backward(Tensor.fromArray(dyv, [5, 6]));
    const g = refBackward(ref, dyv);
    const { A, E, B } = l.svdFactors("default");
    for (const [got, want, name] of [[x.grad!, g.dx, "dx"], [A.grad!, g.dA, "dA"], [E.grad!, g.dE, "dE"], [B.grad!, g.dB, "dB"]] as const)
      expectClose(got.toFloat64Array(), want, (i) => 1e-5 * (1 + Math.abs(want[i])), name);
    // bf16 x and base: output rounded once to bf16 (relative 2^-8) after f32 accumulation.
    const { l: l2, x: x2 } = setUp(4, 7, 5, 2, false);
    l2.train();
    l2.baseLayer.to("bf16");
    const xb = x2.to("bf16");
    const ref2 = { ...setUp(4, 7, 5, 2, false).ref, x: xb.toFloat64Array(), W: l2.baseLayer.weight.toFloat64Array(), b: l2.baseLayer.bias!.toFloat64Array() };
    const yb = l2.forward(xb);
    expect(yb.dtype).toBe("bf16");
    const { y: want2, mag } = refForward(ref2);
    expectClose(yb.toFloat64Array(), want2, (i) => 2 ** -8 * Math.abs(want2[i]) + tol(7 + 2, mag[i]), "bf16 y");
    l2.backward(Tensor.fromArray(values(20, 3), [4, 5], "bf16"));
    expect(l2.svdFactors("default").E.grad!.dtype).toBe("f32");
  });

  it("eval with dropout set runs no dropout; training with dropout recomputes the same mask in backward (finite-difference check)", () => {
    const { l, x } = setUp(3, 7, 5, 2, false);
    l.loraDropout.default = 0.5;
    l.eval();
    const { y: want } = refForward(setUp(3, 7, 5, 2, false).ref);
    expectClose(l.forward(x).toFloat64Array(), want, (i) => 1e-5 * (1 + Math.abs(want[i])), "eval y");
    l.train();
    manualSeed(11);
    const y1 = l.forward(x).toFloat64Array();
    const dyv = values(15, 4);
    l.backward(Tensor.fromArray(dyv, [3, 5]));
    const E = l.svdFactors("default").E;
    const dE = E.grad!.toFloat64Array();
    // d(Σ dy⊙y)/dE_0 by central differences under the same dropout draw (seed reset before each forward).
    const e = E.toFloat64Array(), h = 1e-2;
    const at = (v: number) => {
      E.copyFrom(Tensor.fromArray(e.map((x0, i) => (i === 0 ? v : x0)), E.shape));
      manualSeed(11);
      const y = l.forward(x).toFloat64Array();
      l.releaseSaved();
      return y.reduce((s, yi, i) => s + yi * dyv[i], 0);
    };
    const fd = (at(e[0] + h) - at(e[0] - h)) / (2 * h);
    expect(Math.abs(fd - dE[0])).toBeLessThan(1e-3 * (1 + Math.abs(dE[0])));
    expect(y1.some((v, i) => Math.abs(v - want[i]) > 1e-4)).toBe(true); // dropout changed something
  });
});

describe("SVDLinear: PEFT's init, merge, pruning, bad input", () => {
  it("init: E zeros, A and B ~ N(0, 0.02²), ranknum = r, scaling = alpha (r when alpha is 0); init false draws N(0, 1)", () => {
    const l = new SVDLinear(new Linear(64, 48), { r: 12, loraAlpha: 32 });
    const { A, E, B } = l.svdFactors("default");
    expect(A.shape).toEqual([12, 64]);
    expect(E.shape).toEqual([12, 1]);
    expect(B.shape).toEqual([48, 12]);
    expect([...E.toFloat32Array()].every((v) => v === 0)).toBe(true);
    const sd = (t: Tensor) => Math.sqrt(t.toFloat64Array().reduce((s, v) => s + v * v, 0) / t.numel);
    expect(sd(A)).toBeGreaterThan(0.017), expect(sd(A)).toBeLessThan(0.023);
    expect(sd(B)).toBeGreaterThan(0.017), expect(sd(B)).toBeLessThan(0.023);
    expect(l.ranknumOf("default")).toBe(12);
    expect(l.scaling.default).toBe(32);
    expect(l.ranknum.get("default").requiresGrad).toBe(false);
    // Only lora_A, lora_B, lora_E are state entries (ranknum is never saved).
    expect(l.adapterStateEntries("default").map(([k]) => k)).toEqual(["lora_A", "lora_B", "lora_E"]);
    const l0 = new SVDLinear(new Linear(64, 48), { r: 4, loraAlpha: 0, initLoraWeights: false });
    expect(l0.scaling.default).toBe(4);
    expect(sd(l0.svdFactors("default").E)).toBeGreaterThan(0.2);
    expect(sd(l0.svdFactors("default").A)).toBeGreaterThan(0.7);
    // The zero-E init leaves the output the base's.
    const x = Tensor.fromArray(values(3 * 64, 1), [3, 64]);
    expect([...l.forward(x).toFloat32Array()]).toEqual([...l.baseLayer.forward(x).toFloat32Array()]);
  });

  for (const inOut of [false, true])
    it(`merge adds B·(A⊙E)·s to W (${inOut ? "Conv1D, W (in, out)" : "Linear"}); merged forward matches; unmerge restores W`, () => {
      const { l, x, ref } = setUp(4, 7, 9, 3, inOut);
      l.eval();
      const W0 = l.baseLayer.weight.toFloat64Array();
      const yUnmerged = l.forward(x).toFloat64Array();
      const delta = l.getDeltaWeight("default").toFloat64Array();
      l.merge({ safeMerge: true });
      expect(l.merged).toBe(true);
      const Wm = l.baseLayer.weight.toFloat64Array();
      for (let n = 0; n < 9; n++)
        for (let k = 0; k < 7; k++) {
          let d = 0;
          for (let j = 0; j < 3; j++) d += ref.B[n * 3 + j] * ref.A[j * 7 + k] * ref.E[j];
          const i = inOut ? k * 9 + n : n * 7 + k;
          expect(Math.abs(Wm[i] - W0[i] - ref.s * d)).toBeLessThan(1e-6);
          expect(Math.abs(delta[i] - ref.s * d)).toBeLessThan(1e-6);
        }
      expectClose(l.forward(x).toFloat64Array(), yUnmerged, () => 1e-5, "merged y");
      l.unmerge();
      expectClose(l.baseLayer.weight.toFloat64Array(), W0, () => 1e-6, "unmerged W");
    });

  it("pruneRanks keeps the marked triplets (A rows, E rows, B columns) and ranknum; the output only loses the pruned terms", () => {
    const { l, x, ref } = setUp(3, 7, 5, 4, false);
    l.eval();
    const keep = [true, false, true, false];
    const E = ref.E.map((v, i) => (keep[i] ? v : 0));
    const want = refForward({ ...ref, E }).y;
    l.pruneRanks("default", keep);
    const { A, E: E2, B } = l.svdFactors("default");
    expect([A.shape, E2.shape, B.shape]).toEqual([[2, 7], [2, 1], [5, 2]]);
    expect(l.r.default).toBe(2);
    expect(l.ranknumOf("default")).toBe(4);
    expect([...E2.toFloat64Array()]).toEqual([ref.E[0], ref.E[2]]);
    expectClose(l.forward(x).toFloat64Array(), want, (i) => 1e-5 * (1 + Math.abs(want[i])), "pruned y");
    // Rank 0: the adapter adds nothing.
    l.pruneRanks("default", [false, false]);
    expect(l.r.default).toBe(0);
    expect([...l.forward(x).toFloat32Array()]).toEqual([...l.baseLayer.forward(x).toFloat32Array()]);
    expectError(() => l.pruneRanks("default", [true]), PeftError, "ERR_CHECKPOINT", /rank pattern .* has 1 entries but the adapter has rank 0/);
  });

  it("bad input: base type, rank, alpha, dropout, init, x", () => {
    expectError(() => new SVDLinear({} as Linear, { r: 2 }), TypeError, "ERR_INVALID_ARG_TYPE", /SVDLinear: the base layer must be a Linear or Conv1D/);
    expectError(() => new SVDLinear(new Linear(3, 3), { r: -1 }), PeftError, "ERR_CONFIG", /`r` should be a positive integer or 0/);
    expectError(() => new SVDLinear(new Linear(3, 3), { r: 1.5 }), PeftError, "ERR_CONFIG", /`r` should be/);
    expectError(() => new SVDLinear(new Linear(3, 3), { r: 2, loraAlpha: NaN }), PeftError, "ERR_CONFIG", /loraAlpha must be a finite number/);
    expectError(() => new SVDLinear(new Linear(3, 3), { r: 2, loraDropout: 1 }), PeftError, "ERR_CONFIG", /loraDropout must be in \[0, 1\)/);
    expectError(() => new SVDLinear(new Linear(3, 3), { r: 2, initLoraWeights: "pissa" as never }), PeftError, "ERR_UNSUPPORTED", /initLoraWeights/);
    const l = new SVDLinear(new Linear(3, 4), { r: 2 });
    expectError(() => l.forward([1, 2, 3] as never), TypeError, "ERR_INVALID_ARG_TYPE", /SVDLinear.forward: x must be a Tensor/);
    expect(() => l.forward(Tensor.zeros([2, 5]))).toThrow(/features/);
    expectError(() => l.svdFactors("other"), PeftError, "ERR_CONFIG", /unknown adapter "other"/);
  });
});
