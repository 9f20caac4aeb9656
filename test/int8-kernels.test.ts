// LLM.int8 kernels (native int8Quantize / int8Linear / int8LinearGradInput) against bitsandbytes' arithmetic
// written out in JS (test/helpers/int8-ref.ts): quantised values and int32 products compared exactly on every
// kernel path, floating outputs exactly where the order of rounding is bitsandbytes' own and against float64
// with bounds derived from the arithmetic elsewhere.
import { describe, expect, it } from "vitest";
import { PeftError, Tensor, backend } from "../lib/index.js";
import { native } from "../lib/native.js";
import { int8Linear, int8LinearGradInput, int8Quantize } from "../lib/ops.js";
import { ISAS, UNIT, expectClose, expectError, roundTo, uniform } from "./helpers/numeric.js";
import { dequant, dequantWeight, fmaF32, int32Product, outlierColumns, quantRows } from "./helpers/int8-ref.js";

const h = Tensor.handle;
const SIZES = [1, 7, 17, 33, 127];

const hasAmxInt8 = backend.features.includes("amx-int8") && backend.features.includes("amx");
/** Every int8 kernel path this CPU runs: scalar, AVX2, AVX-512 VNNI (AMX off), AMX-INT8. */
const PATHS: { isa: string; amx: boolean; kernel: string }[] = [
  ...ISAS.map((isa) => ({
    isa,
    amx: false,
    kernel: isa === "avx512" ? (backend.features.includes("avx512vnni") ? "avx512-vnni" : "avx2") : isa,
  })),
  ...(hasAmxInt8 ? [{ isa: "avx512", amx: true, kernel: "amx-int8" }] : []),
];

function onEachPath(fn: (path: string) => void): void {
  const was = backend.isa;
  try {
    for (const p of PATHS) {
      backend.setIsa(p.isa);
      backend.setAmx(p.amx);
      expect(native._benchInt8Kernel()).toBe(p.kernel);
      fn(p.kernel);
    }
  } finally {
    backend.setAmx(true);
    backend.setIsa(was);
  }
}

function mat(rows: number, cols: number, seed: number, dtype: "f32" | "bf16" | "f16" = "f32", lo = -1, hi = 1) {
  const t = Tensor.fromArray(uniform(rows * cols, lo, hi, seed), [rows, cols], dtype);
  return { t, v: t.toFloat64Array() };
}

describe("int8Quantize: bitsandbytes' int8_vectorwise_quant on the f16 weight", () => {
  it("matches the JS reference exactly for every dtype and odd sizes", () => {
    for (const dt of ["f32", "bf16", "f16"] as const)
      for (const [N, K] of [[1, 1], [7, 17], [33, 127], [5, 300]]) {
        const w = mat(N, K, N * 31 + K, dt, -3, 3);
        onEachPath(() => {
          const [cb, scb] = int8Quantize(w.t);
          const ref = quantRows(w.v, N, K);
          expect(cb.dtype).toBe("i8");
          expect(Array.from(cb.view() as Int8Array)).toEqual(Array.from(ref.q));
          expect(Array.from(scb.toFloat64Array())).toEqual(Array.from(ref.s));
        });
      }
  });

  it("rounds half-way cases to even and gives zero rows CB 0 and SCB 0", () => {
    // Row 0: absmax 127, scale 1: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0, -1.5 -> -2, -2.5 -> -2.
    // Row 1: absmax 254, scale 0.5: 1 -> 0 (0.5), 3 -> 2 (1.5), 5 -> 2 (2.5), 7 -> 4 (3.5).
    // Row 2: all zero.
    const w = Tensor.fromArray([127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 254, 1, 3, 5, 7, -1, -3, 0, 0, 0, 0, 0, 0, 0], [3, 7]);
    onEachPath(() => {
      const [cb, scb] = int8Quantize(w);
      expect(Array.from(cb.view() as Int8Array)).toEqual([127, 0, 2, 2, 0, -2, -2, 127, 0, 2, 2, 4, 0, -2, 0, 0, 0, 0, 0, 0, 0]);
      expect(Array.from(scb.toFloat64Array())).toEqual([127, 254, 0]);
      // A zero row dequantises to 0 (no NaN) and contributes nothing to y.
      const y = int8Linear(Tensor.fromArray(uniform(14, -1, 1, 3), [2, 7]), cb, scb, null, 0).toFloat64Array();
      expect(y.every((v, i) => i % 3 !== 2 || v === 0)).toBe(true);
    });
  });

  it("names the first row holding NaN, inf, or a value beyond f16's range", () => {
    for (const bad of [NaN, Infinity, -Infinity, 70000]) {
      const v = uniform(5 * 9, -1, 1, 4);
      v[3 * 9 + 4] = bad;
      v[4 * 9 + 1] = NaN;
      expectError(() => int8Quantize(Tensor.fromArray(v, [5, 9])), RangeError, "ERR_OUT_OF_RANGE", /row 3\b/, /not finite/);
    }
  });

  it("refuses integer weights, non-2-D weights", () => {
    expectError(() => int8Quantize(Tensor.zeros([2, 3], { dtype: "i8" })), PeftError, "ERR_DTYPE", /int8Quantize/, /weight/);
    expectError(() => int8Quantize(Tensor.zeros([6])), PeftError, "ERR_SHAPE", /int8Quantize/, /2 dimensions/);
  });
});

