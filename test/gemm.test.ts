// The CPU GEMM under linear / linearGradInput / linearGradWeight / matmul and the _gemmTest hook: every
// kernel path this CPU has, every float dtype mix, odd sizes on both sides of the small-M and K-block
// thresholds, against float64 with the bound of f32 accumulation (helpers/reference.ts).
import { afterAll, describe, expect, it } from "vitest";
import { PeftError, Tensor, backend, linear, linearGradInput, linearGradWeight, matmul } from "../lib/index.js";
import { native, type GemmTestOptions } from "../lib/native.js";
import { FLOATS, ISAS, expectClose, expectError, expectSameBits, forEachIsa, rng, type FloatDType } from "./helpers/numeric.js";
import { gemmRef, gemmTol, type Mat } from "./helpers/reference.js";

const h = Tensor.handle;
const startIsa = backend.isa;
const startThreads = backend.threads;
afterAll(() => {
  backend.setIsa(startIsa);
  backend.setNumThreads(startThreads);
});

/** A tensor of uniform(-1, 1) values stored in `dtype`, with the exact stored values as a Mat. */
function rand(rows: number, cols: number, dtype: FloatDType, seed: number): { t: Tensor; m: Mat } {
  const r = rng(seed);
  const t = Tensor.fromArray(Float64Array.from({ length: rows * cols }, () => 2 * r() - 1), [rows, cols], dtype);
  return { t, m: { v: t.toFloat64Array(), rows, cols } };
}

/** Checks `got` (the output tensor) against the float64 reference with the f32-accumulation bound. */
function check(got: Tensor, ref: ReturnType<typeof gemmRef>, what: string): void {
  const out = got.dtype as FloatDType;
  expect(got.shape, `${what}: shape`).toEqual([ref.M, ref.N]);
  expectClose(got.toFloat64Array(), ref.value, (i) => gemmTol(out, ref.steps, ref.value[i], ref.mag[i]), what);
}

// (M, K, N): small M (the streaming path, rows split in balanced groups), large M, several K blocks in
// both loop orders (f32 panels take one K block up to K = 1024, bf16 pairs for vdpbf16ps up to 2048).
const SHAPES: [number, number, number][] = [
  [1, 1, 1], [1, 257, 33], [7, 17, 127], [16, 127, 257], [17, 33, 7], [32, 257, 17], [33, 7, 257],
  [127, 257, 33], [257, 33, 127], [257, 127, 17], [45, 1100, 40], [127, 1031, 65], [33, 2100, 40],
];

describe("linear: y = x·Wᵀ + b against float64", () => {
  for (const xdt of FLOATS) {
    for (const wdt of FLOATS) {
      it(`x ${xdt}, W ${wdt}, on every kernel path (${ISAS.join(", ")})`, () => {
        SHAPES.forEach(([M, K, N], s) => {
          const x = rand(M, K, xdt, 10 * s + 1), w = rand(N, K, wdt, 10 * s + 2);
          const bdt = FLOATS[s % 3];
          const b = s % 4 === 3 ? null : rand(1, N, bdt, 10 * s + 3);
          const ref = gemmRef(x.m, w.m, { transB: true, bias: b?.m.v });
          forEachIsa((isa) => {
            const y = linear(x.t, w.t, b ? b.t.reshape([N]) : null);
            expect(y.dtype).toBe(xdt);
            check(y, ref, `${isa} M=${M} K=${K} N=${N} bias ${b ? bdt : "none"}`);
            y.dispose();
          });
        });
      });
    }
  }
});

