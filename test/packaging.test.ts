// The package as npm ships it: export conditions that let require() load the ES module, the install
// script's choice between the prebuilt binary and a source build, the loader's order and fallback, and the
// prebuilt binary's link floor. (.ci/run installs the packed tarball into a fresh project as well.)
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { backend } from "../lib/index.js";
import { root } from "./helpers/child.js";
// @ts-expect-error: a plain .mjs helper of the build scripts
import { glibcFloor, neededLibraries } from "../scripts/glibc-floor.mjs";

const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const tmp = mkdtempSync(join(tmpdir(), "node-peft-pack-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** A copy of the installed package's layout (no .git): scripts, dist, package.json, a prebuilt binary. */
function packageCopy(name: string, prebuilt: string | null): string {
  const dir = join(tmp, name);
  mkdirSync(join(dir, "prebuilds", "linux-x64"), { recursive: true });
  for (const p of ["scripts", "dist", "package.json"]) cpSync(join(root, p), join(dir, p), { recursive: true });
  symlinkSync(join(root, "node_modules"), join(dir, "node_modules"));
  if (prebuilt !== null) writeFileSync(join(dir, "prebuilds", "linux-x64", "node-peft.node"), prebuilt === "good" ? readFileSync(backend.path) : prebuilt);
  return dir;
}

function install(dir: string, env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [join(dir, "scripts", "install.mjs"), "--dry-run"], {
    cwd: dir, encoding: "utf8", timeout: 60_000,
    env: { ...process.env, NODE_PEFT_CUDA_BUILD: "", NODE_PEFT_BUILD_FROM_SOURCE: "", npm_config_build_from_source: "", ...env },
  });
  expect(r.status, r.stderr).toBe(0);
  return { decision: r.stdout.trim(), said: r.stderr };
}

describe("package.json", () => {
  it("exports one ES module to import and require (types first), on Node >= 20.19", () => {
    expect(pkg.type).toBe("module");
    expect(pkg.exports["."]).toEqual({ types: "./dist/index.d.ts", default: "./dist/index.js" });
    expect(pkg.engines.node).toBe(">=20.19");
    expect(pkg.files).toEqual(expect.arrayContaining(["dist/", "prebuilds/", "native/", "scripts/", "CMakeLists.txt", "binding.gyp"]));
    expect(pkg.scripts.install).toBe("node scripts/install.mjs");
    expect(pkg.dependencies["node-gyp-build"]).toBeDefined();
    expect(pkg.license).toBe("Apache-2.0");
    expect(readFileSync(join(root, "LICENSE"), "utf8")).toMatch(/Apache License\s+Version 2\.0/);
  });

  it("require() gives the same classes as import", () => {
    const r = spawnSync(process.execPath, ["-e", `
      const cjs = require(${JSON.stringify(root)});
      import(${JSON.stringify(join(root, "dist", "index.js"))}).then((esm) => {
        console.log(cjs.Tensor === esm.Tensor, cjs.PeftError === esm.PeftError, cjs.Tensor.zeros([2]).shape.join());
      });`], { encoding: "utf8", timeout: 60_000 });
    expect(r.stderr).toBe("");
    expect(r.stdout.trim()).toBe("true true 2");
  });
});

describe("install script", () => {
  let good: string, broken: string, none: string;
  beforeAll(() => {
    good = packageCopy("good", "good");
    broken = packageCopy("broken", "not an ELF file");
    none = packageCopy("none", null);
  });

  it("uses a prebuilt binary that loads, and says so", () => {
    const r = install(good);
    expect(r.decision).toBe("would use: prebuilds/linux-x64/node-peft.node");
    expect(r.said).toMatch(/using the prebuilt binary .*nothing to compile/);
  });

  it("compiles (and cleans up, outside a git checkout) when no prebuilt binary fits or one fails to load", () => {
    for (const [dir, env, why] of [
      [broken, {}, /no usable prebuilt binary \(Error: .*node-peft\.node: (file too short|invalid ELF header)/],
      [none, {}, /no usable prebuilt binary \(Error: No native build was found/],
      [good, { npm_config_arch: "arm64" }, /No native build was found for platform=linux arch=arm64/],
    ] as const) {
      const r = install(dir, env);
      expect(r.decision).toBe("would compile: build-native.mjs --clean NODE_PEFT_CUDA_BUILD=0");
      expect(r.said).toMatch(why);
    }
  });

  it("compiles when asked: from source, or the CUDA build", () => {
    expect(install(good, { NODE_PEFT_BUILD_FROM_SOURCE: "1" }).decision).toBe("would compile: build-native.mjs --clean NODE_PEFT_CUDA_BUILD=0");
    expect(install(good, { npm_config_build_from_source: "true" }).decision).toBe("would compile: build-native.mjs --clean NODE_PEFT_CUDA_BUILD=0");
    expect(install(good, { NODE_PEFT_CUDA_BUILD: "1" }).decision).toBe("would compile: build-native.mjs --cmake --clean NODE_PEFT_CUDA_BUILD=1");
  });
});

describe("loader", () => {
  it("skips a build that fails to load and takes the prebuilt binary; a named build that fails is ERR_NATIVE", () => {
    const dir = packageCopy("loader", "good");
    mkdirSync(join(dir, "build-cmake", "Release"), { recursive: true });
    writeFileSync(join(dir, "build-cmake", "Release", "node_peft.node"), "truncated");
    const probe = `import(${JSON.stringify(join(dir, "dist", "index.js"))}).then((m) => console.log(m.backend.path), (e) => console.log(e.code, e.message))`;
    const run = (env: Record<string, string>) =>
      spawnSync(process.execPath, ["-e", probe], { encoding: "utf8", timeout: 60_000, env: { ...process.env, NODE_PEFT_BUILD: "", ...env } }).stdout.trim();
    expect(run({})).toBe(join(dir, "prebuilds", "linux-x64", "node-peft.node"));
    expect(run({ NODE_PEFT_BUILD: "prebuild" })).toBe(join(dir, "prebuilds", "linux-x64", "node-peft.node"));
    const named = run({ NODE_PEFT_BUILD: "cmake-js" });
    expect(named).toMatch(/^ERR_NATIVE .*no native addon loads/);
    expect(named).toMatch(/cmake-js: .*build-cmake\/Release\/node_peft\.node \(.*(file too short|invalid ELF header)/);
  });
});

describe("prebuilt binary", () => {
  const file = join(root, "prebuilds", "linux-x64", "node-peft.node");
  it.runIf(existsSync(file))("needs glibc <= 2.36 (as the README says) and no libstdc++", () => {
    const [major, minor] = (glibcFloor(file) as string).split(".").map(Number);
    expect(major === 2 && minor <= 36, glibcFloor(file)).toBe(true);
    expect(neededLibraries(file)).not.toContain("libstdc++.so.6");
    expect(neededLibraries(file)).not.toContain("libgcc_s.so.1");
    expect(readFileSync(join(root, "README.md"), "utf8")).toContain("glibc ≥ 2.36");
  });
});
