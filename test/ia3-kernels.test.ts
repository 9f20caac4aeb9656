// The fused IA3 kernels (native ia3Forward / ia3Backward) against float64: both sides, both weight layouts,
// every float dtype of x and W, odd and empty sizes, scales with zeros (dl must not divide by l).
import { describe, expect, it } from "vitest";
import { PeftError, Tensor } from "../lib/index.js";
import { native } from "../lib/native.js";
import { FLOATS, UNIT, expectClose, expectError, tolIn, uniform, type FloatDType } from "./helpers/numeric.js";

const h = Tensor.handle;

function mat(rows: number, cols: number, dtype: FloatDType, seed: number) {
  const t = Tensor.fromArray(uniform(rows * cols, -1, 1, seed), [rows, cols], dtype);
  return { t, v: t.toFloat64Array() };
}
function scale(n: number, seed: number) {
  const v = uniform(n, -2, 2, seed).map((x, i) => (i % 4 === 1 ? 0 : x));
  return { t: Tensor.fromArray(v, [n]), v: Float64Array.from(Tensor.fromArray(v, [n]).toFloat64Array()) };
}

/** y = (x ⊙ lin)·Wᵀ + b, or (x·Wᵀ + b) ⊙ lout, and every gradient, with magnitudes, in float64. */
function reference(x: Float64Array, W: Float64Array, b: Float64Array, l: Float64Array, M: number, K: number, N: number, inOut: boolean, input: boolean, dy: Float64Array) {
  const w = (n: number, k: number) => (inOut ? W[k * N + n] : W[n * K + k]);
  const xs = (m: number, k: number) => x[m * K + k] * (input ? l[k] : 1);
  const y0 = new Float64Array(M * N), y = new Float64Array(M * N), ymag = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = b[n], a = Math.abs(b[n]);
      for (let k = 0; k < K; k++) (s += xs(m, k) * w(n, k)), (a += Math.abs(xs(m, k) * w(n, k)));
      y0[m * N + n] = s;
      y[m * N + n] = input ? s : s * l[n];
      ymag[m * N + n] = input ? a : a * Math.abs(l[n]);
    }
  const g = dy.map((v, i) => (input ? v : v * l[i % N])); // the gradient reaching the unscaled layer
  const dx = new Float64Array(M * K), dxMag = new Float64Array(M * K), dW = new Float64Array(N * K), dWMag = new Float64Array(N * K);
  const dl = new Float64Array(l.length), dlMag = new Float64Array(l.length), db = new Float64Array(N), dbMag = new Float64Array(N);
  for (let m = 0; m < M; m++)
    for (let k = 0; k < K; k++) {
      let s = 0, a = 0;
      for (let n = 0; n < N; n++) (s += g[m * N + n] * w(n, k)), (a += Math.abs(g[m * N + n] * w(n, k)));
      dx[m * K + k] = input ? s * l[k] : s;
      dxMag[m * K + k] = input ? a * Math.abs(l[k]) : a;
      if (input) (dl[k] += x[m * K + k] * s), (dlMag[k] += Math.abs(x[m * K + k]) * a);
    }
  for (let n = 0; n < N; n++)
    for (let k = 0; k < K; k++) {
      let s = 0, a = 0;
      for (let m = 0; m < M; m++) (s += g[m * N + n] * xs(m, k)), (a += Math.abs(g[m * N + n] * xs(m, k)));
      const i = inOut ? k * N + n : n * K + k;
      dW[i] = s;
      dWMag[i] = a;
    }
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      db[n] += g[m * N + n];
      dbMag[n] += Math.abs(g[m * N + n]);
      if (!input) (dl[n] += dy[m * N + n] * y0[m * N + n]), (dlMag[n] += Math.abs(dy[m * N + n]) * Math.abs(y0[m * N + n]) + Math.abs(dy[m * N + n] * y0[m * N + n]));
    }
  return { y, ymag, dx, dxMag, dW, dWMag, dl, dlMag, db, dbMag };
}