/** x quantised as MatMul8bitLt does, and the exact int32 products. */
function expected(xv: Float64Array, cbv: ArrayLike<number>, M: number, K: number, N: number, threshold: number) {
  const cols = outlierColumns(xv, M, K, threshold);
  const xq = quantRows(xv, M, K, threshold, cols);
  return { cols, xq, acc: int32Product(xq.q, cbv, M, K, N) };
}

describe("int8Linear: int32 products exact on every path", () => {
  it("threshold 0 and planted outlier columns, odd sizes, f32/bf16/f16 x", () => {
    for (const dt of ["f32", "bf16", "f16"] as const)
      for (const M of [1, 7, 33])
        for (const K of SIZES)
          for (const N of [1, 17, 33]) {
            const x = mat(M, K, M * 7 + K * 3 + N, dt, -2, 2);
            // Plant outliers in a few columns (and one element at exactly the threshold).
            const xv = Array.from(x.v);
            for (let m = 0; m < M; m += 3) xv[m * K + ((m * 5) % K)] = m % 2 ? -9 : 6;
            const xt = Tensor.fromArray(xv, [M, K], dt);
            const w = mat(N, K, N + K, "f32");
            const [cb, scb] = int8Quantize(w.t);
            const cbv = cb.view() as Int8Array;
            for (const threshold of [0, 6]) {
              const ref = expected(xt.toFloat64Array(), cbv, M, K, N, threshold);
              if (threshold > 0) expect(ref.cols.size).toBeGreaterThan(0);
              onEachPath((p) => {
                const raw = new Tensor(native._int8Test(h(xt), h(cb), h(scb), threshold));
                expect(Array.from(raw.view() as Int32Array), `${p} ${dt} M=${M} K=${K} N=${N} t=${threshold}`).toEqual(Array.from(ref.acc));
              });
            }
          }
  });

  it("large K stays exact (sums far beyond 16 bits; u8 offset correction)", () => {
    const M = 13, K = 4099, N = 35;
    const x = mat(M, K, 5, "f32"), w = mat(N, K, 6, "f32");
    const [cb, scb] = int8Quantize(w.t);
    const ref = expected(x.v, cb.view() as Int8Array, M, K, N, 0);
    onEachPath((p) => {
      const raw = new Tensor(native._int8Test(h(x.t), h(cb), h(scb), 0));
      expect(Array.from(raw.view() as Int32Array), p).toEqual(Array.from(ref.acc));
    });
  });
});

