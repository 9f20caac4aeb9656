// Checkpoint I/O under load and abuse: headers of hundreds of thousands of tensors (time and memory),
// handles dropped without close() (descriptors), and saves killed mid-write (stale temporary files).
// Child processes run the TypeScript sources through a small transpiling loader, so what they test is lib/
// as it stands, not a possibly older dist/.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import {
  Linear, Tensor, buildModelFromCheckpoint, loadModelWeights, loadSafetensors, loadSafetensorsSync, openCheckpoint, openSafetensors,
  openSharded, saveSafetensors, saveSafetensorsSync,
} from "../lib/index.js";
import { SafetensorsStreamWriter } from "../lib/io/safetensors-stream.js";
import { sweepStaleTemps, sweepStaleTempsAsync } from "../lib/io/safetensors-write.js";
import { root } from "./helpers/child.js";
import { stFile, tempDir } from "./helpers/safetensors-files.js";

const tmp = tempDir("node-peft-hardening-");
afterAll(() => tmp.cleanup());

// --- children that import lib/*.ts -------------------------------------------------------------------

const LIB_INDEX = pathToFileURL(join(root, "lib", "index.ts")).href;

function loaderArgs(): string[] {
  const hook = join(tmp.dir, "ts-hook.mjs");
  if (!existsSync(hook)) {
    const ts = pathToFileURL(join(root, "node_modules", "typescript", "lib", "typescript.js")).href;
    const lib = pathToFileURL(join(root, "lib")).href + "/";
    writeFileSync(
      hook,
      `import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import ts from ${JSON.stringify(ts)};
export async function resolve(specifier, context, next) {
  if (context.parentURL?.startsWith(${JSON.stringify(lib)}) && specifier.startsWith(".") && specifier.endsWith(".js")) {
    const url = new URL(specifier.slice(0, -3) + ".ts", context.parentURL);
    if (existsSync(fileURLToPath(url))) return { url: url.href, shortCircuit: true };
  }
  return next(specifier, context);
}
export async function load(url, context, next) {
  if (!url.endsWith(".ts")) return next(url, context);
  const file = fileURLToPath(url);
  const { outputText } = ts.transpileModule(await readFile(file, "utf8"), {
    fileName: file,
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, sourceMap: false },
  });
  return { format: "module", source: outputText, shortCircuit: true };
}
`,
    );
    writeFileSync(join(tmp.dir, "ts-register.mjs"), `import { register } from "node:module";\nregister(${JSON.stringify(pathToFileURL(hook).href)});\n`);
  }
  return ["--import", pathToFileURL(join(tmp.dir, "ts-register.mjs")).href];
}

