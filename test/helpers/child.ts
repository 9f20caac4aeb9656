// Runs a snippet of ESM JavaScript in a fresh node process (with its own env) and returns its output.
// Used for what cannot be undone in-process: load-time env vars, the node-gyp build, killed workers.
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const distIndex = join(root, "dist", "index.js");

export function runNode(code: string, env: Record<string, string> = {}, args: string[] = []) {
  const r = spawnSync(process.execPath, [...args, "--input-type=module", "-e", code], {
    cwd: root,
    env: { ...process.env, ...env },
    encoding: "utf8",
    timeout: 120_000,
  });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}
