// Picking the next token from one row of logits as transformers' generate does: the repetition penalty
// first (a logits processor), then the warpers in order temperature, top-k, top-p, then a draw from the
// softmax (or the argmax when not sampling). Plain float64 JS on one vocab row: a few microseconds per
// token beside a forward over the model's weights.
import { peftError, typeError, describe } from "../errors.js";

export interface SamplingOptions {
  /** Draw from the distribution (true) or take the most likely token (false, default). */
  doSample?: boolean;
  /** Logits divided by this before sampling (default 1). */
  temperature?: number;
  /** Keep only the k most likely tokens (0 = off, default). */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches topP (1 = off, default). */
  topP?: number;
  /** transformers' CTRL penalty: seen tokens' logits divided by it if positive, multiplied if negative (1 = off). */
  repetitionPenalty?: number;
}

export interface ResolvedSampling {
  doSample: boolean;
  temperature: number;
  topK: number;
  topP: number;
  repetitionPenalty: number;
}

function num(v: unknown, name: string, ok: (x: number) => boolean, want: string, fallback: number): number {
  if (v === undefined) return fallback;
  if (typeof v !== "number" || !ok(v)) throw typeError(`generate: ${name} must be ${want}, got ${describe(v)}`);
  return v;
}

export function resolveSampling(o: SamplingOptions): ResolvedSampling {
  if (o.doSample !== undefined && typeof o.doSample !== "boolean") throw typeError(`generate: doSample must be a boolean, got ${describe(o.doSample)}`);
  return {
    doSample: o.doSample ?? false,
    temperature: num(o.temperature, "temperature", (x) => x > 0 && Number.isFinite(x), "a positive number", 1),
    topK: num(o.topK, "topK", (x) => Number.isInteger(x) && x >= 0, "a non-negative integer", 0),
    topP: num(o.topP, "topP", (x) => x > 0 && x <= 1, "in (0, 1]", 1),
    repetitionPenalty: num(o.repetitionPenalty, "repetitionPenalty", (x) => x > 0 && Number.isFinite(x), "a positive number", 1),
  };
}

/** In place: each distinct token of `seen` gets its logit divided (> 0) or multiplied (< 0) by `penalty`. */
export function applyRepetitionPenalty(logits: Float64Array, seen: readonly number[], penalty: number): void {
  if (penalty === 1) return;
  for (const id of new Set(seen)) {
    if (id < 0 || id >= logits.length) continue;
    const s = logits[id];
    logits[id] = s < 0 ? s * penalty : s / penalty;
  }
}

/** Index of the largest value (the first one on ties, as torch.argmax). */
export function argmaxOf(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/**
 * Probabilities after temperature, top-k and top-p (zero outside the kept set), as transformers' warpers
 * leave them: top-k keeps every token tied with the k-th, top-p keeps at least one token.
 */
export function warpedProbs(logits: Float64Array, s: ResolvedSampling): Float64Array {
  const V = logits.length;
  const z = logits.map((v) => v / s.temperature);
  if (s.topK > 0 && s.topK < V) {
    const kth = Float64Array.from(z).sort()[V - s.topK];
    for (let i = 0; i < V; i++) if (z[i] < kth) z[i] = -Infinity;
  }
  let max = -Infinity;
  for (const v of z) if (v > max) max = v;
  if (max === -Infinity) throw peftError("ERR_STATE", "generate: every token's logit is -inf, nothing can be sampled");
  const p = z.map((v) => Math.exp(v - max));
  const sum = p.reduce((a, b) => a + b, 0);
  for (let i = 0; i < V; i++) p[i] /= sum;
  if (s.topP < 1) {
    // Most likely first; keep tokens until the cumulative probability reaches topP (the token that crosses
    // it included), which is transformers' "remove where the ascending cumsum <= 1 - topP".
    const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => p[b] - p[a]);
    let cum = 0, kept = 0;
    for (const i of order) {
      if (kept > 0 && cum >= s.topP) p[i] = 0;
      else (cum += p[i]), kept++;
    }
    const rest = p.reduce((a, b) => a + b, 0);
    for (let i = 0; i < V; i++) p[i] /= rest;
  }
  return p;
}

/** The token whose cumulative probability first exceeds u in [0, 1). */
export function drawFrom(p: Float64Array, u: number): number {
  let cum = 0, last = 0;
  for (let i = 0; i < p.length; i++) {
    if (p[i] === 0) continue;
    cum += p[i];
    last = i;
    if (u < cum) return i;
  }
  return last;
}

/** The next token of one row: `u` is this step's uniform draw (unused when not sampling). */
export function nextToken(logitsRow: ArrayLike<number>, seen: readonly number[], s: ResolvedSampling, u: number): number {
  const x = Float64Array.from(logitsRow);
  applyRepetitionPenalty(x, seen, s.repetitionPenalty);
  return s.doSample ? drawFrom(warpedProbs(x, s), u) : argmaxOf(x);
}
