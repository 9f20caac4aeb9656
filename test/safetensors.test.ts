// safetensors reader and writer: round trips of every dtype, files written by hand from the spec, the lazy
// handle, the writer's layout, the reference fixtures, sharded checkpoints, and atomic saves.
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, truncateSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import {
  PeftError, Tensor, loadSafetensors, loadSafetensorsSync, loadShardedSafetensors, openSafetensors, openSharded,
  saveSafetensors, saveSafetensorsSync,
} from "../lib/index.js";
import { distIndex } from "./helpers/child.js";
import { entry, stFile, tempDir } from "./helpers/safetensors-files.js";
import { FIXTURE_DIR as FIXTURE_ROOT } from "./helpers/fixtures.js";

const tmp = tempDir();
afterAll(() => tmp.cleanup());

const FIXTURES = FIXTURE_ROOT + "/";

function errorOf(fn: () => unknown): { code?: string; message: string; name: string } {
  try {
    fn();
  } catch (e) {
    return e as { code?: string; message: string; name: string };
  }
  throw new Error("expected an error");
}

/** The JSON header of a file as text, with its length prefix. */
function headerOf(path: string): { n: number; text: string } {
  const b = readFileSync(path);
  const n = Number(b.readBigUInt64LE(0));
  return { n, text: b.toString("utf8", 8, 8 + n) };
}

function bytesOf(t: Tensor): number[] {
  return Array.from(t.bytes());
}

// Every dtype, with the values most likely to be mangled: all 16-bit float patterns (NaNs, subnormals,
// -0), integer extremes, f32 NaN payloads.
function everyDtype(): Record<string, Tensor> {
  const bits = Uint16Array.from({ length: 65536 }, (_, i) => i);
  const f32 = new Uint32Array([0, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00001, 0xffbfffff, 0x00000001, 0x3f800000, 0x7f7fffff]);
  return {
    f32: Tensor.fromBytes(f32, [3, 3], "f32"),
    f16: Tensor.fromBits(bits, [256, 256], "f16"),
    bf16: Tensor.fromBits(bits, [65536], "bf16"),
    i8: Tensor.fromBytes(Int8Array.from({ length: 256 }, (_, i) => i - 128), [2, 128], "i8"),
    u8: Tensor.fromBytes(Uint8Array.from({ length: 256 }, (_, i) => i), [256], "u8"),
    i32: Tensor.fromBytes(new Int32Array([-(2 ** 31), 2 ** 31 - 1, 0, -1]), [2, 2], "i32"),
    i64: Tensor.fromBytes(new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n, 0n, -1n, 2n ** 53n + 1n]), [5], "i64"),
    scalar: Tensor.fromArray([3.5], []),
    empty: Tensor.zeros([2, 0, 3], { dtype: "bf16" }),
  };
}

