// DoRA's ops have CPU kernels only: on the (emulated) cuda device a DoRA layer refuses with ERR_NOT_ON_DEVICE
// naming the layer, before any work, instead of failing inside an op.
import { describe, expect, it } from "vitest";

// Set before the addon decides what the cuda device is (at its first use).
if (process.env.NODE_PEFT_CUDA === undefined && !process.env.NODE_PEFT_CUDA_REAL) process.env.NODE_PEFT_CUDA = "emu";
const { Linear, LoraLinear, Tensor, backend } = await import("../lib/index.js");
import { errorCode } from "./helpers/errors.js";

describe("DoRA on the cuda device", () => {
  it.skipIf(!backend.cuda.available)("forward, merge and adding a DoRA adapter refuse with ERR_NOT_ON_DEVICE; plain LoRA is unaffected", () => {
    const l = new LoraLinear(new Linear(8, 4, { seed: 1 }), { r: 2, useDora: true });
    l.to("cuda");
    using x = Tensor.fromArray(new Array(24).fill(0.5), [3, 8]).to("cuda");
    expect(errorCode(() => l.forward(x))).toBe("ERR_NOT_ON_DEVICE");
    expect(() => l.forward(x)).toThrow(/DoRA runs on the cpu only/);
    expect(errorCode(() => l.merge())).toBe("ERR_NOT_ON_DEVICE");
    expect(l.merged).toBe(false);
    expect(errorCode(() => l.updateLayer({ adapterName: "two", r: 2, useDora: true }))).toBe("ERR_NOT_ON_DEVICE");
    expect(l.adapterNames).toEqual(["default"]);
    l.to("cpu");
    using xc = x.to("cpu");
    using y = l.forward(xc);
    expect(y.shape).toEqual([3, 4]);
    l.dispose();
  });
});