/** Runs ESM code (which may import LIB_INDEX) in a fresh node with `nodeArgs`; waits for it. */
function runLib(code: string, nodeArgs: string[] = []) {
  const r = spawnSync(process.execPath, [...nodeArgs, ...loaderArgs(), "--input-type=module", "-e", code], {
    cwd: root,
    encoding: "utf8",
    timeout: 120_000,
  });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** The last line of a child's stdout, as JSON. */
function lastJson(stdout: string): Record<string, unknown> {
  const lines = stdout.trim().split("\n");
  return JSON.parse(lines[lines.length - 1]!) as Record<string, unknown>;
}

// --- 1. large headers ----------------------------------------------------------------------------------

/** A file of `n` tensors named t0..t{n-1}: zero-size F32 [0, 4096], or (sized) one U8 byte each with value i % 251. */
function manyTensors(n: number, opts: { sized?: boolean; reversed?: boolean } = {}): Buffer {
  const parts: string[] = [];
  for (let k = 0; k < n; k++) {
    const i = opts.reversed ? n - 1 - k : k;
    parts.push(
      opts.sized
        ? `"t${i}":{"dtype":"U8","shape":[1],"data_offsets":[${i},${i + 1}]}`
        : `"t${i}":{"dtype":"F32","shape":[0,4096],"data_offsets":[0,0]}`,
    );
  }
  const header = `{"__metadata__":{"format":"pt"},${parts.join(",")}}`;
  const data = opts.sized ? Buffer.from(Uint8Array.from({ length: n }, (_, i) => i % 251)) : 0;
  return stFile(header, data);
}

/** t0..t{n-1} in UTF-8 byte order. */
function sortedNames(n: number): string[] {
  return Array.from({ length: n }, (_, i) => `t${i}`).sort();
}

describe("headers of 200,000 tensors", () => {
  const N = 200_000;
  const zeroPath = join(tmp.dir, "zero-200k.safetensors");
  writeFileSync(zeroPath, manyTensors(N));
  const sizedPath = join(tmp.dir, "sized-200k.safetensors");
  writeFileSync(sizedPath, manyTensors(N, { sized: true, reversed: true }));

  it("opens and loads 200,000 zero-size tensors (each in linear time: under 30 s, where a pass quadratic in the count takes hours)", async () => {
    let t0 = performance.now();
    const f = openSafetensors(zeroPath);
    const openMs = performance.now() - t0;
    try {
      const keys = f.keys();
      expect(keys).toHaveLength(N);
      expect(keys).toEqual(sortedNames(N));
      expect(f.metadata()).toEqual({ format: "pt" });
      expect(f.info("t123456")).toEqual({ dtype: "F32", shape: [0, 4096] });
      const t = f.get("t199999");
      expect([t.dtype, t.shape]).toEqual(["f32", [0, 4096]]);
    } finally {
      f.close();
    }
    t0 = performance.now();
    const sync = loadSafetensorsSync(zeroPath);
    const syncMs = performance.now() - t0;
    t0 = performance.now();
    const all = await loadSafetensors(zeroPath);
    const asyncMs = performance.now() - t0;
    for (const out of [sync, all]) {
      const names = Object.keys(out);
      expect(names).toHaveLength(N);
      expect(names[0]).toBe("t0");
      expect(names[N - 1]).toBe("t99999");
      expect(out.t777!.shape).toEqual([0, 4096]);
      for (const t of Object.values(out)) t.dispose();
    }
    console.log(`200k zero-size tensors: open ${openMs.toFixed(0)} ms, loadSync ${syncMs.toFixed(0)} ms, load ${asyncMs.toFixed(0)} ms`);
    expect(openMs).toBeLessThan(30_000);
    expect(syncMs).toBeLessThan(30_000);
    expect(asyncMs).toBeLessThan(30_000);
  });

  it("reads 200,000 tensors whose header order is the reverse of their data order", async () => {
    using f = openSafetensors(sizedPath);
    for (const i of [0, 1, 250, 251, 123_457, N - 1]) expect(Array.from(f.getBytes(`t${i}`)), `t${i}`).toEqual([i % 251]);
    const all = await loadSafetensors(sizedPath);
    expect(Object.keys(all)).toEqual(sortedNames(N));
    for (const i of [0, 99_999, N - 1]) expect(all[`t${i}`]!.toArray()).toEqual([i % 251]);
    for (const t of Object.values(all)) t.dispose();
  });

  it("reads runs of small tensors together and large ones alone, every byte in place", async () => {
    // Sizes from 0 bytes to past the 64 KiB gather limit, over several 1 MiB gathered reads.
    let seed = 12345;
    const next = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0);
    const src: Record<string, Tensor> = {};
    for (let i = 0; i < 400; i++) {
      const n = i % 50 === 7 ? 0 : i % 37 === 3 ? 70_000 + (next() % 200_000) : next() % 20_000;
      src[`m${String(i).padStart(3, "0")}`] = Tensor.fromBytes(Uint8Array.from({ length: n }, () => next() & 0xff), [n], "u8");
    }
    const p = join(tmp.dir, "mixed.safetensors");
    saveSafetensorsSync(p, src);
    for (const out of [loadSafetensorsSync(p), await loadSafetensors(p)]) {
      expect(Object.keys(out)).toEqual(Object.keys(src));
      for (const [k, t] of Object.entries(src)) expect(Buffer.from(out[k]!.bytes()).equals(Buffer.from(t.bytes())), k).toBe(true);
      for (const t of Object.values(out)) t.dispose();
    }
  });

  it("still refuses a duplicate name among 200,000, naming both positions", () => {
    const text = `{${Array.from({ length: N }, (_, i) => `"t${i === N - 1 ? 5 : i}":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}`).join(",")}}`;
    const p = tmp.file("dup-200k.safetensors", stFile(text));
    expect(() => openSafetensors(p)).toThrow(/invalid header JSON: duplicate key "t5" \(first at byte \d+\) at header byte \d+/);
  });

  // The header used to become a JSON tree of per-entry objects (Maps, nodes, arrays): some 1.5 KB per
  // tensor, so opening this file needed more than 256 MB of heap. The flat layout fits in far less.
  it("opens and loads them within a 192 MB heap", () => {
    const r = runLib(
      `import { openSafetensors, loadSafetensorsSync } from ${JSON.stringify(LIB_INDEX)};
      const f = openSafetensors(${JSON.stringify(zeroPath)});
      const keys = f.keys().length;
      f.close();
      const loaded = Object.keys(loadSafetensorsSync(${JSON.stringify(zeroPath)})).length;
      console.log(JSON.stringify({ keys, loaded, heapMB: Math.round(process.memoryUsage().heapUsed / 2 ** 20) }));`,
      ["--max-old-space-size=192"],
    );
    expect(r.stderr).not.toMatch(/heap out of memory/);
    expect(r.status, r.stderr).toBe(0);
    expect(lastJson(r.stdout)).toMatchObject({ keys: N, loaded: N });
  });
});

