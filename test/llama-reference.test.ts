// The float64 llama reference (test/llama-reference.ts) against torch's float64 results for the llama-tiny
// fixture: logits and loss without and with the PEFT adapter, and the rope inverse frequencies. The other
// llama tests trust the reference on configs the fixture does not cover (GQA ratios, llama3 rope scaling,
// tied heads, q/k/v bias, padding) because it reproduces this one.
import { describe, expect, it } from "vitest";
import { refInvFreq, refLlamaLogits, refShiftedLoss } from "./llama-reference.js";
import { llamaTiny, rowsOf } from "./helpers/llama-fixture.js";
import { expectClose } from "./helpers/numeric.js";

describe("float64 llama reference", () => {
  const fx = llamaTiny();
  const ids = rowsOf(fx.inputs.input_ids), mask = rowsOf(fx.inputs.attention_mask), labels = rowsOf(fx.inputs.labels);
  // The reference is float64 like torch's: it must agree far inside case.json's f32 tolerances.
  const tight = { atol: 1e-9, rtol: 1e-9 };

  it("reproduces the rope inverse frequencies", () => {
    const want = fx.expected.rope_inv_freq.toFloat64Array();
    // stored as f32: one f32 rounding
    expectClose(refInvFreq(fx.cfg), want, (i) => 2 ** -23 * Math.abs(want[i]), "inv_freq");
  });

  it("reproduces logits and loss without the adapter", () => {
    const logits = refLlamaLogits(fx.cfg, fx.weights, { ids, attentionMask: mask });
    const want = fx.expected.logits.toFloat64Array();
    // expected.safetensors stores f32: the reference differs by that rounding only
    expectClose(logits, want, (i) => 2 ** -23 * Math.abs(want[i]) + tight.atol, "logits");
    const loss = refShiftedLoss(logits, labels, fx.cfg.vocabSize);
    expect(Math.abs(loss - fx.expected.loss.toFloat64Array()[0])).toBeLessThan(2 ** -23 * loss);
  });

  it("reproduces logits and loss with the adapter", () => {
    const logits = refLlamaLogits(fx.cfg, fx.weights, { ids, attentionMask: mask, lora: fx.lora });
    const want = fx.expected.logits_with_adapter.toFloat64Array();
    expectClose(logits, want, (i) => 2 ** -23 * Math.abs(want[i]) + tight.atol, "logits_with_adapter");
    const loss = refShiftedLoss(logits, labels, fx.cfg.vocabSize);
    expect(Math.abs(loss - fx.expected.loss_with_adapter.toFloat64Array()[0])).toBeLessThan(2 ** -23 * loss);
  });

  it("reproduces greedy generation", () => {
    const prompt = rowsOf(fx.inputs.generation_prompt)[0];
    const want = Array.from(fx.expected.generated_ids.toFloat64Array());
    const seq = [...prompt];
    const V = fx.cfg.vocabSize;
    for (let s = 0; s < want.length; s++) {
      const logits = refLlamaLogits(fx.cfg, fx.weights, { ids: [seq] });
      const last = logits.subarray((seq.length - 1) * V, seq.length * V);
      seq.push(last.indexOf(Math.max(...last)));
    }
    expect(seq.slice(prompt.length)).toEqual(want);
  });
});