describe("round trips", () => {
  const src = everyDtype();
  const check = (out: Record<string, Tensor>) => {
    expect(Object.keys(out).sort()).toEqual(Object.keys(src).sort());
    for (const [k, t] of Object.entries(src)) {
      const u = out[k]!;
      expect([u.dtype, u.shape], k).toEqual([t.dtype, t.shape]);
      expect(bytesOf(u), k).toEqual(bytesOf(t));
    }
  };

  it("saveSafetensorsSync -> loadSafetensorsSync keeps every bit", () => {
    const p = tmp.file("all-sync.safetensors");
    saveSafetensorsSync(p, src, { note: "sync" });
    check(loadSafetensorsSync(p));
    using f = openSafetensors(p);
    expect(f.metadata()).toEqual({ format: "pt", note: "sync" });
    check(Object.fromEntries(f.keys().map((k) => [k, f.get(k)])));
  });

  it("saveSafetensors -> loadSafetensors (async) keeps every bit", async () => {
    const p = tmp.file("all-async.safetensors");
    await saveSafetensors(p, new Map(Object.entries(src)));
    check(await loadSafetensors(p));
    // Both writers produce the same bytes.
    saveSafetensorsSync(tmp.file("all-sync2.safetensors"), src);
    expect(readFileSync(p).equals(readFileSync(tmp.file("all-sync2.safetensors")))).toBe(true);
  });

  it("reads tensors larger than one read piece (async reads them in parallel pieces)", async () => {
    const p = tmp.file("large.safetensors");
    // 5.2 MB and 9 MB tensors: not multiples of the 4 MiB piece size, and not of each other.
    const a = Tensor.rand([1_300_001], { seed: 1 });
    const b = Tensor.rand([3, 750_001], { seed: 2, dtype: "bf16" });
    await saveSafetensors(p, { a, b });
    for (const out of [await loadSafetensors(p), loadSafetensorsSync(p)]) {
      expect(Buffer.from(out.a!.bytes()).equals(Buffer.from(a.bytes()))).toBe(true);
      expect(Buffer.from(out.b!.bytes()).equals(Buffer.from(b.bytes()))).toBe(true);
    }
  });

  it("keeps i64 extremes and 16-bit float bits exactly", () => {
    const p = tmp.file("extremes.safetensors");
    saveSafetensorsSync(p, { i64: src.i64!, bf16: src.bf16! });
    const out = loadSafetensorsSync(p);
    expect(Array.from(out.i64!.view() as BigInt64Array)).toEqual([-(2n ** 63n), 2n ** 63n - 1n, 0n, -1n, 2n ** 53n + 1n]);
    const bits = out.bf16!.view() as Uint16Array;
    expect(bits.every((b, i) => b === i)).toBe(true);
  });
});