const SIZES: [number, number, number][] = [[1, 17, 7], [7, 1, 33], [33, 127, 17], [0, 7, 5], [17, 33, 127]];

describe("ia3Forward / ia3Backward against float64", () => {
  for (const input of [true, false])
    for (const inOut of [false, true])
      it(`${input ? "input" : "output"} side, weight ${inOut ? "(in, out)" : "(out, in)"}`, () => {
        SIZES.forEach(([M, K, N], s) => {
          for (const xdt of FLOATS) {
            const wdt = FLOATS[(s + 1) % 3];
            const x = mat(M, K, xdt, s + 1), W = inOut ? mat(K, N, wdt, s + 2) : mat(N, K, wdt, s + 2), b = mat(1, N, wdt, s + 3);
            const l = scale(input ? K : N, s + 4);
            const dy = mat(M, N, xdt, s + 5);
            const ref = reference(x.v, W.v, b.v, l.v, M, K, N, inOut, input, dy.v);
            const what = `M=${M} K=${K} N=${N} x ${xdt} W ${wdt}`;
            const out = native.ia3Forward(h(x.t), h(W.t), h(b.t.reshape([N])), inOut, h(l.t), input, !input);
            const [yh, y0h] = Array.isArray(out) ? out : [out, null];
            const y = new Tensor(yh);
            // f32 accumulation over K (+ the scaled x's rounding), then y0's rounding into x's dtype before l for training
            const steps = K + 6;
            const ylax = input ? 0 : UNIT[xdt];
            expectClose(y.toFloat64Array(), ref.y, (i) => tolIn(xdt, ref.y[i], steps * UNIT.f32 + ylax, ref.ymag[i]), `${what} y`);
            // eval form (no saved y0) is the fused epilogue: same numbers within the same bound
            const ye = new Tensor(native.ia3Forward(h(x.t), h(W.t), h(b.t.reshape([N])), inOut, h(l.t), input, false) as never);
            expectClose(ye.toFloat64Array(), ref.y, (i) => tolIn(xdt, ref.y[i], steps * UNIT.f32, ref.ymag[i]), `${what} y (eval)`);
            const dW = Tensor.zeros(W.t.shape), db = Tensor.zeros([N]), dl = Tensor.zeros([l.v.length]);
            const y0 = y0h ? new Tensor(y0h) : null;
            const dxh = native.ia3Backward(h(dy.t), h(x.t), h(W.t), null, inOut, h(l.t), input, y0 ? h(y0) : null, true, h(dW), h(db), h(dl));
            const dx = new Tensor(dxh!);
            expectClose(dx.toFloat64Array(), ref.dx, (i) => tolIn(xdt, ref.dx[i], (N + 6) * UNIT.f32, ref.dxMag[i]), `${what} dx`);
            expectClose(dW.toFloat64Array(), ref.dW, (i) => tolIn("f32", ref.dW[i], (M + 6) * UNIT.f32, ref.dWMag[i]), `${what} dW`);
            expectClose(db.toFloat64Array(), ref.db, (i) => tolIn("f32", ref.db[i], (M + 6) * UNIT.f32, ref.dbMag[i]), `${what} db`);
            // dl: over rows of x ⊙ g (input side: g rounded to f32) or dy ⊙ y0 (y0 rounded into x's dtype)
            expectClose(dl.toFloat64Array(), ref.dl, (i) => tolIn("f32", ref.dl[i], (N + 6) * UNIT.f32 + UNIT[xdt], ref.dlMag[i]), `${what} dl`);
            // without dl the input side takes the fused path: same dx
            const dx2 = new Tensor(native.ia3Backward(h(dy.t), h(x.t), h(W.t), null, inOut, h(l.t), input, null, true, null, null, null)!);
            expectClose(dx2.toFloat64Array(), ref.dx, (i) => tolIn(xdt, ref.dx[i], (N + 6) * UNIT.f32, ref.dxMag[i]), `${what} dx (fused)`);
          }
        });
      });

  it("ia3Scale: W ⊙ Π l along any axis (or ⊘ Π (l + 1e-8)), rounded once; safe finds the adapter that overflows", () => {
    for (const dt of FLOATS)
      for (const [outer, mid, inner] of [[1, 7, 5], [5, 7, 1], [3, 4, 9], [1, 1, 1], [0, 3, 2]] as const) {
        const w = Tensor.fromArray(uniform(outer * mid * inner, -2, 2, 5), [outer, mid * inner], dt);
        const w0 = w.toFloat64Array();
        for (const divide of [false, true]) {
          // unmerging a zero of l divides by 1e-8: past f16's range, so the division runs on l away from 0
          const pick = (seed: number) => (divide ? { t: Tensor.fromArray(uniform(mid, 0.5, 2, seed), [mid]), v: Tensor.fromArray(uniform(mid, 0.5, 2, seed), [mid]).toFloat64Array() } : scale(mid, seed));
          const l1 = pick(6), l2 = pick(7);
          const t = w.to(dt);
          expect(native.ia3Scale(h(t), [outer, mid, inner], [h(l1.t), h(l2.t)], divide, true, false)).toBe(-1);
          const got = t.toFloat64Array();
          for (let i = 0; i < got.length; i++) {
            const j = Math.floor(i / inner) % mid;
            const f = divide ? 1 / ((l1.v[j] + 1e-8) * (l2.v[j] + 1e-8)) : l1.v[j] * l2.v[j];
            const want = w0[i] * f;
            if (!Number.isFinite(want)) continue;
            // the factor rounded to f32, the product rounded into W's dtype
            expect(Math.abs(got[i] - want)).toBeLessThanOrEqual(tolIn(dt, want, 2 * UNIT.f32));
          }
        }
      }
    // f16: 60000 · 2 overflows in the weight's dtype: safe leaves W alone and names the adapter that did it
    const w = Tensor.fromArray([60000, 1], [1, 2], "f16");
    const ok = Tensor.fromArray([1, 1], [2]), big = Tensor.fromArray([2, 1], [2]);
    expect(native.ia3Scale(h(w), [1, 2, 1], [h(ok), h(big)], false, true, false)).toBe(1);
    expect([...w.toFloat64Array()]).toEqual([60000, 1]);
    expect(native.ia3Scale(h(w), [1, 2, 1], [h(ok)], false, true, true)).toBe(-1);
    expectError(() => native.ia3Scale(h(w), [1, 2, 2], [h(ok)], false, false, false), PeftError, "ERR_SHAPE", /view/);
    expectError(() => native.ia3Scale(h(w), [1, 2, 1], [h(Tensor.zeros([3]))], false, false, false), PeftError, "ERR_SHAPE", /scales\[0\]/);
  });

  it("bad inputs are coded errors naming the op", () => {
    const x = Tensor.zeros([2, 3]), W = Tensor.zeros([4, 3]);
    expectError(() => native.ia3Forward(h(x), h(W), null, false, h(Tensor.zeros([4])), true, false), PeftError, "ERR_SHAPE", /ia3Forward/, /\[3\]/);
    expectError(() => native.ia3Forward(h(x), h(W), null, false, h(Tensor.zeros([3], { dtype: "bf16" })), true, false), PeftError, "ERR_DTYPE", /f32/);
    expectError(() => native.ia3Backward(h(Tensor.zeros([2, 4])), h(x), h(W), null, false, h(Tensor.zeros([4])), false, null, true, null, null, h(Tensor.zeros([4]))), TypeError, "ERR_INVALID_ARG_TYPE", /y0/);
    expectError(() => native.ia3Backward(h(Tensor.zeros([2, 5])), h(x), h(W), null, false, h(Tensor.zeros([3])), true, null, true, null, null, null), PeftError, "ERR_SHAPE", /dy/);
  });
});
