// Prompt-learning checkpoints in PEFT's layout: savePretrained writes adapter_config.json (inference_mode
// true, the model's fields filled in) and adapter_model.safetensors holding only `prompt_embeddings`, the
// encoder's output as PEFT computes it for saving (the P-tuning MLP/LSTM or the prefix projection applied);
// fromPretrained rebuilds an inference adapter that reproduces the trained model's logits; files as PEFT
// writes them load and match the float64 reference; trainable loading, bad shapes and extra keys are refused.
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  PeftModel, PrefixTuningConfig, configFromPretrained, PromptEncoderConfig, PromptTuningConfig, Tensor, getPeftModel, noGrad, openSafetensors, saveSafetensorsSync,
  type PeftConfig,
} from "../lib/index.js";
import { tinyLlama, trainCausalLm } from "./helpers/llama-models.js";
import { refPrefixLogits, refPromptTuningLogits } from "./helpers/prompt-reference.js";
import { expectClose } from "./helpers/numeric.js";

const dir = mkdtempSync(join(tmpdir(), "prompt-ckpt-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const INIT = { vocabSize: 37, hiddenSize: 32, intermediateSize: 48, numHiddenLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2 };
const N = 3;
const IDS = [[3, 17, 5, 22, 9], [11, 2, 30, 7, 1]];
const t2 = (rows: number[][]) => Tensor.fromArray(rows.flat(), [rows.length, rows[0].length], "i64");
const f32Tol = (want: ArrayLike<number>) => (i: number) => 2e-4 + 2e-4 * Math.abs(want[i]);

const METHODS: [string, () => PeftConfig, number[]][] = [
  ["prompt tuning", () => new PromptTuningConfig({ numVirtualTokens: N, taskType: "CAUSAL_LM" }), [N, 32]],
  ["P-tuning (MLP)", () => new PromptEncoderConfig({ numVirtualTokens: N, encoderHiddenSize: 12 }), [N, 32]],
  ["P-tuning (LSTM)", () => new PromptEncoderConfig({ numVirtualTokens: N, encoderReparameterizationType: "LSTM", encoderHiddenSize: 6 }), [N, 32]],
  ["prefix tuning", () => new PrefixTuningConfig({ numVirtualTokens: N }), [N, 2 * 2 * 16]],
  ["prefix tuning (projection)", () => new PrefixTuningConfig({ numVirtualTokens: N, prefixProjection: true, encoderHiddenSize: 10 }), [N, 2 * 2 * 16]],
];

function logitsOf(m: { forward: PeftModel["forward"] }): Float64Array {
  return noGrad(() => {
    const { logits } = m.forward(t2(IDS));
    const v = logits.toFloat64Array();
    logits.dispose();
    return v;
  });
}

describe.each(METHODS)("%s", (name, config, shape) => {
  it("savePretrained writes PEFT's files; fromPretrained reproduces the trained model", async () => {
    const lm = tinyLlama(INIT, 31);
    const peft = getPeftModel(lm, config());
    trainCausalLm(peft, t2([[4, 9, 4, 9, 4, 9]]), 3, 0.05);
    peft.eval();
    const want = logitsOf(peft);
    const out = join(dir, name.replace(/\W+/g, "-"));
    await peft.savePretrained(out);
    const cfg = JSON.parse(readFileSync(join(out, "adapter_config.json"), "utf8"));
    expect(cfg.inference_mode).toBe(true);
    const read = await configFromPretrained(out);
    expect(read.constructor).toBe(peft.peftConfig.default.constructor);
    expect(read.toJSON()).toEqual({ ...peft.peftConfig.default.toJSON(), inference_mode: true });
    expect(cfg.peft_type).toBe(peft.peftType);
    expect([cfg.num_virtual_tokens, cfg.num_layers, cfg.num_transformer_submodules]).toEqual([N, 2, 1]);
    {
      using f = openSafetensors(join(out, "adapter_model.safetensors"));
      expect(f.keys()).toEqual(["prompt_embeddings"]);
      expect(f.info("prompt_embeddings")).toEqual({ dtype: "F32", shape });
      expect(f.metadata()).toEqual({ format: "pt" });
    }
    // The live model is untouched by saving: still training-mode parameters.
    expect([...peft.parameters()].some((p) => p.requiresGrad)).toBe(true);

    const fresh = tinyLlama(INIT, 31);
    const loaded = await PeftModel.fromPretrained(fresh, out);
    expect(loaded.training).toBe(false);
    const names = [...loaded.namedParameters()].filter(([n]) => n.includes("prompt_encoder")).map(([n, p]) => `${n} [${p.shape.join(", ")}] ${p.requiresGrad}`);
    expect(names).toEqual([`base_model.prompt_encoder.default.embedding.weight [${shape.join(", ")}] false`]);
    expectClose(logitsOf(loaded), want, (i) => 1e-5 + 1e-5 * Math.abs(want[i]), "reloaded");
    await expect(PeftModel.fromPretrained(tinyLlama(INIT, 31), out, { isTrainable: true })).rejects.toThrow(/Cannot set a prompt learning adapter to trainable/);
    // Saved again from the inference adapter: the same table (PEFT saves embedding.weight then).
    const again = join(out, "again");
    await loaded.savePretrained(again);
    using a = openSafetensors(join(out, "adapter_model.safetensors")), b = openSafetensors(join(again, "adapter_model.safetensors"));
    expect(b.get("prompt_embeddings").toFloat64Array()).toEqual(a.get("prompt_embeddings").toFloat64Array());
    peft.dispose();
    loaded.dispose();
  });
});

/** An adapter directory as PEFT 0.19 writes it for `config` (keys as PEFT's to_dict) and `table`. */
function peftDir(name: string, config: Record<string, unknown>, table: Float64Array, shape: number[]): string {
  const d = join(dir, `peft-${name}`);
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, "adapter_config.json"), JSON.stringify({
    auto_mapping: null, base_model_name_or_path: "tiny-llama", inference_mode: true, modules_to_save: null, num_attention_heads: 4, num_layers: 2,
    num_transformer_submodules: 1, num_virtual_tokens: N, peft_version: "0.19.1", revision: null, task_type: "CAUSAL_LM", token_dim: 32, ...config,
  }, null, 2));
  saveSafetensorsSync(join(d, "adapter_model.safetensors"), { prompt_embeddings: Tensor.fromArray(table, shape) }, { format: "pt" });
  return d;
}

