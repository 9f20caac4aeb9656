// npm runs this on install. A prebuilt binary (prebuilds/, found by node-gyp-build) is used when one fits
// this platform and loads here; otherwise the addon is compiled (scripts/build-native.mjs). Compiling is
// also chosen for the real CUDA build: NODE_PEFT_CUDA_BUILD=1, or a loaded NVIDIA driver with nvcc on the
// PATH. `npm install --build-from-source` (or NODE_PEFT_BUILD_FROM_SOURCE=1) always compiles.
// `--dry-run` says what it would do and does nothing.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join, relative } from "node:path";
import { root, have, cudaDriverPresent } from "./native-tools.mjs";
import { say } from "./progress.mjs";

// Loads the prebuilt binary in a child process (a binary that crashes on load must not take npm down).
const PROBE = `
process.env.PREBUILDS_ONLY = "1";
const file = require("node-gyp-build").path(process.argv[1]);
const info = require(file).backendInfo();
console.log(JSON.stringify({ file, isa: info.isa }));
`;

function tryPrebuild() {
  const r = spawnSync(process.execPath, ["-e", PROBE, root], { cwd: root, encoding: "utf8", timeout: 60_000 });
  if (r.status === 0) return { ok: true, ...JSON.parse(r.stdout.trim().split("\n").pop()) };
  const lines = (r.stderr || r.error?.message || "").split("\n");
  const why = lines.find((l) => /^\w*Error\b[^(]*:/.test(l)) ?? `exit code ${r.status}`;
  return { ok: false, why: why.trim() };
}

const dryRun = process.argv.includes("--dry-run");

function compile(flags, env = {}) {
  if (dryRun) {
    console.log(`would compile: build-native.mjs ${flags.join(" ")} ${Object.entries(env).map(([k, v]) => `${k}=${v}`).join(" ")}`.trim());
    process.exit(0);
  }
  const r = spawnSync(process.execPath, [join(root, "scripts", "build-native.mjs"), ...flags], { cwd: root, stdio: "inherit", env: { ...process.env, ...env } });
  process.exit(r.status ?? 1);
}

// A git checkout keeps its intermediate files (rebuilds stay incremental); an installed package does not.
const clean = existsSync(join(root, ".git")) ? [] : ["--clean"];
const cudaEnv = process.env.NODE_PEFT_CUDA_BUILD;

if (cudaEnv === "1") {
  say("node-peft: NODE_PEFT_CUDA_BUILD=1: compiling the addon with the CUDA kernels");
  compile(["--cmake", ...clean], { NODE_PEFT_CUDA_BUILD: "1" });
}
if (cudaEnv !== "0" && cudaDriverPresent()) {
  if (have("nvcc")) {
    say("node-peft: an NVIDIA driver and nvcc are present: compiling the addon with the CUDA kernels");
    compile(["--cmake", ...clean], { NODE_PEFT_CUDA_BUILD: "1" });
  }
  say("node-peft: an NVIDIA driver is present but nvcc is not on the PATH: the prebuilt binary has no CUDA kernels (install the CUDA toolkit, then `npm rebuild node-peft`)");
}
if (process.env.npm_config_build_from_source === "true" || process.env.NODE_PEFT_BUILD_FROM_SOURCE === "1") {
  say("node-peft: building from source as asked");
  compile(clean, { NODE_PEFT_CUDA_BUILD: "0" });
}
const pre = tryPrebuild();
if (pre.ok) {
  say(`node-peft: using the prebuilt binary ${relative(root, pre.file)} (CPU path: ${pre.isa}); nothing to compile`);
  if (dryRun) console.log(`would use: ${relative(root, pre.file)}`);
  process.exit(0);
}
say(`node-peft: no usable prebuilt binary (${pre.why}); compiling the addon from source (a few minutes)`);
compile(clean, { NODE_PEFT_CUDA_BUILD: "0" });