describe("files written by hand from the spec", () => {
  it("reads the reference implementation's serialized bytes (F32 [1, 2, 3])", () => {
    // safetensors' own test_serialization output, byte for byte.
    const bytes = Uint8Array.from([
      64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58,
      34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116,
      97, 95, 111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63,
      0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64,
    ]);
    const p = tmp.file("reference.safetensors", bytes);
    using f = openSafetensors(p);
    expect(f.keys()).toEqual(["attn.0"]);
    expect(f.metadata()).toEqual({});
    expect(f.info("attn.0")).toEqual({ dtype: "F32", shape: [1, 2, 3] });
    expect(Array.from(f.get("attn.0").toFloat32Array())).toEqual([0, 1, 2, 3, 4, 5]);
  });

  it("writes what the reference writes, plus the format metadata", () => {
    const p = tmp.file("ours.safetensors");
    saveSafetensorsSync(p, { "attn.0": Tensor.fromArray([0, 1, 2, 3, 4, 5], [1, 2, 3]) });
    const json = `{"__metadata__":{"format":"pt"},"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}} `;
    const expected = Buffer.concat([
      Buffer.from([96, 0, 0, 0, 0, 0, 0, 0]),
      Buffer.from(json, "utf8"),
      Buffer.from([0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64]),
    ]);
    expect(json.length).toBe(96);
    expect(readFileSync(p).equals(expected)).toBe(true);
  });

  it("reads an empty file list and metadata-only headers (reference test_empty)", () => {
    const empty = tmp.file("empty.safetensors", Uint8Array.from([8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32]));
    expect(loadSafetensorsSync(empty)).toEqual({});
    const meta = tmp.file("meta.safetensors", Uint8Array.from([
      40, 0, 0, 0, 0, 0, 0, 0, 123, 34, 95, 95, 109, 101, 116, 97, 100, 97, 116, 97, 95, 95, 34, 58, 123, 34, 102,
      114, 97, 109, 101, 119, 111, 114, 107, 34, 58, 34, 112, 116, 34, 125, 125, 32, 32, 32, 32, 32,
    ]));
    using f = openSafetensors(meta);
    expect(f.metadata()).toEqual({ framework: "pt" });
    expect(f.keys()).toEqual([]);
  });

  it("reads a 0-dim tensor (shape [])", () => {
    const p = tmp.file("scalar.safetensors", stFile(`{"test":${entry("I32", [], 0, 4)}}`, Buffer.from([7, 0, 0, 0])));
    const t = loadSafetensorsSync(p).test!;
    expect(t.shape).toEqual([]);
    expect(t.dtype).toBe("i32");
    expect(t.toArray()).toEqual([7]);
  });

  it("reads zero-size tensors, also between others at the same offset", () => {
    const p = tmp.file("zero.safetensors", stFile(
      `{"z":{"dtype":"I32","shape":[2,0],"data_offsets":[0, 0]},"a":${entry("U8", [2], 0, 2)},"y":${entry("F16", [0], 2, 2)}}`,
      Buffer.from([1, 2]),
    ));
    const out = loadSafetensorsSync(p);
    expect(out.z!.shape).toEqual([2, 0]);
    expect(out.y!.shape).toEqual([0]);
    expect(out.a!.toArray()).toEqual([1, 2]);
  });

  it("accepts a header padded with JSON whitespace after the object", () => {
    const p = tmp.file("padded.safetensors", stFile(`{"t":${entry("U8", [1], 0, 1)}}\r \t\n    `, Buffer.from([9])));
    expect(loadSafetensorsSync(p).t!.toArray()).toEqual([9]);
  });

  it("reads non-ASCII names and keys not in offset order", () => {
    const p = tmp.file("names.safetensors", stFile(
      `{"второй":${entry("F16", [1], 2, 4)},"层.权重":${entry("BF16", [2], 4, 8)},"\\u00e9":${entry("I8", [2], 0, 2)}}`,
      Buffer.from([0xff, 0x7f, 0x00, 0x3c, 0x80, 0x3f, 0x00, 0xc0]),
    ));
    const out = loadSafetensorsSync(p);
    expect(Object.keys(out)).toEqual(["é", "второй", "层.权重"]);
    expect(out["é"]!.toArray()).toEqual([-1, 127]);
    expect(out["второй"]!.toArray()).toEqual([1]); // f16 0x3c00
    expect(out["层.权重"]!.toArray()).toEqual([1, -2]); // bf16 0x3f80, 0xc000
  });

  it("reads dtypes without a Tensor dtype as raw bytes only", () => {
    const p = tmp.file("rawonly.safetensors", stFile(
      `{"f8":${entry("F8_E4M3", [2], 0, 2)},"mask":${entry("BOOL", [2], 2, 4)},"d":${entry("F64", [1], 4, 12)},"u":${entry("U16", [1], 12, 14)},"f":${entry("F32", [1], 14, 18)}}`,
      Buffer.from([0x38, 0xb8, 1, 0, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x34, 0x12, 0, 0, 0x80, 0x3f]),
    ));
    using f = openSafetensors(p);
    expect(f.info("f8")).toEqual({ dtype: "F8_E4M3", shape: [2] });
    expect(Array.from(f.getBytes("f8"))).toEqual([0x38, 0xb8]);
    expect(f.getBytes("d").readDoubleLE(0)).toBe(1);
    expect(f.getBytes("u").readUInt16LE(0)).toBe(0x1234);
    expect(f.get("f").toArray()).toEqual([1]);
    const e = errorOf(() => f.get("f8"));
    expect(e.code).toBe("ERR_SAFETENSORS");
    expect(e.message).toMatch(/tensor "f8": dtype F8_E4M3 has no Tensor dtype; read its raw bytes with getBytes\(\)/);
    expect(errorOf(() => loadSafetensorsSync(p)).message).toMatch(/tensor "f8": dtype F8_E4M3/);
  });
});

