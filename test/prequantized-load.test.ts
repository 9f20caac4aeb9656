// Pre-quantized checkpoints (transformers' save_pretrained of a load_in_4bit / load_in_8bit model, the layout of
// the "-bnb-4bit" models): a tiny Llama quantised while loading is saved with our own writer (a 4-bit model's
// state dict has bitsandbytes' keys: weight, weight.absmax, weight.quant_map, weight.nested_*,
// weight.quant_state.bitsandbytes__<type>), config.json gains transformers' quantization_config, and the
// directory loads back as Linear4bit / Linear8bitLt layers whose codes are the file's bytes (nothing
// requantised): logits bit-equal to the in-memory model. Then what a broken checkpoint is told.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  Linear, Linear4bit, Linear8bitLt, LlamaForCausalLM, LoraConfig, PeftError, getPeftModel, Tensor, buildModelFromCheckpoint, loadSafetensors, saveSafetensorsSync, type Module,
} from "../lib/index.js";
import { tinyLlama, writeLlama } from "./helpers/llama-models.js";

const tmp = mkdtempSync(join(tmpdir(), "prequantized-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function expectPeftAsync(p: Promise<unknown>, code: string, ...patterns: RegExp[]) {
  const e = await p.then(() => null, (err: unknown) => err);
  expect(e, "no error").toBeInstanceOf(PeftError);
  expect((e as PeftError).code, (e as Error).message).toBe(code);
  for (const pat of patterns) expect((e as Error).message).toMatch(pat);
}

// Odd widths: 33·... weights are not whole blocks of 64, so the last block of each layer is partial.
const CONFIG = { vocabSize: 37, hiddenSize: 66, intermediateSize: 97, numHiddenLayers: 2, numAttentionHeads: 3, numKeyValueHeads: 1 };
const src = join(tmp, "f32");
writeLlama(tinyLlama(CONFIG, 4), src);
const ids = Tensor.fromArray([1, 5, 9, 2, 7, 36, 0], [1, 7], "i64");

const kinds = (m: Module) => new Map([...m.namedModules()].map(([n, x]) => [n, x.constructor.name]));
const bnb4 = (type: string, doubleQuant: boolean, computeDtype: string) => ({
  quantization_config: {
    quant_method: "bitsandbytes", load_in_4bit: true, load_in_8bit: false, bnb_4bit_quant_type: type, bnb_4bit_use_double_quant: doubleQuant,
    bnb_4bit_compute_dtype: computeDtype, bnb_4bit_quant_storage: "uint8", llm_int8_skip_modules: null, llm_int8_threshold: 6.0,
  },
});

/** Writes a model directory: the source's config.json (+ `config`) and the given tensors. */
function writeDir(name: string, tensors: Record<string, Tensor>, config: Record<string, unknown>): string {
  const dir = join(tmp, name);
  mkdirSync(dir);
  const cfg = JSON.parse(readFileSync(join(src, "config.json"), "utf8"));
  writeFileSync(join(dir, "config.json"), JSON.stringify({ ...cfg, ...config }));
  saveSafetensorsSync(join(dir, "model.safetensors"), tensors, { format: "pt" });
  return dir;
}

describe("pre-quantized 4-bit checkpoints (transformers' bnb-4bit layout)", () => {
  for (const [type, compress, cdt, shards] of [["nf4", true, "bf16", 1], ["fp4", false, "f32", 3]] as const) {
    it(`${type}${compress ? ", double quantised" : ""}, compute ${cdt}, ${shards} shard(s): loads as Linear4bit with the file's codes, logits bit-equal`, async () => {
      const q = await LlamaForCausalLM.fromPretrained(src, { quantize: type, compressStatistics: compress, computeDtype: cdt });
      const dir = join(tmp, `${type}-${shards}`);
      writeLlama(q, dir, { shards, config: bnb4(type, compress, cdt === "bf16" ? "bfloat16" : "float32") });
      const sd = q.stateDict();
      const p = "model.layers.1.mlp.down_proj";
      expect(Object.keys(sd).filter((k) => k.startsWith(p + ".")).sort()).toEqual(
        [`${p}.weight`, `${p}.weight.absmax`, ...(compress ? [`${p}.weight.nested_absmax`, `${p}.weight.nested_quant_map`] : []), `${p}.weight.quant_map`, `${p}.weight.quant_state.bitsandbytes__${type}`],
      );
      const back = await LlamaForCausalLM.fromPretrained(dir);
      expect(kinds(back)).toEqual(kinds(q));
      expect(kinds(back).get(`${p}`)).toBe("Linear4bit");
      expect(kinds(back).get("lm_head")).toBe("Linear");
      const l = back.getSubmodule(p, Linear4bit), ql = q.getSubmodule(p, Linear4bit);
      expect(l.quantState).toEqual(ql.quantState);
      expect(l.computeDtype).toBe(cdt);
      for (const [k, t] of Object.entries(back.stateDict())) expect(Array.from(t.view() as ArrayLike<number>), k).toEqual(Array.from(sd[k].view() as ArrayLike<number>));
      expect(Array.from(back.forward(ids).logits.toFloat32Array())).toEqual(Array.from(q.forward(ids).logits.toFloat32Array()));
      // The generic tree builder reads the same file as Linear4bit layers too.
      if (shards === 1) {
        const tree = buildModelFromCheckpoint(dir);
        const t = tree.getSubmodule(p, Linear4bit);
        const x = Tensor.randn([3, CONFIG.intermediateSize], { seed: 2 });
        // Built without a compute dtype: x's own (f32), as a layer made from the same state dict.
        expect(Array.from(t.forward(x).toFloat32Array())).toEqual(Array.from(Linear4bit.fromStateDict(ql.stateDict()).forward(x).toFloat32Array()));
        expect(tree.getSubmodule("model.layers.0.self_attn.q_proj")).toBeInstanceOf(Linear4bit);
        expect(tree.getSubmodule("lm_head")).toBeInstanceOf(Linear);
        tree.dispose();
      }
      back.dispose();
      q.dispose();
    });
  }

  it("quantize naming the checkpoint's kind warns and changes nothing; another kind is refused", async () => {
    const dir = join(tmp, "nf4-1");
    const warned: string[] = [];
    const onWarn = (w: Error & { code?: string }) => void warned.push(`${w.code}: ${w.message}`);
    process.on("warning", onWarn);
    try {
      const m = await LlamaForCausalLM.fromPretrained(dir, { quantize: "nf4" });
      await new Promise((r) => setImmediate(r));
      expect(kinds(m).get("model.layers.0.mlp.up_proj")).toBe("Linear4bit");
      expect(m.getSubmodule("model.layers.0.mlp.up_proj", Linear4bit).compressStatistics).toBe(true);
      m.dispose();
    } finally {
      process.off("warning", onWarn);
    }
    expect(warned.join("\n")).toMatch(/PEFT_PREQUANTIZED_CHECKPOINT: .*already quantized \(14 nf4 layer\(s\)\)/);
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(dir, { quantize: "int8" }), "ERR_CONFIG", /quantize: "int8" but .* is already quantized \(14 nf4 layer\(s\)\); drop the quantize option/);
  });

  it("a broken checkpoint names the tensor and the file", async () => {
    const good = await loadSafetensors(join(tmp, "nf4-1", "model.safetensors"));
    const p = "model.layers.0.self_attn.k_proj";
    const cfg = bnb4("nf4", true, "bfloat16");
    const without = (k: string) => Object.fromEntries(Object.entries(good).filter(([key]) => key !== k));
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(writeDir("no-absmax", without(`${p}.weight.absmax`), cfg)), "ERR_CHECKPOINT",
      /model\.safetensors: "model\.layers\.0\.self_attn\.k_proj\.weight\.absmax" is missing beside the 4-bit weight/);
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(writeDir("no-nested", without(`${p}.weight.nested_quant_map`), cfg)), "ERR_CHECKPOINT",
      /"model\.layers\.0\.self_attn\.k_proj\.weight\.nested_quant_map" is missing .*nested/);
    const notJson = Tensor.fromArray(new TextEncoder().encode("{quant_type: nf4"), [16], "u8");
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(writeDir("not-json", { ...good, [`${p}.weight.quant_state.bitsandbytes__nf4`]: notJson }, cfg)), "ERR_CHECKPOINT",
      /model\.safetensors: "model\.layers\.0\.self_attn\.k_proj\.weight\.quant_state\.bitsandbytes__nf4": the quant_state tensor is not JSON/);
    // A quant state for another shape than the model's layer, and statistics of the wrong length.
    const other = Linear4bit.fromLinear(new Linear(66, 23), { quantType: "nf4", compressStatistics: true }).stateDict();
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(writeDir("wrong-shape", { ...good, [`${p}.weight.quant_state.bitsandbytes__nf4`]: other["weight.quant_state.bitsandbytes__nf4"] }, cfg)), "ERR_SHAPE",
      /quant state's shape \[23, 66\] is not the model's \[22, 66\] for model\.layers\.0\.self_attn\.k_proj/);
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(writeDir("short-absmax", { ...good, [`${p}.weight.absmax`]: Tensor.zeros([5], { dtype: "u8" }) }, cfg)), "ERR_SHAPE",
      /"model\.layers\.0\.self_attn\.k_proj\.weight\.absmax" has shape \[5\] in the file but \[23\] in the model/);
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(writeDir("f32-absmax", { ...good, [`${p}.weight.absmax`]: Tensor.zeros([23]) }, cfg)), "ERR_DTYPE",
      /"model\.layers\.0\.self_attn\.k_proj\.weight\.absmax" is F32, expected u8/);
    const typeKey = { ...without(`${p}.weight.quant_state.bitsandbytes__nf4`), [`${p}.weight.quant_state.bitsandbytes__fp4`]: good[`${p}.weight.quant_state.bitsandbytes__nf4`] };
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(writeDir("type-key", typeKey, cfg)), "ERR_CHECKPOINT", /holds quant_type nf4, its key says otherwise/);
    // config.json's quantization_config against the weights.
    const f32 = await loadSafetensors(join(src, "model.safetensors"));
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(writeDir("not-quantized", f32, cfg)), "ERR_CHECKPOINT", /quantization_config says the weights are nf4, but the checkpoint holds no bitsandbytes 4-bit layer/);
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(writeDir("fp4-says", good, bnb4("fp4", true, "bfloat16"))), "ERR_CHECKPOINT", /says fp4, but the checkpoint holds 14 nf4 layer/);
    const storage = { quantization_config: { ...cfg.quantization_config, bnb_4bit_quant_storage: "bfloat16" } };
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(writeDir("storage", good, storage)), "ERR_UNSUPPORTED", /"quantization_config\.bnb_4bit_quant_storage" is "bfloat16"/);
    await expectPeftAsync(LlamaForCausalLM.fromPretrained(writeDir("gptq", good, { quantization_config: { quant_method: "gptq", bits: 4 } })), "ERR_UNSUPPORTED", /quant_method" is "gptq"/);
  });
});

