// DoRA on Conv2d (PEFT's DoraConv2dLayer): the norm per output channel over (in, kh, kw), the (1, out, 1, 1)
// magnitude, forward/backward against float64 convolutions, merge/unmerge, grouped convolutions refused.
import { describe, expect, it } from "vitest";
import { Conv2d, LoraConv2d, Tensor } from "../lib/index.js";
import { conv2dRef, outSize, type ConvRefGeom } from "./helpers/conv-reference.js";
import { EPS, expectClose, numericGrad, values } from "./helpers/nn-reference.js";
import { errorCode } from "./helpers/errors.js";
import { refNorms } from "./dora-reference.js";

const eps = EPS.f32;

function makeConv(C: number, OC: number, k: number, r: number, geo: { stride?: number; padding?: number } = {}, seed = 3) {
  const base = new Conv2d(C, OC, k, { stride: geo.stride ?? 1, padding: geo.padding ?? 0, seed });
  base.bias!.copyFrom(Tensor.fromArray(values(OC, seed + 1), [OC]));
  const l = new LoraConv2d(base, { r, loraAlpha: 3, useDora: true, initLoraWeights: false });
  const { A, B } = l.loraFactors("default");
  A.copyFrom(Tensor.fromArray(values(A.numel, seed + 2), A.shape));
  B.copyFrom(Tensor.fromArray(values(B.numel, seed + 3).map((v) => 0.5 * v), B.shape));
  const m = l.doraMagnitude("default")!;
  m.copyFrom(Tensor.fromArray(values(OC, seed + 4).map((v) => 1 + 0.5 * v), m.shape));
  return l;
}

/** s·B·A as a (OC, C, k, k) kernel (groups = 1: B is 1x1, so B(A(x)) is the convolution with it). */
function deltaKernel(A: Float64Array, B: Float64Array, r: number, OC: number, s: number): Float64Array {
  const KK = A.length / r;
  const d = new Float64Array(OC * KK);
  for (let o = 0; o < OC; o++) for (let j = 0; j < r; j++) for (let k = 0; k < KK; k++) d[o * KK + k] += s * B[o * r + j] * A[j * KK + k];
  return d;
}

/** PEFT's DoRA conv forward without dropout: y = c ⊙ (conv(x, W) + conv(x, s·B·A)) + b, c = m / n per channel. */
function refConvDora(g: ConvRefGeom, x: Float64Array, W: Float64Array, b: Float64Array, A: Float64Array, B: Float64Array, r: number, s: number, m: Float64Array, n: Float64Array) {
  const [OH, OW] = outSize(g);
  const z = conv2dRef(g, x, W, null), u = conv2dRef(g, x, deltaKernel(A, B, r, g.OC, s), null);
  const y = new Float64Array(z.y.length), mag = new Float64Array(z.y.length);
  for (let i = 0; i < y.length; i++) {
    const o = Math.floor(i / (OH * OW)) % g.OC, c = m[o] / n[o];
    y[i] = c * (z.y[i] + u.y[i]) + b[o];
    mag[i] = Math.abs(c) * (z.mag[i] + u.mag[i]) + Math.abs(b[o]);
  }
  return { y, mag };
}

function geomOf(l: LoraConv2d, N: number, H: number, W: number): ConvRefGeom {
  const b = l.baseLayer;
  return { N, C: b.inChannels, H, W, OC: b.outChannels, KH: b.kernelSize[0], KW: b.kernelSize[1], sh: b.stride[0], sw: b.stride[1], ph: b.padding[0], pw: b.padding[1], dh: 1, dw: 1, G: 1 };
}

function parts(l: LoraConv2d) {
  const { A, B } = l.loraFactors("default");
  const r = l.r.default, s = l.scaling.default;
  const W = l.baseLayer.weight.toFloat64Array(), a = A.toFloat64Array(), bb = B.toFloat64Array();
  const OC = l.baseLayer.outChannels, KK = W.length / OC;
  const n = refNorms(W, OC, KK, { A: a, B: bb, r, s, m: null });
  return { W, A: a, B: bb, r, s, n, m: l.doraMagnitude("default")!.toFloat64Array(), b: l.baseLayer.bias!.toFloat64Array() };
}

