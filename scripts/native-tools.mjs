// Where the native build tools are, shared by the build, install and prebuild scripts. Nothing here
// downloads: node-gyp gets Node's own headers (--nodedir), cmake-js uses node-api-headers.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

export const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);

export function have(cmd, versionArg = "--version") {
  return spawnSync(cmd, [versionArg], { stdio: "ignore" }).status === 0;
}

/** The prefix Node's C headers are installed under (Debian and the official tarballs ship them), or null. */
export function nodeDir() {
  const prefix = resolve(dirname(process.execPath), "..");
  return existsSync(join(prefix, "include", "node", "node_api.h")) ? prefix : null;
}

/** node-gyp's CLI script: a local install, else the copy npm ships with. */
export function nodeGypCli() {
  try {
    return require.resolve("node-gyp/bin/node-gyp.js");
  } catch {
    const npmCopy = join(dirname(process.execPath), "..", "lib", "node_modules", "npm", "node_modules", "node-gyp", "bin", "node-gyp.js");
    return existsSync(npmCopy) ? npmCopy : null;
  }
}

export function cmakeJsCli() {
  try {
    return join(dirname(require.resolve("cmake-js/package.json")), "bin", "cmake-js");
  } catch {
    return null;
  }
}

/** Whether an NVIDIA driver is loaded (the real CUDA build then happens without being asked for). */
export function cudaDriverPresent() {
  return existsSync("/proc/driver/nvidia/version");
}