describe("openSafetensors", () => {
  const p = tmp.file("lazy.safetensors");
  saveSafetensorsSync(p, { "layer.1.w": Tensor.fromArray([1, 2, 3, 4], [2, 2]), "layer.1.b": Tensor.fromArray([5, 6], [2], "i32") }, { k: "v" });

  it("lists keys, metadata and info without reading data", () => {
    using f = openSafetensors(p);
    expect(f.path).toBe(p);
    expect(f.keys()).toEqual(["layer.1.b", "layer.1.w"]);
    expect(f.info("layer.1.b")).toEqual({ dtype: "I32", shape: [2] });
    const m = f.metadata();
    m.k = "changed";
    expect(f.metadata()).toEqual({ format: "pt", k: "v" });
  });

  it("returns a fresh tensor per get, valid after close", () => {
    const f = openSafetensors(p);
    const a = f.get("layer.1.w");
    const b = f.get("layer.1.w");
    expect(a.sharesStorage(b)).toBe(false);
    f.close();
    f.close();
    expect(a.toArray()).toEqual([1, 2, 3, 4]);
    expect(b.toArray()).toEqual([1, 2, 3, 4]);
  });

  it("refuses use after close, naming the file", () => {
    const f = openSafetensors(p);
    f[Symbol.dispose]();
    for (const use of [() => f.keys(), () => f.get("layer.1.w"), () => f.getBytes("layer.1.w"), () => f.info("x"), () => f.metadata()]) {
      const e = errorOf(use);
      expect(e.code).toBe("ERR_SAFETENSORS");
      expect(e.message).toBe(`safetensors ${p}: the file has been closed`);
    }
  });

  it("names the closest available tensors for an unknown name", () => {
    using f = openSafetensors(p);
    const e = errorOf(() => f.get("layer.1.weight"));
    expect(e).toBeInstanceOf(PeftError);
    expect(e.message).toBe(`safetensors ${p}: no tensor named "layer.1.weight"; 2 available, e.g. "layer.1.w", "layer.1.b"`);
    expect(errorOf(() => f.info("nope")).code).toBe("ERR_SAFETENSORS");
  });

  it("reports a file truncated after it was opened", () => {
    const q = tmp.file("shrinks.safetensors");
    saveSafetensorsSync(q, { a: Tensor.zeros([64]), b: Tensor.zeros([64]) });
    using f = openSafetensors(q);
    truncateSync(q, statSync(q).size - 100);
    const e = errorOf(() => f.get("b"));
    expect(e.code).toBe("ERR_SAFETENSORS");
    expect(e.message).toMatch(/file ended early at byte \d+ \(was it changed or truncated while open\?\)/);
  });

  it("rejects a non-string path with a TypeError", () => {
    expect(errorOf(() => openSafetensors(3 as unknown as string)).code).toBe("ERR_INVALID_ARG_TYPE");
  });
});