describe("int8Linear: y in bitsandbytes' order of rounding", () => {
  it("threshold 0: y is bit-exact to int8_mm_dequant (f32) and within the quantisation bound of float64 x·Wᵀ", () => {
    for (const M of [0, 1, 7, 17])
      for (const [K, N] of [[1, 1], [33, 7], [127, 33]]) {
        const x = mat(M, K, M + K, "f32", -2, 2), w = mat(N, K, N * 3 + K, "f32"), b = mat(1, N, N, "f32");
        const [cb, scb] = int8Quantize(w.t);
        const ref = expected(x.v, cb.view() as Int8Array, M, K, N, 0);
        const want = dequant(ref.acc, ref.xq.s, scb.toFloat64Array(), b.v, M, N);
        onEachPath((p) => {
          const y = int8Linear(x.t, cb, scb, b.t.reshape([N]), 0);
          expect(y.shape).toEqual([M, N]);
          expect(Array.from(y.toFloat64Array()), `${p} M=${M} K=${K} N=${N}`).toEqual(Array.from(want));
        });
        // Against the unquantised product: each x and W element is off by at most half a quantisation step
        // (absmax/254) plus its f16 rounding (2^-11 relative); the rest is f32 rounding.
        const y = int8Linear(x.t, cb, scb, b.t.reshape([N]), 0).toFloat64Array();
        const sb = scb.toFloat64Array();
        const exact = new Float64Array(M * N), tol = new Float64Array(M * N);
        for (let m = 0; m < M; m++)
          for (let n = 0; n < N; n++) {
            let s = b.v[n], e = 0, mag = Math.abs(b.v[n]);
            for (let k = 0; k < K; k++) {
              const xv = x.v[m * K + k], wv = w.v[n * K + k];
              const dx = ref.xq.s[m] / 254 + Math.abs(xv) * UNIT.f16, dw = sb[n] / 254 + Math.abs(wv) * UNIT.f16;
              s += xv * wv;
              e += dx * Math.abs(wv) + Math.abs(xv) * dw + dx * dw;
              mag += Math.abs(xv * wv);
            }
            exact[m * N + n] = s;
            tol[m * N + n] = e + 8 * UNIT.f32 * (mag + e);
          }
        expectClose(y, exact, (i) => tol[i], `float64 M=${M} K=${K} N=${N}`);
      }
  });

  it("a fused rank term u·bt (LoRA) is added in the epilogue: bit-exact on every path, odd ranks, empty batches", () => {
    const f = Math.fround;
    for (const M of [0, 1, 7, 17])
      for (const [K, N, R] of [[1, 1, 1], [33, 7, 3], [127, 33, 17], [33, 127, 16]]) {
        const x = mat(M, K, M + K + 5, "f32", -2, 2), w = mat(N, K, N + K, "f32"), b = mat(1, N, N + 1, "f32");
        const u = mat(M, R, M + R, "f32"), bt = mat(R, N, R + N, "f32", -0.1, 0.1);
        const [cb, scb] = int8Quantize(w.t);
        const ref = expected(x.v, cb.view() as Int8Array, M, K, N, 0);
        const base = dequant(ref.acc, ref.xq.s, scb.toFloat64Array(), b.v, M, N);
        // The epilogue's order: Σ_r u·bt by f32 fused multiply-adds in order of r, then + the base.
        const want = base.map((y, i) => {
          const m = Math.floor(i / N), n = i % N;
          let lo = 0;
          for (let r = 0; r < R; r++) lo = fmaF32(u.v[m * R + r], bt.v[r * N + n], lo);
          return f(y + lo);
        });
        onEachPath((p) => {
          const y = int8Linear(x.t, cb, scb, b.t.reshape([N]), 0, { u: u.t, bt: bt.t });
          expect(Array.from(y.toFloat64Array()), `${p} M=${M} K=${K} N=${N} r=${R}`).toEqual(Array.from(want));
          y.dispose();
        });
        for (const t of [x.t, w.t, b.t, u.t, bt.t, cb, scb]) t.dispose();
      }
  });

  it("outlier columns in floating point: int8 part rounded to x's dtype, then addmm with the dequantised columns", () => {
    for (const dt of ["f32", "bf16"] as const)
      for (const [M, K, N] of [[1, 7, 5], [7, 17, 33], [33, 127, 17], [17, 33, 127]]) {
        const base = uniform(M * K, -1, 1, M * K + N);
        for (let m = 0; m < M; m++) base[m * K + ((m * 3) % K)] = (m % 2 ? -1 : 1) * (7 + m); // planted outliers
        const x = Tensor.fromArray(base, [M, K], dt), xv = x.toFloat64Array();
        const w = mat(N, K, 2 * N + K, "f32"), b = mat(1, N, 9, dt);
        const [cb, scb] = int8Quantize(w.t);
        const ref = expected(xv, cb.view() as Int8Array, M, K, N, 6);
        const yInt = roundTo(dequant(ref.acc, ref.xq.s, scb.toFloat64Array(), b.v, M, N), dt);
        const wdq = roundTo(dequantWeight(cb.view() as Int8Array, scb.toFloat64Array(), N, K), dt);
        const want = new Float64Array(M * N), mag = new Float64Array(M * N);
        for (let m = 0; m < M; m++)
          for (let n = 0; n < N; n++) {
            let s = yInt[m * N + n], a = Math.abs(s);
            for (const c of ref.cols) (s += xv[m * K + c] * wdq[n * K + c]), (a += Math.abs(xv[m * K + c] * wdq[n * K + c]));
            want[m * N + n] = s;
            mag[m * N + n] = a;
          }
        // f32 accumulation over the outlier columns (a few roundings of at most the magnitude), one rounding into dt.
        const R = ref.cols.size;
        onEachPath((p) => {
          const y = int8Linear(x, cb, scb, b.t.reshape([N]), 6);
          expect(y.dtype).toBe(dt);
          expectClose(y.toFloat64Array(), want, (i) => (R + 2) * UNIT.f32 * mag[i] + UNIT[dt] * Math.abs(want[i]) + 1e-30, `${p} ${dt} M=${M} K=${K} N=${N}`);
        });
      }
  });

  it("rows of x that are all zero or all outliers give the bias alone from the int8 part (no NaN)", () => {
    const K = 9, N = 4;
    const x = Tensor.fromArray([...new Array(K).fill(0), ...new Array(K).fill(8)], [2, K]);
    const w = mat(N, K, 1, "f32"), b = Tensor.fromArray([1, 2, 3, 4], [4]);
    const [cb, scb] = int8Quantize(w.t);
    onEachPath(() => {
      const y = int8Linear(x, cb, scb, b, 0).toFloat64Array();
      expect(Array.from(y.slice(0, N))).toEqual([1, 2, 3, 4]);
      const y6 = int8Linear(x, cb, scb, b, 6).toFloat64Array();
      expect(y6.every(Number.isFinite)).toBe(true);
    });
  });
});

