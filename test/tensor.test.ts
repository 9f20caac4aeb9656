import { describe, expect, it } from "vitest";
import { PeftError, Tensor, backend, linear } from "../lib/index.js";
import { errorCode } from "./helpers/errors.js";

const code = errorCode;

describe("Tensor basics", () => {
  it("reports shape, dtype and device, and zero-fills", () => {
    const t = Tensor.zeros([2, 3], { dtype: "bf16" });
    expect(t.shape).toEqual([2, 3]);
    expect(t.dtype).toBe("bf16");
    expect(t.device).toBe("cpu");
    expect(Array.from(t.toFloat32Array())).toEqual([0, 0, 0, 0, 0, 0]);
    expect(Object.isFrozen(t.shape)).toBe(true);
  });

  it("makes 0-dim and empty tensors", () => {
    expect(Tensor.fromArray([5], []).toArray()).toEqual([5]);
    const e = Tensor.zeros([0, 4]);
    expect(e.numel).toBe(0);
    expect(e.view().length).toBe(0);
  });

  it("views typed arrays per dtype", () => {
    expect(Tensor.zeros([2], { dtype: "f32" }).view()).toBeInstanceOf(Float32Array);
    expect(Tensor.zeros([2], { dtype: "f16" }).view()).toBeInstanceOf(Uint16Array);
    expect(Tensor.zeros([2], { dtype: "bf16" }).view()).toBeInstanceOf(Uint16Array);
    expect(Tensor.zeros([2], { dtype: "i8" }).view()).toBeInstanceOf(Int8Array);
    expect(Tensor.zeros([2], { dtype: "u8" }).view()).toBeInstanceOf(Uint8Array);
    expect(Tensor.zeros([2], { dtype: "i32" }).view()).toBeInstanceOf(Int32Array);
    expect(Tensor.zeros([2], { dtype: "i64" }).view()).toBeInstanceOf(BigInt64Array);
  });

  it("copyFrom converts dtypes in place and bumps the version", () => {
    const dst = Tensor.zeros([3], { dtype: "bf16" });
    const v0 = dst.version;
    dst.copyFrom(Tensor.fromArray([1, 2, 3], [3]));
    expect(dst.toArray()).toEqual([1, 2, 3]);
    expect(dst.version).toBeGreaterThan(v0);
  });

  it("fromBytes copies raw little-endian storage", () => {
    const f = new Float32Array([1.5, -2]);
    const t = Tensor.fromBytes(new Uint8Array(f.buffer), [2], "f32");
    expect(t.toArray()).toEqual([1.5, -2]);
  });
});

describe("ownership", () => {
  it("views share storage and outlive dispose", () => {
    const t = Tensor.fromArray([1, 2, 3, 4], [2, 2]);
    const v = t.view() as Float32Array;
    v[0] = 10;
    expect(t.toArray()[0]).toBe(10);
    t.dispose();
    expect(t.disposed).toBe(true);
    expect(Array.from(v)).toEqual([10, 2, 3, 4]);
    v[1] = 20; // still valid memory
    expect(v[1]).toBe(20);
  });

  it("reshape shares storage; disposing one handle leaves the other usable", () => {
    const t = Tensor.fromArray([1, 2, 3, 4, 5, 6], [2, 3]);
    const r = t.reshape([3, 2]);
    expect(r.sharesStorage(t)).toBe(true);
    t.dispose();
    expect(r.toArray()).toEqual([1, 2, 3, 4, 5, 6]);
    (r.view() as Float32Array)[5] = 7;
    expect(r.toArray()[5]).toBe(7);
  });

  it("double dispose is a no-op; use after dispose is ERR_DISPOSED", () => {
    const t = Tensor.zeros([2]);
    t.dispose();
    t.dispose();
    expect(code(() => t.toFloat32Array())).toBe("ERR_DISPOSED");
    expect(code(() => t.view())).toBe("ERR_DISPOSED");
    expect(code(() => t.reshape([2]))).toBe("ERR_DISPOSED");
    expect(code(() => linear(t, Tensor.zeros([1, 2])))).toBe("ERR_DISPOSED");
    expect(() => t.toFloat32Array()).toThrow(/disposed/);
  });

  it("supports `using`", () => {
    let escaped: Tensor;
    {
      using t = Tensor.zeros([1]);
      escaped = t;
    }
    expect(escaped.disposed).toBe(true);
  });

  it("many undisposed tensors are reclaimed by the GC (native memory is reported)", async () => {
    const { runNode, distIndex } = await import("./helpers/child.js");
    const r = runNode(
      `import { Tensor } from ${JSON.stringify(distIndex)};
       // 40 x 128 MiB written and dropped without dispose; finalizers run between turns of the event loop.
       for (let i = 0; i < 40; i++) {
         (Tensor.zeros([32, 1024, 1024]).view()).fill(1);
         await new Promise((r) => setImmediate(r));
       }
       console.log(Math.round(process.memoryUsage().rss / 2 ** 20));`,
    );
    expect(r.stderr).toBe("");
    expect(Number(r.stdout.trim())).toBeLessThan(2048);
  });
  it("handles over one storage report its bytes to the GC once: reshapes and detached copies add none", () => {
    const mib = () => backend.memory().gcReportedBytes / 2 ** 20;
    const before = mib();
    const w = Tensor.zeros([4096, 4096]); // 64 MiB
    const one = mib() - before;
    expect(one).toBeGreaterThan(63);
    const handles = Array.from({ length: 20 }, (_, i) => (i % 2 ? w.detach() : w.reshape([4096 * 4096])));
    expect(mib() - before).toBeLessThan(one + 1);
    w.dispose();
    handles.slice(1).forEach((t) => t.dispose());
    expect(mib() - before).toBeGreaterThan(63); // one handle still holds the storage
    handles[0].dispose();
    expect(mib() - before).toBeLessThan(1);
  });
});