describe("saveSafetensors layout", () => {
  it("pads the header with spaces to a multiple of 8 for any name length", () => {
    for (let len = 1; len <= 9; len++) {
      const p = tmp.file(`pad${len}.safetensors`);
      saveSafetensorsSync(p, { ["x".repeat(len)]: Tensor.zeros([1]) });
      const { n, text } = headerOf(p);
      expect(n % 8).toBe(0);
      expect(text).toMatch(/^\{"__metadata__":\{"format":"pt"\},.*\} *$/);
      expect(text.trimEnd().length).toBeGreaterThan(n - 8);
    }
  });

  it("orders tensors like the reference: larger dtypes first, then by name bytes", () => {
    const p = tmp.file("order.safetensors");
    const mk = (dtype: "f32" | "f16" | "bf16" | "i8" | "u8" | "i32" | "i64") => Tensor.zeros([3], { dtype });
    saveSafetensorsSync(p, { b: mk("f32"), a: mk("f16"), c: mk("i64"), d: mk("u8"), e: mk("bf16"), f: mk("i32"), g: mk("i8"), a2: mk("f32") });
    const header = JSON.parse(headerOf(p).text) as Record<string, { data_offsets: [number, number] }>;
    const byOffset = Object.keys(header).filter((k) => k !== "__metadata__").sort((x, y) => header[x]!.data_offsets[0] - header[y]!.data_offsets[0]);
    expect(byOffset).toEqual(["c", "a2", "b", "f", "e", "a", "g", "d"]);
    // Names compare by UTF-8 bytes (code points), not UTF-16 units.
    const q = tmp.file("order-utf8.safetensors");
    saveSafetensorsSync(q, { "\u{1F600}": mk("u8"), "\uFFFD": mk("u8"), z: mk("u8") });
    expect(headerOf(q).text.indexOf("\uFFFD")).toBeLessThan(headerOf(q).text.indexOf("\u{1F600}"));
    using f = openSafetensors(q);
    expect(f.keys()).toEqual(["z", "\uFFFD", "\u{1F600}"]);
  });

  it("merges caller metadata after format", () => {
    const p = tmp.file("meta-merge.safetensors");
    saveSafetensorsSync(p, {}, { b: "1", a: "2", "__proto__": "odd" } as Record<string, string>);
    const text = headerOf(p).text;
    expect(text.startsWith(`{"__metadata__":{"format":"pt","b":"1","a":"2"`)).toBe(true);
    using f = openSafetensors(p);
    expect(f.metadata().format).toBe("pt");
  });

  it("escapes names JSON needs escaped and reads them back", () => {
    const p = tmp.file("escapes.safetensors");
    const names = ['a"b', "back\\slash", "tab\there", "nl\nx", "\u0001", "__proto__"];
    saveSafetensorsSync(p, Object.fromEntries(names.map((n, i) => [n, Tensor.fromArray([i], [1])])));
    const out = loadSafetensorsSync(p);
    expect(Object.keys(out).sort()).toEqual([...names].sort());
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    expect(out["__proto__"]!.toArray()).toEqual([5]);
  });

  it("refuses bad arguments before touching the file system, naming the key", async () => {
    const p = tmp.file("never.safetensors");
    const t = Tensor.zeros([1]);
    const disposed = Tensor.zeros([1]);
    disposed.dispose();
    const cases: [unknown, unknown, string, RegExp][] = [
      [{ w: [1, 2] }, undefined, "ERR_INVALID_ARG_TYPE", /tensor "w" must be a Tensor, got an array/],
      [{ w: disposed }, undefined, "ERR_DISPOSED", /tensor "w" has been disposed/],
      [{ "": t }, undefined, "ERR_SAFETENSORS", /tensor names must be non-empty/],
      [{ __metadata__: t }, undefined, "ERR_SAFETENSORS", /__metadata__ is reserved/],
      [{ "\ud800x": t }, undefined, "ERR_SAFETENSORS", /lone surrogate/],
      [new Map([[1, t]]), undefined, "ERR_INVALID_ARG_TYPE", /tensor names must be strings/],
      [null, undefined, "ERR_INVALID_ARG_TYPE", /tensors must be an object or Map/],
      [{ w: t }, { step: 3 }, "ERR_INVALID_ARG_TYPE", /metadata value for "step" must be a string, got number/],
      [{ w: t }, "pt", "ERR_INVALID_ARG_TYPE", /metadata must be an object of strings/],
      [{ w: t }, { big: "x".repeat(100_000_000) }, "ERR_SAFETENSORS", /header would be \d+ bytes, over the 100000000-byte limit/],
    ];
    for (const [tensors, meta, code, msg] of cases) {
      const e = errorOf(() => saveSafetensorsSync(p, tensors as Record<string, Tensor>, meta as Record<string, string>));
      expect([e.code, e.message]).toEqual([code, expect.stringMatching(msg)]);
      await expect(saveSafetensors(p, tensors as Record<string, Tensor>, meta as Record<string, string>)).rejects.toMatchObject({ code });
    }
    expect(readdirSync(tmp.dir).filter((n) => n.includes("never"))).toEqual([]);
  });

  it("replaces an existing file and leaves no temporary file behind", async () => {
    const p = tmp.file("replace.safetensors");
    saveSafetensorsSync(p, { v: Tensor.fromArray([1], [1]) });
    await saveSafetensors(p, { v: Tensor.fromArray([2], [1]) });
    expect(loadSafetensorsSync(p).v!.toArray()).toEqual([2]);
    expect(readdirSync(tmp.dir).filter((n) => n.endsWith(".tmp"))).toEqual([]);
  });

  it("removes the temporary file when the final rename fails", async () => {
    const d = join(tmp.dir, "rename-fail");
    mkdirSync(join(d, "target.safetensors"), { recursive: true });
    const target = join(d, "target.safetensors");
    expect(() => saveSafetensorsSync(target, { v: Tensor.zeros([4]) })).toThrow(/EISDIR|EEXIST|ENOTEMPTY/);
    await expect(saveSafetensors(target, { v: Tensor.zeros([4]) })).rejects.toThrow(/EISDIR|EEXIST|ENOTEMPTY/);
    expect(readdirSync(d)).toEqual(["target.safetensors"]);
    expect(statSync(target).isDirectory()).toBe(true);
  });
});

