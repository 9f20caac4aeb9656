// Generation with prompt tuning, P-tuning and prefix tuning: the prompt (or prefix) is seeded into the KV
// cache by the first forward and decoding continues after it; cached logits equal full forwards' (any
// prefill split, a padded batch), cached greedy tokens equal uncached ones and a plain greedy loop, on this
// thread and on the worker (which gets the active adapter and the disabled state), and generateText with a
// prompt initialised from text through the model's tokenizer.
import { describe, expect, it } from "vitest";
import {
  F, LlamaForCausalLM, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, Tensor, generate, getPeftModel, noGrad, type PeftConfig, type PeftModel,
} from "../lib/index.js";
import { tinyLlama } from "./helpers/llama-models.js";
import { LLAMA_TINY_MODEL } from "./helpers/llama-fixture.js";
import { expectClose } from "./helpers/numeric.js";

const INIT = { vocabSize: 41, hiddenSize: 32, intermediateSize: 48, numHiddenLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2, attentionBias: true };
const N = 4;
const PROMPT = [3, 17, 5, 22, 9, 30];

const METHODS: [string, () => PeftConfig][] = [
  ["prompt tuning", () => new PromptTuningConfig({ numVirtualTokens: N })],
  ["P-tuning (LSTM)", () => new PromptEncoderConfig({ numVirtualTokens: N, encoderReparameterizationType: "LSTM", encoderHiddenSize: 8 })],
  ["prefix tuning", () => new PrefixTuningConfig({ numVirtualTokens: N })],
];

/** Greedy decoding by full forwards, the argmax of the last position (after any virtual tokens) each step. */
function greedy(model: PeftModel, prompt: number[], steps: number): number[] {
  const seq = [...prompt];
  for (let s = 0; s < steps; s++) {
    const next = noGrad(() => {
      const ids = Tensor.fromArray(seq, [1, seq.length], "i64");
      const { logits } = model.forward(ids);
      const last = F.narrow(logits, 1, logits.shape[1] - 1, 1), arg = F.argmax(last, -1);
      const v = arg.toFloat64Array()[0];
      for (const t of [ids, logits, last, arg]) t.dispose();
      return v;
    });
    seq.push(next);
  }
  return seq.slice(prompt.length);
}

// Cached and full forwards differ only in the order of attention's sums: f32 rounding (see generation.test.ts).
const tol = (want: ArrayLike<number>) => (i: number) => 2e-5 + 2e-5 * Math.abs(want[i]);

/** The last `keep` positions' logits of every row of one full forward. */
function fullTail(peft: PeftModel, rows: number[][], keep: number, mask?: number[][]): Float32Array {
  return noGrad(() => {
    const ids = Tensor.fromArray(rows.flat(), [rows.length, rows[0].length], "i64");
    const m = mask ? Tensor.fromArray(mask.flat(), [rows.length, rows[0].length], "i32") : null;
    const { logits } = peft.forward(ids, { attentionMask: m });
    const [B, T, V] = logits.shape;
    const all = logits.toFloat32Array(), out = new Float32Array(B * keep * V);
    for (let b = 0; b < B; b++) out.set(all.subarray((b * T + T - keep) * V, (b * T + T) * V), b * keep * V);
    return out;
  });
}

/** The same logits from a cache: the first `split` tokens as one prefill, then one token per forward. */
function cachedTail(peft: PeftModel, lm: LlamaForCausalLM, rows: number[][], split: number, mask?: number[][]): Float32Array {
  const B = rows.length, T = rows[0].length;
  const cache = lm.createCache({ batch: B, maxLength: peft.numVirtualTokens + T });
  const parts: Float32Array[][] = rows.map(() => []);
  noGrad(() => {
    for (let at = 0; at < T; at = at === 0 ? split : at + 1) {
      const len = at === 0 ? split : 1;
      const ids = Tensor.fromArray(rows.flatMap((r) => r.slice(at, at + len)), [B, len], "i64");
      const m = mask ? Tensor.fromArray(mask.flatMap((r) => r.slice(0, at + len)), [B, at + len], "i32") : null;
      const { logits } = peft.forward(ids, { pastKeyValues: cache, attentionMask: m });
      const V = logits.shape[2], L = logits.shape[1], v = logits.toFloat32Array();
      // The prefill of prompt tuning also returns the virtual tokens' logits: keep the input's.
      for (let b = 0; b < B; b++) parts[b].push(v.slice((b * L + L - len) * V, (b * L + L) * V));
      logits.dispose();
    }
  });
  expect(cache.length).toBe(peft.numVirtualTokens + T);
  cache.dispose();
  return Float32Array.from(parts.flatMap((p) => p.flatMap((x) => [...x])));
}