describe("models built from checkpoints of many layers", () => {
  // Each layer used to be placed by a linear search of its parent's children: 20,000 siblings took ~45 s.
  it("builds 20,000 sibling layers in linear time", () => {
    const n = 20_000;
    const p = join(tmp.dir, "wide.safetensors");
    const src: Record<string, Tensor> = {};
    for (let i = 0; i < n; i++) src[`layers.${i}.weight`] = Tensor.fromArray([i], [1, 1]);
    src["layers.7.inner.weight"] = Tensor.fromArray([-1], [1, 1]);
    saveSafetensorsSync(p, src);
    for (const t of Object.values(src)) t.dispose();
    const t0 = performance.now();
    const model = buildModelFromCheckpoint(p);
    const ms = performance.now() - t0;
    console.log(`buildModelFromCheckpoint, ${n} sibling layers: ${ms.toFixed(0)} ms`);
    expect(ms).toBeLessThan(10_000);
    expect([...model.getSubmodule("layers").namedChildren()]).toHaveLength(n);
    expect((model.getSubmodule("layers.19999") as Linear).weight.toArray()).toEqual([19999]);
    // A layer that also holds a deeper one keeps it.
    expect((model.getSubmodule("layers.7") as Linear).weight.toArray()).toEqual([7]);
    expect((model.getSubmodule("layers.7.inner") as Linear).weight.toArray()).toEqual([-1]);
    for (const t of model.parameters()) t.dispose();
  });
});

// --- 2. handles dropped without close() -----------------------------------------------------------------