describe("reference fixtures", () => {
  const base = join(FIXTURES, "base_model.safetensors");
  const adapter = join(FIXTURES, "adapter", "adapter_model.safetensors");

  it("reads the base model and the adapter", async () => {
    const all = await loadSafetensors(base);
    expect(Object.keys(all)).toHaveLength(21);
    expect(all["model.layers.0.self_attn.q_proj.weight"]!.shape).toEqual([24, 24]);
    expect(all["model.layers.2.mlp.down_proj.weight"]!.shape).toEqual([24, 40]);
    using a = openSafetensors(adapter);
    expect(a.metadata()).toEqual({ format: "pt" });
    expect(a.info("base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight")).toEqual({ dtype: "F32", shape: [8, 24] });
  });

  it("the merged model equals W + (alpha / r) * B * A computed from what we read", () => {
    const module = "model.layers.1.self_attn.v_proj";
    using b = openSafetensors(base);
    using a = openSafetensors(adapter);
    using m = openSafetensors(join(FIXTURES, "expected_merged_model.safetensors"));
    const W = b.get(`${module}.weight`).toFloat64Array();
    const A = a.get(`base_model.model.${module}.lora_A.weight`).toFloat64Array(); // [8, 24]
    const B = a.get(`base_model.model.${module}.lora_B.weight`).toFloat64Array(); // [24, 8]
    const M = m.get(`${module}.weight`).toFloat64Array();
    for (let i = 0; i < 24; i++)
      for (let j = 0; j < 24; j++) {
        let s = 0;
        for (let k = 0; k < 8; k++) s += B[i * 8 + k]! * A[k * 24 + j]!;
        const want = W[i * 24 + j]! + 2 * s;
        expect(Math.abs(M[i * 24 + j]! - want)).toBeLessThanOrEqual(1e-5 + 1e-5 * Math.abs(want));
      }
    // Untargeted modules are unchanged, bit for bit.
    expect(bytesOf(m.get("model.layers.0.mlp.up_proj.weight"))).toEqual(bytesOf(b.get("model.layers.0.mlp.up_proj.weight")));
  });
});