describe("_gemmTest: alpha, accumulate, transposes, fused extra k-steps, C rounded once", () => {
  const cases: [number, number, number, number][] = [
    // M, K, N, R
    [1, 33, 17, 3], [16, 257, 33, 16], [33, 17, 127, 1], [127, 1031, 40, 5], [257, 65, 33, 8], [40, 2100, 33, 4],
  ];
  for (const out of FLOATS) {
    it(`C in ${out}`, () => {
      cases.forEach(([M, K, N, R], s) => {
        for (const transA of [false, true]) {
          for (const transB of [false, true]) {
            const adt = FLOATS[(s + Number(transA)) % 3], bdt = FLOATS[(s + 2 * Number(transB)) % 3];
            const a = transA ? rand(K, M, adt, s + 100) : rand(M, K, adt, s + 100);
            const b = transB ? rand(N, K, bdt, s + 200) : rand(K, N, bdt, s + 200);
            const a2 = rand(M, R, FLOATS[s % 3], s + 300), b2 = rand(R, N, "f32", s + 400);
            const bias = rand(1, N, FLOATS[(s + 1) % 3], s + 500);
            const c0 = rand(M, N, out, s + 600);
            const alpha = 0.75;
            for (const accumulate of [false, true]) {
              const ref = gemmRef(a.m, b.m, { transA, transB, alpha, bias: bias.m.v, a2: a2.m, b2: b2.m, c: accumulate ? c0.m.v : null });
              forEachIsa((isa) => {
                const c = c0.t.to(out);
                const opts: GemmTestOptions = { transA, transB, alpha, accumulate, bias: h(bias.t.reshape([N])), a2: h(a2.t), b2: h(b2.t) };
                native._gemmTest(h(a.t), h(b.t), h(c), opts);
                check(c, ref, `${isa} M=${M} K=${K} N=${N} R=${R} A ${adt}${transA ? "ᵀ" : ""} B ${bdt}${transB ? "ᵀ" : ""} acc=${accumulate}`);
                c.dispose();
              });
            }
          }
        }
      });
    });
  }

  it("a per-column output scale and a per-k scale of A (IA3's fused scales), with zeros and negatives, every path", () => {
    const scales = (n: number, seed: number) => {
      const r = rng(seed);
      const v = Float64Array.from({ length: n }, (_, i) => (i % 5 === 3 ? 0 : 4 * r() - 2));
      return { t: Tensor.fromArray(v, [n]), v: Tensor.fromArray(v, [n]).toFloat64Array() };
    };
    const cases: [number, number, number][] = [[1, 33, 17], [16, 257, 33], [33, 17, 127], [127, 1031, 40], [40, 2100, 33]];
    cases.forEach(([M, K, N], s) => {
      for (const out of FLOATS)
        for (const transA of [false, true]) {
          const adt = FLOATS[(s + Number(transA)) % 3], bdt = FLOATS[(s + 1) % 3];
          const a = transA ? rand(K, M, adt, s + 10) : rand(M, K, adt, s + 10);
          const b = rand(N, K, bdt, s + 20);
          const bias = rand(1, N, "f32", s + 30), c0 = rand(M, N, out, s + 40);
          const cs = scales(N, s + 50), ks = scales(K, s + 60);
          for (const accumulate of [false, true]) {
            const ref = gemmRef(a.m, b.m, { transA, transB: true, bias: bias.m.v, c: accumulate ? c0.m.v : null, colScale: cs.v, aScale: ks.v });
            forEachIsa((isa) => {
              const c = c0.t.to(out);
              native._gemmTest(h(a.t), h(b.t), h(c), { transA, transB: true, accumulate, bias: h(bias.t.reshape([N])), colScale: h(cs.t), aScale: h(ks.t) });
              check(c, ref, `${isa} M=${M} K=${K} N=${N} A ${adt}${transA ? "ᵀ" : ""} B ${bdt} C ${out} acc=${accumulate}`);
              c.dispose();
            });
          }
        }
    });
  });

  it("the fast paths agree with the reference path of the same hook", () => {
    const a = rand(65, 300, "bf16", 7), b = rand(300, 70, "bf16", 8);
    const ref = Tensor.zeros([65, 70], { dtype: "f32" });
    native._gemmTest(h(a.t), h(b.t), h(ref), { reference: true });
    forEachIsa((isa) => {
      const c = Tensor.zeros([65, 70]);
      native._gemmTest(h(a.t), h(b.t), h(c), {});
      const want = ref.toFloat64Array(), mag = gemmRef(a.m, b.m).mag;
      expectClose(c.toFloat64Array(), want, (i) => 2 * gemmTol("f32", 300, want[i], mag[i]), isa);
    });
  });
});

