// LSTM (torch.nn.LSTM, batch_first): forward against a float64 reference on odd sizes (uni- and
// bidirectional, stacked, an empty batch and an empty sequence), backward (every parameter's and the
// input's gradient) against central differences of that reference, PyTorch's parameter names and init
// range, dropout between layers only while training, and bad arguments.
import { describe, expect, it } from "vitest";
import { F, LSTM, Tensor, noGrad } from "../lib/index.js";
import { refLstm, type RefLstmShape } from "./helpers/lstm-reference.js";
import { expectClose, expectGradSampled } from "./helpers/numeric.js";

function params(m: LSTM): Map<string, Float64Array> {
  return new Map([...m.namedParameters()].map(([n, p]) => [n, p.toFloat64Array()]));
}

function input(B: number, T: number, F: number, seed: number): Tensor {
  return Tensor.rand([B, T, F], { seed, lo: -1, hi: 1 });
}

// Each output is a chain of T·layers f32 steps of |values| <= ~few: a few hundred f32 roundings at most
// (2^-24 each) on values of order 1; 2e-5 leaves room for the dot products' accumulation order.
const tol = (want: Float64Array) => (i: number) => 2e-5 + 2e-5 * Math.abs(want[i]);

const CASES: [string, RefLstmShape][] = [
  ["one layer, forward only", { batch: 3, seq: 7, inputSize: 5, hiddenSize: 6, numLayers: 1, bidirectional: false }],
  ["two layers, bidirectional (P-tuning's)", { batch: 2, seq: 17, inputSize: 7, hiddenSize: 5, numLayers: 2, bidirectional: true }],
  ["one step, one row", { batch: 1, seq: 1, inputSize: 1, hiddenSize: 1, numLayers: 3, bidirectional: true }],
  ["empty batch", { batch: 0, seq: 5, inputSize: 3, hiddenSize: 4, numLayers: 2, bidirectional: true }],
  ["empty sequence", { batch: 2, seq: 0, inputSize: 3, hiddenSize: 4, numLayers: 1, bidirectional: true }],
];

