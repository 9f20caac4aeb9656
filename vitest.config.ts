import { availableParallelism } from "node:os";
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // A native crash stays inside one child process; the vm pools break `instanceof` on native errors.
    pool: "forks",
    // At least two test files at a time: many wait on child processes or run single-threaded JS, so on a
    // 2-core machine two workers finish the suite well before one does (vitest's default is cores - 1).
    maxWorkers: Math.max(2, availableParallelism() - 1),
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
