// SVDLinear (AdaLoRA on Linear and Conv1D) against float64 references of PEFT's formulas: the forward
// base(x) + (x·(A ⊙ E)ᵀ·Bᵀ)·scaling/(ranknum + 1e-5), its backward (dx, dA, dE, dB) as one graph node, merge and
// unmerge, PEFT's init, rank pruning, and bad inputs.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Conv1D, Conv2d, Linear, PeftError, SVDConv2d, SVDLinear, Tensor, manualSeed } from "../lib/index.js";
import { expectClose, expectError } from "./helpers/numeric.js";
import { values } from "./helpers/nn-reference.js";
import { conv2dGradRef, conv2dRef, outSize, type ConvRefGeom } from "./helpers/conv-reference.js";

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

describe("SVDConv2d (PEFT's conv2d(x, reshape(B·(A⊙E))·s) with the base's geometry)", () => {
  const cases: [string, Partial<ConvRefGeom>][] = [
    ["3x3 stride 1 padding 1", { N: 2, C: 3, H: 7, W: 5, OC: 5, KH: 3, KW: 3, ph: 1, pw: 1 }],
    ["3x2 stride 2 dilation 2, empty batch", { N: 0, C: 2, H: 9, W: 8, OC: 3, KH: 3, KW: 2, sh: 2, sw: 2, dh: 2, dw: 2 }],
    ["1x1 dilation 2", { N: 1, C: 4, H: 5, W: 5, OC: 7, KH: 3, KW: 3, sh: 1, sw: 2, ph: 2, pw: 1, dh: 2, dw: 1 }],
  ];
  for (const [name, part] of cases)
    it(name, () => {
      const g: ConvRefGeom = { N: 1, C: 1, H: 1, W: 1, OC: 1, KH: 1, KW: 1, sh: 1, sw: 1, ph: 0, pw: 0, dh: 1, dw: 1, G: 1, ...part };
      const r = 3, alpha = 5;
      const base = new Conv2d(g.C, g.OC, [g.KH, g.KW], { stride: [g.sh, g.sw], padding: [g.ph, g.pw], dilation: [g.dh, g.dw] });
      const l = new SVDConv2d(base, { r, loraAlpha: alpha });
      const { A, E, B } = l.svdFactors("default");
      expect(A.shape).toEqual([r, g.C * g.KH * g.KW]);
      for (const [t, seed] of [[base.weight, 1], [base.bias!, 2], [A, 3], [E, 4], [B, 5]] as const) t.copyFrom(Tensor.fromArray(values(t.numel, seed), t.shape));
      const K = g.C * g.KH * g.KW;
      const [a, e, b, w] = [A, E, B, base.weight].map((t) => t.toFloat64Array());
      const s = alpha / Math.fround(r + Math.fround(1e-5));
      // The effective weight W + s·B·(A⊙E), reshaped (PEFT's get_delta_weight), in float64.
      const weff = w.map((v, i) => {
        const o = Math.floor(i / K), k = i % K;
        let d = 0;
        for (let j = 0; j < r; j++) d += b[o * r + j] * a[j * K + k] * e[j];
        return v + s * d;
      });
      const x = Tensor.fromArray(values(g.N * g.C * g.H * g.W, 6), [g.N, g.C, g.H, g.W]);
      l.train();
      const y = l.forward(x);
      const [OH, OW] = outSize(g);
      expect(y.shape).toEqual([g.N, g.OC, OH, OW]);
      const ref = conv2dRef(g, x.toFloat64Array(), weff, base.bias!.toFloat64Array());
      // A window sums C·KH·KW products, plus the r-term adapter path: (K + r + 4)·u·magnitude.
      expectClose(y.toFloat64Array(), ref.y, (i) => (K + r + 8) * 2 ** -24 * (ref.mag[i] + 1), "y");
      const dyv = values(y.numel, 7);
      const dx = l.backward(Tensor.fromArray(dyv, y.shape))!;
      const gr = conv2dGradRef(g, x.toFloat64Array(), weff, dyv);
      // dDelta = the effective weight's gradient; dB = s·dDelta·A'ᵀ, dA' = s·Bᵀ·dDelta, dA = dA'⊙E, dE = Σ dA'⊙A.
      const dB = new Float64Array(g.OC * r), dAe = new Float64Array(r * K);
      for (let o = 0; o < g.OC; o++)
        for (let j = 0; j < r; j++)
          for (let k = 0; k < K; k++) {
            dB[o * r + j] += s * gr.dW[o * K + k] * a[j * K + k] * e[j];
            dAe[j * K + k] += s * b[o * r + j] * gr.dW[o * K + k];
          }
      const dA = dAe.map((v, i) => v * e[Math.floor(i / K)]);
      const dE = Array.from({ length: r }, (_, j) => dAe.slice(j * K, (j + 1) * K).reduce((acc, v, k) => acc + v * a[j * K + k], 0));
      // Sums of at most K·OC·N·OH·OW products of values in [-1, 1) scaled by s·|B|, |A|: an f32 error bound of
      // (terms)·u times that magnitude; the values here are O(1), so this is a few 1e-4 at most.
      const bound = (K + r + g.OC + g.N * OH * OW + 8) * 2 ** -24 * (1 + s) ** 2 * K * g.OC * Math.max(1, g.N * OH * OW);
      const tolG = () => bound;
      expectClose(dx.toFloat64Array(), gr.dx, tolG, "dx");
      expectClose(A.grad!.toFloat64Array(), dA, tolG, "dA");
      expectClose(E.grad!.toFloat64Array(), dE, tolG, "dE");
      expectClose(B.grad!.toFloat64Array(), dB, tolG, "dB");
      // Relative to the values themselves, 1e-5 (a check that is not loose when the values are large).
      for (const [got, want, nm] of [[A.grad!, dA, "dA rel"], [B.grad!, dB, "dB rel"], [dx, gr.dx, "dx rel"]] as const)
        expectClose(got.toFloat64Array(), want, (i) => 1e-5 * (1 + Math.abs(want[i])), nm);
      // Merge: W becomes the effective weight; unmerge restores it.
      l.merge();
      expectClose(base.weight.toFloat64Array(), weff, (i) => 1e-6 * (1 + Math.abs(weff[i])), "merged W");
      expect(l.getDeltaWeight("default").shape).toEqual(base.weight.shape);
      l.unmerge();
      expectClose(base.weight.toFloat64Array(), w, (i) => 1e-6 * (1 + Math.abs(w[i])), "unmerged W");
    });

  it("groups > 1 is refused (PEFT's reshape of B·A' into a grouped weight fails)", () => {
    expectError(() => new SVDConv2d(new Conv2d(4, 4, 3, { groups: 2 }), { r: 2 }), PeftError, "ERR_UNSUPPORTED", /groups=2/);
    expectError(() => new SVDConv2d(new Linear(2, 2) as never, { r: 2 }), TypeError, "ERR_INVALID_ARG_TYPE", /SVDConv2d: the base layer must be a Conv2d/);
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
    // loraAlpha 0: PEFT's scaling is r, and the rebuilt layer's r is the kept rank (ranknum stays the initial one).
    const l0 = new SVDLinear(new Linear(5, 3), { r: 4, loraAlpha: 0 });
    expect(l0.scaling.default).toBe(4);
    l0.pruneRanks("default", [false, true, true, false]);
    expect([l0.scaling.default, l0.ranknumOf("default")]).toEqual([2, 4]);
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