describe("bad inputs are JS errors", () => {
  it("rejects non-tensors with a TypeError naming the argument", () => {
    const w = Tensor.zeros([2, 2]);
    const fake = { shape: [2, 2], dtype: "f32", device: "cpu" };
    for (const bad of [fake, null, 3, new Float32Array(4), [1, 2]]) {
      expect(() => linear(bad as unknown as Tensor, w)).toThrow(TypeError);
      expect(code(() => linear(bad as unknown as Tensor, w))).toBe("ERR_INVALID_ARG_TYPE");
    }
    expect(() => linear(Tensor.zeros([1, 2]), w, fake as unknown as Tensor)).toThrow(/bias must be a Tensor/);
    expect(() => new Tensor({} as never)).toThrow(TypeError);
  });

  it("rejects bad dtypes and devices", () => {
    expect(() => Tensor.zeros([2], { dtype: "f64" as never })).toThrow(TypeError);
    expect(() => Tensor.fromArray([1], [1], "float" as never)).toThrow(/dtype must be one of/);
    expect(() => Tensor.zeros([2], { device: "tpu" as never })).toThrow(TypeError);
    expect(() => Tensor.zeros([1]).to("x" as never)).toThrow(TypeError);
  });

  it("rejects bad shapes: negative, fractional, overflowing, mismatched data", () => {
    expect(code(() => Tensor.zeros([-1]))).toBe("ERR_OUT_OF_RANGE");
    expect(() => Tensor.zeros([-1])).toThrow(RangeError);
    expect(code(() => Tensor.zeros([1.5]))).toBe("ERR_OUT_OF_RANGE");
    expect(code(() => Tensor.zeros([2 ** 40, 2 ** 40]))).toBe("ERR_OUT_OF_RANGE");
    expect(code(() => Tensor.zeros([2 ** 47, 4], { dtype: "i64" }))).toBe("ERR_OUT_OF_RANGE");
    expect(code(() => Tensor.zeros("3" as never))).toBe("ERR_INVALID_ARG_TYPE");
    expect(code(() => Tensor.zeros(["3"] as never))).toBe("ERR_INVALID_ARG_TYPE");
    expect(code(() => Tensor.fromArray([1, 2, 3], [2, 2]))).toBe("ERR_SHAPE");
    expect(code(() => Tensor.fromArray([1, "2"] as never, [2]))).toBe("ERR_INVALID_ARG_TYPE");
    expect(code(() => Tensor.fromArray([1, 2], [2]).reshape([3]))).toBe("ERR_SHAPE");
    expect(code(() => Tensor.fromBits(new Uint16Array(3), [2], "f16"))).toBe("ERR_SHAPE");
    expect(code(() => Tensor.fromBits(new Uint16Array(2), [2], "f32" as never))).toBe("ERR_INVALID_ARG_TYPE");
    expect(code(() => Tensor.zeros([2]).copyFrom(Tensor.zeros([3])))).toBe("ERR_SHAPE");
  });

  it("op errors are PeftError with a code and the shapes in the message", () => {
    try {
      linear(Tensor.zeros([4, 3]), Tensor.zeros([5, 7]));
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(PeftError);
      expect((e as PeftError).code).toBe("ERR_SHAPE");
      expect((e as Error).message).toMatch(/linear: x has 3 features \(shape \[4, 3\]\).*\[5, 7\]/);
    }
    expect(code(() => linear(Tensor.zeros([1, 2], { dtype: "i32" }), Tensor.zeros([2, 2])))).toBe("ERR_DTYPE");
    expect(code(() => linear(Tensor.zeros([1, 2]), Tensor.zeros([2, 2]), Tensor.zeros([3])))).toBe("ERR_SHAPE");
  });

  it("ops on a device with no backend are ERR_NOT_ON_DEVICE", async () => {
    const { backend } = await import("../lib/index.js");
    if (backend.cuda.available) return;
    expect(code(() => Tensor.zeros([2], { device: "cuda" }))).toBe("ERR_NOT_ON_DEVICE");
    expect(code(() => Tensor.zeros([2]).to("cuda"))).toBe("ERR_NOT_ON_DEVICE");
  });
});
