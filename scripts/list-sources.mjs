// Lists the addon's C++ sources of one ISA group, so CMakeLists.txt and binding.gyp build the same files.
// A file's suffix picks its group: foo_avx2.cc, foo_avx512.cc, foo_avx512bf16.cc (bf16 + VNNI), foo_amx.cc.
// The ISA groups exist only for x86-64 targets: elsewhere they list nothing and the portable paths run.
// Usage: node scripts/list-sources.mjs <base|avx2|avx512|avx512bf16|amx> [--relative-to dir] [--arch arch]
// (arch: the target's, as CMake's CMAKE_SYSTEM_PROCESSOR or gyp's target_arch spell it; default this Node's)
import { readdirSync, statSync } from "node:fs";
import { join, relative, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const groups = ["avx2", "avx512bf16", "avx512", "amx"];
// Folders whose .cc files are part of the addon (tests and CUDA-only code live elsewhere).
const folders = ["native", "native/core", "native/cpu", "native/ops", "native/cuda/emu"];

export function groupOf(file) {
  const stem = file.replace(/\.cc$/, "");
  for (const g of groups) if (stem.endsWith(`_${g}`)) return g;
  return "base";
}

const X86_64 = new Set(["x64", "x86_64", "amd64"]);
export function isX86_64(arch = process.arch) {
  return X86_64.has(String(arch).toLowerCase());
}

export function listSources(group, arch = process.arch) {
  const out = [];
  if (group !== "base" && !isX86_64(arch)) return out;
  for (const f of folders) {
    const dir = join(root, f);
    let names = [];
    try { names = readdirSync(dir); } catch { continue; }
    for (const n of names.sort()) {
      if (!n.endsWith(".cc") || !statSync(join(dir, n)).isFile()) continue;
      if (groupOf(n) === group) out.push(join(dir, n));
    }
  }
  return out;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const group = process.argv[2] ?? "base";
  const relIdx = process.argv.indexOf("--relative-to");
  const base = relIdx > 0 ? resolve(process.argv[relIdx + 1]) : null;
  const archIdx = process.argv.indexOf("--arch");
  const files = listSources(group, archIdx > 0 ? process.argv[archIdx + 1] : process.arch).map((f) => (base ? relative(base, f) : f));
  process.stdout.write(files.join(process.argv.includes("--lines") ? "\n" : " "));
}
