// Builds the native addon without downloading anything: cmake-js first (CPU + CUDA when nvcc is found),
// node-gyp as the fallback (CPU only). `--gyp` builds with node-gyp only; `--cmake` with cmake-js only.
// The two builds write to different folders (build-cmake/ and build/), so neither overwrites the other.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
const args = new Set(process.argv.slice(2));

function have(cmd, versionArg = "--version") {
  return spawnSync(cmd, [versionArg], { stdio: "ignore" }).status === 0;
}

function run(cmd, argv) {
  console.log(`node-peft: ${cmd} ${argv.join(" ")}`);
  const r = spawnSync(cmd, argv, { cwd: root, stdio: "inherit", env: process.env });
  return r.status === 0;
}

// Node's own headers (Debian and the official tarballs ship them under <prefix>/include/node).
function nodeDir() {
  const prefix = resolve(dirname(process.execPath), "..");
  return existsSync(join(prefix, "include", "node", "node_api.h")) ? prefix : null;
}

function buildCmake() {
  if (!have("cmake")) {
    console.warn("node-peft: cmake not found; skipping the cmake-js build");
    return false;
  }
  let cli;
  try {
    cli = join(dirname(require.resolve("cmake-js/package.json")), "bin", "cmake-js");
  } catch {
    console.warn("node-peft: cmake-js is not installed; skipping the cmake-js build");
    return false;
  }
  const jobs = process.env.CMAKE_BUILD_PARALLEL_LEVEL ?? "2";
  return run(process.execPath, [cli, "build", "--out", "build-cmake", "--parallel", jobs]);
}

function buildGyp() {
  const dir = nodeDir();
  if (!dir) {
    console.warn("node-peft: Node's C headers were not found next to the node binary; node-gyp needs them");
    return false;
  }
  let gyp;
  try {
    gyp = require.resolve("node-gyp/bin/node-gyp.js");
  } catch {
    // npm ships its own node-gyp
    gyp = join(dirname(process.execPath), "..", "lib", "node_modules", "npm", "node_modules", "node-gyp", "bin", "node-gyp.js");
  }
  if (!existsSync(gyp)) {
    console.warn("node-peft: node-gyp not found");
    return false;
  }
  return run(process.execPath, [gyp, "rebuild", `--nodedir=${dir}`, "-j", "2"]);
}

if (!have("c++") && !have("g++")) {
  console.error(
    "node-peft: no C++ compiler found. Install one (Debian/Ubuntu: `apt-get install g++ make cmake python3`; " +
      "Fedora: `dnf install gcc-c++ make cmake`; macOS: `xcode-select --install`), then run `npm rebuild node-peft`.",
  );
  process.exit(1);
}

let ok;
if (args.has("--gyp")) ok = buildGyp();
else if (args.has("--cmake")) ok = buildCmake();
else ok = buildCmake() || buildGyp();
if (!ok) {
  console.error("node-peft: the native build failed (see the compiler output above).");
  process.exit(1);
}
