import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // A native crash stays inside one child process; the vm pools break `instanceof` on native errors.
    pool: "forks",
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