describe.each(METHODS)("%s", (_name, config) => {
  it("cached logits equal full-forward logits (any prefill split, a left-padded batch)", () => {
    const lm = tinyLlama(INIT, 21).eval();
    const peft = getPeftModel(lm, config()).eval();
    const want = fullTail(peft, [PROMPT], PROMPT.length);
    for (const split of [1, 4, PROMPT.length]) expectClose(cachedTail(peft, lm, [PROMPT], split), want, tol(want), `split ${split}`);
    const rows = [PROMPT, [0, 0, 8, 12, 40, 2]], mask = [[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]];
    const wantB = fullTail(peft, rows, PROMPT.length, mask);
    expectClose(cachedTail(peft, lm, rows, 3, mask), wantB, tol(wantB), "padded batch");
    peft.dispose();
  });

  it("greedy tokens: cached = uncached = a plain loop, on this thread and on the worker; disabled = the base model's", async () => {
    const lm = tinyLlama(INIT, 22).eval();
    const peft = getPeftModel(lm, config()).eval();
    const opts = { maxNewTokens: 8, eosTokenId: null };
    const cached = await generate(peft, PROMPT, { ...opts, offThread: false });
    expect((await generate(peft, PROMPT, { ...opts, offThread: false, useCache: false })).tokens).toEqual(cached.tokens);
    expect(cached.tokens).toEqual(greedy(peft, PROMPT, 8));
    expect((await generate(peft, PROMPT, opts)).tokens).toEqual(cached.tokens);
    const base = await generate(lm, PROMPT, { ...opts, offThread: false });
    {
      using _ = peft.disableAdapter();
      expect((await generate(peft, PROMPT, opts)).tokens).toEqual(base.tokens);
      expect((await generate(peft, PROMPT, { ...opts, offThread: false })).tokens).toEqual(base.tokens);
    }
    expect(cached.tokens).not.toEqual(base.tokens);
    peft.dispose();
  });
});

describe("text", () => {
  it("TEXT init takes the word embeddings of the text's tokens (repeated to length); generateText continues with the prompt", async () => {
    const lm = await LlamaForCausalLM.fromPretrained(LLAMA_TINY_MODEL);
    const text = "hello world";
    const peft = getPeftModel(lm, new PromptTuningConfig({ numVirtualTokens: 7, promptTuningInit: "TEXT", promptTuningInitText: text, tokenizerNameOrPath: LLAMA_TINY_MODEL }));
    const { Tokenizer } = await import("../lib/tokenizer/tokenizer.js");
    const ids = Tokenizer.fromPretrained(LLAMA_TINY_MODEL).encode(text);
    const want = Array.from({ length: 7 }, (_, i) => ids[i % ids.length]);
    const words = lm.model.embed_tokens.weight.toFloat64Array(), E = lm.config.hiddenSize;
    const got = [...peft.namedParameters()].find(([n]) => n.endsWith("embedding.weight"))![1].toFloat64Array();
    want.forEach((id, r) => expect(Array.from(got.subarray(r * E, (r + 1) * E))).toEqual(Array.from(words.subarray(id * E, (id + 1) * E))));
    peft.eval();
    const out = await peft.generateText("the quick", { maxNewTokens: 6, eosTokenId: null, offThread: false });
    const tokens = (await generate(peft, Tokenizer.fromPretrained(LLAMA_TINY_MODEL).encode("the quick"), { maxNewTokens: 6, eosTokenId: null, offThread: false })).tokens;
    expect(out).toBe(Tokenizer.fromPretrained(LLAMA_TINY_MODEL).decode(tokens, { skipSpecialTokens: true }));
    peft.dispose();
  });

  it("SAMPLE_VOCAB init takes rows of the word embeddings", () => {
    const lm = tinyLlama(INIT, 23);
    const peft = getPeftModel(lm, new PromptTuningConfig({ numVirtualTokens: 5, promptTuningInit: "SAMPLE_VOCAB" }));
    const words = lm.model.embed_tokens.weight.toFloat64Array(), E = INIT.hiddenSize;
    const got = [...peft.namedParameters()].find(([n]) => n.endsWith("embedding.weight"))![1].toFloat64Array();
    for (let r = 0; r < 5; r++) {
      const row = Array.from(got.subarray(r * E, (r + 1) * E));
      const hit = Array.from({ length: INIT.vocabSize }, (_, v) => v).some((v) => row.every((x, i) => x === words[v * E + i]));
      expect(hit, `row ${r}`).toBe(true);
    }
    peft.dispose();
  });
});
