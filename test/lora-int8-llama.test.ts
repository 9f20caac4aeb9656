// prepareModelForKbitTraining (PEFT's prepare_model_for_kbit_training) and LoRA training on a tiny int8
// Llama loaded with quantize: "int8": the base frozen, non-int8 floating parameters widened to f32,
// gradient checkpointing on, every projection int8 and wrapped by LoraLinear8bitLt, and the loss falls.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { Linear, Linear8bitLt, LlamaForCausalLM, LoraConfig, LoraLinear8bitLt, PeftError, Tensor, getPeftModel, getPeftModelStateDict, noGrad, PeftModel, prepareModelForKbitTraining } from "../lib/index.js";
import { tinyLlama, trainCausalLm, writeLlama } from "./helpers/llama-models.js";
import { expectError } from "./helpers/numeric.js";

const dir = mkdtempSync(join(tmpdir(), "lora-int8-llama-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const V = 40;
const CONFIG = { vocabSize: V, hiddenSize: 32, intermediateSize: 64, numHiddenLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2 };
writeLlama(tinyLlama(CONFIG, 3, "bf16"), join(dir, "bf16"));

describe("prepareModelForKbitTraining", () => {
  it("freezes every parameter, widens bf16 norms/embeddings/head to f32, keeps int8 CB/SCB, enables checkpointing", async () => {
    const model = await LlamaForCausalLM.fromPretrained(join(dir, "bf16"), { quantize: "int8", dtype: "bf16" });
    const before = new Map([...model.namedParameters()].map(([n, p]) => [n, p.dtype]));
    expect(before.get("model.norm.weight")).toBe("bf16");
    expect(before.get("model.layers.0.self_attn.q_proj.weight")).toBe("i8");
    expect(before.get("lm_head.weight")).toBe("bf16");
    const back = prepareModelForKbitTraining(model);
    expect(back).toBe(model);
    for (const [n, p] of model.namedParameters()) {
      expect(p.requiresGrad, n).toBe(false);
      // bf16 -> f32; int8 CB, f32 SCB and the u8 weight_format tag as they were
      expect(p.dtype, n).toBe(before.get(n) === "bf16" ? "f32" : before.get(n));
    }
    const q = [...model.namedModules()].find(([n]) => n === "model.layers.0.self_attn.q_proj")![1];
    expect(q).toBeInstanceOf(Linear8bitLt);
    expect((q as Linear8bitLt).SCB.dtype).toBe("f32");
    expect(model.isGradientCheckpointing).toBe(true);
    model.dispose();
  });

  it("useGradientCheckpointing: false leaves checkpointing off; works on a plain Module too", async () => {
    const model = await LlamaForCausalLM.fromPretrained(join(dir, "bf16"), { quantize: "int8", dtype: "bf16" });
    prepareModelForKbitTraining(model, { useGradientCheckpointing: false, gradientCheckpointingKwargs: {} });
    expect(model.isGradientCheckpointing).toBe(false);
    model.dispose();
    const lin = new Linear(3, 2, { dtype: "bf16" });
    prepareModelForKbitTraining(lin);
    expect(lin.weight.dtype).toBe("f32");
    expect(lin.weight.requiresGrad).toBe(false);
  });

  it("bad input: not a Module, unknown options, PEFT's options that cannot apply", () => {
    const lin = new Linear(3, 2);
    expectError(() => prepareModelForKbitTraining({} as never), TypeError, "ERR_INVALID_ARG_TYPE", /model must be a Module/);
    expectError(() => prepareModelForKbitTraining(lin, { useGradientCheckpointing: 1 as never }), TypeError, "ERR_INVALID_ARG_TYPE", /useGradientCheckpointing/);
    expectError(() => prepareModelForKbitTraining(lin, { gradientCheckpointingKwargs: { use_reentrant: false } }), PeftError, "ERR_UNSUPPORTED", /gradientCheckpointingKwargs \(use_reentrant\)/);
    expectError(() => prepareModelForKbitTraining(lin, { useReentrant: true } as never), PeftError, "ERR_CONFIG", /unknown option "useReentrant"/);
  });
});

describe("LoRA on a tiny int8 Llama", () => {
  it("every projection is int8 under LoraLinear8bitLt; only adapters train; the loss falls", async () => {
    const model = prepareModelForKbitTraining(await LlamaForCausalLM.fromPretrained(join(dir, "bf16"), { quantize: "int8", dtype: "bf16" }));
    const targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    const peft = getPeftModel(model, new LoraConfig({ r: 8, loraAlpha: 16, targetModules: targets }));
    const layers = [...peft.baseModel.loraLayers()];
    expect(layers.length).toBe(14);
    expect(layers.every((l) => l instanceof LoraLinear8bitLt)).toBe(true);
    const params = [...peft.parameters()].filter((p) => p.requiresGrad);
    expect(params.length).toBe(28);
    expect(params.every((p) => p.dtype === "f32")).toBe(true);
    const ids = Tensor.fromArray([1, 5, 12, 7, 30, 22, 9, 14, 3, 2, 4, 6, 25, 33, 8, 11, 17, 5, 36, 2], [2, 10], "i64");
    const { first, last } = trainCausalLm(peft, ids, 40);
    expect(last).toBeLessThan(0.7 * first);

    // The adapter in PEFT's files loads onto a fresh int8 base (identical logits) and onto the f32 base
    // (same keys; logits apart by the base's int8 quantisation only)
    const out = join(dir, "adapter");
    await peft.savePretrained(out);
    peft.eval();
    const want = noGrad(() => peft.forward(ids).logits.toFloat64Array());
    const on8 = await PeftModel.fromPretrained(prepareModelForKbitTraining(await LlamaForCausalLM.fromPretrained(join(dir, "bf16"), { quantize: "int8", dtype: "bf16" })), out);
    expect(Array.from(noGrad(() => on8.eval().forward(ids).logits.toFloat64Array()))).toEqual(Array.from(want));
    const on32 = await PeftModel.fromPretrained(await LlamaForCausalLM.fromPretrained(join(dir, "bf16")), out);
    expect(Object.keys(getPeftModelStateDict(on32)).sort()).toEqual(Object.keys(getPeftModelStateDict(peft)).sort());
    const got = noGrad(() => on32.eval().forward(ids).logits.toFloat64Array());
    const amax = Math.max(...want.map(Math.abs));
    // int8 rows (x and W at 1/254 of their absmax each) through two layers: a few percent of the logits' range
    let worst = 0;
    for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
    expect(worst).toBeLessThan(0.05 * amax);
    for (const m of [on8, on32]) m.dispose();
    peft.dispose();
  });
});
