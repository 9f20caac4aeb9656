// Tensor construction reads dtype, device and dims from the native handle through one reused buffer
// (native.tensorMeta): every tensor still gets its own frozen shape, look-alike and disposed handles are
// refused with named errors, and the buffer itself is checked.
import { describe, expect, it } from "vitest";
import { PeftError, Tensor } from "../lib/index.js";
import { native } from "../lib/native.js";
import { expectError } from "./helpers/numeric.js";

describe("Tensor construction", () => {
  it("each tensor gets its own frozen shape, from 0 to 16 dims, whatever was made before it", () => {
    const shapes = [[], [7], [1, 17, 33], Array.from({ length: 16 }, (_, i) => (i % 3) + 1)];
    const ts = shapes.map((s, i) => Tensor.zeros(s, { dtype: i % 2 ? "bf16" : "f32" }));
    ts.forEach((t, i) => {
      expect(t.shape).toEqual(shapes[i]);
      expect(Object.isFrozen(t.shape)).toBe(true);
      expect(t.dtype).toBe(i % 2 ? "bf16" : "f32");
      expect(t.device).toBe("cpu");
    });
    const r = ts[2].reshape([17, 33]);
    expect(ts[2].shape).toEqual([1, 17, 33]);
    expect(r.shape).toEqual([17, 33]);
    expect(() => (r.shape as number[]).push(1)).toThrow(TypeError);
    for (const t of [...ts, r]) t.dispose();
  });

  it("refuses look-alikes and disposed handles with named errors", () => {
    const lookAlike = { meta: () => new Float64Array([0, 0, 2]), dispose() {} };
    expectError(() => new Tensor(lookAlike as never), TypeError, "ERR_INVALID_ARG_TYPE", /Tensor: use Tensor.fromArray, Tensor.zeros or Tensor.randn/);
    expectError(() => new Tensor(null as never), TypeError, "ERR_INVALID_ARG_TYPE", /Tensor: use Tensor.fromArray/);
    const t = Tensor.zeros([2, 3]);
    const h = Tensor.handle(t);
    t.dispose();
    expectError(() => new Tensor(h), PeftError, "ERR_DISPOSED", /meta: tensor has been disposed/);
  });

  it("tensorMeta checks the buffer it writes into", () => {
    const t = Tensor.zeros([2, 3, 4]);
    const h = Tensor.handle(t);
    const out = new Float64Array(5);
    expect(native.tensorMeta(h, out)).toBe(3);
    expect(Array.from(out)).toEqual([0, 0, 2, 3, 4]);
    expect(native.tensorMeta({}, out)).toBe(-1);
    for (const bad of [new Float32Array(18), new Float64Array(4), [0, 0, 0, 0, 0], null])
      expectError(() => native.tensorMeta(h, bad as never), TypeError, "ERR_INVALID_ARG_TYPE", /tensorMeta: expected a Float64Array of at least 5 elements/);
    t.dispose();
  });
});
