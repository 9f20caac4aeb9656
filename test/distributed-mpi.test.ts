// Data-parallel training under Open MPI's launcher on this machine (loopback, shared memory): each
// collective and dtype on 2 and 3 ranks (and models that differ between ranks), a LoRA run on 2 ranks
// against one process with the whole batch, the checkpoint written once, and failing ranks ending the job. The scripts run
// from dist/ (`npx tsc -p tsconfig.json` first). Skipped, with the reason, without mpirun or the MPI module.
import { describe, expect, it } from "vitest";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { root } from "./helpers/child.js";
import { distributed } from "../lib/index.js";

const mpirun = spawnSync("mpirun", ["--version"], { encoding: "utf8" });
const skipReason = mpirun.status !== 0 ? "mpirun not found (apt-get install openmpi-bin libopenmpi-dev)" : !distributed.available ? distributed.unavailableReason : "";
if (skipReason) console.warn(`distributed-mpi tests skipped: ${skipReason}`);

// Open MPI as root, on loopback shared memory; one kernel thread per rank (2 ranks share the 2 cores).
const ENV = {
  OMPI_ALLOW_RUN_AS_ROOT: "1",
  OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: "1",
  OMPI_MCA_btl: "self,vader",
  OMPI_MCA_btl_vader_single_copy_mechanism: "none",
  OMPI_MCA_rmaps_base_oversubscribe: "1",
  NODE_PEFT_NUM_THREADS: "1",
};

function launch(ranks: number | null, script: string, args: string[] = [], timeoutMs = 60_000) {
  const file = join(root, "test", "mpi", script);
  const cmd = ranks === null ? process.execPath : "mpirun";
  const argv = ranks === null ? [file, ...args] : ["-n", String(ranks), "--oversubscribe", "--bind-to", "none", process.execPath, file, ...args];
  const t0 = performance.now();
  const r = spawnSync(cmd, argv, { cwd: root, env: { ...process.env, ...ENV }, encoding: "utf8", timeout: timeoutMs });
  const output = `${r.stdout}\n${r.stderr}`;
  const results = output
    .split("\n")
    .filter((l) => l.startsWith("RESULT "))
    .map((l) => JSON.parse(l.slice(7)));
  return { status: r.status, signal: r.signal, output, results, seconds: (performance.now() - t0) / 1000 };
}

describe.skipIf(skipReason !== "")("distributed on Open MPI", () => {
  for (const ranks of [2, 3]) {
    it(`every collective and dtype on ${ranks} ranks against a float64 reference; DDP over differing models fails on every rank`, () => {
      const r = launch(ranks, "collectives.mjs");
      expect(r.status, r.output).toBe(0);
      expect(r.results.map((x) => x.rank).sort()).toEqual([...Array(ranks).keys()]);
      for (const x of r.results) {
        expect(x.worldSize).toBe(ranks);
        expect(x.failures, `rank ${x.rank}`).toEqual([]);
      }
    });
  }

  it("LoRA on 2 ranks with batch B each takes the steps of one process with batch 2B; one checkpoint", () => {
    const dir = mkdtempSync(join(tmpdir(), "peft-ddp-"));
    try {
      const two = launch(2, "train.mjs", [join(dir, "two")]);
      expect(two.status, two.output).toBe(0);
      const one = launch(null, "train.mjs", [join(dir, "one")]);
      expect(one.status, one.output).toBe(0);
      const a = JSON.parse(readFileSync(join(dir, "two", "trace.json"), "utf8"));
      const b = JSON.parse(readFileSync(join(dir, "one", "trace.json"), "utf8"));
      expect([a.worldSize, b.worldSize]).toEqual([2, 1]);
      expect(a.names).toEqual(b.names);
      // Exchanges started during backward (one bucket per parameter), every one of them awaited.
      expect(a.stats.overlapped).toBeGreaterThan(0);
      expect(a.stats.allReduces).toBe(a.buckets * a.stats.syncs);
      // The same steps up to f32 rounding: the batch-2B gradient is a sum over 2B rows in one GEMM, the
      // 2-rank one two sums over B rows averaged; ~1e-7 relative differences that AdamW's g/sqrt(v)
      // passes on at most as such per step (lr 0.01): parameters of magnitude <= 1 then differ by a few f32
      // ulps per step (3e-8 measured after 4 steps); 1e-6 leaves room for another summation order.
      for (let s = 0; s < a.trace.length; s++) {
        expect(Math.abs(a.trace[s].loss - b.trace[s].loss)).toBeLessThan(1e-6 * Math.max(1, Math.abs(b.trace[s].loss)));
        a.trace[s].params.forEach((p: number[], i: number) => {
          const q = b.trace[s].params[i];
          const worst = Math.max(...p.map((v, j) => Math.abs(v - q[j])));
          expect(worst, `step ${s} ${a.names[i]}`).toBeLessThan(1e-6);
        });
      }
      // The parameters moved (the comparison is not between two untrained models).
      expect(Math.max(...a.trace[3].params[0].map((v: number, j: number) => Math.abs(v - a.trace[0].params[0][j])))).toBeGreaterThan(1e-3);
      expect(existsSync(join(dir, "two", "rank0", "adapter_model.safetensors"))).toBe(true);
      expect(existsSync(join(dir, "two", "rank1"))).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  for (const [mode, message] of [
    ["kill", /rank 1 .*exited on signal 9|process rank 1/i],
    ["throw", /rank 1 of 2: the process is exiting with code 1/],
    ["stuck", /rank 0 of 2: allReduce #\d+ did not finish within 1 s/],
  ] as const) {
    it(`a rank that fails (${mode}) ends the job with a non-zero exit and a message naming the rank, within 30 s`, () => {
      const r = launch(2, "failure.mjs", [mode], 30_000);
      expect(r.signal, r.output).toBeNull();
      expect(r.status, r.output).not.toBe(0);
      expect(r.output).toMatch(message);
      expect(r.output).not.toMatch(/the failure went unnoticed/);
      expect(r.seconds).toBeLessThan(30);
    });
  }
});