describe("sharded checkpoints", () => {
  const d = join(tmp.dir, "sharded");
  mkdirSync(d);
  const t = (v: number) => Tensor.fromArray([v, v], [2]);
  saveSafetensorsSync(join(d, "s1.safetensors"), { a: t(1), b: t(2) });
  saveSafetensorsSync(join(d, "s2.safetensors"), { c: t(3) });
  saveSafetensorsSync(join(d, "s3.safetensors"), { a: t(1), c: t(3) });
  const index = (weightMap: Record<string, string>, name = "model.safetensors.index.json") => {
    const p = join(d, name);
    writeFileSync(p, JSON.stringify({ metadata: { total_size: 24 }, weight_map: weightMap }, null, 2));
    return p;
  };
  const good = index({ a: "s1.safetensors", b: "s1.safetensors", c: "s2.safetensors" });

  it("opens lazily and loads everything", async () => {
    using s = openSharded(good);
    expect(s.keys()).toEqual(["a", "b", "c"]);
    expect(s.metadata()).toEqual({ total_size: 24 });
    expect(s.shards()).toEqual([join(d, "s1.safetensors"), join(d, "s2.safetensors")]);
    expect(s.shardOf("c")).toBe(join(d, "s2.safetensors"));
    expect(s.info("c")).toEqual({ dtype: "F32", shape: [2] });
    expect(s.get("b").toArray()).toEqual([2, 2]);
    expect(Array.from(s.getBytes("c"))).toEqual(bytesOf(t(3)));
    expect(errorOf(() => s.get("zz")).message).toMatch(/no tensor named "zz"; 3 available/);
    const all = await loadShardedSafetensors(good);
    expect(Object.fromEntries(Object.entries(all).map(([k, v]) => [k, v.toArray()]))).toEqual({ a: [1, 1], b: [2, 2], c: [3, 3] });
    s.close();
    expect(errorOf(() => s.keys()).message).toMatch(/has been closed/);
  });

  it.each([
    ["a missing shard", { a: "s1.safetensors", b: "s1.safetensors", c: "gone.safetensors" }, /shard .*gone\.safetensors does not exist \(the weight_map lists it for "c"/],
    ["a key not in its shard", { a: "s1.safetensors", b: "s2.safetensors", c: "s2.safetensors" }, /tensor "b": the weight_map puts it in .*s2\.safetensors, which does not hold it \(it is in .*s1\.safetensors\)/],
    ["a key in two shards", { a: "s1.safetensors", b: "s1.safetensors", c: "s3.safetensors" }, /tensor "a": is in two shards, .*s1\.safetensors and .*s3\.safetensors/],
    ["a shard key the map does not list", { a: "s1.safetensors", c: "s2.safetensors" }, /tensor "b": is in shard .*s1\.safetensors but not in the weight_map/],
    ["a listed key no shard holds", { a: "s1.safetensors", b: "s1.safetensors", c: "s2.safetensors", x: "s2.safetensors" }, /tensor "x": the weight_map puts it in .*s2\.safetensors, which does not hold it/],
    ["a shard outside the directory", { a: "../s1.safetensors" }, /tensor "a": shard "\.\.\/s1\.safetensors" is outside the index's directory/],
  ])("refuses an index with %s", async (_, map, msg) => {
    const p = index(map as Record<string, string>, "bad.index.json");
    const e = errorOf(() => openSharded(p));
    expect(e.code).toBe("ERR_SAFETENSORS");
    expect(e.message).toMatch(msg);
    await expect(loadShardedSafetensors(p)).rejects.toMatchObject({ code: "ERR_SAFETENSORS", message: expect.stringMatching(msg) });
  });

  it("refuses duplicate keys and a missing weight_map in the index", () => {
    const p = join(d, "dup.index.json");
    writeFileSync(p, `{"weight_map": {"a": "s1.safetensors", "a": "s2.safetensors"}}`);
    expect(errorOf(() => openSharded(p)).message).toMatch(/invalid index JSON: duplicate key "a"/);
    writeFileSync(p, `{"metadata": {}}`);
    expect(errorOf(() => openSharded(p)).message).toMatch(/index has no weight_map object/);
  });
});

describe("atomic saves", () => {
  const d = join(tmp.dir, "atomic");
  mkdirSync(d);
  const target = join(d, "victim.safetensors");

  function childNode(code: string, ulimitKiB?: number) {
    const args = ["--input-type=module", "-e", code];
    // bash's ulimit -f makes writes past the limit fail with EFBIG (node ignores SIGXFSZ).
    return ulimitKiB === undefined
      ? spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] })
      : spawn("bash", ["-c", `ulimit -f ${ulimitKiB}; exec "$0" "$@"`, process.execPath, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  }

  function finished(child: ReturnType<typeof spawn>): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (b: Buffer) => (stdout += b));
    child.stderr!.on("data", (b: Buffer) => (stderr += b));
    return new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal, stdout, stderr })));
  }

  it.skipIf(!existsSync(distIndex))("a save killed (SIGKILL) mid-write leaves the old file intact", async () => {
    saveSafetensorsSync(target, { old: Tensor.fromArray([1, 2, 3], [3]) });
    const before = readFileSync(target);
    const total = 1 << 30;
    const child = childNode(`import { Tensor, saveSafetensorsSync } from ${JSON.stringify(distIndex)};
      const t = Tensor.zeros([${total / 4}]);
      saveSafetensorsSync(${JSON.stringify(target)}, { big: t });
      console.log("finished");`);
    const done = finished(child);
    // Watch for the temporary file and kill the writer once data is flowing into it.
    let killedAt = -1;
    const deadline = Date.now() + 60_000;
    while (killedAt < 0 && Date.now() < deadline && child.exitCode === null) {
      const name = readdirSync(d).find((n) => n.endsWith(".tmp"));
      const size = name ? statSync(join(d, name), { throwIfNoEntry: false })?.size ?? 0 : 0;
      if (size > 0) {
        child.kill("SIGKILL");
        killedAt = size;
      } else await new Promise((r) => setImmediate(r));
    }
    const r = await done;
    expect(r.signal).toBe("SIGKILL");
    expect(r.stdout).not.toContain("finished");
    expect(killedAt).toBeGreaterThan(0);
    expect(killedAt).toBeLessThan(total);
    expect(readFileSync(target).equals(before)).toBe(true);
    expect(loadSafetensorsSync(target).old!.toArray()).toEqual([1, 2, 3]);
    // A killed process cannot clean up: its partial temporary file is all that is left.
    const left = readdirSync(d).filter((n) => n.endsWith(".tmp"));
    expect(left).toHaveLength(1);
    expect(left[0]).toMatch(/^\.victim\.safetensors\.\d+\.[0-9a-f]+\.tmp$/);
    for (const n of left) unlinkSync(join(d, n));
  });

  it.skipIf(!existsSync(distIndex))("a write error midway (EFBIG) removes the temp file and keeps the old file", async () => {
    saveSafetensorsSync(target, { old: Tensor.fromArray([4, 5], [2]) });
    const before = readFileSync(target);
    const child = childNode(`import { Tensor, saveSafetensors, saveSafetensorsSync } from ${JSON.stringify(distIndex)};
      import { readdirSync } from "node:fs";
      const t = Tensor.zeros([4 << 20]);
      const out = {};
      try { saveSafetensorsSync(${JSON.stringify(target)}, { big: t }); out.sync = "saved"; } catch (e) { out.sync = e.code; }
      out.syncLeft = readdirSync(${JSON.stringify(d)});
      try { await saveSafetensors(${JSON.stringify(target)}, { big: t }); out.async = "saved"; } catch (e) { out.async = e.code; }
      out.asyncLeft = readdirSync(${JSON.stringify(d)});
      console.log(JSON.stringify(out));`, 2048);
    const r = await finished(child);
    expect(r.stderr).toBe("");
    expect(JSON.parse(r.stdout)).toEqual({ sync: "EFBIG", syncLeft: ["victim.safetensors"], async: "EFBIG", asyncLeft: ["victim.safetensors"] });
    expect(readFileSync(target).equals(before)).toBe(true);
  });
});
