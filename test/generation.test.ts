// Decoding: a KV cache that gives the logits and tokens of full forwards (plain, GQA with q/k/v bias, bf16;
// LoRA adapters active, merged and disabled), the llama-tiny fixture's greedy ids, transformers' sampling
// processors against plain float64 versions, seeded sampling, stop tokens, streaming that leaves the event
// loop running, abort, and bad arguments.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { AdamW, KVCache, LlamaForCausalLM, LoraConfig, Tensor, backend, generate, getPeftModel, manualSeed, noGrad, streamTokens } from "../lib/index.js";
import { native } from "../lib/native.js";
import { handleOf } from "../lib/tensor.js";
import { applyRepetitionPenalty, resolveSampling, warpedProbs } from "../lib/generation/sampling.js";
import { tinyLlama, writeLlama } from "./helpers/llama-models.js";
import { LLAMA_TINY_MODEL, greedy, llamaTiny } from "./helpers/llama-fixture.js";
import { expectClose } from "./helpers/numeric.js";

const dir = mkdtempSync(join(tmpdir(), "generation-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const V = 61;
const small = { vocabSize: V, hiddenSize: 48, intermediateSize: 80, numHiddenLayers: 3, numAttentionHeads: 6, numKeyValueHeads: 2, attentionBias: true };
const PROMPT = [3, 17, 42, 8, 25, 60, 1];

/** Logits of every position of `ids` [1, T] from one full forward. */
function fullLogits(model: { forward: LlamaForCausalLM["forward"] }, ids: number[]): Float32Array {
  return noGrad(() => {
    const t = Tensor.fromArray(ids, [1, ids.length], "i64");
    const { logits } = model.forward(t);
    const v = logits.toFloat32Array();
    logits.dispose();
    t.dispose();
    return v;
  });
}

/** The same logits from a cache: the first `split` tokens as one prefill, then one token per forward. */
function cachedLogits(model: { forward: LlamaForCausalLM["forward"] }, lm: LlamaForCausalLM, ids: number[], split: number): Float32Array {
  const cache = lm.createCache({ maxLength: ids.length + 2 });
  const parts: Float32Array[] = [];
  noGrad(() => {
    for (const chunk of [ids.slice(0, split), ...ids.slice(split).map((t) => [t])]) {
      const t = Tensor.fromArray(chunk, [1, chunk.length], "i64");
      const { logits, pastKeyValues } = model.forward(t, { pastKeyValues: cache });
      expect(pastKeyValues).toBe(cache);
      parts.push(logits.toFloat32Array());
      logits.dispose();
      t.dispose();
    }
  });
  expect(cache.length).toBe(ids.length);
  cache.dispose();
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, at), (at += p.length);
  return out;
}

// Cached and full forwards differ only in summation order inside attention (keys in chunks vs at once):
// f32 rounding, ~1e-6 relative on logits of magnitude ~1 after 3 layers; bf16 activations round each
// layer's output to 8 bits (2^-8), so the two orders may differ by a few bf16 ulps of the logits.
const tolF32 = (want: ArrayLike<number>) => (i: number) => 2e-5 + 2e-5 * Math.abs(want[i]);
const tolBf16 = (want: ArrayLike<number>) => (i: number) => 0.06 + 0.03 * Math.abs(want[i]);

describe("KV cache", () => {
  it("cached logits equal full-forward logits (f32, GQA, q/k/v bias), any prefill split", () => {
    const model = tinyLlama(small, 11).eval();
    const ids = [...PROMPT, 9, 33, 50, 2, 14];
    const want = fullLogits(model, ids);
    for (const split of [1, 5, ids.length]) expectClose(cachedLogits(model, model, ids, split), want, tolF32(want), `split ${split}`);
    model.dispose();
  });

  it("bf16 mode: the cache holds bf16 and its logits stay within bf16 rounding of the full forward's", () => {
    const model = tinyLlama(small, 12, "bf16").eval();
    const cache = model.createCache({ maxLength: 4 });
    expect(cache.dtype).toBe("bf16");
    expect(cache.nbytes).toBe(2 * 3 * 4 * 2 * 8 * 2);
    cache.dispose();
    const ids = [...PROMPT, 9, 33];
    const want = fullLogits(model, ids);
    expectClose(cachedLogits(model, model, ids, 3), want, tolBf16(want), "bf16");
    model.dispose();
  });

  for (const mode of ["active", "merged", "disabled"] as const) {
    it(`with LoRA ${mode}: cached logits and greedy tokens equal uncached ones`, async () => {
      const lm = tinyLlama(small, 13).eval();
      const peft = getPeftModel(lm, new LoraConfig({ r: 4, loraAlpha: 8, targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"], initLoraWeights: false }));
      peft.eval();
      let scope: Disposable | null = null;
      if (mode === "merged") peft.mergeAdapter();
      if (mode === "disabled") scope = peft.disableAdapter();
      const ids = [...PROMPT, 9, 33, 50];
      const want = fullLogits(peft, ids);
      expectClose(cachedLogits(peft, lm, ids, 4), want, tolF32(want), mode);
      const cached = await generate(peft, PROMPT, { maxNewTokens: 12, eosTokenId: null });
      // the default decodes on a worker thread over the shared weights; this one on the test's thread
      const full = await generate(peft, PROMPT, { maxNewTokens: 12, eosTokenId: null, useCache: false, offThread: false });
      expect(cached.tokens).toEqual(full.tokens);
      expect(cached.tokens).toEqual(greedy(peft, PROMPT, 12));
      // generation runs in eval mode (LoRA dropout off) on either thread and leaves the mode as it was
      if (mode === "active") {
        const drop = getPeftModel(tinyLlama(small, 13), new LoraConfig({ r: 4, loraDropout: 0.5, initLoraWeights: false }));
        drop.train();
        const inline = await generate(drop, PROMPT, { maxNewTokens: 6, eosTokenId: null, offThread: false });
        expect(drop.training).toBe(true);
        drop.eval();
        expect(await generate(drop, PROMPT, { maxNewTokens: 6, eosTokenId: null })).toEqual(inline);
        expect(inline.tokens).toEqual(greedy(drop, PROMPT, 6));
        drop.dispose();
      }
      scope?.[Symbol.dispose]();
      peft.dispose();
    });
  }

  it("useCache starts a cache; a cache too short, of another batch size or a mask of the wrong length is an error", () => {
    const model = tinyLlama(small, 14).eval();
    noGrad(() => {
      const ids = Tensor.fromArray(PROMPT, [1, PROMPT.length], "i64");
      const out = model.forward(ids, { useCache: true, cacheLength: 9 });
      expect(out.pastKeyValues).toBeInstanceOf(KVCache);
      expect(out.pastKeyValues!.length).toBe(PROMPT.length);
      expect(() => model.forward(ids, { pastKeyValues: out.pastKeyValues })).toThrow(/7 cached \+ 7 new positions exceed the KV cache's maxLength 9/);
      const one = Tensor.fromArray([5], [1, 1], "i64");
      const mask = Tensor.fromArray([1, 1], [1, 2], "i64");
      expect(() => model.forward(one, { pastKeyValues: out.pastKeyValues, attentionMask: mask })).toThrow(/attentionMask has shape \[1, 2\], expected \[1, 8\]/);
      // logitsToKeep: the head over the last positions only, the same values
      const last2 = model.forward(Tensor.fromArray([9, 4], [1, 2], "i64"), { pastKeyValues: out.pastKeyValues, logitsToKeep: 1 }).logits;
      expect(last2.shape).toEqual([1, 1, V]);
      last2.dispose();
      const full = model.forward(ids).logits, tail = model.forward(ids, { logitsToKeep: 3 }).logits;
      expect(tail.shape).toEqual([1, 3, V]);
      expect(Array.from(tail.toFloat32Array())).toEqual(Array.from(full.toFloat32Array().subarray((PROMPT.length - 3) * V)));
      expect(() => model.forward(ids, { logitsToKeep: 1, labels: ids })).toThrow(/logitsToKeep cannot be combined with labels/);
      expect(() => model.forward(ids, { logitsToKeep: -1 })).toThrow(/logitsToKeep must be a non-negative integer/);
      for (const t of [full, tail]) t.dispose();
      const two = model.createCache({ batch: 2, maxLength: 8 });
      expect(() => model.forward(ids, { pastKeyValues: two })).toThrow(/holds 2 rows, the input has 1/);
      expect(() => model.forward(ids, { pastKeyValues: {} as KVCache })).toThrow(/pastKeyValues must be a KVCache/);
      expect(() => model.createCache({ maxLength: 0 })).toThrow(/maxLength must be a positive integer/);
      for (const t of [ids, one, mask, out.logits]) t.dispose();
      out.pastKeyValues!.dispose();
      two.dispose();
    });
    model.dispose();
  });
});

describe("generate", () => {
  it("reproduces llama-tiny's greedy ids with and without the cache", async () => {
    const fx = llamaTiny();
    const model = (await LlamaForCausalLM.fromPretrained(LLAMA_TINY_MODEL)).eval();
    const prompt = Array.from(fx.inputs.generation_prompt.toFloat64Array());
    const want = Array.from(fx.expected.generated_ids.toFloat64Array());
    expect((await generate(model, prompt, { maxNewTokens: want.length })).tokens).toEqual(want);
    expect((await generate(model, fx.inputs.generation_prompt, { maxNewTokens: want.length, useCache: false })).tokens).toEqual(want);
    model.dispose();
  });

  it("stops at eos from config.json / generation_config.json and at user stop ids", async () => {
    const base = tinyLlama(small, 15);
    const free = (await generate(base.eval(), PROMPT, { maxNewTokens: 10, eosTokenId: null })).tokens;
    writeLlama(base, join(dir, "eos"), { config: { eos_token_id: free[3] } });
    const model = (await LlamaForCausalLM.fromPretrained(join(dir, "eos"))).eval();
    expect(model.generationDefaults!.eosTokenId).toEqual([free[3]]);
    // the first occurrence of free[3] ends it
    const at = free.indexOf(free[3]);
    expect(await generate(model, PROMPT, { maxNewTokens: 10 })).toEqual({ tokens: free.slice(0, at + 1), finishReason: "stop" });
    expect(await generate(model, PROMPT, { maxNewTokens: 10, eosTokenId: null, stopTokenIds: [free[1]] })).toEqual({ tokens: free.slice(0, free.indexOf(free[1]) + 1), finishReason: "stop" });
    expect(await generate(model, PROMPT, { maxNewTokens: 2, eosTokenId: [] })).toEqual({ tokens: free.slice(0, 2), finishReason: "length" });
    writeFileSync(join(dir, "eos", "generation_config.json"), JSON.stringify({ eos_token_id: [free[0], 0], max_new_tokens: 4 }));
    const again = await LlamaForCausalLM.fromPretrained(join(dir, "eos"));
    expect(again.generationDefaults!.eosTokenId).toEqual([free[0], 0]);
    expect((await generate(again.eval(), PROMPT)).tokens).toEqual(free.slice(0, 1));
    expect((await generate(again, PROMPT, { eosTokenId: null })).tokens).toEqual(free.slice(0, 4));
    for (const m of [base, model, again]) m.dispose();
  });

  it("samples reproducibly from a seed; topK 1 is greedy; other seeds give other tokens", async () => {
    const model = tinyLlama(small, 16).eval();
    const opts = { maxNewTokens: 16, eosTokenId: null, doSample: true, temperature: 1.5 };
    const a = await generate(model, PROMPT, { ...opts, seed: 5 });
    expect((await generate(model, PROMPT, { ...opts, seed: 5 })).tokens).toEqual(a.tokens);
    const others = await Promise.all([6, 7, 8].map((seed) => generate(model, PROMPT, { ...opts, seed })));
    expect(others.some((o) => o.tokens.join() !== a.tokens.join())).toBe(true);
    // the worker samples what this thread would: seeded, and from the global generator's next stream
    expect((await generate(model, PROMPT, { ...opts, seed: 5, offThread: false })).tokens).toEqual(a.tokens);
    manualSeed(3);
    const unseeded = await generate(model, PROMPT, { ...opts, topP: 0.9, topK: 20, repetitionPenalty: 1.2 });
    manualSeed(3);
    expect((await generate(model, PROMPT, { ...opts, topP: 0.9, topK: 20, repetitionPenalty: 1.2, offThread: false })).tokens).toEqual(unseeded.tokens);
    const greedyIds = (await generate(model, PROMPT, { maxNewTokens: 16, eosTokenId: null })).tokens;
    expect((await generate(model, PROMPT, { ...opts, seed: 5, topK: 1 })).tokens).toEqual(greedyIds);
    model.dispose();
  });

  it("streams tokens while timers keep firing, and stops on abort", async () => {
    const model = tinyLlama({ ...small, hiddenSize: 96, intermediateSize: 256 }, 17).eval();
    let ticks = 0;
    const timer = setInterval(() => ticks++, 0);
    const seen: number[] = [];
    const ticksAt: number[] = [];
    // decoding here first packs the weights for the GEMMs (a form cached with each weight's storage, so the
    // worker finds it too)
    const here = (await generate(model, PROMPT, { maxNewTokens: 24, eosTokenId: null, offThread: false })).tokens;
    const bytes0 = backend.memory().bytes;
    let grew = 0;
    for await (const t of streamTokens(model, PROMPT, { maxNewTokens: 24, eosTokenId: null })) {
      seen.push(t), ticksAt.push(ticks);
      grew = Math.max(grew, backend.memory().bytes - bytes0);
    }
    clearInterval(timer);
    expect(seen).toEqual(here);
    // the worker wraps the weights' storage (the byte count is process-wide): it copies none of them and
    // packs none again; what grows is its KV cache and activations
    const weightBytes = [...model.parameters()].reduce((n, p) => n + 4 * p.numel, 0);
    expect(grew).toBeLessThan(0.25 * weightBytes);
    // the interval ran during generation, not only before or after it
    expect(ticksAt[ticksAt.length - 1] - ticksAt[0]).toBeGreaterThan(5);
    const ac = new AbortController();
    const got: number[] = [];
    await expect((async () => {
      for await (const t of streamTokens(model, PROMPT, { maxNewTokens: 24, eosTokenId: null, signal: ac.signal })) {
        got.push(t);
        if (got.length === 3) ac.abort();
      }
    })()).rejects.toMatchObject({ name: "AbortError" });
    expect(got.length).toBe(3);
    model.dispose();
  });

  it("a tied head decodes on the worker as on this thread, two generations run at once, the model stays usable", async () => {
    const model = tinyLlama({ ...small, tieWordEmbeddings: true }, 19).eval();
    const here = await generate(model, PROMPT, { maxNewTokens: 10, eosTokenId: null, offThread: false });
    expect(await generate(model, PROMPT, { maxNewTokens: 10, eosTokenId: null })).toEqual(here);
    expect(await generate(model, PROMPT, { maxNewTokens: 10, eosTokenId: null })).toEqual(here);
    expect(fullLogits(model, PROMPT).length).toBe(PROMPT.length * V);
    // two at once: two workers reading the same weights, the native pool's jobs queued between them
    const both = await Promise.all([generate(model, PROMPT, { maxNewTokens: 10, eosTokenId: null }), generate(model, PROMPT.slice(2), { maxNewTokens: 10, eosTokenId: null })]);
    expect(both[0]).toEqual(here);
    expect(both[1]).toEqual(await generate(model, PROMPT.slice(2), { maxNewTokens: 10, eosTokenId: null, offThread: false }));
    model.dispose();
  });

  it("an int8 model, bare and with LoRA on its int8 projections, decodes on the worker as on this thread", async () => {
    const src = tinyLlama(small, 23);
    const at = join(dir, "int8-src");
    writeLlama(src, at);
    src.dispose();
    const model = (await LlamaForCausalLM.fromPretrained(at, { quantize: "int8" })).eval();
    const opts = { maxNewTokens: 8, eosTokenId: null };
    const here = await generate(model, PROMPT, { ...opts, offThread: false });
    expect(await generate(model, PROMPT, opts)).toEqual(here);
    const peft = getPeftModel(model, new LoraConfig({ r: 4, targetModules: ["q_proj", "v_proj"], initLoraWeights: false })).eval();
    const withLora = await generate(peft, PROMPT, { ...opts, offThread: false });
    expect(await generate(peft, PROMPT, opts)).toEqual(withLora);
    peft.dispose();
  });

  it("while a worker decodes, writing the weights in place is ERR_TENSOR_BUSY; reading them is not; afterwards both are", async () => {
    const model = tinyLlama(small, 29).eval();
    const peft = getPeftModel(model, new LoraConfig({ r: 4, targetModules: ["q_proj", "v_proj"], initLoraWeights: false })).eval();
    const opts = { maxNewTokens: 12, eosTokenId: null };
    const here = (await generate(peft, PROMPT, { ...opts, offThread: false })).tokens;
    const w = [...peft.namedParameters()].find(([n]) => n.endsWith("q_proj.base_layer.weight"))![1];
    const a = [...peft.namedParameters()].find(([n]) => n.includes("lora_A"))![1];
    const opt = new AdamW([a], { lr: 0.1 });
    const busy = expect.objectContaining({ code: "ERR_TENSOR_BUSY" });
    const seen: number[] = [];
    for await (const t of streamTokens(peft, PROMPT, opts)) {
      if (seen.length === 1) {
        expect(() => w.copyFrom(w.to("f32"))).toThrow(busy);
        expect(() => peft.mergeAdapter()).toThrow(busy);
        a.grad = Tensor.fromArray(new Array(a.numel).fill(1), a.shape);
        expect(() => opt.step()).toThrow(busy);
        expect(() => w.bytes({ writable: true })).toThrow(busy);
        // reads go on: a forward here while the worker decodes
        expect(fullLogits(peft, PROMPT).length).toBe(PROMPT.length * V);
      }
      seen.push(t);
    }
    // nothing was written: the worker's tokens are this thread's
    expect(seen).toEqual(here);
    opt.step();
    peft.mergeAdapter();
    peft.dispose();
  });

  it("rejects bad prompts and options with errors naming them", async () => {
    const model = tinyLlama(small, 18).eval();
    await expect(generate(model, [], {})).rejects.toThrow(/the prompt is empty/);
    await expect(generate(model, [1, V], {})).rejects.toThrow(/prompt\[1\] = 61 is not a token id in \[0, 61\)/);
    await expect(generate(model, [1.5], {})).rejects.toThrow(/prompt\[0\]/);
    await expect(generate(model, [1], { temperature: 0 })).rejects.toThrow(/temperature must be a positive number/);
    await expect(generate(model, [1], { topP: 1.5 })).rejects.toThrow(/topP must be in \(0, 1\]/);
    await expect(generate(model, [1], { topK: -1 })).rejects.toThrow(/topK must be a non-negative integer/);
    await expect(generate(model, [1], { maxNewTokens: 1.5 })).rejects.toThrow(/maxNewTokens must be a non-negative integer/);
    await expect(generate(model, [1], { offThread: 1 as unknown as boolean })).rejects.toThrow(/offThread must be a boolean/);
    await expect(generate(model, [1], { stopTokenIds: ["a" as unknown as number] })).rejects.toThrow(/stopTokenIds must be/);
    await expect(generate({} as LlamaForCausalLM, [1], {})).rejects.toThrow(/model must be a LlamaForCausalLM or a PeftModel/);
    const two = Tensor.fromArray([1, 2], [2, 1], "i64");
    await expect(generate(model, two, {})).rejects.toThrow(/must be \[1, seq\]/);
    two.dispose();
    expect((await generate(model, [1], { maxNewTokens: 0 })).tokens).toEqual([]);
    model.dispose();
  });
});

describe("shared tensors (what the generation worker adopts)", () => {
  it("wraps the same storage under an id until released; bad ids and non-tensors are errors", () => {
    const t = Tensor.fromArray([1, 2, 3], [3]);
    const id = native.shareTensor(handleOf(t, "test", "t"));
    const other = new Tensor(native.adoptSharedTensor(id));
    expect(Array.from(other.toFloat32Array())).toEqual([1, 2, 3]);
    const two = Tensor.fromArray([7, 8, 9], [3]);
    // while lent, the storage refuses in-place writes through either handle (a reader may be using it)
    for (const w of [t, other]) expect(() => w.copyFrom(two)).toThrow(expect.objectContaining({ code: "ERR_TENSOR_BUSY", message: expect.stringMatching(/^copyFrom: this is being read by another thread/) }));
    expect(native.releaseSharedTensor(id)).toBe(true);
    expect(native.releaseSharedTensor(id)).toBe(false);
    t.copyFrom(two);
    // the same memory: a write through one handle shows through the other
    expect(Array.from(other.toFloat32Array())).toEqual([7, 8, 9]);
    expect(() => native.adoptSharedTensor(id)).toThrow(expect.objectContaining({ code: "ERR_STATE", message: expect.stringMatching(/no tensor is shared under id/) }));
    expect(() => native.adoptSharedTensor(0)).toThrow(/adoptSharedTensor/);
    expect(() => native.shareTensor({} as never)).toThrow(/shareTensor/);
    // the adopted handle keeps the storage alive after the original is disposed
    t.dispose();
    expect(Array.from(other.toFloat32Array())).toEqual([7, 8, 9]);
    for (const x of [other, two]) x.dispose();
  });
});

describe("sampling processors against float64 definitions", () => {
  const logits = Float64Array.from({ length: 37 }, (_, i) => Math.sin(i * 1.7) * 3);

  it("repetition penalty divides positive and multiplies negative logits of seen tokens once each", () => {
    const x = Float64Array.from(logits);
    applyRepetitionPenalty(x, [1, 4, 4, 36], 1.3);
    for (let i = 0; i < 37; i++) {
      const s = logits[i];
      const want = [1, 4, 36].includes(i) ? (s < 0 ? s * 1.3 : s / 1.3) : s;
      expect(x[i]).toBe(want);
    }
  });

  it("temperature, top-k (ties with the k-th kept) and top-p (the crossing token kept) as transformers", () => {
    for (const [temperature, topK, topP] of [[0.7, 0, 1], [1, 5, 1], [1.3, 0, 0.6], [0.9, 7, 0.8], [1, 1, 1], [1, 0, 1e-9]]) {
      const s = resolveSampling({ doSample: true, temperature, topK, topP });
      const p = warpedProbs(logits, s);
      const z = Array.from(logits, (v) => v / temperature);
      const sorted = [...z].sort((a, b) => b - a);
      let keep = z.map((v) => (topK > 0 ? v >= sorted[topK - 1] : true));
      const m = Math.max(...z);
      let e = z.map((v, i) => (keep[i] ? Math.exp(v - m) : 0));
      let sum = e.reduce((a, b) => a + b, 0);
      e = e.map((v) => v / sum);
      if (topP < 1) {
        // transformers: sort ascending, drop where the cumulative sum <= 1 - topP, keep the top token always
        const asc = e.map((v, i) => [v, i]).sort((a, b) => a[0] - b[0]);
        let cum = 0;
        keep = e.map(() => true);
        for (const [v, i] of asc.slice(0, -1)) if ((cum += v) <= 1 - topP) keep[i] = false;
        e = e.map((v, i) => (keep[i] ? v : 0));
        sum = e.reduce((a, b) => a + b, 0);
        e = e.map((v) => v / sum);
      }
      expectClose(p, e, () => 1e-12, `T ${temperature} k ${topK} p ${topP}`);
    }
  });
});