describe("decode-step rows and rank terms beside the tile products", () => {
  it("13..16 rows (one 16 x 16 VNNI group, CB prefetched ahead): int32 products and y exact, outliers included", () => {
    for (const M of [13, 16])
      for (const K of [1, 127, 300])
        for (const N of [1, 17, 47]) {
          const xv = Array.from(mat(M, K, M * 5 + K + N, "f32", -2, 2).v);
          for (let m = 0; m < M; m += 4) xv[m * K + ((m * 7) % K)] = m % 8 ? -7 : 6.5; // planted outlier columns
          const x = Tensor.fromArray(xv, [M, K]), w = mat(N, K, N + 2 * K, "f32"), b = mat(1, N, N + 3, "f32");
          const [cb, scb] = int8Quantize(w.t);
          const cbv = cb.view() as Int8Array;
          for (const threshold of [0, 6]) {
            const ref = expected(x.toFloat64Array(), cbv, M, K, N, threshold);
            const want = dequant(ref.acc, ref.xq.s, scb.toFloat64Array(), b.v, M, N);
            onEachPath((p) => {
              const raw = new Tensor(native._int8Test(h(x), h(cb), h(scb), threshold));
              expect(Array.from(raw.view() as Int32Array), `${p} M=${M} K=${K} N=${N} t=${threshold}`).toEqual(Array.from(ref.acc));
              raw.dispose();
              if (threshold > 0) return;
              const y = int8Linear(x, cb, scb, b.t.reshape([N]), 0);
              expect(Array.from(y.toFloat64Array()), `${p} y M=${M} K=${K} N=${N}`).toEqual(Array.from(want));
              y.dispose();
            });
          }
          for (const t of [x, w.t, b.t, cb, scb]) t.dispose();
        }
  });

  it("outlier and LoRA rank terms together: the same bits on every path (AMX sums whole 8-row groups between its tile products)", () => {
    // Rows: whole 8-row groups only, groups plus a remainder, a 32-row block plus a partial one; columns: whole
    // 32-column blocks and a last block of 15 (one panel: summed after the tiles).
    for (const M of [8, 13, 40, 64])
      for (const [K, N, R] of [[64, 32, 1], [130, 47, 17], [33, 80, 3]]) {
        const xv = Array.from(mat(M, K, M + 3 * K, "f32", -2, 2).v);
        for (let m = 0; m < M; m += 3) xv[m * K + ((m * 11) % K)] = (m % 2 ? -1 : 1) * (6 + (m % 5)); // outliers
        const x = Tensor.fromArray(xv, [M, K]), w = mat(N, K, 2 * N + K, "f32");
        const u = mat(M, R, M + R + 1, "f32"), bt = mat(R, N, R + N + 1, "f32", -0.1, 0.1);
        const [cb, scb] = int8Quantize(w.t);
        for (const threshold of [0, 6]) {
          let first: number[] | null = null;
          onEachPath((p) => {
            const y = int8Linear(x, cb, scb, null, threshold, { u: u.t, bt: bt.t });
            const got = Array.from(y.toFloat64Array());
            y.dispose();
            if (!first) first = got;
            else expect(got, `${p} M=${M} K=${K} N=${N} r=${R} t=${threshold}`).toEqual(first);
          });
          if (threshold > 0) continue;
          // And the LoRA sums as the epilogue orders them (f32 fused multiply-adds in order of r, then + base).
          const ref = expected(x.toFloat64Array(), cb.view() as Int8Array, M, K, N, 0);
          const base = dequant(ref.acc, ref.xq.s, scb.toFloat64Array(), null, M, N);
          const want = base.map((yv, i) => {
            const m = Math.floor(i / N), n = i % N;
            let lo = 0;
            for (let r = 0; r < R; r++) lo = fmaF32(u.v[m * R + r], bt.v[r * N + n], lo);
            return Math.fround(yv + lo);
          });
          expect(first, `reference M=${M} K=${K} N=${N} r=${R}`).toEqual(Array.from(want));
        }
        for (const t of [x, w.t, u.t, bt.t, cb, scb]) t.dispose();
      }
  });
});

