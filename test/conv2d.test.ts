// Conv2d (the kernels, F.conv2d and the module) against float64 references: every geometry the tiling
// treats differently (stride, padding, dilation, groups, depthwise, 1x1, odd sizes, empty batches), each
// float dtype, gradients by finite differences, and the bad inputs.
import { afterEach, describe, expect, it } from "vitest";
import { Conv2d, PeftError, Tensor, backend, F, gradcheck } from "../lib/index.js";
import { conv2d, conv2dBackward } from "../lib/ops.js";
import { FLOATS, UNIT, expectClose, expectError, tensorOf, tolIn, uniform, type FloatDType } from "./helpers/numeric.js";
import { conv2dGradRef, conv2dRef, outSize, type ConvRefGeom } from "./helpers/conv-reference.js";

// The device check needs a cuda device: the emulated one unless a real GPU is asked for.
if (process.env.NODE_PEFT_CUDA === undefined && !process.env.NODE_PEFT_CUDA_REAL) process.env.NODE_PEFT_CUDA = "emu";

const threads = backend.threads;
afterEach(() => backend.setNumThreads(threads));

type Case = Partial<ConvRefGeom> & { name: string };
const CASES: Case[] = [
  { name: "3x3 pad 1", C: 7, OC: 17, H: 9, W: 11, KH: 3, KW: 3, ph: 1, pw: 1 },
  { name: "stride 2 pad 1", C: 5, OC: 7, H: 17, W: 13, KH: 3, KW: 3, sh: 2, sw: 2, ph: 1, pw: 1 },
  { name: "dilation 2", C: 3, OC: 5, H: 13, W: 12, KH: 3, KW: 3, dh: 2, dw: 2, ph: 2, pw: 1 },
  { name: "groups 2", C: 6, OC: 10, H: 8, W: 9, KH: 3, KW: 3, ph: 1, pw: 1, G: 2 },
  { name: "depthwise", C: 7, OC: 7, H: 10, W: 9, KH: 3, KW: 3, ph: 1, pw: 1, G: 7 },
  { name: "depthwise x2, stride 2", C: 4, OC: 8, H: 11, W: 10, KH: 3, KW: 3, sh: 2, sw: 2, ph: 1, pw: 1, G: 4 },
  { name: "1x1", C: 33, OC: 17, H: 7, W: 9, KH: 1, KW: 1 },
  { name: "1x1 stride 2", C: 5, OC: 7, H: 7, W: 9, KH: 1, KW: 1, sh: 2, sw: 2 },
  { name: "5x3 kernel, uneven stride and padding", C: 3, OC: 4, H: 12, W: 7, KH: 5, KW: 3, sh: 1, sw: 2, ph: 2, pw: 0 },
  { name: "many tiles (K > tile budget)", C: 33, OC: 5, H: 33, W: 31, KH: 3, KW: 3, ph: 1, pw: 1 },
  { name: "kernel as large as the input", C: 2, OC: 3, H: 4, W: 5, KH: 4, KW: 5 },
  { name: "1x1 output pixel grid of 1", C: 1, OC: 1, H: 1, W: 1, KH: 1, KW: 1 },
];

function geom(c: Case, N: number): ConvRefGeom {
  return { N, C: 1, H: 1, W: 1, OC: 1, KH: 1, KW: 1, sh: 1, sw: 1, ph: 0, pw: 0, dh: 1, dw: 1, G: 1, ...c };
}
const geometryOf = (g: ConvRefGeom) => ({ stride: [g.sh, g.sw] as const, padding: [g.ph, g.pw] as const, dilation: [g.dh, g.dw] as const, groups: g.G });

function inputs(g: ConvRefGeom, xdt: FloatDType, wdt: FloatDType, seed: number) {
  const x = tensorOf(uniform(g.N * g.C * g.H * g.W, -1, 1, seed), [g.N, g.C, g.H, g.W], xdt);
  const w = tensorOf(uniform(g.OC * (g.C / g.G) * g.KH * g.KW, -1, 1, seed + 1), [g.OC, g.C / g.G, g.KH, g.KW], wdt);
  const b = tensorOf(uniform(g.OC, -1, 1, seed + 2), [g.OC], wdt);
  return { x, w, b };
}