describe("DoRA on Conv2d", () => {
  it.each([
    [1, 3, 5, 3, 2, 7, 7, 1, 1],
    [2, 4, 7, 3, 4, 9, 8, 2, 1],
    [3, 2, 3, 1, 1, 5, 6, 1, 0],
  ])("N=%i C=%i OC=%i k=%i r=%i %ix%i stride %i pad %i: magnitude init, eval forward against float64", (N, C, OC, k, r, H, Wd, stride, padding) => {
    const l = makeConv(C, OC, k, r, { stride, padding });
    // init: m = ‖W + s·B·A‖ per channel with the initial factors, shaped (1, out, 1, 1) as PEFT's.
    l.updateLayer({ adapterName: "fresh", r, loraAlpha: 3, useDora: true, initLoraWeights: false });
    const f = l.loraFactors("fresh"), W = l.baseLayer.weight.toFloat64Array(), KK = W.length / OC;
    const n0 = refNorms(W, OC, KK, { A: f.A.toFloat64Array(), B: f.B.toFloat64Array(), r, s: l.scaling.fresh, m: null });
    expect(l.doraMagnitude("fresh")!.shape).toEqual([1, OC, 1, 1]);
    // An f32 sum of KK squares, and r-term products: relative (KK + r + 4)·eps.
    expectClose(l.doraMagnitude("fresh")!.toFloat64Array(), n0, (i) => (KK + r + 4) * eps * n0[i], "magnitude");
    l.setAdapter("default");
    l.eval();
    const g = geomOf(l, N, H, Wd);
    const xv = values(N * C * H * Wd, 11);
    using x = Tensor.fromArray(xv, [N, C, H, Wd]);
    using y = l.forward(x);
    const p = parts(l);
    const want = refConvDora(g, xv, p.W, p.b, p.A, p.B, p.r, p.s, p.m, p.n);
    // Sums of KK products (and r), the norm's KK-term sum: (2·KK + r + 8)·eps of the magnitudes.
    expectClose(y.toFloat64Array(), want.y, (i) => (2 * KK + r + 8) * eps * want.mag[i] + 1e-30, "y");
    l.dispose();
  });

  it("backward: dA, dB, dm, dx against finite differences (norm detached)", () => {
    const N = 2, C = 3, OC = 4, k = 3, r = 2, H = 5, Wd = 6;
    const l = makeConv(C, OC, k, r, { padding: 1 });
    l.train();
    const g = geomOf(l, N, H, Wd);
    const xv = values(N * C * H * Wd, 13);
    using x = Tensor.fromArray(xv, [N, C, H, Wd]);
    x.requiresGrad = true;
    const y = l.forward(x);
    const G = values(y.numel, 17);
    using dy = Tensor.fromArray(G, y.shape);
    y.backward(dy);
    y.dispose();
    const p = parts(l);
    const sizes = [p.A.length, p.B.length, p.m.length, xv.length];
    const split = (v: Float64Array) => {
      let o = 0;
      return sizes.map((k2) => v.subarray(o, (o += k2)));
    };
    const loss = (v: Float64Array) => {
      const [a, b, m, xx] = split(v);
      return refConvDora(g, xx, p.W, p.b, a, b, p.r, p.s, m, p.n).y.reduce((s, e, i) => s + e * G[i], 0);
    };
    const [wA, wB, wm, wx] = split(numericGrad(loss, new Float64Array([...p.A, ...p.B, ...p.m, ...xv])));
    const { A, B } = l.loraFactors("default");
    // f32 sums of at most a few hundred terms against exact-to-1e-8 differences.
    const tol = (ref: Float64Array) => (i: number) => 1e-4 * (1 + Math.abs(ref[i]));
    expectClose(A.grad!.toFloat64Array(), wA, tol(wA), "dA");
    expectClose(B.grad!.toFloat64Array(), wB, tol(wB), "dB");
    expectClose(l.doraMagnitude("default")!.grad!.toFloat64Array(), wm, tol(wm), "dm");
    expectClose(x.grad!.toFloat64Array(), wx, tol(wx), "dx");
    l.dispose();
  });

  it("merge gives the DoRA output from the base alone; unmerge restores W", () => {
    const l = makeConv(3, 5, 3, 2, { padding: 1 });
    l.eval();
    using x = Tensor.fromArray(values(2 * 3 * 6 * 6, 19), [2, 3, 6, 6]);
    using y0 = l.forward(x);
    const W0 = l.baseLayer.weight.toFloat64Array();
    l.merge();
    using y1 = l.forward(x);
    expectClose(y1.toFloat64Array(), y0.toFloat64Array(), (i) => 1e-5 * (1 + Math.abs(y0.toFloat64Array()[i])), "merged y");
    l.unmerge();
    expectClose(l.baseLayer.weight.toFloat64Array(), W0, (i) => 1e-6 * (1 + Math.abs(W0[i])), "W after unmerge");
    l.dispose();
  });

  it("a grouped convolution refuses DoRA (ERR_UNSUPPORTED), plain LoRA still works there", () => {
    const base = new Conv2d(4, 4, 3, { groups: 2 });
    expect(errorCode(() => new LoraConv2d(base, { r: 2, useDora: true }))).toBe("ERR_UNSUPPORTED");
    const l = new LoraConv2d(base, { r: 2 });
    l.dispose();
  });
});