describe("empty and degenerate sizes", () => {
  it("M = 0 and N = 0 give empty results; K = 0 gives the bias or zeros", () => {
    forEachIsa((isa) => {
      expect(linear(Tensor.zeros([0, 5]), Tensor.zeros([3, 5])).shape, isa).toEqual([0, 3]);
      expect(linear(Tensor.zeros([4, 5]), Tensor.zeros([0, 5])).shape, isa).toEqual([4, 0]);
      const bias = Tensor.fromArray([1, -2, 3], [3]);
      expect(Array.from(linear(Tensor.zeros([2, 0]), Tensor.zeros([3, 0]), bias).toFloat32Array()), isa).toEqual([1, -2, 3, 1, -2, 3]);
      expect(Array.from(linear(Tensor.zeros([2, 0], { dtype: "bf16" }), Tensor.zeros([3, 0])).toFloat32Array()), isa).toEqual([0, 0, 0, 0, 0, 0]);
      expect(matmul(Tensor.zeros([0, 4]), Tensor.zeros([4, 6])).shape).toEqual([0, 6]);
    });
  });

  it("K = 0 with accumulate leaves C as it was (plus the bias); K = 0 with extra k-steps applies only those", () => {
    forEachIsa((isa) => {
      const c = Tensor.fromArray([1, 2, 3, 4, 5, 6], [2, 3]);
      native._gemmTest(h(Tensor.zeros([2, 0])), h(Tensor.zeros([0, 3])), h(c), { accumulate: true });
      expect(Array.from(c.toFloat32Array()), isa).toEqual([1, 2, 3, 4, 5, 6]);
      native._gemmTest(h(Tensor.zeros([2, 0])), h(Tensor.zeros([0, 3])), h(c), { accumulate: true, bias: h(Tensor.fromArray([1, 1, 1], [3])) });
      expect(Array.from(c.toFloat32Array()), isa).toEqual([2, 3, 4, 5, 6, 7]);
      const a2 = Tensor.fromArray([1, 2], [2, 1]), b2 = Tensor.fromArray([3, 4, 5], [1, 3]);
      native._gemmTest(h(Tensor.zeros([2, 0])), h(Tensor.zeros([0, 3])), h(c), { a2: h(a2), b2: h(b2) });
      expect(Array.from(c.toFloat32Array()), isa).toEqual([3, 4, 5, 6, 8, 10]);
    });
  });
});

describe("gradients and matmul", () => {
  // N = 64 and 96: whole panels only; M <= 2 row groups reads a row-major f32 B in place (no packed edge panel), larger M packs it.
  const shapes: [number, number, number][] = [[1, 7, 33], [17, 257, 33], [33, 127, 257], [257, 17, 127], [127, 1031, 40], [17, 129, 64], [300, 1500, 96]];

  it("linearGradInput: dx = dy·W in dy's dtype, every dtype mix", () => {
    for (const ddt of FLOATS) {
      for (const wdt of FLOATS) {
        shapes.forEach(([M, K, N], s) => {
          const dy = rand(M, N, ddt, s + 1), w = rand(N, K, wdt, s + 2);
          const ref = gemmRef(dy.m, w.m);
          forEachIsa((isa) => {
            const dx = linearGradInput(dy.t, w.t);
            expect(dx.dtype).toBe(ddt);
            check(dx, ref, `${isa} dy ${ddt} W ${wdt} M=${M} K=${K} N=${N}`);
          });
        });
      }
    }
  });

  it("linearGradWeight: dW (+)= dyᵀ·x rounded once into dW's dtype, accumulate true and false", () => {
    for (const wdt of FLOATS) {
      shapes.forEach(([M, K, N], s) => {
        const ddt = FLOATS[s % 3], xdt = FLOATS[(s + 1) % 3];
        const dy = rand(M, N, ddt, s + 11), x = rand(M, K, xdt, s + 12), w0 = rand(N, K, wdt, s + 13);
        for (const accumulate of [false, true]) {
          const ref = gemmRef(dy.m, x.m, { transA: true, c: accumulate ? w0.m.v : null });
          forEachIsa((isa) => {
            const dw = w0.t.to(wdt);
            linearGradWeight(dy.t, x.t, dw, { accumulate });
            check(dw, ref, `${isa} dW ${wdt} dy ${ddt} x ${xdt} M=${M} K=${K} N=${N} accumulate=${accumulate}`);
          });
        }
      });
    }
  });

  it("matmul with transA and transB", () => {
    shapes.forEach(([M, K, N], s) => {
      for (const transA of [false, true]) {
        for (const transB of [false, true]) {
          const adt = FLOATS[s % 3], bdt = FLOATS[(s + Number(transB)) % 3];
          const a = transA ? rand(K, M, adt, s + 21) : rand(M, K, adt, s + 21);
          const b = transB ? rand(N, K, bdt, s + 22) : rand(K, N, bdt, s + 22);
          const ref = gemmRef(a.m, b.m, { transA, transB });
          forEachIsa((isa) => check(matmul(a.t, b.t, { transA, transB }), ref, `${isa} ${adt}${transA ? "ᵀ" : ""}·${bdt}${transB ? "ᵀ" : ""} M=${M} K=${K} N=${N}`));
        }
      }
    });
  });

  it("results do not depend on the thread count", () => {
    const x = rand(300, 520, "f32", 31), w = rand(260, 520, "bf16", 32);
    try {
      backend.setNumThreads(1);
      const one = linear(x.t, w.t).toFloat32Array();
      backend.setNumThreads(Math.max(2, startThreads));
      expectSameBits(linear(x.t, w.t).toFloat32Array(), one, "1 thread vs several");
    } finally {
      backend.setNumThreads(startThreads);
    }
  });
});

