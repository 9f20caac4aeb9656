// F.rmsNorm (one fused node) against a float64 reference, forward and the x/weight gradients, on odd sizes,
// f32 and bf16 inputs and weights, with and without a weight; gradcheck; bad inputs.
import { describe, expect, it } from "vitest";
import { F, PeftError, Tensor, gradcheck } from "../lib/index.js";
import { UNIT, expectClose, expectError, tensorOf, uniform } from "./helpers/numeric.js";

/** y, dx, dw in float64; with `abs` every difference becomes a sum (the magnitudes the roundings act on). */
function reference(x: Float64Array, w: Float64Array | null, dy: Float64Array, M: number, N: number, eps: number, abs = false) {
  const y = new Float64Array(M * N), dx = new Float64Array(M * N), dw = new Float64Array(N);
  for (let r = 0; r < M; r++) {
    let ss = 0;
    for (let i = 0; i < N; i++) ss += x[r * N + i] ** 2;
    const s = 1 / Math.sqrt(ss / N + eps);
    let c = 0;
    for (let i = 0; i < N; i++) {
      const xh = x[r * N + i] * s, wi = w ? w[i] : 1, g = dy[r * N + i];
      y[r * N + i] = Math.abs(xh * wi) * (abs ? 1 : Math.sign(xh * wi));
      dw[i] += abs ? Math.abs(g * xh) : g * xh;
      c += abs ? Math.abs(g * wi * xh) : g * wi * xh;
    }
    for (let i = 0; i < N; i++) {
      const xh = x[r * N + i] * s, gw = dy[r * N + i] * (w ? w[i] : 1);
      dx[r * N + i] = abs ? s * (Math.abs(gw) + Math.abs(xh) * c / N) : s * (gw - xh * c / N);
    }
  }
  return { y, dx, dw };
}

function check(M: number, N: number, dtype: "f32" | "bf16", wdtype: "f32" | "bf16" | null, seed: number) {
  const x = tensorOf(uniform(M * N, -3, 3, seed), [M, N], dtype), dy = tensorOf(uniform(M * N, -1, 1, seed + 1), [M, N], dtype);
  const w = wdtype ? tensorOf(uniform(N, 0.5, 1.5, seed + 2), [N], wdtype) : null;
  const eps = 1e-5;
  x.t.requiresGrad = true;
  if (w) w.t.requiresGrad = true;
  const y = F.rmsNorm(x.t, w?.t ?? null, eps);
  expect(y.dtype).toBe(dtype);
  y.backward(dy.t);
  const ref = reference(x.v, w?.v ?? null, dy.v, M, N, eps), mag = reference(x.v, w?.v ?? null, dy.v, M, N, eps, true);
  // f32 arithmetic on f64 sums: rstd carries ~2 roundings, each product and difference one more (≤ 8 of the
  // magnitude), then one rounding into the result's dtype.
  const tol = (r: Float64Array, mg: Float64Array, dt: "f32" | "bf16") => (i: number) => 8 * UNIT.f32 * mg[i] + UNIT[dt] * Math.abs(r[i]) + 1e-30;
  const what = `${dtype}/${wdtype} ${M}x${N}`;
  expectClose(y.toFloat64Array(), ref.y, tol(ref.y, mag.y, dtype), `${what} y`);
  expectClose(x.t.grad!.toFloat64Array(), ref.dx, tol(ref.dx, mag.dx, dtype), `${what} dx`);
  if (w) {
    expect(w.t.grad!.dtype).toBe(wdtype);
    expectClose(w.t.grad!.toFloat64Array(), ref.dw, tol(ref.dw, mag.dw, wdtype!), `${what} dw`);
  }
  for (const t of [x.t, dy.t, w?.t, y]) t?.dispose();
}

describe("rmsNorm", () => {
  it("matches the float64 reference on odd sizes, f32 and bf16, with and without a weight", () => {
    let seed = 1;
    for (const M of [0, 1, 7, 17, 33, 127])
      for (const N of [1, 7, 20, 64, 127])
        for (const [dt, wdt] of [["f32", "f32"], ["bf16", "bf16"], ["bf16", "f32"], ["f32", null]] as const) check(M, N, dt, wdt, seed++);
  });

  it("passes gradcheck (f32) and agrees with the composed definition on a 3-D input", () => {
    const x = Tensor.fromArray(uniform(3 * 5 * 4, -2, 2, 21), [3, 5, 4]), w = Tensor.fromArray(uniform(4, 0.5, 1.5, 22), [4]);
    x.requiresGrad = true;
    w.requiresGrad = true;
    expect(gradcheck((v, p) => F.rmsNorm(v, p), [x, w])).toBe(true);
    const composed = F.mul(F.mul(x, F.rsqrt(F.add(F.mean(F.mul(x, x), { dim: -1, keepdim: true }), 1e-6))), w);
    expectClose(F.rmsNorm(x, w).toFloat64Array(), composed.toFloat64Array(), () => 1e-6, "composed");
  });

  it("rejects bad inputs with errors naming the op and tensor", () => {
    expectError(() => F.rmsNorm(Tensor.zeros([2, 4]), Tensor.zeros([3])), PeftError, "ERR_SHAPE", /rmsNorm: weight must be \[4\]/);
    expectError(() => F.rmsNorm(Tensor.zeros([2, 4], { dtype: "i32" }), null), PeftError, "ERR_DTYPE", /rmsNorm: x must be f32, f16 or bf16/);
    expectError(() => F.rmsNorm(Tensor.zeros([]), null), PeftError, "ERR_SHAPE", /rmsNorm: x must have 1 to 16 dimensions/);
    expect(() => F.rmsNorm(Tensor.zeros([2, 4]), null, "1e-6" as unknown as number)).toThrow(/eps must be a number/);
  });
});
