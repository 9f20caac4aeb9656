// Types of rng.mjs for the TypeScript tests that import it.
export declare function mulberry32(seed: number): () => number;
export declare class Rng {
  constructor(seed: number);
  next(): number;
  int(n: number): number;
  chance(p: number): boolean;
  pick<T>(a: readonly T[]): T;
  weighted<T>(entries: readonly (readonly [number, T])[]): T;
  fork(): Rng;
}
export declare function mixSeed(seed: number, k: number): number;
