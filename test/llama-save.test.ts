// LlamaForCausalLM.savePretrained: the directory transformers' save_pretrained writes (config.json with
// BitsAndBytesConfig.to_dict()'s quantization_config for int8 / 4-bit models, model.safetensors or shards with
// model.safetensors.index.json, the source's tokenizer files) reloads through fromPretrained with no option
// but config.json's: the same layer kinds, a bit-equal state dict and bit-equal logits. Then the config.json a
// merge writes beside an int8 output, and what bad input is told.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  Linear, Linear4bit, Linear8bitLt, LlamaForCausalLM, LoraConfig, PeftError, Tensor, getPeftModel, llamaConfigToJSON, mergeCheckpoint, openSafetensors, type Module,
} from "../lib/index.js";
import { LLAMA_TINY_ADAPTER, LLAMA_TINY_MODEL } from "./helpers/llama-fixture.js";
import { tinyLlama, writeLlama } from "./helpers/llama-models.js";

const tmp = mkdtempSync(join(tmpdir(), "llama-save-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const ids = Tensor.fromArray([1, 5, 9, 2, 7, 96, 0], [1, 7], "i64");
const kinds = (m: Module) => new Map([...m.namedModules()].map(([n, x]) => [n, x.constructor.name]));
/** The tensor's bytes: equal bytes are equal bits, whatever the dtype (NaN payloads and -0 included). */
function bits(t: Tensor): number[] {
  const v = t.view() as unknown as ArrayBufferView;
  return Array.from(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
}
const json = (dir: string, name: string) => JSON.parse(readFileSync(join(dir, name), "utf8"));

async function expectPeftAsync(p: Promise<unknown>, code: string, ...patterns: RegExp[]) {
  const e = await p.then(() => null, (err: unknown) => err);
  expect(e, "no error").toBeInstanceOf(Error);
  expect((e as PeftError).code, (e as Error).message).toBe(code);
  for (const pat of patterns) expect((e as Error).message).toMatch(pat);
}

/** Saved and reloaded with config.json alone: layer kinds, every state tensor's bytes and the logits equal. */
async function roundTrip(m: LlamaForCausalLM, dir: string, opts: { dtype?: "bf16"; maxShardSize?: number | string } = {}): Promise<LlamaForCausalLM> {
  await m.savePretrained(dir, opts.maxShardSize === undefined ? undefined : { maxShardSize: opts.maxShardSize });
  const back = await LlamaForCausalLM.fromPretrained(dir, opts.dtype ? { dtype: opts.dtype } : {});
  expect(kinds(back)).toEqual(kinds(m));
  const want = m.stateDict(), got = back.stateDict();
  expect(Object.keys(got)).toEqual(Object.keys(want));
  for (const k of Object.keys(want)) {
    expect(got[k].dtype, k).toBe(want[k].dtype);
    expect(bits(got[k]), k).toEqual(bits(want[k]));
  }
  expect(bits(back.forward(ids).logits)).toEqual(bits(m.forward(ids).logits));
  return back;
}

// transformers' BitsAndBytesConfig(...).to_dict() for each case, as save_pretrained writes it.
const BNB_DEFAULTS = {
  _load_in_4bit: false, _load_in_8bit: false, bnb_4bit_compute_dtype: "float32", bnb_4bit_quant_storage: "uint8", bnb_4bit_quant_type: "fp4",
  bnb_4bit_use_double_quant: false, llm_int8_enable_fp32_cpu_offload: false, llm_int8_has_fp16_weight: false, llm_int8_skip_modules: null,
  llm_int8_threshold: 6.0, load_in_4bit: false, load_in_8bit: false, quant_method: "bitsandbytes",
};

describe("LlamaForCausalLM.savePretrained", () => {
  it("f32: config.json byte-identical to the transformers-written source, model.safetensors with format pt, tokenizer files copied", async () => {
    const m = await LlamaForCausalLM.fromPretrained(LLAMA_TINY_MODEL);
    const dir = join(tmp, "f32");
    const back = await roundTrip(m, dir);
    expect(readdirSync(dir).sort()).toEqual(["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
    expect(readFileSync(join(dir, "config.json"), "utf8")).toBe(readFileSync(join(LLAMA_TINY_MODEL, "config.json"), "utf8"));
    expect(readFileSync(join(dir, "tokenizer.json"), "utf8")).toBe(readFileSync(join(LLAMA_TINY_MODEL, "tokenizer.json"), "utf8"));
    using f = openSafetensors(join(dir, "model.safetensors"));
    expect(f.metadata()).toEqual({ format: "pt" });
    // Saving the reloaded model again (its source is now `dir` itself) leaves the directory as it was.
    await back.savePretrained(dir);
    expect(readdirSync(dir).sort()).toEqual(["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
    back.dispose();
    m.dispose();
  });

  it("bf16: weights stored bf16, torch_dtype bfloat16, no quantization_config", async () => {
    const m = await LlamaForCausalLM.fromPretrained(LLAMA_TINY_MODEL, { dtype: "bf16" });
    const dir = join(tmp, "bf16");
    (await roundTrip(m, dir, { dtype: "bf16" })).dispose();
    const c = json(dir, "config.json");
    expect(c.torch_dtype).toBe("bfloat16");
    expect(c).not.toHaveProperty("quantization_config");
    using f = openSafetensors(join(dir, "model.safetensors"));
    expect(f.info("model.layers.1.mlp.up_proj.weight").dtype).toBe("BF16");
    m.dispose();
  });

  it("int8 (threshold 4, down_proj kept in float besides lm_head): load_in_8bit config, Linear8bitLt back with threshold 4", async () => {
    const m = await LlamaForCausalLM.fromPretrained(LLAMA_TINY_MODEL, { quantize: "int8", threshold: 4, skipModules: ["down_proj"] });
    const dir = join(tmp, "int8");
    const back = await roundTrip(m, dir);
    const text = readFileSync(join(dir, "config.json"), "utf8");
    expect(json(dir, "config.json").quantization_config).toEqual({
      ...BNB_DEFAULTS, _load_in_8bit: true, load_in_8bit: true, llm_int8_threshold: 4, llm_int8_skip_modules: ["down_proj", "lm_head"],
    });
    expect(text).toMatch(/\n {4}"llm_int8_threshold": 4\.0,\n/); // a Python float, as to_dict gives it
    expect(back.getSubmodule("model.layers.0.self_attn.q_proj", Linear8bitLt).threshold).toBe(4);
    expect(back.getSubmodule("model.layers.1.mlp.down_proj")).toBeInstanceOf(Linear);
    expect(kinds(back).get("lm_head")).toBe("Linear");
    back.dispose();
    m.dispose();
  });

  for (const [type, compress, cdt] of [["nf4", true, "bf16"], ["fp4", false, "f32"]] as const) {
    it(`${type}${compress ? " double-quantised" : ""}, compute ${cdt}: load_in_4bit config, Linear4bit back with the same codes`, async () => {
      const m = await LlamaForCausalLM.fromPretrained(LLAMA_TINY_MODEL, { quantize: type, compressStatistics: compress, computeDtype: cdt });
      const dir = join(tmp, type);
      const back = await roundTrip(m, dir);
      expect(json(dir, "config.json").quantization_config).toEqual({
        ...BNB_DEFAULTS, _load_in_4bit: true, load_in_4bit: true, bnb_4bit_quant_type: type, bnb_4bit_use_double_quant: compress,
        bnb_4bit_compute_dtype: cdt === "bf16" ? "bfloat16" : "float32", llm_int8_skip_modules: ["lm_head"],
      });
      expect(json(dir, "config.json").torch_dtype).toBe("float32");
      const l = back.getSubmodule("model.layers.0.mlp.up_proj", Linear4bit);
      expect([l.quantType, l.compressStatistics, l.computeDtype]).toEqual([type, compress, cdt]);
      back.dispose();
      m.dispose();
    });
  }

  it("sharded above maxShardSize: model-0000i-of-0000N files and an index as transformers writes them; a later single-file save removes them", async () => {
    const m = await LlamaForCausalLM.fromPretrained(LLAMA_TINY_MODEL, { quantize: "nf4" });
    const dir = join(tmp, "sharded");
    // 20 KB: most 4-bit layers fit several to a shard; the f32 embedding and head (24.8 KB each) get one of their own.
    (await roundTrip(m, dir, { maxShardSize: "20KB" })).dispose();
    const index = json(dir, "model.safetensors.index.json");
    const files = readdirSync(dir).filter((f) => f.endsWith(".safetensors")).sort();
    const n = files.length;
    expect(n).toBeGreaterThan(3);
    expect(files).toEqual(Array.from({ length: n }, (_, i) => `model-${String(i + 1).padStart(5, "0")}-of-${String(n).padStart(5, "0")}.safetensors`));
    const sd = m.stateDict();
    const bytes = (t: Tensor) => t.numel * ({ f32: 4, bf16: 2, u8: 1 } as Record<string, number>)[t.dtype];
    expect(index.metadata).toEqual({ total_size: Object.values(sd).reduce((a, t) => a + bytes(t), 0) });
    expect(Object.keys(index.weight_map)).toEqual(Object.keys(sd).sort());
    // huggingface_hub's split: in state-dict order, a shard closes before it would pass the limit.
    const perShard = new Map<string, number>();
    for (const [k, f] of Object.entries(index.weight_map as Record<string, string>)) perShard.set(f, (perShard.get(f) ?? 0) + bytes(sd[k]));
    for (const [f, size] of perShard) {
      using s = openSafetensors(join(dir, f));
      expect(s.metadata()).toEqual({ format: "pt" });
      if (s.keys().length > 1) expect(size, f).toBeLessThanOrEqual(20_000);
    }
    // A tensor over the limit gets a shard of its own (huggingface_hub closes it at once, the open one goes on).
    expect(Object.values(index.weight_map).filter((f) => f === index.weight_map["model.embed_tokens.weight"])).toHaveLength(1);
    await m.savePretrained(dir, { maxShardSize: 10 ** 9 });
    expect(readdirSync(dir).filter((f) => f.startsWith("model")).sort()).toEqual(["model.safetensors"]);
    (await LlamaForCausalLM.fromPretrained(dir)).dispose();
    m.dispose();
  });

  it("tied embeddings are written once (no lm_head.weight) and tie again on load; generation_config.json travels along", async () => {
    const src = join(tmp, "tied-src");
    const tied = tinyLlama({ vocabSize: 97, hiddenSize: 66, intermediateSize: 97, numHiddenLayers: 1, numAttentionHeads: 3, numKeyValueHeads: 1, tieWordEmbeddings: true }, 3);
    writeLlama(tied, src);
    writeFileSync(join(src, "generation_config.json"), JSON.stringify({ eos_token_id: 2, max_new_tokens: 5 }));
    // A model built in memory has no source directory: config.json is its config alone.
    await tied.savePretrained(join(tmp, "tied-fresh"));
    expect(json(join(tmp, "tied-fresh"), "config.json")).toEqual(llamaConfigToJSON(tied.config));
    expect(readdirSync(join(tmp, "tied-fresh")).sort()).toEqual(["config.json", "model.safetensors"]);
    tied.dispose();
    const m = await LlamaForCausalLM.fromPretrained(src);
    const dir = join(tmp, "tied");
    const back = await roundTrip(m, dir);
    using f = openSafetensors(join(dir, "model.safetensors"));
    expect(f.keys()).not.toContain("lm_head.weight");
    expect(back.lm_head.weight).toBe(back.model.embed_tokens.weight);
    expect(json(dir, "config.json").tie_word_embeddings).toBe(true);
    expect(readFileSync(join(dir, "generation_config.json"), "utf8")).toBe(readFileSync(join(src, "generation_config.json"), "utf8"));
    back.dispose();
    m.dispose();
  });

  it("bad input: dir, options, adapter layers, layers one quantization_config cannot describe; nothing half-written", async () => {
    const m = await LlamaForCausalLM.fromPretrained(LLAMA_TINY_MODEL, { quantize: "nf4" });
    const dir = join(tmp, "bad");
    await expectPeftAsync(m.savePretrained(42 as never), "ERR_INVALID_ARG_TYPE", /LlamaForCausalLM\.savePretrained: dir must be a non-empty string, got number/);
    await expectPeftAsync(m.savePretrained(""), "ERR_INVALID_ARG_TYPE", /an empty string/);
    await expectPeftAsync(m.savePretrained(dir, { maxShardSize: "5XB" }), "ERR_CONFIG", /maxShardSize "5XB" is not a size/);
    await expectPeftAsync(m.savePretrained(dir, { maxShardSize: 0 }), "ERR_CONFIG", /maxShardSize must be a positive whole number of bytes, got 0/);
    await expectPeftAsync(m.savePretrained(dir, { maxShardSize: true as never }), "ERR_INVALID_ARG_TYPE", /maxShardSize must be a number of bytes or a string/);
    await expectPeftAsync(m.savePretrained(dir, null as never), "ERR_INVALID_ARG_TYPE", /options must be an object, got null/);
    await expectPeftAsync(m.savePretrained(dir, { shards: 2 } as never), "ERR_CONFIG", /unknown option "shards"/);
    const file = join(tmp, "a-file");
    writeFileSync(file, "x");
    await expectPeftAsync(m.savePretrained(join(file, "sub")), "ERR_CHECKPOINT", /savePretrained: cannot write ".*a-file.*": ENOTDIR/);
    // A 4-bit layer of another quant type among the nf4 ones.
    const p = "model.layers.1.self_attn.o_proj";
    m.setSubmodule(p, Linear4bit.fromLinear(new Linear(64, 64, { seed: 1 }), { quantType: "fp4" }));
    await expectPeftAsync(m.savePretrained(dir), "ERR_UNSUPPORTED", /model\.layers\.0\.self_attn\.q_proj has quant type nf4 but model\.layers\.1\.self_attn\.o_proj has fp4/);
    m.dispose();
    const m2 = await LlamaForCausalLM.fromPretrained(LLAMA_TINY_MODEL);
    const peft = getPeftModel(m2, new LoraConfig({ r: 2, targetModules: ["q_proj"] }));
    await expectPeftAsync(m2.savePretrained(dir), "ERR_UNSUPPORTED", /adapter layers \("model\.layers\.0\.self_attn\.q_proj\.base_layer\.weight"\); merge them first/);
    expect(existsSync(dir)).toBe(false);
    peft.dispose();
    // A file that fails mid-save (a source's tokenizer.json that is a directory): no temporary file stays, and
    // the directories the save made go again.
    const src = join(tmp, "odd-src");
    mkdirSync(join(src, "tokenizer.json"), { recursive: true });
    for (const f of ["config.json", "model.safetensors"]) writeFileSync(join(src, f), readFileSync(join(LLAMA_TINY_MODEL, f)));
    const m3 = await LlamaForCausalLM.fromPretrained(src);
    await expectPeftAsync(m3.savePretrained(join(dir, "deep")), "ERR_CHECKPOINT", /savePretrained: cannot write .*tokenizer\.json.*EISDIR/);
    expect(existsSync(dir)).toBe(false);
    const existing = join(tmp, "existing");
    mkdirSync(existing);
    await expectPeftAsync(m3.savePretrained(existing), "ERR_CHECKPOINT");
    expect(readdirSync(existing)).toEqual([]);
    m3.dispose();
  });
});

describe("node-peft merge into int8: the output's config.json", () => {
  it("--dtype int8 beside a base with config.json writes it with load_in_8bit (lm_head kept); the directory loads as int8", async () => {
    const out = join(tmp, "merged-int8");
    mkdirSync(out);
    const opts = { base: join(LLAMA_TINY_MODEL, "model.safetensors"), adapter: LLAMA_TINY_ADAPTER, out: join(out, "model.safetensors"), dtype: "int8" as const };
    const summary = await mergeCheckpoint(opts);
    expect(summary.config).toBe(join(out, "config.json"));
    const c = json(out, "config.json");
    expect(c.quantization_config).toEqual({ ...BNB_DEFAULTS, _load_in_8bit: true, load_in_8bit: true, llm_int8_skip_modules: ["lm_head"] });
    expect({ ...c, quantization_config: undefined }).toEqual({ ...json(LLAMA_TINY_MODEL, "config.json"), quantization_config: undefined });
    const m = await LlamaForCausalLM.fromPretrained(out);
    expect(m.getSubmodule("model.layers.0.mlp.up_proj")).toBeInstanceOf(Linear8bitLt);
    expect(m.lm_head).toBeInstanceOf(Linear);
    m.dispose();
    // The same config.json there already is fine; another one is replaced only with force; a float merge writes none.
    expect((await mergeCheckpoint({ ...opts, out: join(out, "again.safetensors") })).config).toBe(join(out, "config.json"));
    writeFileSync(join(out, "config.json"), "{}");
    await expectPeftAsync(mergeCheckpoint({ ...opts, out: join(out, "third.safetensors") }), "ERR_CHECKPOINT",
      /config\.json exists and the int8 output needs its own config\.json there; pass --force/);
    expect(existsSync(join(out, "third.safetensors"))).toBe(false);
    await mergeCheckpoint({ ...opts, out: join(out, "third.safetensors"), force: true });
    expect(json(out, "config.json").quantization_config.load_in_8bit).toBe(true);
    // An int8 base saved with its quantization_config (threshold 4): the output keeps that config.
    const q = await LlamaForCausalLM.fromPretrained(LLAMA_TINY_MODEL, { quantize: "int8", threshold: 4 });
    const int8Base = join(tmp, "int8-base");
    await q.savePretrained(int8Base);
    q.dispose();
    const int8Out = join(tmp, "merged-from-int8");
    mkdirSync(int8Out);
    expect((await mergeCheckpoint({ base: join(int8Base, "model.safetensors"), adapter: LLAMA_TINY_ADAPTER, out: join(int8Out, "model.safetensors") })).merged.length).toBeGreaterThan(0);
    expect(readFileSync(join(int8Out, "config.json"), "utf8")).toBe(readFileSync(join(int8Base, "config.json"), "utf8"));
    const floatOut = join(tmp, "merged-f32");
    mkdirSync(floatOut);
    expect((await mergeCheckpoint({ ...opts, dtype: undefined, out: join(floatOut, "model.safetensors") })).config).toBeNull();
    expect(existsSync(join(floatOut, "config.json"))).toBe(false);
  });
});
