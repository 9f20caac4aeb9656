// A corpus of broken safetensors files: each must be refused by every reader with ERR_SAFETENSORS, a message
// naming the file (and the tensor, where one is at fault) and the specific rule broken. Plus the strict JSON
// parser on its own.
import { afterAll, describe, expect, it } from "vitest";
import { loadSafetensors, loadSafetensorsSync, openSafetensors } from "../lib/index.js";
import { parseJsonStrict, JsonSyntaxError } from "../lib/io/json-strict.js";
import { entry, stFile, tempDir } from "./helpers/safetensors-files.js";

const tmp = tempDir();
afterAll(() => tmp.cleanup());

const I32x4 = entry("I32", [2, 2], 0, 16);

// name, file bytes, what the message must say.
const corpus: [string, Buffer, RegExp][] = [
  ["empty file", Buffer.alloc(0), /file is 0 bytes, too short for the 8-byte header length/],
  ["7-byte file", Buffer.alloc(7), /file is 7 bytes, too short for the 8-byte header length/],
  ["header length past the end", stFile(`{"t":${I32x4}}`, 16, 1000n), /header length 1000 runs past the end of the file \(\d+ bytes\)/],
  ["header length 2^63", stFile(`{"t":${I32x4}}`, 16, 1n << 63n), /header length 9223372036854775808 exceeds the 100000000-byte limit/],
  ["header length 2^64-1", stFile("{}", 0, (1n << 64n) - 1n), /header length 18446744073709551615 exceeds/],
  ["header > 100 MB claimed", stFile("{}", 0, 100_000_001n), /header length 100000001 exceeds the 100000000-byte limit/],
  ["header length 0", stFile("", 0), /header does not start with '\{'/],
  ["truncated data", stFile(`{"t":${I32x4}}`, 14), /tensor "t": data ends at byte \d+ but the file has \d+ bytes \(truncated\?\)/],
  ["truncated header", stFile(`{"t":${I32x4}}`, 0).subarray(0, 30), /header length \d+ runs past the end/],
  ["invalid JSON", stFile(`{"t":`), /invalid header JSON: unexpected end of input at header byte 5 \(file byte 13\)/],
  ["invalid JSON token", stFile(`{"t":nul}`), /invalid header JSON: unexpected character 'n' at header byte 5/],
  ["trailing garbage after JSON", stFile(`{}x`), /invalid header JSON: unexpected data after the JSON value at header byte 2/],
  ["header not starting with {", stFile(` {}`), /header does not start with '\{'/],
  ["header is an array", stFile(`[]`), /header does not start with '\{'/],
  ["invalid UTF-8", stFile(Buffer.from([0x7b, 0x22, 0x74, 0xff, 0x22, 0x3a, 0x31, 0x7d])), /invalid header JSON: invalid UTF-8 at header byte 3 \(file byte 11\)/],
  ["duplicate names", stFile(`{"t":${entry("U8", [1], 0, 1)},"t":${entry("U8", [1], 1, 2)}}`, 2), /duplicate key "t" \(first at byte 1\) at header byte \d+/],
  ["duplicate field", stFile(`{"t":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, 1), /duplicate key "dtype"/],
  ["integer above 2^53 in shape", stFile(`{"t":{"dtype":"U8","shape":[9007199254740993],"data_offsets":[0,1]}}`, 1), /integer 9007199254740993 is not exactly representable/],
  ["integer above 2^53 in offsets", stFile(`{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,18446744073709551617]}}`, 1), /integer 18446744073709551617 is not exactly representable/],
  ["overlap", stFile(`{"a":${entry("U8", [16], 0, 16)},"b":${entry("U8", [16], 8, 24)}}`, 24), /tensor "b": data \[8, 24\) overlaps tensor "a" \[0, 16\)/],
  ["gap", stFile(`{"a":${entry("U8", [8], 0, 8)},"b":${entry("U8", [8], 16, 24)}}`, 24), /tensor "b": gap of 8 bytes in the data before it/],
  ["data not starting at 0", stFile(`{"a":${entry("U8", [8], 8, 16)}}`, 16), /tensor "a": gap of 8 bytes/],
  ["trailing bytes", stFile(`{"t":${I32x4}}`, 17), /1 trailing bytes after the last tensor's data/],
  ["trailing bytes, no tensors", stFile(`{}`, 3), /3 trailing bytes/],
  ["size mismatch", stFile(`{"t":${entry("I32", [2, 2], 0, 4)}}`, 4), /tensor "t": data_offsets \[0, 4\] hold 4 bytes but I32 shape \[2, 2\] needs 16/],
  ["begin > end", stFile(`{"t":${entry("U8", [0], 8, 0)}}`, 8), /tensor "t": data_offsets \[8, 0\] has begin > end/],
  ["unknown dtype", stFile(`{"t":${entry("F128", [1], 0, 16)}}`, 16), /tensor "t": unknown dtype "F128" \(known: BOOL, F4/],
  ["lowercase dtype", stFile(`{"t":${entry("f32", [1], 0, 4)}}`, 4), /unknown dtype "f32"/],
  ["negative shape", stFile(`{"t":${entry("U8", [-1], 0, 0)}}`), /tensor "t": shape\[0\] must be a non-negative integer/],
  ["float in shape", stFile(`{"t":{"dtype":"U8","shape":[2.0],"data_offsets":[0,2]}}`, 2), /shape\[0\] must be a non-negative integer/],
  ["exponent in offsets", stFile(`{"t":{"dtype":"U8","shape":[2],"data_offsets":[0,2e0]}}`, 2), /data_offsets\[1\] must be a non-negative integer/],
  ["string in shape", stFile(`{"t":{"dtype":"U8","shape":["2"],"data_offsets":[0,2]}}`, 2), /shape\[0\] must be a non-negative integer/],
  ["three offsets", stFile(`{"t":{"dtype":"U8","shape":[2],"data_offsets":[0,2,4]}}`, 2), /data_offsets must be \[begin, end\], got 3 numbers/],
  ["missing field", stFile(`{"t":{"dtype":"U8","shape":[2]}}`, 2), /tensor "t": missing field data_offsets/],
  ["unknown field", stFile(`{"t":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"stride":[1]}}`, 2), /tensor "t": unknown field "stride"/],
  ["entry not an object", stFile(`{"t":[1]}`), /tensor "t": entry must be an object/],
  ["shape product overflow", stFile(`{"t":${entry("I32", [2, 9007199254740991], 0, 16)}}`, 16), /shape \[2, 9007199254740991\] of I32 is too large/],
  ["sub-byte dtype not filling bytes", stFile(`{"t":${entry("F4", [3], 0, 2)}}`, 2), /shape \[3\] of F4 does not fill whole bytes/],
  ["non-string metadata", stFile(`{"__metadata__":{"a":1}}`), /__metadata__ value for "a" must be a string, got number/],
  ["metadata not an object", stFile(`{"__metadata__":"pt"}`), /__metadata__ must be an object of strings, got string/],
  ["lone surrogate escape", stFile(`{"\\ud800":${entry("U8", [0], 0, 0)}}`), /lone high surrogate/],
  ["control character in a name", stFile(`{"a\nb":${entry("U8", [0], 0, 0)}}`), /unescaped control character 0x0a/],
  ["nesting too deep", stFile(`{"__metadata__":${"[".repeat(200)}${"]".repeat(200)}}`), /nesting deeper than 128/],
];

function errorOf(fn: () => unknown): { code?: string; message: string } {
  try {
    fn();
  } catch (e) {
    return e as { code?: string; message: string };
  }
  throw new Error("expected an error");
}

describe("broken files", () => {
  it.each(corpus)("%s", async (name, bytes, rule) => {
    const path = tmp.file(`${name.replace(/\W+/g, "_")}.safetensors`, bytes);
    for (const e of [
      errorOf(() => openSafetensors(path)),
      errorOf(() => loadSafetensorsSync(path)),
      await loadSafetensors(path).then(() => { throw new Error("expected an error"); }, (e: { code?: string; message: string }) => e),
    ]) {
      expect(e.code).toBe("ERR_SAFETENSORS");
      expect(e.message).toContain(path);
      expect(e.message).toMatch(rule);
    }
  });

  it("reports a missing file as the system error", async () => {
    const path = tmp.file("missing.safetensors");
    expect(errorOf(() => openSafetensors(path)).code).toBe("ENOENT");
    await expect(loadSafetensors(path)).rejects.toMatchObject({ code: "ENOENT" });
  });
});

describe("strict JSON", () => {
  const parse = (s: string | Uint8Array) => parseJsonStrict(typeof s === "string" ? Buffer.from(s, "utf8") : s);
  const fails = (s: string | Uint8Array) => {
    try {
      parse(s);
    } catch (e) {
      expect(e).toBeInstanceOf(JsonSyntaxError);
      return e as JsonSyntaxError;
    }
    throw new Error(`parsed: ${String(s)}`);
  };

  it("parses values with their positions and key order", () => {
    const v = parse(` {"b": [1, -2.5e3, true, false, null], "a": "x\\u00e9\\ud83d\\ude00\\n\\/"} `);
    expect(v.kind).toBe("object");
    if (v.kind !== "object") return;
    expect([...v.entries.keys()]).toEqual(["b", "a"]);
    expect(v.pos).toBe(1);
    expect(v.entries.get("a")!.pos).toBe(44);
    const a = v.entries.get("a")!;
    expect(a.kind === "string" && a.value).toBe("x\u00e9\u{1F600}\n/");
    const b = v.entries.get("b")!;
    expect(b.kind === "array" && b.items.map((i) => ("value" in i ? i.value : null))).toEqual([1, -2500, true, false, null]);
    expect(b.kind === "array" && b.items.map((i) => i.kind === "number" && i.integer)).toEqual([true, false, false, false, false]);
  });

  it("decodes raw UTF-8 in strings and keeps odd keys", () => {
    const v = parse(`{"__proto__":"ü日本\u{1F600}","constructor":{}}`);
    expect(v.kind === "object" && [...v.entries.keys()]).toEqual(["__proto__", "constructor"]);
    expect(v.kind === "object" && (v.entries.get("__proto__") as { value: string }).value).toBe("ü日本\u{1F600}");
  });

  it("keeps every safe integer exact and refuses the rest", () => {
    const max = parse("9007199254740991");
    expect(max.kind === "number" && max.value).toBe(Number.MAX_SAFE_INTEGER);
    const min = parse("-9007199254740991");
    expect(min.kind === "number" && min.value).toBe(-Number.MAX_SAFE_INTEGER);
    expect(fails("9007199254740992").message).toMatch(/integer 9007199254740992 is not exactly representable .* at byte 0/);
    expect(fails("[1, 12345678901234567890]").pos).toBe(4);
    expect(fails("-9007199254740993").reason).toMatch(/not exactly representable/);
    expect(fails("1e400").reason).toMatch(/number 1e400 is out of range/);
  });

  it("rejects duplicate keys, reporting both positions", () => {
    const e = fails(`{"a":1, "b":{"x":1,"x":2}}`);
    expect(e.reason).toBe(`duplicate key "x" (first at byte 13)`);
    expect(e.pos).toBe(19);
    // The same name spelled with an escape is still the same name.
    expect(fails(`{"a":1,"\\u0061":2}`).reason).toMatch(/duplicate key "a"/);
  });

  it.each([
    ["", /unexpected end of input/],
    ["{", /unexpected end of input/],
    ["{,}", /expected a string key/],
    [`{"a" 1}`, /expected ':'/],
    [`{"a":1,}`, /expected a string key/],
    [`{"a":1 "b":2}`, /expected ',' or '}'/],
    ["[1,]", /unexpected character '\]'/],
    ["[1 2]", /expected ',' or '\]'/],
    ["01", /leading zero/],
    ["-", /expected a digit/],
    ["1.", /expected a digit after '.'/],
    ["1e", /expected a digit in the exponent/],
    ["+1", /unexpected character '\+'/],
    ["NaN", /unexpected character 'N'/],
    ["tru", /unexpected character 't'/],
    [`"abc`, /unterminated string/],
    [`"\\x"`, /invalid escape/],
    [`"\\u12"`, /invalid \\u escape/],
    [`"\\udc00"`, /lone low surrogate/],
    [`"\\ud800x"`, /lone high surrogate/],
    [`"\\ud800\\u0041"`, /lone high surrogate/],
    ["\"\t\"", /unescaped control character 0x09/],
    ["{} {}", /unexpected data after the JSON value/],
    ["\u00a0{}", /unexpected character 0xc2/],
  ])("rejects %j", (text, reason) => {
    expect(fails(text).reason).toMatch(reason);
  });

  it("reports the byte offset of invalid UTF-8 (overlong, surrogate, truncated)", () => {
    expect(fails(Uint8Array.from([0x22, 0x61, 0xc0, 0x80, 0x22])).message).toBe("invalid UTF-8 at byte 2");
    expect(fails(Uint8Array.from([0x22, 0xed, 0xa0, 0x80, 0x22])).pos).toBe(1);
    expect(fails(Uint8Array.from([0x22, 0x61, 0x62, 0xe6, 0x97])).pos).toBe(3);
    expect(fails(Uint8Array.from([0x22, 0xf4, 0x90, 0x80, 0x80, 0x22])).pos).toBe(1);
  });

  it("refuses deep nesting instead of overflowing the stack", () => {
    expect(fails("[".repeat(100_000)).reason).toMatch(/nesting deeper than 128/);
    expect(parse("[".repeat(128) + "]".repeat(128)).kind).toBe("array");
  });
});