describe("conv2d forward and backward against float64", () => {
  for (const c of CASES)
    for (const N of [2, 1, 0])
      it(`${c.name}, N = ${N}`, () => {
        const g = geom(c, N);
        const { x, w, b } = inputs(g, "f32", "f32", 11);
        const [OH, OW] = outSize(g);
        const taps = (g.C / g.G) * g.KH * g.KW;
        const y = conv2d(x.t, w.t, b.t, geometryOf(g));
        expect(y.shape).toEqual([N, g.OC, OH, OW]);
        const ref = conv2dRef(g, x.v, w.v, b.v);
        expectClose(y.toFloat64Array(), ref.y, (i) => tolIn("f32", ref.y[i], (taps + 5) * UNIT.f32, ref.mag[i]), `${c.name} y`);
        const dy = tensorOf(uniform(y.numel, -1, 1, 5), y.shape, "f32");
        const dW = Tensor.fromArray(new Array(w.v.length).fill(0.25), w.t.shape), db = Tensor.zeros([g.OC]); // dW accumulates
        const dx = conv2dBackward(dy.t, x.t, w.t, geometryOf(g), { dW, db })!;
        const r = conv2dGradRef(g, x.v, w.v, dy.v);
        const ocTaps = (g.OC / g.G) * g.KH * g.KW;
        expectClose(dx.toFloat64Array(), r.dx, (i) => tolIn("f32", r.dx[i], (ocTaps + 5) * UNIT.f32, r.dxMag[i]), `${c.name} dx`);
        const steps = N * OH * OW + 5;
        expectClose(dW.toFloat64Array(), r.dW.map((v) => v + 0.25), (i) => tolIn("f32", r.dW[i], steps * UNIT.f32, r.dWMag[i] + 0.25), `${c.name} dW`);
        expectClose(db.toFloat64Array(), r.db, (i) => tolIn("f32", r.db[i], steps * UNIT.f32, r.dbMag[i]), `${c.name} db`);
        // dx alone, from x's shape only (a frozen layer keeps no activation)
        const dx2 = conv2dBackward(dy.t, x.t.shape, w.t, geometryOf(g))!;
        expect(dx2.toFloat64Array()).toEqual(dx.toFloat64Array());
      });
});

describe("dtypes", () => {
  for (const xdt of FLOATS)
    for (const wdt of FLOATS)
      for (const c of [CASES[0], CASES[4], CASES[6]])
        it(`${c.name}: x ${xdt}, weight ${wdt}`, () => {
          const g = geom(c, 2);
          const { x, w, b } = inputs(g, xdt, wdt, 21);
          const taps = (g.C / g.G) * g.KH * g.KW;
          const y = conv2d(x.t, w.t, b.t, geometryOf(g));
          expect(y.dtype).toBe(xdt);
          const ref = conv2dRef(g, x.v, w.v, b.v);
          expectClose(y.toFloat64Array(), ref.y, (i) => tolIn(xdt, ref.y[i], (taps + 5) * UNIT.f32, ref.mag[i]), "y");
          const dy = tensorOf(uniform(y.numel, -1, 1, 6), y.shape, xdt);
          const dW = Tensor.zeros(w.t.shape, { dtype: wdt });
          const dx = conv2dBackward(dy.t, x.t, w.t, geometryOf(g), { dW })!;
          expect(dx.dtype).toBe(xdt);
          const r = conv2dGradRef(g, x.v, w.v, dy.v);
          const ocTaps = (g.OC / g.G) * g.KH * g.KW;
          expectClose(dx.toFloat64Array(), r.dx, (i) => tolIn(xdt, r.dx[i], (ocTaps + 5) * UNIT.f32, r.dxMag[i]), "dx");
          const [OH, OW] = outSize(g);
          expectClose(dW.toFloat64Array(), r.dW, (i) => tolIn(wdt, r.dW[i], (2 * OH * OW + 5) * UNIT.f32, r.dWMag[i]), "dW");
        });
});

describe("threads", () => {
  it("any thread count gives the reference's result, including more threads than cores", () => {
    const g = geom(CASES[9], 3);
    const { x, w, b } = inputs(g, "f32", "f32", 31);
    const ref = conv2dRef(g, x.v, w.v, b.v);
    const taps = g.C * 9;
    for (const n of [1, 3, 8]) {
      backend.setNumThreads(n);
      const y = conv2d(x.t, w.t, b.t, geometryOf(g));
      expectClose(y.toFloat64Array(), ref.y, (i) => tolIn("f32", ref.y[i], (taps + 5) * UNIT.f32, ref.mag[i]), `${n} threads`);
    }
  });
});

