// A strict JSON parser over UTF-8 bytes. JSON.parse keeps the last of duplicate names and rounds integers
// beyond 2^53; in a file header either would let two readers see different tensors, so this parser rejects
// both. It returns a tree that remembers each value's byte position, so callers can point at the culprit.

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
const MAX_DEPTH = 128;

const utf8 = new TextDecoder("utf-8", { fatal: true });

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
  try {
    utf8.decode(bytes);
  } catch {
    throw new JsonSyntaxError("invalid UTF-8", firstInvalidUtf8(bytes));
  }
  return new Parser(bytes).document();
}

class Parser {
  private i = 0;
  private readonly text: Buffer;

  constructor(private readonly b: Uint8Array) {
    this.text = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  }

  document(): JsonNode {
    const v = this.value(0);
    this.ws();
    if (this.i < this.b.length) this.fail("unexpected data after the JSON value");
    return v;
  }

  private fail(reason: string, pos = this.i): never {
    throw new JsonSyntaxError(reason, pos);
  }

  private ws(): void {
    const b = this.b;
    while (this.i < b.length) {
      const c = b[this.i];
      if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) break;
      this.i++;
    }
  }

  private value(depth: number): JsonNode {
    this.ws();
    const pos = this.i;
    const c = this.b[pos];
    if (c === undefined) this.fail("unexpected end of input");
    if (c === 0x7b) return this.object(depth + 1);
    if (c === 0x5b) return this.array(depth + 1);
    if (c === 0x22) return { kind: "string", pos, value: this.string() };
    if (c === 0x2d || (c >= 0x30 && c <= 0x39)) return this.number();
    if (this.word("true")) return { kind: "boolean", pos, value: true };
    if (this.word("false")) return { kind: "boolean", pos, value: false };
    if (this.word("null")) return { kind: "null", pos };
    return this.fail(`unexpected character ${describeByte(c)}`);
  }

  private word(w: string): boolean {
    for (let k = 0; k < w.length; k++) if (this.b[this.i + k] !== w.charCodeAt(k)) return false;
    this.i += w.length;
    return true;
  }

  private expect(c: number, what: string): void {
    this.ws();
    if (this.b[this.i] !== c) this.fail(this.i < this.b.length ? `expected ${what}` : `unexpected end of input, expected ${what}`);
    this.i++;
  }

  private object(depth: number): JsonNode {
    if (depth > MAX_DEPTH) this.fail(`nesting deeper than ${MAX_DEPTH}`);
    const pos = this.i++;
    const entries = new Map<string, JsonNode>();
    // Key positions, in order, only to point at the first of two duplicate keys.
    const keyPos: number[] = [];
    this.ws();
    if (this.b[this.i] === 0x7d) { this.i++; return { kind: "object", pos, entries }; }
    for (;;) {
      this.ws();
      const kp = this.i;
      if (this.b[kp] !== 0x22) this.fail(kp < this.b.length ? "expected a string key" : "unexpected end of input, expected a string key");
      const key = this.string();
      if (entries.has(key))
        this.fail(`duplicate key ${JSON.stringify(key)} (first at byte ${keyPos[[...entries.keys()].indexOf(key)]})`, kp);
      this.expect(0x3a, "':'");
      entries.set(key, this.value(depth));
      keyPos.push(kp);
      this.ws();
      const c = this.b[this.i];
      if (c === 0x2c) { this.i++; continue; }
      if (c === 0x7d) { this.i++; return { kind: "object", pos, entries }; }
      this.fail(c === undefined ? "unexpected end of input in an object" : "expected ',' or '}'");
    }
  }

  private array(depth: number): JsonNode {
    if (depth > MAX_DEPTH) this.fail(`nesting deeper than ${MAX_DEPTH}`);
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

  // The input is known-valid UTF-8, so runs without escapes decode straight from the bytes.
  private string(): string {
    const b = this.b;
    const start = this.i++;
    let out = "";
    let run = this.i;
    for (;;) {
      const c = b[this.i];
      if (c === undefined) this.fail("unterminated string", start);
      if (c === 0x22) {
        out += this.text.toString("utf8", run, this.i++);
        return out;
      }
      if (c < 0x20) this.fail(`unescaped control character ${describeByte(c)} in a string`);
      if (c !== 0x5c) { this.i++; continue; }
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

  private number(): JsonNode {
    const b = this.b;
    const pos = this.i;
    const digits = (): number => {
      const s = this.i;
      while (this.i < b.length && b[this.i]! >= 0x30 && b[this.i]! <= 0x39) this.i++;
      return this.i - s;
    };
    if (b[this.i] === 0x2d) this.i++;
    const intStart = this.i;
    if (digits() === 0) this.fail("expected a digit");
    if (b[intStart] === 0x30 && this.i - intStart > 1) this.fail("leading zero in a number", intStart);
    let integer = true;
    if (b[this.i] === 0x2e) {
      this.i++;
      integer = false;
      if (digits() === 0) this.fail("expected a digit after '.'");
    }
    if (b[this.i] === 0x65 || b[this.i] === 0x45) {
      this.i++;
      integer = false;
      if (b[this.i] === 0x2b || b[this.i] === 0x2d) this.i++;
      if (digits() === 0) this.fail("expected a digit in the exponent");
    }
    // Short integers (most of a header) are summed digit by digit; anything else goes through Number().
    if (integer && this.i - intStart <= 15) {
      let value = 0;
      for (let k = intStart; k < this.i; k++) value = value * 10 + (b[k]! - 0x30);
      return { kind: "number", pos, value: b[pos] === 0x2d ? -value : value, integer };
    }
    const raw = this.text.toString("latin1", pos, this.i);
    const value = Number(raw);
    if (integer && !Number.isSafeInteger(value))
      this.fail(`integer ${raw} is not exactly representable (outside ±(2^53-1))`, pos);
    if (!Number.isFinite(value)) this.fail(`number ${raw} is out of range`, pos);
    return { kind: "number", pos, value, integer };
  }
}

function describeByte(c: number): string {
  return c >= 0x20 && c < 0x7f ? `'${String.fromCharCode(c)}'` : `0x${c.toString(16).padStart(2, "0")}`;
}
