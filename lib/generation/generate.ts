// Autoregressive decoding of a causal LM (LlamaForCausalLM, or a PeftModel around one: adapters active,
// merged or disabled apply as in its forward). One prefill forward over the prompt fills a KV cache, then
// one forward per new token; each token is picked from the last position's logits (greedy, or sampled
// with transformers' processors). By default the whole loop runs on a worker thread that wraps the same
// native weight storage (see shared-model.ts), so the calling thread's event loop only relays tokens.
import { setImmediate as nextTurn } from "node:timers/promises";
import { Tensor } from "../tensor.js";
import { describe, optionsArg, peftError, typeError } from "../errors.js";
import { noGrad } from "../autograd/grad-mode.js";
import * as F from "../functional/index.js";
import { takeRng } from "../random.js";
import { abortError } from "../io/model-loader.js";
import { LlamaForCausalLM } from "../models/llama.js";
import type { KVCache } from "../models/kv-cache.js";
import { nextToken, resolveSampling, type SamplingOptions } from "./sampling.js";
import { workerTokens } from "./worker-client.js";

export interface GenerateOptions extends SamplingOptions {
  /** The most tokens to add (default: generation_config.json's max_new_tokens, else 20 as transformers). */
  maxNewTokens?: number;
  /** Stop after any of these (default: the model directory's eos_token_id); null for none. */
  eosTokenId?: number | number[] | null;
  /** Further ids that end generation (the stop token is part of the output, as transformers returns it). */
  stopTokenIds?: number[];
  /** Seeds the sampling draws (Philox, the library's generator): the same seed gives the same tokens. */
  seed?: number;
  /** Decode against a KV cache (default) or rerun the whole sequence each step. */
  useCache?: boolean;
  /** Stops between tokens; the promise / iterator rejects with an AbortError. */
  signal?: AbortSignal;
  /**
   * Decode on a worker thread over the same weights (default true): the model must not be changed (trained,
   * merged, adapters added) until the generation ends. false decodes on this thread, yielding to the event
   * loop between tokens only.
   */
  offThread?: boolean;
}

export interface GenerateResult {
  /** The new tokens (a stop token included as the last one). */
  tokens: number[];
  /** "stop" after a stop token, "length" after maxNewTokens. */
  finishReason: "stop" | "length";
}

/** What generation needs of a model: a causal LM forward, and the LlamaForCausalLM under it. */
export type CausalLMLike = LlamaForCausalLM | { forward: LlamaForCausalLM["forward"]; baseModel: { model: unknown } };

/** The LlamaForCausalLM itself, or the one a PeftModel wraps. */
export function causalLMOf(model: unknown, op: string): LlamaForCausalLM {
  if (model instanceof LlamaForCausalLM) return model;
  const inner = (model as { baseModel?: { model?: unknown } } | null)?.baseModel?.model;
  if (inner instanceof LlamaForCausalLM) return inner;
  throw typeError(`${op}: model must be a LlamaForCausalLM or a PeftModel around one, got ${describe(model)}`);
}

function promptIds(prompt: unknown, V: number, op: string): number[] {
  let ids: number[];
  if (prompt instanceof Tensor) {
    if (prompt.dtype !== "i32" && prompt.dtype !== "i64") throw peftError("ERR_DTYPE", `${op}: prompt must be i32 or i64, got ${prompt.dtype}`);
    if (prompt.shape.length !== 2 || prompt.shape[0] !== 1) throw peftError("ERR_SHAPE", `${op}: a prompt tensor must be [1, seq] (one sequence), got [${prompt.shape.join(", ")}]`);
    ids = Array.from(prompt.toFloat64Array());
  } else if (Array.isArray(prompt)) ids = [...prompt];
  else throw typeError(`${op}: prompt must be an array of token ids or a [1, seq] integer Tensor, got ${describe(prompt)}`);
  if (ids.length === 0) throw peftError("ERR_SHAPE", `${op}: the prompt is empty (it needs at least one token, e.g. bos)`);
  for (const [i, t] of ids.entries())
    if (!Number.isInteger(t) || t < 0 || t >= V) throw peftError("ERR_SHAPE", `${op}: prompt[${i}] = ${typeof t === "number" ? t : describe(t)} is not a token id in [0, ${V})`);
  return ids;
}

function idList(v: unknown, name: string, op: string): number[] {
  if (v === undefined || v === null) return [];
  const list = Array.isArray(v) ? v : [v];
  if (!list.every((x) => Number.isInteger(x) && x >= 0)) throw typeError(`${op}: ${name} must be a token id or an array of them, got ${describe(v)}`);
  return list;
}

