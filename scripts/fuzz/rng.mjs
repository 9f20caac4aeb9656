// Seeded randomness for the fuzzers (and the numeric tests' inputs): the same seed gives the same sequence
// on every run and machine, so a failure replays from its seed.

/** mulberry32: a generator of uniform numbers in [0, 1) from a 32-bit seed. */
export function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class Rng {
  constructor(seed) {
    this.f = mulberry32(seed);
  }
  next() {
    return this.f();
  }
  int(n) {
    return Math.floor(this.f() * n);
  }
  chance(p) {
    return this.f() < p;
  }
  pick(a) {
    return a[this.int(a.length)];
  }
  /** entries: [weight, value][] */
  weighted(entries) {
    let total = 0;
    for (const [w] of entries) total += w;
    let r = this.f() * total;
    for (const [w, v] of entries) if ((r -= w) < 0) return v;
    return entries[entries.length - 1][1];
  }
  fork() {
    return new Rng(this.int(2 ** 32));
  }
}

/** A seed for part k (a batch) of a run with `seed`: well spread, so neighbouring batches are unrelated. */
export function mixSeed(seed, k) {
  let h = (Math.imul((seed >>> 0) ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(k + 0x27d4eb2f, 0xc2b2ae35)) >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d) >>> 0;
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}
