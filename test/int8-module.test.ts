// Linear8bitLt: construction (fresh, fromLinear, from bitsandbytes' state dict), forward as the int8 op, one
// autograd node with a dx-only backward (adapters train on top of the frozen int8 weight), state-dict round
// trips in bitsandbytes' layout (weight i8, bias, SCB f32, weight_format u8 0 = "row"), and bad input.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { F, Linear, Linear8bitLt, PeftError, Tensor, loadSafetensorsSync, saveSafetensorsSync } from "../lib/index.js";
import { int8Linear, int8LinearGradInput, int8Quantize } from "../lib/ops.js";
import { UNIT, expectClose, expectError, uniform } from "./helpers/numeric.js";

const dir = mkdtempSync(join(tmpdir(), "int8-module-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const x = (M: number, K: number, seed: number, dtype: "f32" | "bf16" = "f32") => Tensor.fromArray(uniform(M * K, -2, 2, seed), [M, K], dtype);
const same = (a: Tensor, b: Tensor) => expect(Array.from(a.toFloat64Array())).toEqual(Array.from(b.toFloat64Array()));

describe("Linear8bitLt", () => {
  it("fromLinear quantises the weight as int8Quantize and runs the int8 op (threshold kept)", () => {
    const lin = new Linear(33, 17, { seed: 1 });
    const q = Linear8bitLt.fromLinear(lin, { threshold: 6 });
    const [cb, scb] = int8Quantize(lin.weight);
    expect(q.weight.dtype).toBe("i8");
    expect(q.weight.shape).toEqual([17, 33]);
    expect(q.SCB.dtype).toBe("f32");
    expect(q.weight.requiresGrad).toBe(false);
    same(q.weight, cb);
    same(q.SCB, scb);
    expect(q.inFeatures).toBe(33);
    expect(q.outFeatures).toBe(17);
    expect(q.toString()).toContain("Linear8bitLt(in_features=33, out_features=17, bias=True, threshold=6)");
    const xs = x(7, 33, 2);
    xs.view()[5] = 9; // an outlier column
    same(q.forward(xs), int8Linear(xs, cb, scb, lin.bias, 6));
    // No f32 copy of the weight is kept: only CB, bias, SCB and the format tag.
    expect(Object.keys(q.stateDict())).toEqual(["weight", "bias", "SCB", "weight_format"]);
    lin.dispose();
    // The bias is shared with the Linear, so the layer still works after the Linear is gone.
    expect(q.forward(xs).shape).toEqual([7, 17]);
  });

  it("a fresh layer is a quantised torch-initialised Linear; bf16 x gives bf16 y; empty batches", () => {
    const q = new Linear8bitLt(7, 5, { seed: 3, bias: false });
    expect(q.bias).toBeNull();
    expect(q.threshold).toBe(0);
    const y = q.forward(x(4, 7, 4, "bf16"));
    expect(y.dtype).toBe("bf16");
    expect(q.forward(Tensor.zeros([0, 7])).shape).toEqual([0, 5]);
    expect(q.forward(Tensor.zeros([2, 0, 7])).shape).toEqual([2, 0, 5]);
  });

  it("is one graph node whose backward gives dx (and the bias gradient), not the int8 weight's", () => {
    const q = Linear8bitLt.fromLinear(new Linear(17, 9, { seed: 5 }));
    const xs = x(6, 17, 6);
    xs.requiresGrad = true;
    const y = q.forward(xs);
    expect(y.gradFn?.name).toBe("Linear8bitLtBackward");
    const dy = x(6, 9, 7);
    y.backward(dy);
    same(xs.grad!, int8LinearGradInput(dy, q.weight, q.SCB));
    const db = new Float64Array(9);
    const dyv = dy.toFloat64Array();
    for (let i = 0; i < dyv.length; i++) db[i % 9] += dyv[i];
    expectClose(q.bias!.grad!.toFloat64Array(), db, (i) => 8 * UNIT.f32 * Math.abs(db[i]) + 1e-6, "db");
    expect(q.weight.grad).toBeNull();
  });

  it("trains an adapter on top: gradients reach A and B through the frozen int8 base", () => {
    const q = Linear8bitLt.fromLinear(new Linear(12, 8, { seed: 8 }));
    for (const p of q.parameters()) p.requiresGrad = false;
    const A = Tensor.fromArray(uniform(4 * 12, -0.5, 0.5, 9), [4, 12]);
    const B = Tensor.fromArray(uniform(8 * 4, -0.5, 0.5, 10), [8, 4]);
    A.requiresGrad = B.requiresGrad = true;
    const xs = x(5, 12, 11);
    const y = F.add(q.forward(xs), F.linear(F.linear(xs, A), B));
    F.sum(y).backward();
    expect(A.grad!.shape).toEqual([4, 12]);
    expect(B.grad!.shape).toEqual([8, 4]);
    expect(A.grad!.toFloat64Array().some((v) => v !== 0)).toBe(true);
  });

  it("tape-free forward/backward (training mode) as the other layers", () => {
    const q = Linear8bitLt.fromLinear(new Linear(10, 6, { seed: 12 })).train();
    const xs = x(3, 10, 13), dy = x(3, 6, 14);
    q.forward(xs);
    same(q.backward(dy)!, int8LinearGradInput(dy, q.weight, q.SCB));
    expectError(() => q.backward(dy), PeftError, "ERR_STATE", /nothing saved/);
  });

  it("refuses a gradient for the int8 weight, hasFp16Weights, bad thresholds", () => {
    const q = new Linear8bitLt(4, 3, { seed: 1 });
    q.weight.requiresGrad = true;
    expectError(() => q.forward(x(2, 4, 1)), PeftError, "ERR_UNSUPPORTED", /Linear8bitLt/, /int8 weight has no gradient/);
    expectError(() => new Linear8bitLt(4, 3, { hasFp16Weights: true }), PeftError, "ERR_UNSUPPORTED", /hasFp16Weights/);
    expectError(() => new Linear8bitLt(4, 3, { threshold: -1 }), RangeError, "ERR_OUT_OF_RANGE", /threshold/);
    expectError(() => Linear8bitLt.fromLinear(new Linear(4, 3), { threshold: Infinity }), RangeError, "ERR_OUT_OF_RANGE", /threshold/);
    expectError(() => Linear8bitLt.fromLinear({} as Linear), TypeError, "ERR_INVALID_ARG_TYPE", /expected a Linear/);
    const nan = new Linear(4, 3, { seed: 2 });
    nan.weight.view()[6] = NaN;
    expectError(() => Linear8bitLt.fromLinear(nan), RangeError, "ERR_OUT_OF_RANGE", /row 1\b/);
  });

  it("to(dtype) converts the bias but keeps CB i8 and SCB f32", () => {
    const q = new Linear8bitLt(6, 4, { seed: 4 }).to("bf16");
    expect(q.weight.dtype).toBe("i8");
    expect(q.SCB.dtype).toBe("f32");
    expect(q.bias!.dtype).toBe("bf16");
    expect(q.forward(x(2, 6, 1, "bf16")).dtype).toBe("bf16");
  });
});

describe("Linear8bitLt state dicts in bitsandbytes' layout", () => {
  it("stateDict writes weight i8, bias, SCB f32, weight_format u8 0; a safetensors round trip restores the layer", () => {
    const q = Linear8bitLt.fromLinear(new Linear(19, 11, { seed: 21 }), { threshold: 6 });
    const sd = q.stateDict();
    expect(Object.fromEntries(Object.entries(sd).map(([k, t]) => [k, [t.dtype, t.shape]]))).toEqual({
      weight: ["i8", [11, 19]],
      bias: ["f32", [11]],
      SCB: ["f32", [11]],
      weight_format: ["u8", []],
    });
    expect(sd.weight_format.toArray()).toEqual([0]);
    const file = join(dir, "int8.safetensors");
    saveSafetensorsSync(file, sd);
    const back = loadSafetensorsSync(file);
    const r = Linear8bitLt.fromStateDict(back, { threshold: 6 });
    const xs = x(5, 19, 22);
    same(r.forward(xs), q.forward(xs));
    // loadStateDict into another layer, with and without weight_format (older files have none).
    const other = Linear8bitLt.empty(19, 11, { threshold: 6 });
    other.loadStateDict(back);
    same(other.forward(xs), q.forward(xs));
    const noFormat = Linear8bitLt.empty(19, 11, { threshold: 6 });
    const { weight_format: _, ...rest } = back;
    noFormat.loadStateDict(rest);
    same(noFormat.forward(xs), q.forward(xs));
  });

  it("refuses a state dict missing SCB, a column-major weight_format, a float weight, mismatched SCB", () => {
    const q = new Linear8bitLt(5, 3, { seed: 1 });
    const sd = q.stateDict();
    expectError(() => Linear8bitLt.fromStateDict({ weight: sd.weight, bias: sd.bias }), PeftError, "ERR_CHECKPOINT", /no "SCB"/);
    expectError(() => Linear8bitLt.empty(5, 3).loadStateDict({ weight: sd.weight, bias: sd.bias }), PeftError, "ERR_CHECKPOINT", /no "SCB"/);
    const col32 = Tensor.fromArray([1], [], "u8");
    expectError(() => Linear8bitLt.fromStateDict({ ...sd, weight_format: col32 }), PeftError, "ERR_UNSUPPORTED", /weight_format 1 \(col32\)/);
    expectError(() => Linear8bitLt.empty(5, 3).loadStateDict({ ...sd, weight_format: col32 }), PeftError, "ERR_UNSUPPORTED", /col32/);
    expectError(() => Linear8bitLt.fromStateDict({ ...sd, weight: Tensor.zeros([3, 5]) }), PeftError, "ERR_DTYPE", /weight must be i8/);
    expectError(() => Linear8bitLt.fromStateDict({ ...sd, SCB: Tensor.zeros([4]) }), PeftError, "ERR_SHAPE", /SCB must have shape \[3\]/);
    expectError(() => Linear8bitLt.fromStateDict({ ...sd, SCB: Tensor.zeros([3], { dtype: "f16" }) }), PeftError, "ERR_DTYPE", /SCB must be f32/);
  });

  it("clone copies CB, SCB and bias", () => {
    const q = new Linear8bitLt(8, 4, { seed: 2, threshold: 3 });
    const c = q.clone();
    expect(c.threshold).toBe(3);
    expect(c.weight.sharesStorage(q.weight)).toBe(false);
    const xs = x(2, 8, 3);
    same(c.forward(xs), q.forward(xs));
  });
});
