// The global random state: a seed (0 until manualSeed) and a counter handing each random op its own
// Philox stream. Ops given an explicit seed use stream 0 of that seed, so they repeat exactly.
import { rangeError, typeError } from "./errors.js";

let globalSeed = 0;
let nextStream = 0;

function checkSeed(seed: unknown, what: string): number {
  if (typeof seed !== "number") throw typeError(`${what}: seed must be a number, got ${typeof seed}`);
  if (!Number.isSafeInteger(seed) || seed < 0) throw rangeError(`${what}: seed must be a non-negative safe integer, got ${seed}`);
  return seed;
}

export function manualSeed(seed: number): void {
  globalSeed = checkSeed(seed, "manualSeed");
  nextStream = 0;
}

/**
 * (seed, stream) for one random op: the explicit seed (with stream `stream`, default 0) if given, else the next
 * global stream.
 */
export function takeRng(seed: number | undefined, what: string, stream = 0): { seed: number; stream: number } {
  if (seed !== undefined) return { seed: checkSeed(seed, what), stream: checkSeed(stream, what) };
  return { seed: globalSeed, stream: ++nextStream };
}
