// A strict JSON parser over UTF-8 bytes. JSON.parse keeps the last of duplicate names and rounds integers
// beyond 2^53; in a file header either would let two readers see different tensors, so this parser rejects
// both. It returns a tree that remembers each value's byte position, so callers can point at the culprit.
// JsonReader's pieces (skip, numberValue, string) also serve parsers that walk a known document shape
// without building a tree (the safetensors header), and fail with the same errors at the same bytes.
import { isUtf8 } from "node:buffer";

/** A JSON value with its byte offset in the input. Objects keep their key order. */
export type JsonNode =
  | { kind: "object"; pos: number; entries: Map<string, JsonNode> }
  | { kind: "array"; pos: number; items: JsonNode[] }
  | { kind: "string"; pos: number; value: string }
  | { kind: "number"; pos: number; value: number; integer: boolean }
  | { kind: "boolean"; pos: number; value: boolean }
  | { kind: "null"; pos: number };

/** A syntax error at a byte offset of the input. */
export class JsonSyntaxError extends Error {
  constructor(readonly reason: string, readonly pos: number) {
    super(`${reason} at byte ${pos}`);
    this.name = "JsonSyntaxError";
  }
}

// Nesting deeper than this is refused: recursion on hostile input must not exhaust the stack.
const MAX_JSON_DEPTH = 128;

const FNV_OFFSET = 0x811c9dc5 | 0;
const FNV_PRIME = 16777619;

/** FNV-1a over a string's UTF-16 code units (for hash tables of names read by JsonReader.string). */
export function stringHash(s: string): number {
  let h = FNV_OFFSET;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), FNV_PRIME);
  return h;
}

/** The kind of a JSON value, as JsonNode names it. */
export type JsonKind = JsonNode["kind"];

