// The oldest glibc a built .node loads on: the highest GLIBC_x.y symbol version it imports.
import { spawnSync } from "node:child_process";

export function glibcFloor(file) {
  const r = spawnSync("objdump", ["-T", file], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`objdump -T ${file} failed: ${r.stderr}`);
  let best = [0, 0];
  for (const m of r.stdout.matchAll(/GLIBC_(\d+)\.(\d+)/g)) {
    const v = [Number(m[1]), Number(m[2])];
    if (v[0] > best[0] || (v[0] === best[0] && v[1] > best[1])) best = v;
  }
  return best.join(".");
}

/** Shared libraries the file needs (DT_NEEDED). */
export function neededLibraries(file) {
  const r = spawnSync("objdump", ["-p", file], { encoding: "utf8" });
  return [...r.stdout.matchAll(/NEEDED\s+(\S+)/g)].map((m) => m[1]);
}
