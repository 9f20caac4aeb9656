// The node-peft command against hostile input: huge tensor lists, configs nested thousands deep, and an
// --out that names one of the merge's own inputs.
import { spawnSync } from "node:child_process";
import { copyFileSync, linkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PeftError, loadSafetensors, saveSafetensors } from "../lib/index.js";
import { errorLine } from "../lib/cli.js";
import { root } from "./helpers/child.js";
import { FIXTURE_DIR } from "./helpers/fixtures.js";

const tmp = mkdtempSync(join(tmpdir(), "node-peft-cli-hardening-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function cli(args: string[], cwd = root) {
  const r = spawnSync(process.execPath, [join(root, "dist", "cli.js"), ...args], { encoding: "utf8", timeout: 120_000, cwd, maxBuffer: 1 << 30 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** One non-empty line, starting "node-peft: ", and nothing that looks like a stack frame. */
function expectOneErrorLine(stderr: string): string {
  const lines = stderr.split("\n").filter((l) => l.trim() !== "");
  expect(lines, stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^node-peft: /);
  expect(stderr).not.toMatch(/\n\s+at /);
  return lines[0]!;
}

/** A valid safetensors file of `n` zero-size tensors, written by hand (header only). */
function writeManyEmptyTensors(path: string, n: number): void {
  const parts = ['"__metadata__":{"format":"pt"}'];
  for (let i = 0; i < n; i++) parts.push(`"t${i}":{"dtype":"F32","shape":[0,${i % 5}],"data_offsets":[0,0]}`);
  let json = Buffer.from(`{${parts.join(",")}}`);
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([len, json]));
}

describe("node-peft inspect", () => {
  it("lists a file of 200,000 zero-size tensors", () => {
    const file = join(tmp, "many.safetensors");
    writeManyEmptyTensors(file, 200_000);
    const r = cli(["inspect", file]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^name\s+dtype\s+shape\s+size\n/);
    expect(r.stdout).toMatch(/\nt199999\s+F32\s+\[0, 4\]\s+0 B\n/);
    expect(r.stdout).toMatch(/\n200000 tensors, 0 B\nmetadata: format=pt\n$/);
  });

  it("an adapter config nested 3,000 deep is one error line naming the file and key, exit code 1", () => {
    const dir = join(tmp, "deep-adapter");
    mkdirSync(dir, { recursive: true });
    copyFileSync(join(FIXTURE_DIR, "adapter", "adapter_model.safetensors"), join(dir, "adapter_model.safetensors"));
    const config = readFileSync(join(FIXTURE_DIR, "adapter", "adapter_config.json"), "utf8").trimEnd().slice(0, -1);
    writeFileSync(join(dir, "adapter_config.json"), `${config}, "weird": ${'{"a":'.repeat(3000)}1${"}".repeat(3000)}}`);
    const r = cli(["inspect", dir]);
    expect(r.code).toBe(1);
    const line = expectOneErrorLine(r.stderr);
    expect(line).toContain(join(dir, "adapter_config.json"));
    expect(line).toContain("weird.a.a.a");
    expect(line).toContain("nested more than 64 levels deep");
    // merge reads the same config
    const m = cli(["merge", "--base", join(FIXTURE_DIR, "base_model.safetensors"), "--adapter", dir, "--out", join(tmp, "never.safetensors")]);
    expect(m.code).toBe(1);
    expect(expectOneErrorLine(m.stderr)).toContain("nested more than 64 levels deep");
  });

  it("an unsafe regex in the adapter config is one error line naming the pattern", () => {
    const dir = join(tmp, "redos-adapter");
    mkdirSync(dir, { recursive: true });
    copyFileSync(join(FIXTURE_DIR, "adapter", "adapter_model.safetensors"), join(dir, "adapter_model.safetensors"));
    const config = JSON.parse(readFileSync(join(FIXTURE_DIR, "adapter", "adapter_config.json"), "utf8"));
    writeFileSync(join(dir, "adapter_config.json"), JSON.stringify({ ...config, target_modules: "([a-z_.0-9]+)+X" }));
    const r = cli(["inspect", dir]);
    expect(r.code).toBe(1);
    expect(expectOneErrorLine(r.stderr)).toContain('target_modules: regular expression "([a-z_.0-9]+)+X" is refused');
  });

  it("usage mistakes still exit 2 for a malformed command line", () => {
    expect(cli(["inspect", "--nope"]).code).toBe(2);
    expect(cli([]).code).toBe(2);
  });
});

describe("errorLine", () => {
  it("turns any error into one line, unexpected ones with their type and code", () => {
    expect(errorLine(new PeftError("ERR_CONFIG", "bad\n  thing"))).toBe("node-peft: bad thing");
    expect(errorLine(new RangeError("Maximum call stack size exceeded"))).toBe(
      "node-peft: unexpected error: RangeError: Maximum call stack size exceeded",
    );
    const coded = Object.assign(new Error("boom\nat line 2"), { code: "E_WEIRD" });
    expect(errorLine(coded)).toBe("node-peft: unexpected error: Error: boom at line 2 (code E_WEIRD)");
    expect(errorLine(Object.assign(new Error("no such file"), { syscall: "open", code: "ENOENT" }))).toBe("node-peft: no such file");
    expect(errorLine("a string")).toBe("node-peft: unexpected error: string: a string");
    expect(errorLine(Object.create(null))).toMatch(/^node-peft: unexpected error: object: \[object Object\]$/);
    for (const e of [new TypeError("x"), undefined, null, 42]) expect(errorLine(e)).not.toContain("\n");
  });
});

describe("node-peft merge never writes over its inputs", () => {
  const ad = join(tmp, "ad");
  const base = join(tmp, "base.safetensors");
  const shards = join(tmp, "sharded");
  let inputs: string[] = [];
  const snapshot = () => new Map(inputs.map((f) => [f, readFileSync(f)]));

  beforeAll(async () => {
    mkdirSync(ad, { recursive: true });
    for (const f of ["adapter_config.json", "adapter_model.safetensors"]) copyFileSync(join(FIXTURE_DIR, "adapter", f), join(ad, f));
    copyFileSync(join(FIXTURE_DIR, "base_model.safetensors"), base);
    // The same base split into two shards with an index.
    mkdirSync(shards, { recursive: true });
    const tensors = await loadSafetensors(base);
    const keys = Object.keys(tensors);
    const half = Math.ceil(keys.length / 2);
    const weightMap: Record<string, string> = {};
    for (const [i, part] of [keys.slice(0, half), keys.slice(half)].entries()) {
      const file = `model-0000${i + 1}-of-00002.safetensors`;
      await saveSafetensors(join(shards, file), Object.fromEntries(part.map((k) => [k, tensors[k]!])));
      for (const k of part) weightMap[k] = file;
    }
    writeFileSync(join(shards, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    inputs = [
      join(ad, "adapter_config.json"), join(ad, "adapter_model.safetensors"), base,
      join(shards, "model.safetensors.index.json"), join(shards, "model-00001-of-00002.safetensors"), join(shards, "model-00002-of-00002.safetensors"),
    ];
  });

  it("refuses, even with --force, an --out that is the adapter's weights or config or the base, by any path", () => {
    const before = snapshot();
    symlinkSync(join(ad, "adapter_model.safetensors"), join(tmp, "link-to-weights.safetensors"));
    linkSync(base, join(tmp, "hard-link-to-base.safetensors"));
    const refused: [string[], RegExp, string?][] = [
      [["--base", base, "--adapter", ad, "--out", join(tmp, "link-to-weights.safetensors")], /is the adapter's weights/],
      [["--base", "base.safetensors", "--adapter", "./ad/../ad", "--out", "ad/adapter_config.json"], /is the adapter's config/, tmp],
      [["--base", "base.safetensors", "--adapter", "ad", "--out", "./ad/./adapter_model.safetensors"], /is the adapter's weights/, tmp],
      [["--base", base, "--adapter", ad, "--out", "../" + join(tmp.split("/").pop()!, "base.safetensors")], /is the base checkpoint/, tmp],
      [["--base", base, "--adapter", ad, "--out", join(tmp, "hard-link-to-base.safetensors")], /is the base checkpoint/],
      [["--base", base, "--adapter", ad, "--out", ad], /is the adapter directory/],
    ];
    for (const [args, why, cwd] of refused) {
      const r = cli(["merge", ...args, "--force"], cwd);
      expect(r.code, args.join(" ")).toBe(1);
      const line = expectOneErrorLine(r.stderr);
      expect(line).toMatch(why);
      expect(line).toContain("refused even with --force");
    }
    for (const [f, bytes] of before) expect(readFileSync(f).equals(bytes), f).toBe(true);
  });

  it("refuses every shard and the index of a sharded base; a new file is written", async () => {
    const before = snapshot();
    const index = join(shards, "model.safetensors.index.json");
    for (const out of [index, join(shards, "model-00002-of-00002.safetensors"), "sharded/model-00001-of-00002.safetensors"]) {
      const r = cli(["merge", "--base", index, "--adapter", ad, "--out", out, "--force"], tmp);
      expect(r.code, out).toBe(1);
      expect(expectOneErrorLine(r.stderr)).toMatch(/is (a shard of the base checkpoint|the base checkpoint's index)/);
    }
    for (const [f, bytes] of before) expect(readFileSync(f).equals(bytes), f).toBe(true);
    const out = join(tmp, "merged.safetensors");
    const ok = cli(["merge", "--base", index, "--adapter", ad, "--out", out]);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/21 tensors, 12 merged/);
    expect(Object.keys(await loadSafetensors(out)).length).toBe(21);
  });
});
