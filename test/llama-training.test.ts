// LlamaForCausalLM with PEFT: a tiny random model written in transformers' format (single file and
// shards), loaded, wrapped by getPeftModel with PEFT's default llama targets, LoRA-trained with AdamW until
// it memorises a few sentences (loss bound, greedy continuations), its adapter saved in PEFT's format and
// reloaded onto a fresh load of the base with identical outputs.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { Linear, LlamaForCausalLM, LoraConfig, PeftModel, Tensor, getPeftModel, loadSafetensorsSync, noGrad } from "../lib/index.js";
import { sharpenHead, tinyLlama, trainCausalLm, writeLlama } from "./helpers/llama-models.js";
import { greedy } from "./helpers/llama-fixture.js";

const dir = mkdtempSync(join(tmpdir(), "llama-train-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const V = 40;
const base = tinyLlama({ vocabSize: V, hiddenSize: 32, intermediateSize: 64, numHiddenLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2 }, 3);
sharpenHead(base);
writeLlama(base, join(dir, "base"));
writeLlama(base, join(dir, "sharded"), { shards: 3 });

// Three "sentences" of 10 tokens, all ending in the same token, some tokens shared between them.
const SENTENCES = [
  [1, 5, 12, 7, 30, 22, 9, 14, 3, 2],
  [4, 6, 25, 33, 8, 11, 17, 5, 36, 2],
  [3, 7, 19, 28, 13, 21, 38, 10, 26, 2],
];

describe("LlamaForCausalLM + LoRA", () => {
  it("loads the same weights from one file and from shards", async () => {
    const a = await LlamaForCausalLM.fromPretrained(join(dir, "base"));
    const b = await LlamaForCausalLM.fromPretrained(join(dir, "sharded"));
    const pb = new Map(b.namedParameters());
    for (const [n, p] of a.namedParameters()) expect(Array.from(pb.get(n)!.toFloat32Array()), n).toEqual(Array.from(p.toFloat32Array()));
    a.dispose();
    b.dispose();
  });

  it("reports progress, offers each loaded module to a quantize hook, and stops on abort", async () => {
    const seen: string[] = [];
    let progress = 0;
    const m = await LlamaForCausalLM.fromPretrained(join(dir, "base"), {
      onProgress: (p) => (progress = p.loadedTensors / p.totalTensors),
      quantize: (mod, path) => void (mod instanceof Linear && seen.push(path)),
    });
    expect(progress).toBe(1);
    // 7 projections per layer and the head
    expect(seen.length).toBe(2 * 7 + 1);
    expect(seen).toContain("model.layers.1.mlp.down_proj");
    m.dispose();
    const ac = new AbortController();
    ac.abort();
    await expect(LlamaForCausalLM.fromPretrained(join(dir, "base"), { signal: ac.signal })).rejects.toMatchObject({ name: "AbortError" });
  });

  it("memorises sentences with LoRA on every projection, and the adapter round-trips in PEFT's format", async () => {
    const model = await LlamaForCausalLM.fromPretrained(join(dir, "base"));
    const peft = getPeftModel(model, new LoraConfig({ r: 8, loraAlpha: 16, targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] }));
    expect(peft.targetedModuleNames.length).toBe(14);
    const params = [...peft.parameters()].filter((p) => p.requiresGrad);
    expect(params.every((p) => p.dtype === "f32")).toBe(true);
    const ids = Tensor.fromArray(SENTENCES.flat(), [3, 10], "i64");
    const { first, last } = trainCausalLm(peft, ids, 120);
    // from above ln(40) = 3.7 to memorised: every next token nearly certain
    expect(first).toBeGreaterThan(2.5);
    expect(last).toBeLessThan(0.05);
    peft.eval();
    for (const s of SENTENCES) expect(greedy(peft, s.slice(0, 2), 8)).toEqual(s.slice(2));

    // PEFT's files: adapter_config.json with the targets, keys base_model.model.<path>.lora_A.weight
    const out = join(dir, "adapter");
    await peft.savePretrained(out);
    const cfg = JSON.parse(readFileSync(join(out, "adapter_config.json"), "utf8"));
    expect(new Set(cfg.target_modules)).toEqual(new Set(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]));
    // PEFT's key layout: base_model.model.<transformers module path>.lora_{A,B}.weight, 2 layers x 7 x 2
    const keys = Object.keys(loadSafetensorsSync(join(out, "adapter_model.safetensors")));
    expect(keys.length).toBe(28);
    for (const k of keys) expect(k).toMatch(/^base_model\.model\.model\.layers\.[01]\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.lora_[AB]\.weight$/);
    const again = await PeftModel.fromPretrained(await LlamaForCausalLM.fromPretrained(join(dir, "base")), out);
    const before = noGrad(() => peft.forward(ids).logits.toFloat32Array());
    const after = noGrad(() => again.eval().forward(ids).logits.toFloat32Array());
    expect(Array.from(after)).toEqual(Array.from(before));
    peft.dispose();
    again.dispose();
  });

  it("getPeftModel picks PEFT's default llama targets from the model's modelType", async () => {
    const model = await LlamaForCausalLM.fromPretrained(join(dir, "base"));
    const peft = getPeftModel(model, new LoraConfig({ r: 4 }));
    expect(peft.targetedModuleNames.map((n) => n.split(".").pop()).sort()).toEqual(["q_proj", "q_proj", "v_proj", "v_proj"]);
    peft.dispose();
  });
});
