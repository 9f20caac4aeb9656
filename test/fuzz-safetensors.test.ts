// The safetensors mutation fuzzer (scripts/fuzz/safetensors.mjs) over the built package (dist/): a few
// hundred seeded mutations of files the library wrote, each read by loadSafetensorsSync, loadSafetensors and
// openSafetensors (every tensor), and a sample by `node dist/cli.js inspect`. Every read succeeds or throws
// ERR_SAFETENSORS, nothing crashes or hangs, the readers accept the same files and read the same tensors,
// and the CLI exits 0/1 without a stack trace. `npm run fuzz:safetensors` runs 5000 files.
import { describe, expect, it } from "vitest";
import { existsSync } from "node:fs";
import { distIndex } from "./helpers/child.js";
import { runFuzzer } from "./helpers/fuzzer.js";

interface Summary {
  files: number;
  accepted: number;
  rejected: number;
  cli: number;
  codes: Record<string, number>;
  crashes: { kind: string; case: number | null; notes: string[]; file: string | null; replay: string }[];
  failures: { batch: number; i: number; notes: string[]; problems: string[]; file: string | null; replay: string }[];
}

const fuzz = (args: string[]) => runFuzzer<Summary>("safetensors", args);

describe("safetensors mutation fuzzer", () => {
  it("every reader accepts the same files and refuses the rest with ERR_SAFETENSORS; the CLI exits 0 or 1 cleanly", async () => {
    expect(existsSync(distIndex), "dist/ is missing: run `npm run build:ts`").toBe(true);
    const { status, summary, report } = await fuzz(["--seed", "1", "--files", "300", "--cli-rate", "0.06"]);
    expect(summary.files).toBe(300);
    expect(summary.cli).toBeGreaterThan(8); // about 18
    // The mutations both keep files valid and break them.
    expect(summary.accepted).toBeGreaterThan(10);
    expect(summary.rejected).toBeGreaterThan(150);
    const found = [
      ...summary.crashes.map((c) => `${c.kind} on case ${c.case} (${c.notes.join("; ")}), file ${c.file}, replay: ${c.replay}`),
      ...summary.failures.map((f) => `case ${f.batch}/${f.i} (${f.notes.join("; ")}): ${f.problems.join(" | ")}`),
    ];
    expect(found, report).toEqual([]);
    expect(Object.keys(summary.codes)).toEqual(["ERR_SAFETENSORS"]);
    expect(status).toBe(0);
  }, 180_000);
});