describe.skipIf(process.platform !== "linux")("handles dropped without close()", () => {
  it("give their descriptors back when collected, and close() leaves a reused descriptor alone", () => {
    const p = join(tmp.dir, "small.safetensors");
    saveSafetensorsSync(p, { w: Tensor.fromArray([1, 2, 3], [3]) });
    const r = runLib(
      `import { openSync, closeSync, fstatSync, readdirSync } from "node:fs";
      import { openSafetensors } from ${JSON.stringify(LIB_INDEX)};
      const fds = () => readdirSync("/proc/self/fd").length;
      const turn = () => new Promise((r) => setTimeout(r, 10));
      const collect = async (until) => {
        for (let k = 0; k < 50 && !until(); k++) { globalThis.gc(); await turn(); }
      };
      const before = fds();
      (() => { for (let i = 0; i < 1000; i++) openSafetensors(${JSON.stringify(p)}).keys(); })();
      const opened = fds();
      await collect(() => fds() <= before);
      const after = fds();

      // A closed handle must not close, when collected, whatever later got its descriptor number.
      let reused = -1;
      (() => {
        const h = openSafetensors(${JSON.stringify(p)});
        h.close();
        reused = openSync(${JSON.stringify(p)}, "r");
      })();
      for (let k = 0; k < 10; k++) { globalThis.gc(); await turn(); }
      let reusedOpen = true;
      try { fstatSync(reused); } catch { reusedOpen = false; }
      if (reusedOpen) closeSync(reused);
      console.log(JSON.stringify({ before, opened, after, reusedOpen }));`,
      ["--expose-gc"],
    );
    expect(r.status, r.stderr).toBe(0);
    const { before, opened, after, reusedOpen } = lastJson(r.stdout) as { before: number; opened: number; after: number; reusedOpen: boolean };
    expect(opened - before).toBeGreaterThanOrEqual(1000);
    expect(after - before).toBeLessThanOrEqual(2);
    expect(reusedOpen).toBe(true);
  });
});

// --- 3. temporary files of killed writers --------------------------------------------------------------

/** A pid that was running a moment ago and is not now (its process has exited and been reaped). */
function deadPid(): number {
  const r = spawnSync(process.execPath, ["-e", ""]);
  return r.pid!;
}

describe("temporary files of writers killed mid-save", () => {
  const d = join(tmp.dir, "killed");
  mkdirSync(d);
  const target = join(d, "victim.safetensors");
  const TEMP = /^\.victim\.safetensors\.(\d+)\.[0-9a-f]{12}\.tmp$/;

  function exited(child: ReturnType<typeof spawn>): Promise<{ signal: string | null; stdout: string }> {
    let stdout = "";
    child.stdout!.on("data", (b: Buffer) => (stdout += b));
    child.stderr!.resume();
    return new Promise((resolve) => child.on("exit", (_code, signal) => resolve({ signal, stdout })));
  }

  it("a later save removes a killed writer's file but keeps a live writer's and every other name", async () => {
    const total = 256 << 20;
    const child = spawn(
      process.execPath,
      [...loaderArgs(), "--input-type=module", "-e",
        `import { Tensor, saveSafetensorsSync } from ${JSON.stringify(LIB_INDEX)};
        saveSafetensorsSync(${JSON.stringify(target)}, { big: Tensor.zeros([${total / 4}]) });
        console.log("finished");`],
      { cwd: root, stdio: ["ignore", "pipe", "pipe"] },
    );
    const done = exited(child);
    // Kill the writer once data is flowing into its temporary file.
    let killedAt = -1;
    const deadline = Date.now() + 90_000;
    while (killedAt < 0 && Date.now() < deadline && child.exitCode === null) {
      const name = readdirSync(d).find((n) => TEMP.test(n));
      const size = name ? statSync(join(d, name), { throwIfNoEntry: false })?.size ?? 0 : 0;
      if (size > 0) {
        child.kill("SIGKILL");
        killedAt = size;
      } else await new Promise((r) => setTimeout(r, 1));
    }
    const r = await done;
    expect(r.signal).toBe("SIGKILL");
    expect(r.stdout).not.toContain("finished");
    expect(killedAt).toBeGreaterThan(0);
    const stale = readdirSync(d).filter((n) => TEMP.test(n));
    expect(stale).toHaveLength(1);
    expect(Number(TEMP.exec(stale[0]!)![1])).toBe(child.pid);

    const dead = child.pid!;
    const keep = [
      `.victim.safetensors.${process.pid}.0123456789ab.tmp`, // a live writer (this process)
      `victim.safetensors.${dead}.0123456789ab.tmp`, // no leading dot
      `.victim.safetensors.${dead}.0123456789AB.tmp`, // not our hex
      `.victim.safetensors.${dead}.0123456789ab.tmp.bak`,
      `.victim.safetensors.${dead}.tmp`,
      `.victim.safetensors.0${dead}.0123456789ab.tmp`,
    ];
    for (const n of keep) writeFileSync(join(d, n), "x");
    mkdirSync(join(d, `.dir.${dead}.0123456789ab.tmp`)); // not a regular file

    saveSafetensorsSync(join(d, "other.safetensors"), { x: Tensor.fromArray([1], [1]) });
    const left = readdirSync(d);
    expect(left).not.toContain(stale[0]);
    expect(left.sort()).toEqual([...keep, `.dir.${dead}.0123456789ab.tmp`, "other.safetensors"].sort());
  }, 180_000);

  it("the async save and the stream writer sweep too; the helpers report what they removed", async () => {
    const pid = deadPid();
    const stale = (tag: string) => {
      const p = join(d, `.${tag}.safetensors.${pid}.${"0123456789ab"}.tmp`);
      writeFileSync(p, Buffer.alloc(1024));
      return p;
    };
    const a = stale("a");
    await saveSafetensors(join(d, "async.safetensors"), { x: Tensor.fromArray([1], [1]) });
    expect(existsSync(a)).toBe(false);

    const b = stale("b");
    const w = new SafetensorsStreamWriter(join(d, "stream.safetensors"), [{ name: "x", dtype: "f32", shape: [1] }]);
    expect(existsSync(b)).toBe(false);
    w.write("x", Tensor.fromArray([2], [1]));
    w.close();
    expect(loadSafetensorsSync(join(d, "stream.safetensors")).x!.toArray()).toEqual([2]);

    const c = stale("c");
    expect(sweepStaleTemps(d)).toEqual([c]);
    const e = stale("e");
    expect(await sweepStaleTempsAsync(d)).toEqual([e]);
    expect(sweepStaleTemps(join(d, "no-such-dir"))).toEqual([]);
    expect(await sweepStaleTempsAsync(join(d, "no-such-dir"))).toEqual([]);
    // This process's own temporary files are never taken for stale.
    const mine = join(d, `.mine.safetensors.${process.pid}.abcdefabcdef.tmp`);
    writeFileSync(mine, "x");
    expect(sweepStaleTemps(d)).toEqual([]);
    expect(existsSync(mine)).toBe(true);
  });
});