describe("Conv2d module and F.conv2d", () => {
  it("PyTorch's init bounds, shapes and repr", () => {
    const m = new Conv2d(6, 4, 3, { padding: 1, groups: 2, seed: 3 });
    expect(m.weight.shape).toEqual([4, 3, 3, 3]);
    const bound = 1 / Math.sqrt(3 * 9);
    for (const v of m.weight.toFloat32Array()) expect(Math.abs(v)).toBeLessThanOrEqual(bound);
    for (const v of m.bias!.toFloat32Array()) expect(Math.abs(v)).toBeLessThanOrEqual(bound);
    expect(m.toString()).toContain("Conv2d(6, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=2)");
    expect(new Conv2d(3, 3, [3, 5], { padding: "same", dilation: 2 }).padding).toEqual([2, 4]);
    const seeded = (s: number) => new Conv2d(2, 2, 3, { seed: s }).weight.toFloat32Array();
    expect(seeded(5)).toEqual(seeded(5));
  });

  it("module forward/backward (tape-free and autograd) equal F.conv2d's gradients", () => {
    const m = new Conv2d(3, 5, 3, { stride: 2, padding: 1, seed: 4 });
    const x = Tensor.randn([2, 3, 9, 8], { seed: 9 });
    const dy = Tensor.randn([2, 5, 5, 4], { seed: 10 });
    const y = m.forward(x);
    const dx = m.backward(dy)!;
    const dW = m.weight.grad!.toFloat32Array().slice(), db = m.bias!.grad!.toFloat32Array().slice();
    m.zeroGrad();
    const xl = x.detach();
    xl.requiresGrad = true;
    const y2 = m.forward(xl);
    y2.backward(dy);
    expect(y2.toFloat32Array()).toEqual(y.toFloat32Array());
    expect(xl.grad!.toFloat32Array()).toEqual(dx.toFloat32Array());
    expect(m.weight.grad!.toFloat32Array()).toEqual(dW);
    expect(m.bias!.grad!.toFloat32Array()).toEqual(db);
    // the functional form gives the same numbers
    const w = m.weight.detach(), b = m.bias!.detach();
    w.requiresGrad = b.requiresGrad = true;
    const x3 = x.detach();
    x3.requiresGrad = true;
    F.conv2d(x3, w, b, { stride: 2, padding: 1 }).backward(dy);
    expect(x3.grad!.toFloat32Array()).toEqual(dx.toFloat32Array());
    expect(w.grad!.toFloat32Array()).toEqual(dW);
    expect(b.grad!.toFloat32Array()).toEqual(db);
  });

  it("a frozen weight keeps no activation and still gives dx", () => {
    const m = new Conv2d(2, 3, 3, { padding: 1, seed: 1 });
    m.weight.requiresGrad = false;
    m.bias!.requiresGrad = false;
    const x = Tensor.randn([1, 2, 5, 5], { seed: 2 });
    m.forward(x);
    const dx = m.backward(Tensor.randn([1, 3, 5, 5], { seed: 3 }));
    expect(dx!.shape).toEqual([1, 2, 5, 5]);
    expect(m.weight.grad).toBeNull();
  });

  it("passes gradcheck for x, weight and bias (strided, dilated, grouped)", () => {
    const leaf = (shape: number[], seed: number) => {
      const t = Tensor.randn(shape, { seed });
      t.requiresGrad = true;
      return t;
    };
    const x = leaf([2, 4, 6, 5], 1), w = leaf([6, 2, 3, 2], 2), b = leaf([6], 3);
    expect(gradcheck((a, c, d) => F.conv2d(a, c, d, { stride: [2, 1], padding: 1, dilation: [1, 2], groups: 2 }), [x, w, b])).toBe(true);
    const wd = leaf([4, 1, 3, 3], 4);
    expect(gradcheck((a, c) => F.conv2d(a, c, null, { padding: 1, groups: 4 }), [x, wd])).toBe(true);
  });
});

