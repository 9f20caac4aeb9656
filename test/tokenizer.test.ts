// Tokenizer.fromPretrained on the llama-tiny fixture (ids checked against the tokenizers library in
// case.json), chat templates through jinja, generateText on a model and a PeftModel, and bad files.
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { LlamaForCausalLM, LoraConfig, Tokenizer, generate, getPeftModel } from "../lib/index.js";
import { LLAMA_TINY_MODEL, llamaTiny } from "./helpers/llama-fixture.js";

const dir = mkdtempSync(join(tmpdir(), "tokenizer-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Sample { text: string; ids: number[]; ids_with_special_tokens: number[]; tokens: string[]; decoded_skip_special_tokens: string }
const samples: Sample[] = (llamaTiny().caseJson as unknown as { tokenizer: { samples: Sample[] } }).tokenizer.samples;

// A Llama-2-style chat template (the shape of TinyLlama-Chat's), small enough to check by eye.
const TEMPLATE = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ ' ' }}{% endif %}";

describe("Tokenizer", () => {
  const tok = Tokenizer.fromPretrained(LLAMA_TINY_MODEL);

  it("encodes and decodes the fixture's samples as the tokenizers library does", () => {
    expect(samples.length).toBeGreaterThanOrEqual(3);
    for (const s of samples) {
      expect(tok.encode(s.text), s.text).toEqual(s.ids_with_special_tokens);
      expect(tok.encode(s.text, { addSpecialTokens: false }), s.text).toEqual(s.ids);
      expect(s.ids.map((i) => tok.idToToken(i))).toEqual(s.tokens);
      expect(tok.decode(s.ids_with_special_tokens, { skipSpecialTokens: true })).toBe(s.decoded_skip_special_tokens);
    }
    expect(tok.decode([1, 71, 61, 93])).toBe("<s> hello world");
    expect([tok.bosTokenId, tok.eosTokenId, tok.padTokenId, tok.vocabSize]).toEqual([1, 2, null, 97]);
    expect(tok.tokenToId("▁hello")).toBe(71);
    expect(tok.tokenToId("nope")).toBe(null);
  });

  it("renders tokenizer_config.json's chat template with the special tokens", () => {
    const d = join(dir, "chat");
    mkdirSync(d);
    copyFileSync(join(LLAMA_TINY_MODEL, "tokenizer.json"), join(d, "tokenizer.json"));
    const cfg = JSON.parse(readFileSync(join(LLAMA_TINY_MODEL, "tokenizer_config.json"), "utf8"));
    writeFileSync(join(d, "tokenizer_config.json"), JSON.stringify({ ...cfg, chat_template: TEMPLATE }));
    const chat = Tokenizer.fromPretrained(d);
    const msgs = [{ role: "user", content: "hello" }, { role: "assistant", content: "the cat" }, { role: "user", content: "sat" }];
    expect(chat.applyChatTemplate(msgs)).toBe("<s>[INST] hello [/INST] the cat</s>[INST] sat [/INST] ");
    expect(chat.applyChatTemplate(msgs.slice(0, 1), { addGenerationPrompt: false })).toBe("<s>[INST] hello [/INST]");
    expect(() => tok.applyChatTemplate(msgs)).toThrow(/has no chat_template/);
    expect(() => chat.applyChatTemplate(msgs, { chatTemplate: "{% for %}" })).toThrow(/chat template does not parse/);
    expect(() => chat.applyChatTemplate([{ role: "user" }] as never)).toThrow(/messages must be an array of \{role, content\}/);
  });

  it("names the file when tokenizer files are missing or broken", () => {
    expect(() => Tokenizer.fromPretrained(join(dir, "none"))).toThrow(/has no tokenizer\.json/);
    const d = join(dir, "broken");
    mkdirSync(d);
    writeFileSync(join(d, "tokenizer.json"), "{ not json");
    expect(() => Tokenizer.fromPretrained(d)).toThrow(/broken\/tokenizer\.json is not a valid tokenizer\.json/);
    writeFileSync(join(d, "tokenizer.json"), JSON.stringify({ model: { type: "Nonsense" } }));
    expect(() => Tokenizer.fromPretrained(d)).toThrow(/not one the tokenizers library can build/);
    expect(() => tok.encode(5 as unknown as string)).toThrow(/text must be a string/);
    expect(() => tok.decode([1, -2])).toThrow(/ids must be an array of token ids/);
  });
});

describe("generateText", () => {
  it("continues a text prompt with the model directory's tokenizer, on the model and on a PeftModel", async () => {
    const model = (await LlamaForCausalLM.fromPretrained(LLAMA_TINY_MODEL)).eval();
    const tok = Tokenizer.fromPretrained(LLAMA_TINY_MODEL);
    const prompt = "the cat sat on the";
    const ids = (await generate(model, tok.encode(prompt), { maxNewTokens: 6 })).tokens;
    const pieces: string[] = [];
    const text = await model.generateText(prompt, { maxNewTokens: 6, onText: (p) => pieces.push(p) });
    expect(text).toBe(tok.decode(ids, { skipSpecialTokens: true }));
    expect(pieces.join("")).toBe(text);
    const peft = getPeftModel(model, new LoraConfig({ r: 2 }));
    // a fresh LoRA adapter (B = 0) leaves the output unchanged
    expect(await peft.generateText(prompt, { maxNewTokens: 6 })).toBe(text);
    await expect(peft.generateText(5 as unknown as string)).rejects.toThrow(/prompt must be a string or an array of chat messages/);
    // chat messages go through the chat template, whose text already holds bos
    const chat = new Tokenizer(JSON.parse(readFileSync(join(LLAMA_TINY_MODEL, "tokenizer.json"), "utf8")), { bos_token: "<s>", eos_token: "</s>", chat_template: TEMPLATE });
    const msgs = [{ role: "user", content: "the cat" }];
    const chatIds = chat.encode(chat.applyChatTemplate(msgs), { addSpecialTokens: false });
    expect(chatIds[0]).toBe(1);
    const want = (await generate(peft, chatIds, { maxNewTokens: 5 })).tokens;
    expect(await peft.generateText(msgs, { tokenizer: chat, maxNewTokens: 5 })).toBe(chat.decode(want, { skipSpecialTokens: true }));
    peft.dispose();
  });
});