describe("arguments of the wrong type", () => {
  it("are refused with a coded TypeError, not a crash inside", () => {
    const p = join(tmp.dir, "args.safetensors");
    saveSafetensorsSync(p, { "a.weight": Tensor.fromArray([1], [1, 1]) });
    const index = join(tmp.dir, "args.index.json");
    writeFileSync(index, JSON.stringify({ weight_map: { "a.weight": "args.safetensors" } }));
    const code = (fn: () => unknown): string | undefined => {
      try {
        fn();
      } catch (e) {
        return (e as { code?: string }).code;
      }
      return "returned";
    };
    using f = openSafetensors(p);
    using s = openSharded(index);
    for (const bad of [1n, Symbol("s"), Object.create(null), [Object.create(null)], undefined]) {
      for (const h of [f, s]) {
        expect(code(() => h.get(bad as never))).toBe("ERR_INVALID_ARG_TYPE");
        expect(code(() => h.info(bad as never))).toBe("ERR_INVALID_ARG_TYPE");
        expect(code(() => h.getBytes(bad as never))).toBe("ERR_INVALID_ARG_TYPE");
      }
      expect(code(() => openCheckpoint(bad as never))).toBe("ERR_INVALID_ARG_TYPE");
      expect(code(() => buildModelFromCheckpoint(bad as never))).toBe("ERR_INVALID_ARG_TYPE");
    }
    expect(code(() => buildModelFromCheckpoint(p, null as never))).toBe("ERR_INVALID_ARG_TYPE");
    const model = buildModelFromCheckpoint(p);
    expect(code(() => loadModelWeights(model, p, null as never))).toBe("ERR_INVALID_ARG_TYPE");
    expect(code(() => loadModelWeights(model, p, { prefix: 3 as never }))).toBe("ERR_INVALID_ARG_TYPE");
    expect(loadModelWeights(model, p)).toEqual({ missingKeys: [], unexpectedKeys: [] });
  });
});
