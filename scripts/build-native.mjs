// Builds the native addon from source without downloading anything: cmake-js first (CPU, plus the real
// CUDA kernels when asked for, see CMakeLists.txt), node-gyp as the fallback (CPU only). `--gyp` builds
// with node-gyp only, `--cmake` with cmake-js only; `--clean` then deletes everything but the .node file
// (an installed package keeps no object files). The compiler's output goes to a log file, shown on
// failure; progress is reported as files compile. The two builds write to different folders
// (build-cmake/ and build/), so neither overwrites the other.
import { spawn } from "node:child_process";
import { createWriteStream, existsSync, readFileSync, readdirSync, renameSync, rmSync, mkdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { root, have, nodeDir, nodeGypCli, cmakeJsCli } from "./native-tools.mjs";
import { listSources } from "./list-sources.mjs";
import { say } from "./progress.mjs";

const args = new Set(process.argv.slice(2));
const jobs = process.env.CMAKE_BUILD_PARALLEL_LEVEL ?? process.env.JOBS ?? "2";
const log = join(tmpdir(), `node-peft-build-${process.pid}.log`);

function sourceCount(withCuda) {
  const cpu = ["base", "avx2", "avx512", "avx512bf16", "amx"].reduce((n, g) => n + listSources(g).length, 0);
  const cu = withCuda ? readdirSync(join(root, "native", "cuda")).filter((f) => f.endsWith(".cu")).length : 0;
  return cpu + cu;
}

/** Runs a build command, its output into the log, a progress line per tenth of the files compiled. */
function run(label, argv, total) {
  say(`node-peft: ${label}: compiling ${total} files (log: ${log})`);
  const out = createWriteStream(log, { flags: "a" });
  out.write(`$ ${argv.join(" ")}\n`);
  return new Promise((resolvePromise) => {
    const child = spawn(argv[0], argv.slice(1), { cwd: root, env: process.env, stdio: ["ignore", "pipe", "pipe"] });
    let done = 0, shown = 0, partial = "";
    const onData = (chunk) => {
      out.write(chunk);
      const lines = (partial + chunk.toString()).split("\n");
      partial = lines.pop();
      for (const l of lines) {
        if (!/Building (CXX|CUDA) object|^\s*CXX\(target\)/.test(l)) continue;
        done++;
        const pct = Math.min(100, Math.floor((100 * done) / total));
        if (pct >= shown + 10) {
          shown = pct - (pct % 10);
          say(`node-peft: ${label}: ${pct}% (${done}/${total} files)`);
        }
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("error", (e) => {
      out.write(`${e.message}\n`);
      out.end(() => resolvePromise(false));
    });
    child.on("close", (code) => out.end(() => resolvePromise(code === 0)));
  });
}

function showLogTail() {
  if (!existsSync(log)) return;
  const lines = readFileSync(log, "utf8").split("\n");
  process.stderr.write(lines.slice(-60).join("\n") + "\n");
  say(`node-peft: the full build output is in ${log}`);
}

/** Keeps only `<dir>/Release/node_peft.node` (and node_peft_mpi.node, the MPI module, where it was built). */
function clean(dir) {
  const keep = ["node_peft.node", "node_peft_mpi.node"].map((f) => join(root, dir, "Release", f)).filter((f) => existsSync(f));
  if (!keep.length) return;
  const tmp = keep.map((f, i) => join(root, `${dir}.node${i}.tmp`));
  keep.forEach((f, i) => renameSync(f, tmp[i]));
  rmSync(join(root, dir), { recursive: true, force: true });
  mkdirSync(join(root, dir, "Release"), { recursive: true });
  keep.forEach((f, i) => renameSync(tmp[i], f));
  say(`node-peft: kept ${keep.map((f) => relative(root, f)).join(", ")}, removed the build's intermediate files`);
}

/**
 * The CUDA compiles' ptxas lines (registers, spills per kernel), each file's under its "Building CUDA object"
 * line, into <dir>/ptxas.log for scripts/cuda-check.sh --from-build. Ninja prints a command's status line and
 * its output together when it finishes, so the lines stay with their file; under another generator the
 * file is not written (cuda-check then compiles the kernels itself).
 */
function keepPtxasReport(dir) {
  if (!existsSync(join(root, dir, "build.ninja"))) return;
  const lines = readFileSync(log, "utf8").split("\n").filter((l) => /Building CUDA object|^ptxas info/.test(l));
  writeFileSync(join(root, dir, "ptxas.log"), lines.join("\n") + "\n");
}

async function buildCmake() {
  if (!have("cmake")) {
    say("node-peft: cmake not found; skipping the cmake-js build");
    return false;
  }
  const cli = cmakeJsCli();
  if (!cli) {
    say("node-peft: cmake-js is not installed; skipping the cmake-js build");
    return false;
  }
  const cuda = process.env.NODE_PEFT_CUDA_BUILD === "1";
  const ok = await run(cuda ? "cmake-js (CPU + CUDA)" : "cmake-js", [process.execPath, cli, "build", "--out", "build-cmake", "--parallel", jobs], sourceCount(cuda));
  if (ok && args.has("--clean")) clean("build-cmake");
  if (ok && cuda) keepPtxasReport("build-cmake");
  if (!ok && args.has("--clean")) rmSync(join(root, "build-cmake"), { recursive: true, force: true });
  return ok;
}

async function buildGyp() {
  const dir = nodeDir();
  if (!dir) {
    say("node-peft: Node's C headers were not found next to the node binary; node-gyp needs them");
    return false;
  }
  const gyp = nodeGypCli();
  if (!gyp) {
    say("node-peft: node-gyp not found");
    return false;
  }
  const ok = await run("node-gyp", [process.execPath, gyp, "rebuild", `--nodedir=${dir}`, "-j", jobs], sourceCount(false));
  if (ok && args.has("--clean")) clean("build");
  if (!ok && args.has("--clean")) rmSync(join(root, "build"), { recursive: true, force: true });
  return ok;
}

if (!have("c++") && !have("g++")) {
  say(
    "node-peft: no C++ compiler found. Install one (Debian/Ubuntu: `apt-get install g++ make cmake python3`; " +
      "Fedora: `dnf install gcc-c++ make cmake`; macOS: `xcode-select --install`), then run `npm rebuild node-peft`.",
  );
  process.exit(1);
}

let ok;
if (args.has("--gyp")) ok = await buildGyp();
else if (args.has("--cmake")) ok = await buildCmake();
else ok = (await buildCmake()) || (await buildGyp());
if (!ok) {
  showLogTail();
  say("node-peft: the native build failed (see the compiler output above).");
  process.exit(1);
}
rmSync(log, { force: true });
say("node-peft: native addon built");