const hasAmx = backend.features.includes("amx");
describe(`AMX-BF16 tiles${hasAmx ? "" : " (skipped: this CPU has no AMX, or the kernel refused tile data)"}`, () => {
  it.skipIf(!hasAmx)("bf16 x with bf16 W through AMX tiles, and with AMX turned off, match float64", () => {
    try {
      backend.setIsa("avx512");
      for (const amx of [true, false]) {
        backend.setAmx(amx);
        SHAPES.forEach(([M, K, N], s) => {
          const x = rand(M, K, "bf16", s + 41), w = rand(N, K, "bf16", s + 42), b = rand(1, N, "f32", s + 43);
          const a2 = rand(M, 3, "f32", s + 44), b2 = rand(3, N, "f32", s + 45);
          check(linear(x.t, w.t, b.t.reshape([N])), gemmRef(x.m, w.m, { transB: true, bias: b.m.v }), `amx=${amx} M=${M} K=${K} N=${N}`);
          const c = Tensor.zeros([M, N], { dtype: "bf16" });
          native._gemmTest(h(x.t), h(w.t), h(c), { transB: true, a2: h(a2.t), b2: h(b2.t), accumulate: true });
          check(c, gemmRef(x.m, w.m, { transB: true, a2: a2.m, b2: b2.m }), `amx=${amx} fused M=${M} K=${K} N=${N}`);
        });
      }
    } finally {
      backend.setAmx(true);
      backend.setIsa(startIsa);
    }
  });
});

describe("packed weights follow every write", () => {
  const M = 20, K = 300, N = 70;
  const fresh = (dt: FloatDType) => ({ x: rand(M, K, "f32", 51), w: rand(N, K, dt, 52), w2: rand(N, K, dt, 53) });
  const expectUses = (x: Mat, y: Tensor, w: Tensor, what: string) =>
    check(y, gemmRef(x, { v: w.toFloat64Array(), rows: N, cols: K }, { transB: true }), what);

  for (const dt of FLOATS) {
    it(`W ${dt}: copyFrom, a write through view(), linearGradWeight into W, an ISA switch`, () => {
      const { x, w, w2 } = fresh(dt);
      forEachIsa((isa) => {
        const W = w.t.to(dt);
        expectUses(x.m, linear(x.t, W), W, `${isa} first use`);
        W.copyFrom(w2.t);
        expectUses(x.m, linear(x.t, W), W, `${isa} after copyFrom`);
        const v = W.view();
        if (v instanceof Float32Array) v[0] = 5, v[K + 3] = -7;
        else (v as Uint16Array)[0] = Tensor.fromArray([5], [1], dt).view()[0] as number;
        expectUses(x.m, linear(x.t, W), W, `${isa} after a view() write`);
        linearGradWeight(rand(M, N, "f32", 54).t, x.t, W, { accumulate: true });
        expectUses(x.m, linear(x.t, W), W, `${isa} after linearGradWeight into W`);
        W.dispose();
      });
      // The pack made under one path is not reused by another (their layouts differ).
      const W = w.t.to(dt);
      for (const isa of [...ISAS, ...ISAS].reverse()) {
        backend.setIsa(isa);
        expectUses(x.m, linear(x.t, W), W, `${isa} after a path switch`);
      }
      backend.setIsa(startIsa);
    });
  }

  it("the same storage seen through another shape is packed for that shape", () => {
    const w = rand(N, K, "f32", 61);
    const x = rand(M, K, "f32", 62), x2 = rand(M, N, "f32", 63);
    expectUses(x.m, linear(x.t, w.t), w.t, "as [N, K]");
    const w2 = w.t.reshape([K, N]);
    check(linear(x2.t, w2), gemmRef(x2.m, { v: w.m.v, rows: K, cols: N }, { transB: true }), "as [K, N]");
    expectUses(x.m, linear(x.t, w.t), w.t, "as [N, K] again");
  });
});