describe("int8Linear with down: u = scale·x·downᵀ computed as x is quantised (fused LoRA A)", () => {
  it("u within f32 dot-product rounding of float64, y bit-equal to passing that u, odd sizes, k chunks of 512", () => {
    // Rows: a whole 4-row block, blocks plus 1..3 rows; K within one 512-column chunk and across two and three.
    for (const M of [1, 5, 13])
      for (const [K, N, R] of [[7, 17, 1], [513, 33, 5], [1030, 7, 17]]) {
        const x = mat(M, K, M + K + 2, "f32", -2, 2), w = mat(N, K, N + K + 3, "f32"), a = mat(R, K, R + K, "f32", -0.1, 0.1);
        const bt = mat(R, N, R + N + 5, "f32", -0.1, 0.1);
        const [cb, scb] = int8Quantize(w.t);
        const scale = 0.75;
        for (const isa of ISAS) {
          const was = backend.isa;
          backend.setIsa(isa);
          try {
            const u = Tensor.zeros([M, R]);
            const y = int8Linear(x.t, cb, scb, null, 0, { u, bt: bt.t, down: a.t, scale });
            const uv = u.toFloat64Array();
            // Σ_k in f32 (any order): each of the K roundings at most UNIT.f32 of the running magnitude, then the
            // sum and its product with scale rounded once each.
            for (let m = 0; m < M; m++)
              for (let r = 0; r < R; r++) {
                let s = 0, mag = 0;
                for (let k = 0; k < K; k++) (s += x.v[m * K + k] * a.v[r * K + k]), (mag += Math.abs(x.v[m * K + k] * a.v[r * K + k]));
                const want = s * scale, tol = (K + 2) * UNIT.f32 * mag * scale + 1e-30;
                expect(Math.abs(uv[m * R + r] - want), `${isa} u[${m}][${r}] M=${M} K=${K} R=${R}`).toBeLessThanOrEqual(tol);
              }
            const again = int8Linear(x.t, cb, scb, null, 0, { u, bt: bt.t });
            expect(Array.from(y.toFloat64Array()), `${isa} y M=${M} K=${K} N=${N} R=${R}`).toEqual(Array.from(again.toFloat64Array()));
            for (const t of [u, y, again]) t.dispose();
          } finally {
            backend.setIsa(was);
          }
        }
        for (const t of [x.t, w.t, a.t, bt.t, cb, scb]) t.dispose();
      }
  });
});

