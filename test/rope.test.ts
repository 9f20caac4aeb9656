// F.rotaryEmbedding against a float64 reference of transformers' apply_rotary_pos_emb (rotate-half layout),
// forward and gradient, on odd sizes, per-batch and shared tables, f32 and bf16; gradcheck; bad inputs.
import { describe, expect, it } from "vitest";
import { F, PeftError, Tensor, gradcheck } from "../lib/index.js";
import { UNIT, expectClose, expectError, tensorOf, uniform } from "./helpers/numeric.js";

/** y = x·cos + rotateHalf(x)·sin and dx = dy·cos + rotateHalfᵀ(dy·sin); with `abs`, the magnitudes summed. */
function reference(x: Float64Array, c: Float64Array, s: Float64Array, dy: Float64Array, [B, T, H, D]: number[], Bc: number, abs = false) {
  const y = new Float64Array(x.length), dx = new Float64Array(x.length), h = D / 2;
  const m = abs ? Math.abs : (v: number) => v;
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T; t++)
      for (let hd = 0; hd < H; hd++)
        for (let i = 0; i < D; i++) {
          const at = ((b * T + t) * H + hd) * D, tab = ((Bc === 1 ? 0 : b) * T + t) * D;
          const rot = i < h ? -x[at + i + h] : x[at + i - h];
          y[at + i] = m(x[at + i] * c[tab + i]) + m(rot * s[tab + i]);
          const back = i < h ? dy[at + i + h] * s[tab + i + h] : -dy[at + i - h] * s[tab + i - h];
          dx[at + i] = m(dy[at + i] * c[tab + i]) + m(back);
        }
  return { y, dx };
}

function check(shape: number[], Bc: number, dtype: "f32" | "bf16", seed: number) {
  const [B, T, , D] = shape;
  const n = shape.reduce((a, b) => a * b, 1);
  const x = tensorOf(uniform(n, -2, 2, seed), shape, dtype), dy = tensorOf(uniform(n, -1, 1, seed + 1), shape, dtype);
  // Tables as transformers builds them: cat(freqs, freqs) of angles at the positions.
  const ang = Array.from({ length: Bc * T * D }, (_, i) => (i / D | 0) % T * 10000 ** (-((i % D) % (D / 2)) / (D / 2)) + (i / (T * D) | 0));
  const c = tensorOf(ang.map(Math.cos), [Bc, T, D], "f32"), s = tensorOf(ang.map(Math.sin), [Bc, T, D], "f32");
  x.t.requiresGrad = true;
  const y = F.rotaryEmbedding(x.t, c.t, s.t);
  expect(y.dtype).toBe(dtype);
  y.backward(dy.t);
  const ref = reference(x.v, c.v, s.v, dy.v, shape, Bc), mag = reference(x.v, c.v, s.v, dy.v, shape, Bc, true);
  // Two f32 products and one sum (≤ 3 roundings of the magnitude), then one rounding into the output dtype.
  const tol = (r: Float64Array, mg: Float64Array) => (i: number) => 3 * UNIT.f32 * mg[i] + UNIT[dtype] * Math.abs(r[i]) + 1e-30;
  const what = `${dtype} [${shape}] Bc=${Bc}`;
  expectClose(y.toFloat64Array(), ref.y, tol(ref.y, mag.y), `${what} y`);
  expectClose(x.t.grad!.toFloat64Array(), ref.dx, tol(ref.dx, mag.dx), `${what} dx`);
  void B;
  for (const t of [x.t, dy.t, c.t, s.t, y]) t.dispose();
}

describe("rotaryEmbedding", () => {
  it("matches the float64 reference on odd sizes, shared and per-batch tables, f32 and bf16", () => {
    let seed = 1;
    for (const dtype of ["f32", "bf16"] as const)
      for (const T of [1, 7, 17, 33, 127])
        for (const D of [8, 20, 64]) {
          const H = [1, 3, 8][(T + D) % 3];
          check([2, T, H, D], 1, dtype, seed++);
          check([2, T, H, D], 2, dtype, seed++);
        }
  });

  it("empty batch and empty sequence", () => {
    check([0, 5, 2, 8], 1, "f32", 3);
    check([2, 0, 2, 8], 1, "f32", 4);
  });

  it("passes gradcheck (f32)", () => {
    const x = Tensor.fromArray(uniform(2 * 3 * 2 * 6, -1, 1, 7), [2, 3, 2, 6]);
    x.requiresGrad = true;
    const c = Tensor.fromArray(uniform(3 * 6, -1, 1, 8), [1, 3, 6]), s = Tensor.fromArray(uniform(3 * 6, -1, 1, 9), [1, 3, 6]);
    expect(gradcheck((v) => F.rotaryEmbedding(v, c, s), [x])).toBe(true);
  });

  it("rejects bad inputs with errors naming the op and tensor", () => {
    const x = Tensor.zeros([1, 3, 2, 8]), c = Tensor.zeros([1, 3, 8]);
    const rope = F.rotaryEmbedding;
    expectError(() => rope(Tensor.zeros([3, 2, 8]), c, c), PeftError, "ERR_SHAPE", /rotaryEmbedding: x must have 4 dimensions/);
    expectError(() => rope(Tensor.zeros([1, 3, 2, 7]), Tensor.zeros([1, 3, 7]), Tensor.zeros([1, 3, 7])), PeftError, "ERR_SHAPE", /headDim must be even/);
    expectError(() => rope(x, Tensor.zeros([1, 4, 8]), c), PeftError, "ERR_SHAPE", /cos has shape \[1, 4, 8\], expected \[1 or 1, 3, 8\]/);
    expectError(() => rope(x, c, Tensor.zeros([1, 3, 8], { dtype: "bf16" })), PeftError, "ERR_DTYPE", /sin must be f32, got bf16/);
    expectError(() => rope(Tensor.zeros([1, 3, 2, 8], { dtype: "i32" }), c, c), PeftError, "ERR_DTYPE", /x must be f32 or bf16/);
    expect(() => rope(x, c, null as unknown as Tensor)).toThrow(TypeError);
  });
});
