// The misuse fuzzer (scripts/fuzz/misuse.mjs) over the built package (dist/): a few thousand seeded calls of
// every export, static, method and getter with hostile arguments, in child processes (one with the emulated
// cuda device). Each call must return or throw an Error with a string `code`: no signal, no hang, no error
// without a code. `npm run fuzz` runs 100k calls.
import { describe, expect, it } from "vitest";
import { existsSync } from "node:fs";
import { distIndex } from "./helpers/child.js";
import { runFuzzer } from "./helpers/fuzzer.js";

interface Failure {
  kind: string;
  error: string;
  stack: string[];
  call: string;
  targets: string[];
  replay: string;
}
interface Crash {
  kind: string;
  call: string;
  step: number | null;
  replay: string;
  lastCalls: string[];
}
interface Summary {
  calls: number;
  children: number;
  targets: number;
  counts: { ok: number; coded: number; hostile: number; failed: number; hang: number };
  crashes: Crash[];
  failures: Failure[];
}

const fuzz = (args: string[]) => runFuzzer<Summary>("misuse", args);

/** One line per failure kind, for a readable assertion diff. */
function lines(s: Summary): string[] {
  return [
    ...s.crashes.map((c) => `${c.kind} during ${c.call} (replay: ${c.replay})`),
    ...s.failures.map((f) => `${f.error}${f.stack[0] ? ` ${f.stack[0]}` : ""} in ${f.targets.join(", ")}; e.g. ${f.call.slice(0, 300)}`),
  ];
}

describe("misuse fuzzer", () => {
  it("every call returns or throws a coded error: no crash, hang or uncoded error", async () => {
    expect(existsSync(distIndex), "dist/ is missing: run `npm run build:ts`").toBe(true);
    const { status, summary, report } = await fuzz(["--seed", "1", "--calls", "3000"]);
    expect(summary.calls).toBe(3000);
    expect(summary.targets).toBeGreaterThan(100); // the exports were found
    expect(summary.counts.ok).toBeGreaterThan(summary.calls / 4); // and many calls were plausible enough to run
    expect(lines(summary), report).toEqual([]);
    expect(status).toBe(0);
  }, 180_000);

  it("replays a seed exactly", async () => {
    const [a, b] = await Promise.all([fuzz(["--seed", "5", "--calls", "300"]), fuzz(["--seed", "5", "--calls", "300"])]);
    expect(a.summary.counts).toEqual(b.summary.counts);
    expect(lines(a.summary)).toEqual(lines(b.summary));
  }, 120_000);

  it("reports a crash, a hang, an uncoded error and an unhandled rejection with the step that caused them", async () => {
    // Past the setup steps (one per exported class), which grow with the package.
    const run = (kind: string) => fuzz(["--seed", "2", "--calls", "120", "--timeout", "8", "--inject", `${kind}@100`]);
    const [crash, hang, uncoded, reject] = await Promise.all(["crash", "hang", "uncoded", "reject"].map(run));
    for (const r of [crash, hang, uncoded, reject]) expect(r.status).toBe(1);
    expect(crash.summary.crashes).toMatchObject([{ kind: "signal SIGSEGV", call: "inject crash", step: 100 }]);
    expect(crash.summary.crashes[0].replay).toContain("--seed 2 --calls 120 --only 0");
    expect(crash.summary.crashes[0].lastCalls.at(-1)).toMatch(/^#100 inject crash/);
    expect(hang.summary.crashes).toMatchObject([{ kind: "hang (child killed after timeout)", call: "inject hang", step: 100 }]);
    expect(uncoded.summary.failures.find((f) => f.call === "inject uncoded")).toMatchObject({ kind: "uncoded error", error: expect.stringMatching(/^TypeError: /) });
    expect(reject.summary.failures.find((f) => f.kind === "unhandledRejection")).toMatchObject({ error: "TypeError: injected" });
  }, 120_000);
});
