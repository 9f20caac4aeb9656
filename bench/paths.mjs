// For a bench file run alone (`node bench/<family>.mjs`): each case's rate and ratio to its memcpy baseline
// on the active kernel path, then its time on every path this CPU can run (baseline x86-64, AVX2, AVX-512),
// each the best of 7 runs.
import { backend } from "../dist/index.js";

const best = (fn, reps = 7) => {
  let s = Infinity;
  for (let i = 0; i < reps; i++) {
    const t0 = process.hrtime.bigint();
    fn();
    s = Math.min(s, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return s;
};

/** Times cases ({ name, bytes, run, baseline }) between setup() and teardown(). */
export function timePerPath(cases, { setup, teardown }) {
  const paths = ["scalar", "avx2", "avx512"].filter((isa) => isa === "scalar" || backend.features.includes(isa === "avx2" ? "avx2" : "avx512f"));
  const active = backend.isa;
  console.log(`${backend.threads} threads, active path ${active}; times per kernel path: ${paths.join(" / ")}`);
  try {
    setup();
    for (const c of cases) {
      c.run();
      const tb = best(c.baseline), tr = best(c.run);
      const perPath = paths.map((isa) => {
        backend.setIsa(isa);
        const s = best(c.run);
        backend.setIsa(active);
        return `${(s * 1e3).toFixed(1)} ms`;
      });
      console.log(`${c.name}: ${(c.bytes / tr / 1e9).toFixed(2)} GB/s, ${(tb / tr).toFixed(2)}x memcpy; ${perPath.join(" / ")}`);
    }
  } finally {
    teardown();
  }
}