describe("bad arguments", () => {
  const x = Tensor.zeros([4, 6]), w = Tensor.zeros([5, 6]);
  it("wrong dtypes and shapes are PeftErrors naming the op", () => {
    expectError(() => linear(Tensor.zeros([4, 6], { dtype: "i32" }), w), PeftError, "ERR_DTYPE", /linear: x must be f32, f16 or bf16/);
    expectError(() => linear(x, Tensor.zeros([5, 6], { dtype: "i8" })), PeftError, "ERR_DTYPE", /weight/);
    expectError(() => linear(x, Tensor.zeros([5, 7])), PeftError, "ERR_SHAPE", /x has 6 features/);
    expectError(() => linear(x, w, Tensor.zeros([4])), PeftError, "ERR_SHAPE", /bias must have shape \[5\]/);
    expectError(() => linearGradInput(Tensor.zeros([4, 4]), w), PeftError, "ERR_SHAPE", /linearGradInput/);
    expectError(() => linearGradWeight(Tensor.zeros([4, 5]), Tensor.zeros([3, 6]), Tensor.zeros([5, 6])), PeftError, "ERR_SHAPE", /linearGradWeight/);
    expectError(() => linearGradWeight(Tensor.zeros([4, 5]), x, Tensor.zeros([5, 6], { dtype: "i64" })), PeftError, "ERR_DTYPE", /dW/);
    expectError(() => matmul(x, Tensor.zeros([5, 6])), PeftError, "ERR_SHAPE", /inner dimensions differ/);
    expectError(() => matmul(Tensor.zeros([2, 3, 4]), x), PeftError, "ERR_SHAPE", /matmul: a must have 2 dimensions/);
    expectError(() => native._gemmTest(h(x), h(w), h(Tensor.zeros([4, 4])), {}), PeftError, "ERR_SHAPE", /_gemmTest: shapes do not compose/);
  });

  it("disposed tensors are ERR_DISPOSED, non-tensors TypeErrors", () => {
    const gone = Tensor.zeros([4, 6]);
    gone.dispose();
    expectError(() => linear(gone, w), PeftError, "ERR_DISPOSED");
    expectError(() => linearGradInput(Tensor.zeros([4, 5]), (() => { const t = Tensor.zeros([5, 6]); t.dispose(); return t; })()), PeftError, "ERR_DISPOSED");
    expectError(() => matmul(x, gone, { transB: true }), PeftError, "ERR_DISPOSED");
    for (const bad of [null, undefined, 3, "x", {}, [1, 2], new Float32Array(4)]) {
      expectError(() => linear(bad as unknown as Tensor, w), TypeError, "ERR_INVALID_ARG_TYPE");
      expectError(() => linearGradWeight(Tensor.zeros([4, 5]), x, bad as unknown as Tensor), TypeError, "ERR_INVALID_ARG_TYPE");
      expectError(() => matmul(x, bad as unknown as Tensor), TypeError, "ERR_INVALID_ARG_TYPE");
    }
    expectError(() => native._gemmTest(h(x), h(w), 5 as unknown as ReturnType<typeof h>, {}), TypeError, "ERR_INVALID_ARG_TYPE");
    expectError(() => native._gemmTest(h(x), h(w), h(Tensor.zeros([4, 5])), 1 as unknown as GemmTestOptions), TypeError, "ERR_INVALID_ARG_TYPE");
  });
});
