// Runs one of the fuzzers in scripts/fuzz/ with --json, for the tests that check its summary.
import { spawn } from "node:child_process";
import { join } from "node:path";
import { root } from "./child.js";

/**
 * `node scripts/fuzz/<name>.mjs --json ...args`: its exit status, the JSON summary it prints on stdout and
 * the report it prints on stderr. Rejects when there is no summary.
 */
export function runFuzzer<Summary>(name: string, args: string[]): Promise<{ status: number | null; summary: Summary; report: string }> {
  const script = join(root, "scripts", "fuzz", `${name}.mjs`);
  return new Promise((resolve, reject) => {
    const cp = spawn(process.execPath, [script, "--json", ...args], { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    cp.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    cp.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    cp.on("error", reject);
    cp.on("close", (status) => {
      try {
        resolve({ status, summary: JSON.parse(stdout) as Summary, report: stderr });
      } catch {
        reject(new Error(`the fuzzer printed no summary (exit ${status}):\n${stderr}\n${stdout}`));
      }
    });
  });
}
