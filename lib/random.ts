// The global random state: a seed (0 until manualSeed) and a counter handing each random op its own
// Philox stream. Ops given an explicit seed use stream 0 of that seed, so they repeat exactly.
import { rangeError, typeError } from "./errors.js";
import { isInitSkipped } from "./init-mode.js";

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
  // Modules constructed empty draw nothing: building a model to load leaves later random draws unchanged.
  if (isInitSkipped()) return { seed: globalSeed, stream: 0 };
  return { seed: globalSeed, stream: ++nextStream };
}

/** The global generator's position (seed and streams handed out), for saving a run to resume it exactly. */
export interface RngState {
  seed: number;
  stream: number;
}

export function getRngState(): RngState {
  return { seed: globalSeed, stream: nextStream };
}

export function setRngState(state: RngState): void {
  if (state === null || typeof state !== "object") throw typeError(`setRngState: state must be an object, got ${state === null ? "null" : typeof state}`);
  const seed = checkSeed(state.seed, "setRngState");
  const stream = checkSeed(state.stream, "setRngState: stream");
  globalSeed = seed;
  nextStream = stream;
}