describe("pre-quantized int8 checkpoints (weight i8 + SCB + weight_format)", () => {
  it("load as Linear8bitLt with llm_int8_threshold; logits bit-equal to the model they were saved from", async () => {
    const q = await LlamaForCausalLM.fromPretrained(src, { quantize: "int8", threshold: 4 });
    const dir = join(tmp, "int8");
    writeLlama(q, dir, { config: { quantization_config: { quant_method: "bitsandbytes", load_in_8bit: true, llm_int8_threshold: 4.0 } } });
    const back = await LlamaForCausalLM.fromPretrained(dir);
    expect(kinds(back)).toEqual(kinds(q));
    expect(back.getSubmodule("model.layers.0.mlp.gate_proj", Linear8bitLt).threshold).toBe(4);
    expect(kinds(back).get("lm_head")).toBe("Linear");
    expect(Array.from(back.forward(ids).logits.toFloat32Array())).toEqual(Array.from(q.forward(ids).logits.toFloat32Array()));
    back.dispose();
    q.dispose();
  });
});

describe("generation with a 4-bit model", () => {
  it("off the main thread (the worker rebuilds the 4-bit layers over the shared codes) equals on it", async () => {
    const m = await LlamaForCausalLM.fromPretrained(join(tmp, "nf4-1"));
    const off = await m.generate([1, 5, 9], { maxNewTokens: 4, eosTokenId: null });
    const on = await m.generate([1, 5, 9], { maxNewTokens: 4, eosTokenId: null, offThread: false });
    expect(off.tokens).toEqual(on.tokens);
    expect(off.tokens.length).toBe(4);
    // With LoRA over the 4-bit layers (QLoRA), the adapters' B not zero so they change the logits.
    const peft = getPeftModel(m, new LoraConfig({ r: 4, targetModules: ["q_proj", "down_proj"], initLoraWeights: false }));
    const offLora = await peft.generate([1, 5, 9], { maxNewTokens: 4, eosTokenId: null });
    expect(offLora.tokens).toEqual((await peft.generate([1, 5, 9], { maxNewTokens: 4, eosTokenId: null, offThread: false })).tokens);
    peft.dispose();
  });
});
