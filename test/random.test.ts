import { afterEach, describe, expect, it } from "vitest";
import { Tensor, backend, manualSeed } from "../lib/index.js";

describe("Philox randn", () => {
  const threads = backend.threads;
  afterEach(() => backend.setNumThreads(threads));

  it("is reproducible for an explicit seed and independent of the thread count", () => {
    const n = 1 << 18;
    backend.setNumThreads(1);
    const a = Tensor.randn([n], { seed: 42 }).toFloat32Array();
    backend.setNumThreads(2);
    const b = Tensor.randn([n], { seed: 42 }).toFloat32Array();
    expect(Buffer.from(b.buffer).equals(Buffer.from(a.buffer))).toBe(true);
    const c = Tensor.randn([n], { seed: 43 }).toFloat32Array();
    expect(c[0]).not.toBe(a[0]);
  });

  it("a prefix of a longer draw equals the shorter draw (counter = element offset)", () => {
    const a = Tensor.randn([7], { seed: 5 }).toArray();
    const b = Tensor.randn([33], { seed: 5 }).toArray().slice(0, 7);
    expect(b).toEqual(a);
  });

  it("has standard-normal moments", () => {
    const n = 1 << 20;
    const v = Tensor.randn([n], { seed: 7 }).toFloat64Array();
    let s = 0, s2 = 0, s4 = 0;
    for (const x of v) (s += x), (s2 += x * x), (s4 += x ** 4);
    const mean = s / n, variance = s2 / n - mean * mean;
    // Standard errors: mean 1/sqrt(n) ~ 1e-3, variance sqrt(2/n) ~ 1.4e-3; allow 5 sigma.
    expect(Math.abs(mean)).toBeLessThan(5e-3);
    expect(Math.abs(variance - 1)).toBeLessThan(7e-3);
    expect(Math.abs(s4 / n - 3)).toBeLessThan(0.05); // kurtosis of a normal
  });

  it("manualSeed restarts the global stream sequence; successive draws differ", () => {
    manualSeed(123);
    const a1 = Tensor.randn([5]).toArray(), a2 = Tensor.randn([5]).toArray();
    manualSeed(123);
    const b1 = Tensor.randn([5]).toArray(), b2 = Tensor.randn([5]).toArray();
    expect(b1).toEqual(a1);
    expect(b2).toEqual(a2);
    expect(a2).not.toEqual(a1);
  });

  it("mean/std options and low-precision dtypes round the same samples", () => {
    const f = Tensor.randn([64], { seed: 9, mean: 2, std: 0.5 }).toFloat32Array();
    const h = Tensor.randn([64], { seed: 9, mean: 2, std: 0.5, dtype: "bf16" }).toFloat32Array();
    const ref = Tensor.fromArray(f, [64]).to("bf16").toFloat32Array();
    expect(Array.from(h)).toEqual(Array.from(ref));
  });

  it("rejects bad seeds and integer dtypes", () => {
    expect(() => manualSeed(-1)).toThrow(RangeError);
    expect(() => manualSeed(1.5)).toThrow(RangeError);
    expect(() => manualSeed("1" as never)).toThrow(TypeError);
    expect(() => Tensor.randn([2], { seed: -3 })).toThrow(RangeError);
    expect(() => Tensor.randn([2], { dtype: "i32" })).toThrow(/randn: dtype must be f32, f16 or bf16/);
  });

  it("uniform samples lie in [lo, hi)", () => {
    const v = Tensor.rand([10000], { seed: 1, lo: -2, hi: 3 }).toFloat64Array();
    expect(Math.min(...v)).toBeGreaterThanOrEqual(-2);
    expect(Math.max(...v)).toBeLessThan(3);
  });
});
