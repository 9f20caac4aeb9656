// examples/finetune.mjs end to end (as `npm run example:finetune` runs it, from dist/): a tiny random Llama
// written in transformers' format with the llama-tiny fixture's tokenizer files, LoRA on all linear layers
// trained until it memorises three sentences; the adapter, the loss curve and the before/after generations.
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { Tokenizer } from "../lib/index.js";
import { sharpenHead, tinyLlama, writeLlama } from "./helpers/llama-models.js";
import { LLAMA_TINY_MODEL } from "./helpers/llama-fixture.js";
import { root } from "./helpers/child.js";

const dir = mkdtempSync(join(tmpdir(), "finetune-example-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const SENTENCES = ["the cat sat on the mat.", "hello world, the dogs ran!", "42 cats sat on 7 mats."];

describe("examples/finetune.mjs", () => {
  it("memorises a few sentences with LoRA, saves a PEFT adapter and draws the loss curve", () => {
    // vocab 97 = the fixture tokenizer's; eos 2 as its tokenizer_config.json says
    const model = tinyLlama({ vocabSize: 97, hiddenSize: 32, intermediateSize: 64, numHiddenLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2 }, 21);
    sharpenHead(model);
    const m = join(dir, "model");
    writeLlama(model, m, { config: { bos_token_id: 1, eos_token_id: 2 } });
    model.dispose();
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(LLAMA_TINY_MODEL, f), join(m, f));
    const data = join(dir, "data.jsonl");
    writeFileSync(data, SENTENCES.map((text) => JSON.stringify({ text })).join("\n") + "\n");
    const out = join(dir, "out");
    const log = execFileSync(process.execPath, [
      join(root, "examples", "finetune.mjs"), "--model", m, "--data", data, "--target", "all-linear", "--lr", "1e-2",
      "--epochs", "150", "--batch-size", "3", "--prompt", "the cat", "--max-new-tokens", "12", "--out", out,
    ], { cwd: dir, encoding: "utf8", timeout: 240_000 });
    expect(log).toMatch(/LoRA r=8 on 14 modules/);
    const summary = JSON.parse(readFileSync(join(out, "summary.json"), "utf8"));
    expect(summary.steps).toBe(150);
    expect(summary.losses[0]).toBeGreaterThan(2.5);
    // Memorised: every next token certain except the first after bos, a 1-in-3 choice nothing can learn,
    // which leaves ln 3 per sentence over the predicted positions (bos + text + eos, less one).
    const tok = Tokenizer.fromPretrained(m);
    const positions = SENTENCES.reduce((n, s) => n + tok.encode(s).length, 0);
    const floor = (SENTENCES.length * Math.log(3)) / positions;
    expect(summary.losses[summary.losses.length - 1]).toBeLessThan(floor + 0.02);
    // the rest of the first sentence, then eos (left out of the text)
    expect(summary.after.trim()).toBe("sat on the mat.");
    expect(summary.before.trim()).not.toBe("sat on the mat.");
    expect(existsSync(join(out, "adapter", "adapter_model.safetensors"))).toBe(true);
    const cfg = JSON.parse(readFileSync(join(out, "adapter", "adapter_config.json"), "utf8"));
    expect(cfg.peft_type).toBe("LORA");
    const svg = readFileSync(join(out, "loss.svg"), "utf8");
    expect(svg).toMatch(/^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    expect((svg.match(/<polyline[^>]*points="([^"]*)"/)![1].trim().split(" ")).length).toBe(150);
  });

  it("--int8 trains LoRA over an LLM.int8 base (the model written by the test above) and refuses --bf16 with it", () => {
    const m = join(dir, "model"), data = join(dir, "data.jsonl"), out = join(dir, "out-int8");
    const log = execFileSync(process.execPath, [
      join(root, "examples", "finetune.mjs"), "--model", m, "--data", data, "--int8", "--target", "all-linear", "--lr", "1e-2",
      "--epochs", "60", "--batch-size", "3", "--prompt", "the cat", "--max-new-tokens", "4", "--out", out,
    ], { cwd: dir, encoding: "utf8", timeout: 240_000 });
    expect(log).toMatch(/LoRA r=8 on 14 modules/);
    const summary = JSON.parse(readFileSync(join(out, "summary.json"), "utf8"));
    expect(summary.losses[summary.losses.length - 1]).toBeLessThan(summary.losses[0] / 2);
    expect(existsSync(join(out, "adapter", "adapter_model.safetensors"))).toBe(true);
    expect(() => execFileSync(process.execPath, [join(root, "examples", "finetune.mjs"), "--model", m, "--data", data, "--int8", "--bf16"], { cwd: dir, encoding: "utf8", stdio: "pipe" }))
      .toThrow(/--bf16 and --int8 exclude each other/);
  });

  it("names a bad data line", () => {
    const data = join(dir, "bad.jsonl");
    writeFileSync(data, '{"text": "ok"}\n{"txt": 1}\n');
    expect(() => execFileSync(process.execPath, [join(root, "examples", "finetune.mjs"), "--model", LLAMA_TINY_MODEL, "--data", data], { cwd: dir, encoding: "utf8", stdio: "pipe" }))
      .toThrow(/bad\.jsonl:2: expected an object with a "text" string/);
  });
});