describe("LSTM", () => {
  it.each(CASES)("forward matches the float64 reference: %s", (_name, s) => {
    const m = new LSTM(s.inputSize, s.hiddenSize, { numLayers: s.numLayers, bidirectional: s.bidirectional, seed: 3 });
    const x = input(s.batch, s.seq, s.inputSize, 5);
    const want = refLstm(params(m), x.toFloat64Array(), s);
    const out = noGrad(() => m.forward(x));
    const dirs = s.bidirectional ? 2 : 1;
    expect(out.output.shape).toEqual([s.batch, s.seq, dirs * s.hiddenSize]);
    expect(out.hN.shape).toEqual([s.numLayers * dirs, s.batch, s.hiddenSize]);
    expectClose(out.output.toFloat64Array(), want.output, tol(want.output), "output");
    expectClose(out.hN.toFloat64Array(), want.hN, tol(want.hN), "hN");
    expectClose(out.cN.toFloat64Array(), want.cN, tol(want.cN), "cN");
    for (const t of [out.output, out.hN, out.cN, x]) t.dispose();
    m.dispose();
  });

  it("backward: every parameter's and the input's gradient match central differences of the reference", () => {
    const s: RefLstmShape = { batch: 2, seq: 5, inputSize: 3, hiddenSize: 4, numLayers: 2, bidirectional: true };
    const m = new LSTM(s.inputSize, s.hiddenSize, { numLayers: 2, bidirectional: true, seed: 9 });
    const x = input(s.batch, s.seq, s.inputSize, 11);
    x.requiresGrad = true;
    // loss = Σ output · r + Σ cN · r2 (so both paths carry gradient)
    const r = Tensor.rand([s.batch, s.seq, 2 * s.hiddenSize], { seed: 13, lo: -1, hi: 1 });
    const rv = r.toFloat64Array();
    const { output, hN, cN } = m.forward(x);
    const prod = F.sum(F.mul(output, r));
    const cs = F.sum(cN);
    const loss = F.add(prod, cs);
    loss.backward();
    const p = params(m);
    const xv = x.toFloat64Array();
    const lossAt = () => {
      const o = refLstm(p, xv, s);
      let v = 0;
      o.output.forEach((y, i) => (v += y * rv[i]));
      o.cN.forEach((c) => (v += c));
      return v;
    };
    // Central differences in float64 (h = 1e-6: truncation ~h², rounding ~1e-16/h) against f32 gradients
    // summed over ~T·layers steps: 1e-4 absolute + 1e-3 relative.
    const check = (name: string, w: Float64Array, g: Float64Array) => expectGradSampled(name, w, g, lossAt, { h: 1e-6, atol: 1e-4, rtol: 1e-3, samples: 7 });
    for (const [name, t] of m.namedParameters()) check(name, p.get(name)!, t.grad!.toFloat64Array());
    check("x", xv, x.grad!.toFloat64Array());
    for (const t of [output, hN, cN, prod, cs, loss, r, x]) t.dispose();
    m.dispose();
  });

  it("PyTorch's names, shapes and init range U(±1/√hidden); no biases with bias: false", () => {
    const m = new LSTM(6, 4, { numLayers: 2, bidirectional: true });
    const names = [...m.namedParameters()].map(([n, p]) => `${n} [${p.shape.join(", ")}]`);
    expect(names).toEqual([
      "weight_ih_l0 [16, 6]", "weight_hh_l0 [16, 4]", "bias_ih_l0 [16]", "bias_hh_l0 [16]",
      "weight_ih_l0_reverse [16, 6]", "weight_hh_l0_reverse [16, 4]", "bias_ih_l0_reverse [16]", "bias_hh_l0_reverse [16]",
      "weight_ih_l1 [16, 8]", "weight_hh_l1 [16, 4]", "bias_ih_l1 [16]", "bias_hh_l1 [16]",
      "weight_ih_l1_reverse [16, 8]", "weight_hh_l1_reverse [16, 4]", "bias_ih_l1_reverse [16]", "bias_hh_l1_reverse [16]",
    ]);
    for (const [, p] of m.namedParameters()) for (const v of p.toFloat64Array()) expect(Math.abs(v)).toBeLessThanOrEqual(0.5);
    m.dispose();
    const nb = new LSTM(3, 2, { bias: false });
    expect([...nb.namedParameters()].map(([n]) => n)).toEqual(["weight_ih_l0", "weight_hh_l0"]);
    const x = input(1, 3, 3, 2);
    const want = refLstm(params(nb), x.toFloat64Array(), { batch: 1, seq: 3, inputSize: 3, hiddenSize: 2, numLayers: 1, bidirectional: false });
    const out = noGrad(() => nb.forward(x));
    expectClose(out.output.toFloat64Array(), want.output, tol(want.output), "no bias");
    nb.dispose();
  });

  it("dropout acts between layers while training only; eval output equals the reference", () => {
    const s: RefLstmShape = { batch: 2, seq: 4, inputSize: 3, hiddenSize: 5, numLayers: 2, bidirectional: false };
    const m = new LSTM(3, 5, { numLayers: 2, dropout: 0.5, seed: 1 });
    const x = input(2, 4, 3, 4);
    const want = refLstm(params(m), x.toFloat64Array(), s);
    const evalOut = noGrad(() => m.eval().forward(x));
    expectClose(evalOut.output.toFloat64Array(), want.output, tol(want.output), "eval");
    const trainOut = noGrad(() => m.train().forward(x));
    const diff = trainOut.output.toFloat64Array().some((v, i) => Math.abs(v - want.output[i]) > 1e-3);
    expect(diff).toBe(true);
    m.dispose();
  });

  it("bad arguments are clear errors", () => {
    expect(() => new LSTM(0, 3)).toThrow(expect.objectContaining({ code: "ERR_CONFIG" }));
    expect(() => new LSTM(3, 2.5)).toThrow(TypeError);
    expect(() => new LSTM(3, 2, { dropout: 2 })).toThrow(/dropout/);
    expect(() => new LSTM(3, 2, { bidirectional: "yes" as never })).toThrow(TypeError);
    const m = new LSTM(3, 2);
    const x = Tensor.zeros([2, 4, 5]);
    expect(() => m.forward(x)).toThrow(expect.objectContaining({ code: "ERR_SHAPE", message: expect.stringMatching(/\[batch, seq, 3\]/) }));
    expect(() => m.forward(Tensor.zeros([2, 3], { dtype: "f32" }))).toThrow(expect.objectContaining({ code: "ERR_SHAPE" }));
    expect(() => m.forward(Tensor.zeros([1, 2, 3], { dtype: "i32" }))).toThrow(expect.objectContaining({ code: "ERR_DTYPE" }));
    expect(() => m.forward([1, 2] as never)).toThrow(TypeError);
    m.dispose();
  });
});
