// Makes the linux-x64 prebuilt binary that `npm pack` ships (prebuildify: one Node-API build for every
// Node version, stripped, C++ runtime linked statically; node-gyp-build picks it at run time). The build
// runs in a staged copy of the sources under .tmp-prebuild/ so the tree's own build/ stays as it is;
// `--in-place` builds in the tree (a clean checkout, as in CI, which then has build/ too). `--if-stale`
// skips the build when the prebuilt binary is newer than every native source.
import { spawnSync } from "node:child_process";
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, rmSync, statSync, symlinkSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { root, nodeDir, nodeGypCli } from "./native-tools.mjs";
import { glibcFloor, neededLibraries } from "./glibc-floor.mjs";

const args = new Set(process.argv.slice(2));
const require = createRequire(import.meta.url);
// prebuildify names the file after the package
const target = join(root, "prebuilds", `${process.platform}-${process.arch}`, "node-peft.node");
const INPUTS = ["native", "binding.gyp", "scripts/list-sources.mjs", "package.json"];

function newest(path) {
  const s = statSync(path);
  if (!s.isDirectory()) return s.mtimeMs;
  return readdirSync(path).reduce((m, n) => Math.max(m, newest(join(path, n))), s.mtimeMs);
}

if (args.has("--if-stale") && existsSync(target) && statSync(target).mtimeMs > Math.max(...INPUTS.map((p) => newest(join(root, p))))) {
  console.error(`prebuild: ${target} is up to date`);
  process.exit(0);
}

const headers = nodeDir();
const gyp = nodeGypCli();
if (!headers || !gyp) {
  console.error(`prebuild: needs node-gyp and Node's C headers (found: node-gyp ${gyp ?? "no"}, headers ${headers ?? "no"})`);
  process.exit(1);
}

let cwd = root;
if (!args.has("--in-place")) {
  cwd = join(root, ".tmp-prebuild");
  rmSync(cwd, { recursive: true, force: true });
  mkdirSync(join(cwd, "scripts"), { recursive: true });
  for (const p of INPUTS) cpSync(join(root, p), join(cwd, p), { recursive: true });
  symlinkSync(join(root, "node_modules"), join(cwd, "node_modules"));
}

const prebuildify = join(require.resolve("prebuildify/package.json"), "..", "bin.js");
const r = spawnSync(
  process.execPath,
  [prebuildify, "--napi", "--strip", "--target", process.versions.node, "--node-gyp", gyp, "--out", root, "--cwd", cwd],
  { cwd, stdio: "inherit", env: { ...process.env, npm_config_nodedir: headers, JOBS: process.env.JOBS ?? "2" } },
);
if (cwd !== root) rmSync(cwd, { recursive: true, force: true });
if (r.status !== 0) {
  console.error("prebuild: prebuildify failed");
  process.exit(1);
}
// prebuildify moves node-gyp's output into prebuilds/: an in-place build puts a copy back where node-gyp
// leaves it, so the tree keeps its node-gyp build (the loader and the tests find it there).
if (cwd === root) {
  mkdirSync(join(root, "build", "Release"), { recursive: true });
  copyFileSync(target, join(root, "build", "Release", "node_peft.node"));
}
console.error(`prebuild: ${target} (needs glibc ≥ ${glibcFloor(target)}; links ${neededLibraries(target).join(", ")})`);