/** Byte offset of the first byte that is not part of valid UTF-8 (overlongs and surrogates count), or -1. */
export function firstInvalidUtf8(b: Uint8Array): number {
  for (let i = 0; i < b.length; ) {
    const c = b[i]!;
    if (c < 0x80) { i++; continue; }
    let need: number, min: number;
    if (c >= 0xc2 && c <= 0xdf) { need = 1; min = 0x80; }
    else if (c >= 0xe0 && c <= 0xef) { need = 2; min = 0x800; }
    else if (c >= 0xf0 && c <= 0xf4) { need = 3; min = 0x10000; }
    else return i;
    let cp = c & (0x3f >> need);
    for (let k = 1; k <= need; k++) {
      const d = b[i + k];
      if (d === undefined || (d & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (d & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += need + 1;
  }
  return -1;
}

/** Parses one JSON value filling the whole input (whitespace around it allowed). */
export function parseJsonStrict(bytes: Uint8Array): JsonNode {
  checkUtf8(bytes);
  const r = new JsonReader(bytes);
  const v = r.value(0);
  r.end();
  return v;
}

/** Throws the parser's error for input that is not valid UTF-8 (checked without decoding it). */
export function checkUtf8(bytes: Uint8Array): void {
  if (!isUtf8(bytes)) throw new JsonSyntaxError("invalid UTF-8", firstInvalidUtf8(bytes));
}

/**
 * A cursor over valid UTF-8 JSON bytes (see checkUtf8). `value` builds a tree; `skip` checks a value with the
 * same rules and errors but keeps nothing, so a caller walking a known shape pays only for what it keeps.
 * `depth` is the nesting level of the container the value sits in (0 for the document).
 */
export class JsonReader {
  /** The read position (a byte offset). */
  i = 0;
  /** Set by numberValue: whether the number had neither fraction nor exponent. */
  integer = true;
  /** Set by string: stringHash of the string read. */
  hash = 0;
  private readonly text: Buffer;

  constructor(readonly b: Uint8Array) {
    this.text = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  }

  /** After the document's value: only whitespace may follow. */
  end(): void {
    this.ws();
    if (this.i < this.b.length) this.fail("unexpected data after the JSON value");
  }

  fail(reason: string, pos = this.i): never {
    throw new JsonSyntaxError(reason, pos);
  }

  ws(): void {
    const b = this.b;
    while (this.i < b.length) {
      const c = b[this.i];
      if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) break;
      this.i++;
    }
  }

  value(depth: number): JsonNode {
    this.ws();
    const pos = this.i;
    const c = this.b[pos];
    if (c === undefined) this.fail("unexpected end of input");
    if (c === 0x7b) return this.object(depth + 1);
    if (c === 0x5b) return this.array(depth + 1);
    if (c === 0x22) return { kind: "string", pos, value: this.string() };
    if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
      const value = this.numberValue();
      return { kind: "number", pos, value, integer: this.integer };
    }
    if (this.word("true")) return { kind: "boolean", pos, value: true };
    if (this.word("false")) return { kind: "boolean", pos, value: false };
    if (this.word("null")) return { kind: "null", pos };
    return this.fail(`unexpected character ${describeByte(c)}`);
  }

  /** Checks one value exactly as `value` would, failing at the same byte, and returns only its kind. */
  skip(depth: number): JsonKind {
    this.ws();
    const c = this.b[this.i];
    if (c === undefined) this.fail("unexpected end of input");
    if (c === 0x7b) {
      this.skipObject(depth + 1);
      return "object";
    }
    if (c === 0x5b) {
      this.skipArray(depth + 1);
      return "array";
    }
    if (c === 0x22) {
      this.string();
      return "string";
    }
    if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
      this.numberValue();
      return "number";
    }
    if (this.word("true") || this.word("false")) return "boolean";
    if (this.word("null")) return "null";
    return this.fail(`unexpected character ${describeByte(c)}`);
  }

  private word(w: string): boolean {
    for (let k = 0; k < w.length; k++) if (this.b[this.i + k] !== w.charCodeAt(k)) return false;
    this.i += w.length;
    return true;
  }

  expect(c: number, what: string): void {
    this.ws();
    if (this.b[this.i] !== c) this.fail(this.i < this.b.length ? `expected ${what}` : `unexpected end of input, expected ${what}`);
    this.i++;
  }

  private object(depth: number): JsonNode {
    if (depth > MAX_JSON_DEPTH) this.fail(`nesting deeper than ${MAX_JSON_DEPTH}`);
    const pos = this.i++;
    const entries = new Map<string, JsonNode>();
    if (this.objectEmpty()) return { kind: "object", pos, entries };
    do {
      const kp = this.i;
      const key = this.key();
      if (entries.has(key)) this.duplicateKey(pos, depth, key, kp);
      this.expect(0x3a, "':'");
      entries.set(key, this.value(depth));
    } while (this.objectNext());
    return { kind: "object", pos, entries };
  }

  private skipObject(depth: number): void {
    if (depth > MAX_JSON_DEPTH) this.fail(`nesting deeper than ${MAX_JSON_DEPTH}`);
    const pos = this.i++;
    if (this.objectEmpty()) return;
    const keys = new Set<string>();
    do {
      const kp = this.i;
      const key = this.key();
      if (keys.has(key)) this.duplicateKey(pos, depth, key, kp);
      keys.add(key);
      this.expect(0x3a, "':'");
      this.skip(depth);
    } while (this.objectNext());
  }

  // The pieces of an object, for parsers that keep its members their own way. Use: `{` consumed; if
  // objectEmpty() it is done; else repeat { key(), expect ':', a value } while objectNext().

  /** After '{': consumes '}' of an empty object and says so; otherwise stops at the first key. */
  objectEmpty(): boolean {
    this.ws();
    if (this.b[this.i] === 0x7d) {
      this.i++;
      return true;
    }
    this.ws();
    return false;
  }

  /** Reads a member's key (the position is at its opening quote, after whitespace). */
  key(): string {
    if (this.b[this.i] !== 0x22) this.fail(this.i < this.b.length ? "expected a string key" : "unexpected end of input, expected a string key");
    return this.string();
  }

  /** After a member's value: true at ',' (and moves to the next key), false at '}' (consumed). */
  objectNext(): boolean {
    this.ws();
    const c = this.b[this.i];
    if (c === 0x2c) {
      this.i++;
      this.ws();
      return true;
    }
    if (c === 0x7d) {
      this.i++;
      return false;
    }
    return this.fail(c === undefined ? "unexpected end of input in an object" : "expected ',' or '}'");
  }

  /**
   * Fails on a repeated key at `kp` of the object at `objPos`. Where the first occurrence was is found only
   * now, by walking the object again (already checked up to `kp`), so objects need not record key positions.
   */
  duplicateKey(objPos: number, depth: number, key: string, kp: number): never {
    this.i = objPos + 1;
    this.ws();
    let first = this.i;
    while (this.i < kp) {
      first = this.i;
      if (this.string() === key) break;
      this.expect(0x3a, "':'");
      this.skip(depth);
      this.objectNext();
    }
    return this.fail(`duplicate key ${JSON.stringify(key)} (first at byte ${first})`, kp);
  }

  private array(depth: number): JsonNode {
    if (depth > MAX_JSON_DEPTH) this.fail(`nesting deeper than ${MAX_JSON_DEPTH}`);
    const pos = this.i++;
    const items: JsonNode[] = [];
    this.ws();
    if (this.b[this.i] === 0x5d) { this.i++; return { kind: "array", pos, items }; }
    for (;;) {
      items.push(this.value(depth));
      this.ws();
      const c = this.b[this.i];
      if (c === 0x2c) { this.i++; continue; }
      if (c === 0x5d) { this.i++; return { kind: "array", pos, items }; }
      this.fail(c === undefined ? "unexpected end of input in an array" : "expected ',' or ']'");
    }
  }

  private skipArray(depth: number): void {
    if (this.arrayEmpty(depth)) return;
    do this.skip(depth);
    while (this.arrayNext());
  }

  /** At '[': consumes it (checking depth, the array's own level) and, for an empty array, ']' too. */
  arrayEmpty(depth: number): boolean {
    if (depth > MAX_JSON_DEPTH) this.fail(`nesting deeper than ${MAX_JSON_DEPTH}`);
    this.i++;
    this.ws();
    if (this.b[this.i] === 0x5d) {
      this.i++;
      return true;
    }
    return false;
  }

  /** After an item: true at ',' (consumed), false at ']' (consumed). */
  arrayNext(): boolean {
    this.ws();
    const c = this.b[this.i];
    if (c === 0x2c) {
      this.i++;
      return true;
    }
    if (c === 0x5d) {
      this.i++;
      return false;
    }
    return this.fail(c === undefined ? "unexpected end of input in an array" : "expected ',' or ']'");
  }

  /**
   * Reads a string (the position is at its opening quote). The input is known-valid UTF-8, so runs without
   * escapes decode straight from the bytes.
   */
  string(): string {
    const b = this.b;
    const start = this.i++;
    let out = "";
    let run = this.i;
    // An ASCII string without escapes is hashed on the way (its bytes are its code units); others after.
    let h = FNV_OFFSET;
    let ascii = true;
    for (;;) {
      const c = b[this.i];
      if (c === undefined) this.fail("unterminated string", start);
      if (c === 0x22) {
        out += this.text.toString("utf8", run, this.i++);
        this.hash = ascii ? h : stringHash(out);
        return out;
      }
      if (c < 0x20) this.fail(`unescaped control character ${describeByte(c)} in a string`);
      if (c !== 0x5c) {
        h = Math.imul(h ^ c, FNV_PRIME);
        if (c >= 0x80) ascii = false;
        this.i++;
        continue;
      }
      ascii = false;
      out += this.text.toString("utf8", run, this.i);
      out += this.escape();
      run = this.i;
    }
  }

  private escape(): string {
    const at = this.i;
    const c = this.b[at + 1];
    this.i += 2;
    switch (c) {
      case 0x22: return '"';
      case 0x5c: return "\\";
      case 0x2f: return "/";
      case 0x62: return "\b";
      case 0x66: return "\f";
      case 0x6e: return "\n";
      case 0x72: return "\r";
      case 0x74: return "\t";
      case 0x75: break;
      default: this.fail("invalid escape", at);
    }
    const u = this.hex4(at);
    if (u >= 0xdc00 && u <= 0xdfff) this.fail("lone low surrogate in \\u escape", at);
    if (u < 0xd800 || u > 0xdbff) return String.fromCharCode(u);
    // A high surrogate must pair with a low one: strings must map to UTF-8 and back unchanged.
    if (this.b[this.i] !== 0x5c || this.b[this.i + 1] !== 0x75) this.fail("lone high surrogate in \\u escape", at);
    this.i += 2;
    const lo = this.hex4(this.i - 2);
    if (lo < 0xdc00 || lo > 0xdfff) this.fail("lone high surrogate in \\u escape", at);
    return String.fromCharCode(u, lo);
  }

  private hex4(at: number): number {
    let v = 0;
    for (let k = 0; k < 4; k++) {
      const c = this.b[this.i++];
      const d = c === undefined ? -1 : c >= 0x30 && c <= 0x39 ? c - 0x30 : (c | 0x20) >= 0x61 && (c | 0x20) <= 0x66 ? (c | 0x20) - 0x57 : -1;
      if (d < 0) this.fail("invalid \\u escape", at);
      v = v * 16 + d;
    }
    return v;
  }

  /** Reads a number (the position is at its first character) and sets `integer`. */
  numberValue(): number {
    const b = this.b;
    const pos = this.i;
    if (b[this.i] === 0x2d) this.i++;
    const intStart = this.i;
    if (this.digits() === 0) this.fail("expected a digit");
    if (b[intStart] === 0x30 && this.i - intStart > 1) this.fail("leading zero in a number", intStart);
    let integer = true;
    if (b[this.i] === 0x2e) {
      this.i++;
      integer = false;
      if (this.digits() === 0) this.fail("expected a digit after '.'");
    }
    if (b[this.i] === 0x65 || b[this.i] === 0x45) {
      this.i++;
      integer = false;
      if (b[this.i] === 0x2b || b[this.i] === 0x2d) this.i++;
      if (this.digits() === 0) this.fail("expected a digit in the exponent");
    }
    // Short integers (most of a header) are summed digit by digit; anything else goes through Number().
    if (integer && this.i - intStart <= 15) {
      let value = 0;
      for (let k = intStart; k < this.i; k++) value = value * 10 + (b[k]! - 0x30);
      this.integer = true;
      return b[pos] === 0x2d ? -value : value;
    }
    const raw = this.text.toString("latin1", pos, this.i);
    const value = Number(raw);
    if (integer && !Number.isSafeInteger(value))
      this.fail(`integer ${raw} is not exactly representable (outside ±(2^53-1))`, pos);
    if (!Number.isFinite(value)) this.fail(`number ${raw} is out of range`, pos);
    this.integer = integer;
    return value;
  }

  private digits(): number {
    const b = this.b;
    const s = this.i;
    while (this.i < b.length && b[this.i]! >= 0x30 && b[this.i]! <= 0x39) this.i++;
    return this.i - s;
  }
}

function describeByte(c: number): string {
  return c >= 0x20 && c < 0x7f ? `'${String.fromCharCode(c)}'` : `0x${c.toString(16).padStart(2, "0")}`;
}