/** The last position's logits of [1, T, V] as numbers. */
function lastRow(logits: Tensor): Float32Array {
  const T = logits.shape[1];
  const last = F.narrow(logits, 1, T - 1, 1);
  try {
    return last.toFloat32Array();
  } finally {
    last.dispose();
  }
}

/**
 * Streams the new token ids of one sequence as they are decoded. The iterator's return value (for await
 * ignores it) is the GenerateResult; breaking out of the loop stops generation and frees the cache.
 */
export async function* streamTokens(model: CausalLMLike, prompt: number[] | Tensor, options: GenerateOptions = {}): AsyncGenerator<number, GenerateResult, undefined> {
  const op = "generate";
  const lm = causalLMOf(model, op);
  const opts = optionsArg(options, op);
  const defaults = lm.generationDefaults;
  const sampling = resolveSampling({ ...defaults, ...Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)) });
  const maxNew = opts.maxNewTokens ?? defaults?.maxNewTokens ?? 20;
  if (!Number.isInteger(maxNew) || maxNew < 0) throw typeError(`${op}: maxNewTokens must be a non-negative integer, got ${describe(maxNew)}`);
  const seq = promptIds(prompt, lm.config.vocabSize, op);
  const T0 = seq.length;
  const stops = new Set([...(opts.eosTokenId === undefined ? (defaults?.eosTokenId ?? []) : idList(opts.eosTokenId, "eosTokenId", op)), ...idList(opts.stopTokenIds, "stopTokenIds", op)]);
  if (opts.useCache !== undefined && typeof opts.useCache !== "boolean") throw typeError(`${op}: useCache must be a boolean, got ${describe(opts.useCache)}`);
  const signal = opts.signal;
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw typeError(`${op}: signal must be an AbortSignal, got ${describe(signal)}`);
  // One Philox stream for the whole generation (step s uses its s-th uniform), taken on the calling thread
  // so a worker samples exactly what this thread would have.
  const rng = (opts as InternalOptions).rng ?? takeRng(opts.seed, op);
  if (opts.offThread !== undefined && typeof opts.offThread !== "boolean") throw typeError(`${op}: offThread must be a boolean, got ${describe(opts.offThread)}`);
  if (opts.offThread !== false && maxNew > 0) {
    const { signal: _s, ...rest } = opts;
    return yield* workerTokens(model, lm, seq, { ...rest, rng }, signal);
  }
  const uniforms = sampling.doSample ? noGrad(() => {
    const u = Tensor.rand([maxNew], rng);
    try { return u.toFloat64Array(); } finally { u.dispose(); }
  }) : null;
  // A prompt-learning adapter's virtual tokens (or prefix) take the cache's first positions.
  const virtual = (model as { numVirtualTokens?: unknown }).numVirtualTokens;
  const extra = typeof virtual === "number" ? virtual : 0;
  const cache: KVCache | null = opts.useCache === false || maxNew === 0 ? null : lm.createCache({ batch: 1, maxLength: extra + T0 + maxNew });
  let finishReason: GenerateResult["finishReason"] = "length";
  // Decoding runs in eval mode (no dropout, nothing kept for backward), as on the worker; the mode is put back.
  const wasTraining = (model as { training?: boolean }).training === true;
  if (wasTraining) (model as unknown as { eval(): void }).eval();
  try {
    let input = seq;
    for (let step = 0; step < maxNew; step++) {
      if (signal?.aborted) throw abortError(signal, op);
      const row = noGrad(() => {
        const ids = Tensor.fromArray(input, [1, input.length], "i64");
        try {
          const { logits } = model.forward(ids, { pastKeyValues: cache, logitsToKeep: 1 });
          try { return lastRow(logits); } finally { logits.dispose(); }
        } finally {
          ids.dispose();
        }
      });
      const next = nextToken(row, seq, sampling, uniforms ? uniforms[step] : 0);
      seq.push(next);
      input = cache ? [next] : seq;
      yield next;
      if (stops.has(next)) {
        finishReason = "stop";
        break;
      }
      await nextTurn();
    }
    if (signal?.aborted) throw abortError(signal, op);
    return { tokens: seq.slice(T0), finishReason };
  } finally {
    cache?.dispose();
    if (wasTraining) (model as unknown as { train(): void }).train();
  }
}

/** Options a worker gets beside the user's: the Philox (seed, stream) the calling thread took. */
interface InternalOptions extends GenerateOptions {
  rng?: { seed: number; stream: number };
}

/** Decodes up to maxNewTokens after `prompt` (one sequence) and resolves with them. */
export async function generate(model: CausalLMLike, prompt: number[] | Tensor, options: GenerateOptions = {}): Promise<GenerateResult> {
  const it = streamTokens(model, prompt, options);
  for (;;) {
    const r = await it.next();
    if (r.done) return r.value;
  }
}