describe("int8LinearGradInput: dx = dy·dequant(W)", () => {
  it("matches float64 on odd sizes, empty batches, f32/bf16 dy", () => {
    for (const dt of ["f32", "bf16"] as const)
      for (const M of [0, 1, 7, 33])
        for (const [K, N] of [[1, 1], [17, 33], [127, 7]]) {
          const dy = mat(M, N, M + N, dt), w = mat(N, K, K, "f32");
          const [cb, scb] = int8Quantize(w.t);
          const cbv = cb.view() as Int8Array, sb = scb.toFloat64Array();
          const want = new Float64Array(M * K), mag = new Float64Array(M * K);
          for (let m = 0; m < M; m++)
            for (let k = 0; k < K; k++) {
              let s = 0, a = 0;
              for (let n = 0; n < N; n++) {
                const t = dy.v[m * N + n] * ((cbv[n * K + k] * sb[n]) / 127);
                (s += t), (a += Math.abs(t));
              }
              want[m * K + k] = s;
              mag[m * K + k] = a;
            }
          // f32 accumulation of N products (each with its scaling rounding), one rounding into dt.
          onEachPath((p) => {
            const dx = int8LinearGradInput(dy.t, cb, scb);
            expect(dx.shape).toEqual([M, K]);
            expect(dx.dtype).toBe(dt);
            expectClose(dx.toFloat64Array(), want, (i) => (N + 3) * UNIT.f32 * mag[i] + UNIT[dt] * Math.abs(want[i]) + 1e-30, `${p} ${dt} M=${M} K=${K} N=${N}`);
          });
        }
  });
});

describe("packed CB follows writes (cache keyed by the weight's version)", () => {
  it("a copy into CB is seen by the next forward", () => {
    const x = mat(5, 40, 1), w1 = mat(9, 40, 2), w2 = mat(9, 40, 3);
    const [cb, scb] = int8Quantize(w1.t);
    const [cb2, scb2] = int8Quantize(w2.t);
    const y1 = int8Linear(x.t, cb, scb, null, 0).toFloat64Array();
    cb.copyFrom(cb2);
    scb.copyFrom(scb2);
    const y2 = int8Linear(x.t, cb, scb, null, 0).toFloat64Array();
    expect(Array.from(y2)).toEqual(Array.from(int8Linear(x.t, cb2, scb2, null, 0).toFloat64Array()));
    expect(Array.from(y2)).not.toEqual(Array.from(y1));
  });
});

describe(`AMX-INT8${hasAmxInt8 ? "" : " (skipped: this CPU has no AMX-INT8, or the kernel refused tile data)"}`, () => {
  it.skipIf(!hasAmxInt8)("tdpbssd path is taken with AMX on and matches VNNI bit for bit", () => {
    const x = mat(70, 300, 11), w = mat(45, 300, 12);
    const [cb, scb] = int8Quantize(w.t);
    const was = backend.isa;
    try {
      backend.setIsa("avx512");
      backend.setAmx(true);
      expect(native._benchInt8Kernel()).toBe("amx-int8");
      const a = int8Linear(x.t, cb, scb, null, 0).toFloat64Array();
      backend.setAmx(false);
      const v = int8Linear(x.t, cb, scb, null, 0).toFloat64Array();
      expect(Array.from(a)).toEqual(Array.from(v));
    } finally {
      backend.setAmx(true);
      backend.setIsa(was);
    }
  });
});

