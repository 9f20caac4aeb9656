// The llama-tiny fixture (transformers' LlamaForCausalLM with a PEFT LoRA adapter, torch float64 results)
// reproduced by LlamaForCausalLM.fromPretrained + PeftModel.fromPretrained: logits and loss with and without
// the adapter, every LoRA gradient, and greedy generation by repeated full forwards. Tolerances are
// case.json's (f32 arithmetic against float64 results).
import { describe, expect, it } from "vitest";
import { LlamaForCausalLM, PeftModel, noGrad } from "../lib/index.js";
import { LLAMA_TINY_ADAPTER, LLAMA_TINY_MODEL, caseTol, greedy, llamaTiny } from "./helpers/llama-fixture.js";
import { expectClose } from "./helpers/numeric.js";

const fx = llamaTiny();
const tol = fx.caseJson.tolerance;

describe("llama-tiny fixture", () => {
  const { input_ids: ids, attention_mask: mask, labels } = fx.inputs;

  it("loads the model and reproduces logits and loss", async () => {
    const model = await LlamaForCausalLM.fromPretrained(LLAMA_TINY_MODEL);
    expect(model.modelType).toBe("llama");
    expect(model.dtype).toBe("f32");
    const names = [...model.namedParameters()].map(([n]) => n);
    expect(names).toContain("model.layers.1.self_attn.q_proj.weight");
    expect(names).toContain("model.layers.0.mlp.gate_proj.weight");
    expect(names).toContain("model.layers.0.post_attention_layernorm.weight");
    expect(names).toContain("lm_head.weight");
    const out = noGrad(() => model.eval().forward(ids, { attentionMask: mask, labels }));
    const want = fx.expected.logits.toFloat64Array();
    expectClose(out.logits.toFloat64Array(), want, caseTol(want, tol.logits), "logits");
    const loss = fx.expected.loss.toFloat64Array();
    expectClose(out.loss!.toFloat64Array(), loss, caseTol(loss, tol.loss), "loss");
    model.dispose();
  });

  it("with the PEFT adapter: logits, loss and every LoRA gradient", async () => {
    const model = await LlamaForCausalLM.fromPretrained(LLAMA_TINY_MODEL);
    const peft = await PeftModel.fromPretrained(model, LLAMA_TINY_ADAPTER, { isTrainable: true });
    const { logits, loss } = peft.forward(ids, { attentionMask: mask, labels });
    const want = fx.expected.logits_with_adapter.toFloat64Array();
    expectClose(logits.toFloat64Array(), want, caseTol(want, tol.logits), "logits_with_adapter");
    const wantLoss = fx.expected.loss_with_adapter.toFloat64Array();
    expectClose(loss.toFloat64Array(), wantLoss, caseTol(wantLoss, tol.loss), "loss_with_adapter");
    loss.backward();
    const gradKeys = Object.keys(fx.expected).filter((k) => k.startsWith("grad."));
    expect(gradKeys.length).toBe(8);
    const params = new Map(peft.namedParameters());
    for (const key of gradKeys) {
      // file key base_model.model.<path>.lora_A.weight = in-memory <path>.lora_A.default.weight
      const name = key.slice(5).replace(/\.(lora_[AB])\.weight$/, ".$1.default.weight");
      const p = params.get(name);
      expect(p, name).toBeDefined();
      const g = fx.expected[key].toFloat64Array();
      expectClose(p!.grad!.toFloat64Array(), g, caseTol(g, tol.lora_grads), key);
    }
    // only the adapter trains
    for (const [n, p] of params) expect(p.requiresGrad, n).toBe(n.includes("lora_"));
    logits.dispose();
    loss.dispose();
    peft.dispose();
  });

  it("bf16 mode: bf16 base, f32 adapter, loss close to the float64 one", async () => {
    const model = await LlamaForCausalLM.fromPretrained(LLAMA_TINY_MODEL, { dtype: "bf16" });
    const peft = await PeftModel.fromPretrained(model, LLAMA_TINY_ADAPTER, { isTrainable: true });
    const lora = [...peft.namedParameters()].filter(([n]) => n.includes("lora_"));
    expect(lora.every(([, p]) => p.dtype === "f32")).toBe(true);
    const { logits, loss } = peft.forward(ids, { attentionMask: mask, labels });
    expect(logits.dtype).toBe("bf16");
    expect(loss.dtype).toBe("f32");
    // bf16 weights and activations (8-bit mantissas) through two layers: the loss within 1% (measured 0.06%)
    const want = fx.expected.loss_with_adapter.toFloat64Array()[0];
    expect(Math.abs(loss.toFloat64Array()[0] - want)).toBeLessThan(0.01 * want);
    loss.backward();
    // adapter gradients in f32, pointing the same way as float64's (cosine > 0.999; measured >= 0.9998)
    for (const [n, p] of lora) {
      const key = "grad." + n.replace(".default.weight", ".weight");
      const g = p.grad!.toFloat64Array(), w = fx.expected[key].toFloat64Array();
      expect(p.grad!.dtype).toBe("f32");
      let dot = 0, gg = 0, ww = 0;
      for (let i = 0; i < g.length; i++) (dot += g[i] * w[i]), (gg += g[i] ** 2), (ww += w[i] ** 2);
      expect(dot / Math.sqrt(gg * ww), n).toBeGreaterThan(0.999);
    }
    peft.dispose();
  });

  it("greedy generation reproduces generated_ids", async () => {
    const model = (await LlamaForCausalLM.fromPretrained(LLAMA_TINY_MODEL)).eval();
    const prompt = Array.from(fx.inputs.generation_prompt.toFloat64Array());
    const want = Array.from(fx.expected.generated_ids.toFloat64Array());
    expect(greedy(model, prompt, want.length)).toEqual(want);
    model.dispose();
  });
});