function table(n: number, seed: number): Float64Array {
  let s = seed;
  return Float64Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31 - 0.5) * 0.5);
}

describe("files as PEFT writes them", () => {
  it("prompt tuning and P-tuning: prompt_embeddings are the virtual tokens' input embeddings", async () => {
    for (const [kind, extra] of [
      ["pt", { peft_type: "PROMPT_TUNING", prompt_tuning_init: "TEXT", prompt_tuning_init_text: "Classify", tokenizer_name_or_path: "/somewhere/else", tokenizer_kwargs: null }],
      ["ptuning", { peft_type: "P_TUNING", encoder_reparameterization_type: "LSTM", encoder_hidden_size: 32, encoder_num_layers: 2, encoder_dropout: 0.0 }],
    ] as const) {
      const emb = table(N * 32, 7);
      const d = peftDir(kind, extra, emb, [N, 32]);
      const lm = tinyLlama(INIT, 32).eval();
      const m = await PeftModel.fromPretrained(lm, d);
      const want = refPromptTuningLogits(lm, Float64Array.from(Float32Array.from(emb)), IDS);
      const got = logitsOf(m);
      expectClose(got, want, f32Tol(want), kind);
      m.dispose();
    }
  });

  it("prefix tuning (projection at training time): prompt_embeddings are every layer's keys and values", async () => {
    const W = 2 * 2 * 16;
    const emb = table(N * W, 11);
    const d = peftDir("prefix", { peft_type: "PREFIX_TUNING", token_dim: 16, num_attention_heads: 2, encoder_hidden_size: 64, prefix_projection: true, init_weights: null }, emb, [N, W]);
    const lm = tinyLlama(INIT, 33).eval();
    const m = await PeftModel.fromPretrained(lm, d);
    const want = refPrefixLogits(lm, Float64Array.from(Float32Array.from(emb)), N, IDS);
    expectClose(logitsOf(m), want, f32Tol(want), "prefix");
    // a second adapter from the same kind of files, then switched to
    await m.loadAdapter(d, "other");
    m.setAdapter("other");
    expectClose(logitsOf(m), want, f32Tol(want), "loaded as a second adapter");
    await expect(m.loadAdapter(d, "third", { isTrainable: true })).rejects.toThrow(/Cannot set a prompt learning adapter to trainable/);
    m.dispose();
  });

  it("a table of the wrong shape, an extra tensor or a file of another method are refused", async () => {
    const bad = peftDir("bad-shape", { peft_type: "PROMPT_TUNING", prompt_tuning_init: "RANDOM" }, table(N * 31, 3), [N, 31]);
    await expect(PeftModel.fromPretrained(tinyLlama(INIT, 34), bad)).rejects.toThrow(expect.objectContaining({ code: "ERR_CHECKPOINT", message: expect.stringMatching(/prompt_embeddings \[3, 31\] vs model \[3, 32\]/) }));
    const extra = peftDir("extra", { peft_type: "PROMPT_TUNING", prompt_tuning_init: "RANDOM" }, table(N * 32, 3), [N, 32]);
    saveSafetensorsSync(join(extra, "adapter_model.safetensors"), { prompt_embeddings: Tensor.zeros([N, 32]), "base_model.model.lm_head.weight": Tensor.zeros([2, 2]) }, { format: "pt" });
    await expect(PeftModel.fromPretrained(tinyLlama(INIT, 34), extra)).rejects.toThrow(/unexpected: base_model.model.lm_head.weight/);
    const m = getPeftModel(tinyLlama(INIT, 34), new PromptTuningConfig({ numVirtualTokens: N }));
    const prefix = peftDir("prefix-for-pt", { peft_type: "PREFIX_TUNING", token_dim: 16, num_attention_heads: 2 }, table(N * 64, 3), [N, 64]);
    await expect(m.loadAdapter(prefix, "x")).rejects.toThrow(/Cannot combine adapters with different peft types/);
    m.dispose();
  });
});