describe("bad input", () => {
  const w = mat(4, 6, 1);
  const [cb, scb] = int8Quantize(w.t);
  it("shapes, dtypes, thresholds", () => {
    expectError(() => int8Linear(Tensor.zeros([2, 5]), cb, scb, null, 0), PeftError, "ERR_SHAPE", /int8Linear/, /5 features/, /expects 6/);
    expectError(() => int8Linear(Tensor.zeros([2, 6], { dtype: "i32" }), cb, scb, null, 0), PeftError, "ERR_DTYPE", /int8Linear: x/);
    expectError(() => int8Linear(Tensor.zeros([2, 6]), w.t, scb, null, 0), PeftError, "ERR_DTYPE", /CB must be i8/);
    expectError(() => int8Linear(Tensor.zeros([2, 6]), cb, Tensor.zeros([4], { dtype: "bf16" }), null, 0), PeftError, "ERR_DTYPE", /SCB must be f32/);
    expectError(() => int8Linear(Tensor.zeros([2, 6]), cb, Tensor.zeros([5]), null, 0), PeftError, "ERR_SHAPE", /SCB must have shape \[4\]/);
    expectError(() => int8Linear(Tensor.zeros([2, 6]), cb, scb, Tensor.zeros([3]), 0), PeftError, "ERR_SHAPE", /bias must have shape \[4\]/);
    expectError(() => int8Linear(Tensor.zeros([2, 6]), cb, scb, null, -1), RangeError, "ERR_OUT_OF_RANGE", /threshold/);
    expectError(() => int8Linear(Tensor.zeros([2, 6]), cb, scb, null, NaN), RangeError, "ERR_OUT_OF_RANGE", /threshold/);
    expectError(() => int8LinearGradInput(Tensor.zeros([2, 6]), cb, scb), PeftError, "ERR_SHAPE", /int8LinearGradInput/, /dy has 6 features/);
    const x = Tensor.zeros([2, 6]);
    expectError(() => int8Linear(x, cb, scb, null, 0, { u: Tensor.zeros([3, 2]), bt: Tensor.zeros([2, 4]) }), PeftError, "ERR_SHAPE", /int8Linear: u must have shape \[2, 2\]/);
    expectError(() => int8Linear(x, cb, scb, null, 0, { u: Tensor.zeros([2, 2]), bt: Tensor.zeros([3, 4]) }), PeftError, "ERR_SHAPE", /int8Linear: bt must have shape \[2, 4\]/);
    expectError(() => int8Linear(x, cb, scb, null, 0, { u: Tensor.zeros([2, 2], { dtype: "bf16" }), bt: Tensor.zeros([2, 4]) }), PeftError, "ERR_SHAPE", /int8Linear: u must be a 2-D f32 tensor/);
    expectError(() => native.int8Linear(h(x), h(cb), h(scb), null, 0, h(Tensor.zeros([2, 2])), null), PeftError, "ERR_SHAPE", /u and bt come together/);
    // down (u written as scale·x·downᵀ): needs u and bt, f32 x, down (r, in) f32, a numeric scale.
    const u = Tensor.zeros([2, 2]), bt = Tensor.zeros([2, 4]);
    expectError(() => native.int8Linear(h(x), h(cb), h(scb), null, 0, null, null, h(Tensor.zeros([2, 6])), 1), PeftError, "ERR_SHAPE", /down .* needs u and bt/);
    expectError(() => int8Linear(Tensor.zeros([2, 6], { dtype: "bf16" }), cb, scb, null, 0, { u, bt, down: Tensor.zeros([2, 6]), scale: 1 }), PeftError, "ERR_DTYPE", /int8Linear: down needs x in f32, got bf16/);
    expectError(() => int8Linear(x, cb, scb, null, 0, { u, bt, down: Tensor.zeros([2, 5]), scale: 1 }), PeftError, "ERR_SHAPE", /int8Linear: down must have shape \[2, 6\]/);
    expectError(() => int8Linear(x, cb, scb, null, 0, { u, bt, down: Tensor.zeros([2, 6], { dtype: "bf16" }), scale: 1 }), PeftError, "ERR_SHAPE", /down must be a 2-D f32 tensor/);
    expectError(() => native.int8Linear(h(x), h(cb), h(scb), null, 0, h(u), h(bt), h(Tensor.zeros([2, 6])), "2" as unknown as number), TypeError, "ERR_INVALID_ARG_TYPE", /scale must be a number/);
  });
  it("NaN in x gives NaN in that row, not a wrong number", () => {
    const x = Tensor.fromArray([1, 2, NaN, 4, 5, 6, 1, 1, 1, 1, 1, 1], [2, 6]);
    const y = int8Linear(x, cb, scb, null, 0).toFloat64Array();
    expect(y.slice(0, 4).every(Number.isNaN)).toBe(true);
    expect(y.slice(4).every(Number.isFinite)).toBe(true);
  });
});
