// config.json and checkpoint problems give errors naming the key and the file; both spellings transformers
// has written (torch_dtype/dtype, rope_scaling/rope_parameters) read the same; the model types map to their
// biases and windows.
import { mkdtempSync, rmSync, writeFileSync, readFileSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { LlamaForCausalLM, PeftError, Tensor, parseLlamaConfig, saveSafetensorsSync, loadSafetensorsSync } from "../lib/index.js";
import { tinyLlama, writeLlama } from "./helpers/llama-models.js";
import { LLAMA_TINY_MODEL } from "./helpers/llama-fixture.js";

const fixtureConfig = () => JSON.parse(readFileSync(join(LLAMA_TINY_MODEL, "config.json"), "utf8")) as Record<string, unknown>;

function expectPeft(fn: () => unknown, code: string, ...patterns: RegExp[]) {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(PeftError);
    expect((e as PeftError).code, (e as Error).message).toBe(code);
    for (const p of patterns) expect((e as Error).message).toMatch(p);
    return;
  }
  expect.fail("no error");
}

async function expectPeftAsync(p: Promise<unknown>, code: string, ...patterns: RegExp[]) {
  const e = await p.then(() => null, (err: unknown) => err);
  expect(e, "no error").toBeInstanceOf(PeftError);
  expect((e as PeftError).code, (e as Error).message).toBe(code);
  for (const pat of patterns) expect((e as Error).message).toMatch(pat);
}

describe("llama config.json", () => {
  it("reads the fixture's transformers config", () => {
    const c = parseLlamaConfig(fixtureConfig(), "config.json");
    expect(c).toMatchObject({ modelType: "llama", hiddenSize: 64, numKeyValueHeads: 2, headDim: 8, ropeScaling: null, dtype: "f32", qkvBias: false, oBias: false });
  });

  it("accepts transformers 5's dtype and rope_parameters", () => {
    const old = { ...fixtureConfig(), rope_theta: 500000, rope_scaling: { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 } };
    const v5 = { ...fixtureConfig(), dtype: "bfloat16", rope_parameters: { rope_type: "llama3", rope_theta: 500000, factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 } };
    delete (v5 as Record<string, unknown>).torch_dtype;
    delete (v5 as Record<string, unknown>).rope_theta;
    delete (v5 as Record<string, unknown>).rope_scaling;
    const a = parseLlamaConfig(old), b = parseLlamaConfig(v5);
    expect(b.dtype).toBe("bf16");
    expect({ ...b, dtype: null }).toEqual({ ...a, dtype: null });
    expect(a.ropeScaling).toEqual({ type: "llama3", factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 });
    expect(parseLlamaConfig({ ...fixtureConfig(), rope_scaling: { type: "linear", factor: 4 } }).ropeScaling).toEqual({ type: "linear", factor: 4 });
  });

  it("maps model types to their biases and windows", () => {
    const qwen = parseLlamaConfig({ ...fixtureConfig(), model_type: "qwen2", attention_bias: undefined, sliding_window: 32, use_sliding_window: false });
    expect([qwen.qkvBias, qwen.oBias, qwen.mlpBias, qwen.slidingWindow]).toEqual([true, false, false, null]);
    const mistral = parseLlamaConfig({ ...fixtureConfig(), model_type: "mistral", sliding_window: 4096 });
    expect([mistral.qkvBias, mistral.oBias, mistral.slidingWindow]).toEqual([false, false, 4096]);
    const llama = parseLlamaConfig({ ...fixtureConfig(), attention_bias: true, mlp_bias: true });
    expect([llama.qkvBias, llama.oBias, llama.mlpBias]).toEqual([true, true, true]);
    // head_dim defaults to hidden / heads; kv heads to the heads
    const plain = parseLlamaConfig({ ...fixtureConfig(), head_dim: undefined, num_key_value_heads: undefined });
    expect([plain.headDim, plain.numKeyValueHeads]).toEqual([8, 8]);
  });

  it.each([
    ["hidden_size", { hidden_size: undefined }, "ERR_CONFIG", /"hidden_size" is missing/],
    ["vocab_size", { vocab_size: "97" }, "ERR_CONFIG", /"vocab_size" must be an integer/],
    ["num_key_value_heads", { num_key_value_heads: 3 }, "ERR_CONFIG", /"num_key_value_heads" \(3\) must divide num_attention_heads \(8\)/],
    ["head_dim odd", { head_dim: 7 }, "ERR_CONFIG", /"head_dim" must be even/],
    ["rms_norm_eps", { rms_norm_eps: -1 }, "ERR_CONFIG", /"rms_norm_eps" must be a positive number/],
    ["tie_word_embeddings", { tie_word_embeddings: "no" }, "ERR_CONFIG", /"tie_word_embeddings" must be true or false/],
    ["torch_dtype", { torch_dtype: "float8" }, "ERR_CONFIG", /"torch_dtype" is "float8"/],
    ["model_type missing", { model_type: undefined }, "ERR_CONFIG", /"model_type" is missing/],
    ["model_type", { model_type: "gpt2" }, "ERR_UNSUPPORTED", /"model_type" is "gpt2"/],
    ["hidden_act", { hidden_act: "gelu" }, "ERR_UNSUPPORTED", /"hidden_act" is "gelu"/],
    ["rope type", { rope_scaling: { rope_type: "yarn", factor: 4 } }, "ERR_UNSUPPORTED", /"rope_scaling\.rope_type" is "yarn"/],
    ["rope factor", { rope_scaling: { rope_type: "llama3", factor: 8, low_freq_factor: 1 } }, "ERR_CONFIG", /"rope_scaling\.high_freq_factor" is missing/],
    ["rope_parameters theta", { rope_parameters: { rope_type: "default", rope_theta: "big" } }, "ERR_CONFIG", /"rope_parameters\.rope_theta" must be a positive number/],
  ])("%s: an error naming the key and the file", (_n, patch, code, pattern) => {
    expectPeft(() => parseLlamaConfig({ ...fixtureConfig(), ...patch }, "/models/x/config.json"), code, pattern, /\/models\/x\/config\.json/);
  });
});