describe("bad inputs", () => {
  const x = Tensor.randn([1, 4, 5, 5], { seed: 1 });
  const geo = { stride: [1, 1] as const, padding: [0, 0] as const, dilation: [1, 1] as const, groups: 1 };
  it("shapes, groups and geometry are coded errors naming the op", () => {
    expectError(() => conv2d(x, Tensor.zeros([3, 3, 3, 3]), null, geo), PeftError, "ERR_SHAPE", /conv2d/, /4 channels/);
    expectError(() => conv2d(x, Tensor.zeros([3, 2, 3, 3]), null, { ...geo, groups: 3 }), PeftError, "ERR_SHAPE", /groups \(3\) must divide/);
    expectError(() => conv2d(x, Tensor.zeros([3, 4, 7, 3]), null, geo), PeftError, "ERR_SHAPE", /smaller than the dilated kernel/);
    expectError(() => conv2d(Tensor.zeros([4, 5, 5]), Tensor.zeros([3, 4, 3, 3]), null, geo), PeftError, "ERR_SHAPE", /4 dimensions/);
    expectError(() => conv2d(x, Tensor.zeros([3, 4, 3, 3]), Tensor.zeros([4]), geo), PeftError, "ERR_SHAPE", /bias/);
    expectError(() => conv2d(x, Tensor.zeros([3, 4, 3, 3]), null, { ...geo, stride: [0, 1] }), RangeError, "ERR_OUT_OF_RANGE", /strideH/);
    expectError(() => conv2d(Tensor.zeros([1, 4, 5, 5], { dtype: "i32" }), Tensor.zeros([3, 4, 3, 3]), null, geo), PeftError, "ERR_DTYPE", /x/);
    const dy = Tensor.zeros([1, 3, 4, 4]);
    expectError(() => conv2dBackward(dy, x, Tensor.zeros([3, 4, 3, 3]), geo), PeftError, "ERR_SHAPE", /dy/);
    expectError(() => conv2dBackward(Tensor.zeros([1, 3, 3, 3]), x.shape, Tensor.zeros([3, 4, 3, 3]), geo, { dW: Tensor.zeros([3, 4, 3, 3]) }), TypeError, "ERR_INVALID_ARG_TYPE", /dW needs x/);
    expectError(() => conv2dBackward(Tensor.zeros([1, 3, 3, 3]), x, Tensor.zeros([3, 4, 3, 3]), geo, { dW: Tensor.zeros([3, 4, 3]) }), PeftError, "ERR_SHAPE", /dW/);
  });

  it("convolutions have a CPU kernel only: cuda operands are ERR_NOT_ON_DEVICE", () => {
    const xc = x.to("cuda"), wc = Tensor.zeros([3, 4, 3, 3]).to("cuda");
    expectError(() => conv2d(xc, wc, null, geo), PeftError, "ERR_NOT_ON_DEVICE", /conv2d/);
    expectError(() => conv2dBackward(Tensor.zeros([1, 3, 3, 3]).to("cuda"), xc, wc, geo), PeftError, "ERR_NOT_ON_DEVICE", /conv2dBackward/);
  });

  it("module options are checked when the layer is built", () => {
    expectError(() => new Conv2d(4, 6, 3, { groups: 4 }), PeftError, "ERR_CONFIG", /groups \(4\) must divide/);
    expectError(() => new Conv2d(4, 4, 0), PeftError, "ERR_CONFIG", /kernelSize/);
    expectError(() => new Conv2d(4, 4, 3, { padding: -1 }), PeftError, "ERR_CONFIG", /padding/);
    expectError(() => new Conv2d(4, 4, 3, { padding: "same", stride: 2 }), PeftError, "ERR_CONFIG", /same/);
    expectError(() => new Conv2d(4, 4, 2, { padding: "same" }), PeftError, "ERR_UNSUPPORTED", /uneven padding/);
    expectError(() => new Conv2d(4, 4, 3, { paddingMode: "reflect" as "zeros" }), PeftError, "ERR_UNSUPPORTED", /paddingMode/);
    expectError(() => new Conv2d(4, 4, "3" as unknown as number), TypeError, "ERR_INVALID_ARG_TYPE", /kernelSize/);
    expectError(() => new Conv2d(0, 4, 3), PeftError, "ERR_CONFIG", /inChannels/);
    expectError(() => new Conv2d(4, 4, 3).forward(Tensor.zeros([1, 3, 5, 5])), PeftError, "ERR_SHAPE", /channels/);
  });
});