describe("llama checkpoint errors", () => {
  const root = mkdtempSync(join(tmpdir(), "llama-bad-"));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  const model = tinyLlama({ vocabSize: 11, hiddenSize: 8, intermediateSize: 12, numHiddenLayers: 1, numAttentionHeads: 2, numKeyValueHeads: 1 });
  let n = 0;
  const fresh = () => {
    const dir = join(root, String(n++));
    writeLlama(model, dir);
    return dir;
  };
  const rewrite = (dir: string, edit: (sd: Record<string, Tensor>) => void) => {
    const file = join(dir, "model.safetensors");
    const sd = loadSafetensorsSync(file);
    edit(sd);
    unlinkSync(file);
    saveSafetensorsSync(file, sd, { format: "pt" });
  };

  it("a missing tensor is named", async () => {
    const dir = fresh();
    rewrite(dir, (sd) => delete sd["model.layers.0.mlp.up_proj.weight"]);
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(dir), "ERR_CHECKPOINT", /missing: model\.layers\.0\.mlp\.up_proj\.weight/);
  });

  it("an unexpected tensor is named; a tied head's own copy and rope buffers are accepted", async () => {
    const dir = fresh();
    rewrite(dir, (sd) => (sd["model.layers.0.mlp.extra.weight"] = Tensor.zeros([2])));
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(dir), "ERR_CHECKPOINT", /unexpected: model\.layers\.0\.mlp\.extra\.weight/);
    const ok = fresh();
    rewrite(ok, (sd) => (sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = Tensor.zeros([2])));
    (await LlamaForCausalLM.fromPretrained(ok)).dispose();
  });

  it("a wrong shape is named", async () => {
    const dir = fresh();
    rewrite(dir, (sd) => (sd["model.norm.weight"] = Tensor.zeros([9])));
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(dir), "ERR_SHAPE", /"model\.norm\.weight" has shape \[9\] in the file but \[8\]/);
  });

  it("a config that does not match the weights, bad JSON, no config", async () => {
    const dir = fresh();
    const cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
    writeFileSync(join(dir, "config.json"), JSON.stringify({ ...cfg, num_hidden_layers: 2 }));
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(dir), "ERR_CHECKPOINT", /missing: model\.layers\.1\./);
    writeFileSync(join(dir, "config.json"), "{ nope");
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(dir), "ERR_CONFIG", /config\.json: not valid JSON/);
    unlinkSync(join(dir, "config.json"));
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(dir), "ERR_CHECKPOINT", /config\.json: cannot read the model config/);
  });

  it("quantize int8 loads every projection as Linear8bitLt (lm_head and skipModules kept); bf16 loads convert", async () => {
    const dir = fresh();
    const full = await LlamaForCausalLM.fromPretrained(dir);
    const q = await LlamaForCausalLM.fromPretrained(dir, { quantize: "int8", skipModules: ["mlp.down_proj"] });
    const kinds = new Map([...q.namedModules()].map(([n, m]) => [n, m.constructor.name]));
    expect(kinds.get("model.layers.0.self_attn.q_proj")).toBe("Linear8bitLt");
    expect(kinds.get("model.layers.0.mlp.gate_proj")).toBe("Linear8bitLt");
    expect(kinds.get("model.layers.0.mlp.down_proj")).toBe("Linear");
    expect(kinds.get("lm_head")).toBe("Linear");
    // Row-wise int8 weights and inputs: logits move by a few percent of their spread, not more.
    const ids = Tensor.fromArray([1, 5, 9, 2, 7], [1, 5], "i64");
    const a = full.forward(ids).logits.toFloat32Array(), b = q.forward(ids).logits.toFloat32Array();
    let d = 0, n = 0;
    for (let i = 0; i < a.length; i++) d += (a[i] - b[i]) ** 2, n += a[i] ** 2;
    expect(Math.sqrt(d / n)).toBeLessThan(0.1);
    full.dispose();
    q.dispose();
    await expect(LlamaForCausalLM.fromPretrained(dir, { quantize: "int4" as never })).rejects.toThrow(/quantize must be "int8", "nf4", "fp4" or a function/);
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(dir, { threshold: 3 }), "ERR_CONFIG", /threshold applies to quantize: "int8" only/);
    const m = await LlamaForCausalLM.fromPretrained(dir, { dtype: "bf16" });
    for (const [, p] of m.namedParameters()) expect(p.dtype).toBe("bf16");
    m.dispose();
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(dir, { dtype: "f16" }), "ERR_UNSUPPORTED", /dtype must be "f32" or "bf16"/);
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(dir, { device: "cuda" }), "ERR_NOT_ON_DEVICE", /CPU only/);
  });

  it("bad forward arguments name the argument", () => {
    const ids = Tensor.fromArray([1, 2, 3], [1, 3], "i64");
    expectPeft(() => model.forward(Tensor.fromArray([1, 2, 3], [1, 3])), "ERR_DTYPE", /inputIds must be i32 or i64, got f32/);
    expectPeft(() => model.forward(Tensor.fromArray([1, 2, 3], [3], "i64")), "ERR_SHAPE", /inputIds must be \[batch, seq\]/);
    expectPeft(() => model.forward(ids, { attentionMask: Tensor.fromArray([1, 1], [1, 2], "i64") }), "ERR_SHAPE", /attentionMask has shape \[1, 2\], expected \[1, 3\]/);
    expectPeft(() => model.forward(ids, { labels: Tensor.fromArray([1, 1, 1, 1], [2, 2], "i64") }), "ERR_SHAPE", /labels has shape \[2, 2\]/);
    expectPeft(() => model.forward(ids, { positionIds: Tensor.fromArray([0, 1], [1, 2], "i64") }), "ERR_SHAPE", /positionIds has shape \[1, 2\]/);
    expect(() => model.forward(ids, { attentionMask: "yes" as never })).toThrow(TypeError);
    // out-of-range values are RangeErrors with code ERR_OUT_OF_RANGE, as Node's
    expect(() => model.forward(Tensor.fromArray([1, 11], [1, 2], "i64"))).toThrow(expect.objectContaining({ name: "RangeError", code: "ERR_OUT_OF_RANGE", message: expect.stringMatching(/ids\[1\] = 11 is out of range for 11/) }));
    expect(() => model.forward(ids, { labels: Tensor.fromArray([1, 2, 12], [1, 3], "i64") })).toThrow(expect.objectContaining({ code: "ERR_OUT_OF_RANGE", message: expect.stringMatching(/target\[1\] = 12/) }));
  });

  it("empty batches and sequences give empty logits; one token leaves no target (NaN loss, as torch)", () => {
    expect(model.forward(Tensor.fromArray([], [0, 3], "i64")).logits.shape).toEqual([0, 3, 11]);
    expect(model.forward(Tensor.fromArray([], [2, 0], "i64")).logits.shape).toEqual([2, 0, 11]);
    const one = Tensor.fromArray([3], [1, 1], "i64");
    expect(Number.isNaN(model.forward(one, { labels: one }).loss!.toFloat64Array()[0])).toBe(true);
  });

  it("mistral refuses a sequence longer than its sliding window", () => {
    const m = tinyLlama({ modelType: "mistral", vocabSize: 11, hiddenSize: 8, intermediateSize: 12, numHiddenLayers: 1, numAttentionHeads: 2, slidingWindow: 2 });
    expectPeft(() => m.forward(Tensor.fromArray([1, 2, 3], [1, 3], "i64")), "ERR_UNSUPPORTED", /sliding window of 2/);
    m.dispose();
  });
});
