// The safetensors format: dtype table, header-length check and header validation into a layout. Every rule
// is checked here, before anything is allocated for tensor data, and each failure names the file, the tensor
// and the rule. The rules follow the reference implementation (huggingface/safetensors, tensor.rs).
import type { DType } from "../tensor.js";
import { PeftError, peftError } from "../errors.js";
import { JsonReader, JsonSyntaxError, checkUtf8, stringHash, type JsonKind } from "./json-strict.js";

/** Largest header the reference implementation accepts (bytes). */
export const MAX_HEADER_SIZE = 100_000_000;

interface DTypeInfo {
  /** Bits per element (sub-byte float formats exist). */
  bits: number;
  /** The Tensor dtype it loads as, or null: readable only as raw bytes. */
  tensor: DType | null;
}

// In the reference's declaration order, which its writer uses to sort (larger alignment first).
const DTYPE_TABLE: ReadonlyArray<readonly [string, DTypeInfo]> = [
  ["BOOL", { bits: 8, tensor: null }],
  ["F4", { bits: 4, tensor: null }],
  ["F6_E2M3", { bits: 6, tensor: null }],
  ["F6_E3M2", { bits: 6, tensor: null }],
  ["U8", { bits: 8, tensor: "u8" }],
  ["I8", { bits: 8, tensor: "i8" }],
  ["F8_E5M2", { bits: 8, tensor: null }],
  ["F8_E4M3", { bits: 8, tensor: null }],
  ["F8_E8M0", { bits: 8, tensor: null }],
  ["F8_E4M3FNUZ", { bits: 8, tensor: null }],
  ["F8_E5M2FNUZ", { bits: 8, tensor: null }],
  ["I16", { bits: 16, tensor: null }],
  ["U16", { bits: 16, tensor: null }],
  ["F16", { bits: 16, tensor: "f16" }],
  ["BF16", { bits: 16, tensor: "bf16" }],
  ["I32", { bits: 32, tensor: "i32" }],
  ["U32", { bits: 32, tensor: null }],
  ["F32", { bits: 32, tensor: "f32" }],
  ["C64", { bits: 64, tensor: null }],
  ["F64", { bits: 64, tensor: null }],
  ["I64", { bits: 64, tensor: "i64" }],
  ["U64", { bits: 64, tensor: null }],
];
const DTYPE_CODE = new Map(DTYPE_TABLE.map(([name], i) => [name, i]));

/** The file's dtype name for a Tensor dtype ("bf16" -> "BF16"). */
export function fileDType(dtype: DType): string {
  return dtype.toUpperCase();
}

/** Writer order: the reference sorts by dtype (declaration order, descending), then by name bytes. */
export function compareForWrite(a: { name: string; dtype: string }, b: { name: string; dtype: string }): number {
  return DTYPE_CODE.get(b.dtype)! - DTYPE_CODE.get(a.dtype)! || compareUtf8(a.name, b.name);
}

/**
 * Orders strings by their UTF-8 bytes, i.e. by code point (Rust's String order), which differs from JS's
 * UTF-16 order only when a surrogate pair meets a character in U+E000..U+FFFF.
 */
export function compareUtf8(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    if (x >= 0xd800 && y >= 0xd800) {
      x = x >= 0xe000 ? x - 0x800 : x + 0x2000;
      y = y >= 0xe000 ? y - 0x800 : y + 0x2000;
    }
    return x - y;
  }
  return a.length - b.length;
}

/** One tensor of a layout, as an object (made on demand; a layout keeps its tensors in flat arrays). */
export interface TensorEntry {
  name: string;
  /** The file's dtype name, e.g. "BF16". */
  dtype: string;
  /** The Tensor dtype, or null when the dtype is readable only as bytes. */
  tensorDType: DType | null;
  shape: number[];
  /** Absolute byte offset of the data in the file. */
  offset: number;
  byteLength: number;
}

/**
 * A validated header. Tensors are numbered in header order and their fields kept in flat typed arrays, so a
 * header of a million tensors costs a name and a few dozen bytes each, not a tree of objects.
 */
export class Layout {
  #sorted: string[] | undefined;
  /** Tensor names in header order. */
  readonly names: readonly string[];

  constructor(
    readonly metadata: Record<string, string>,
    /** Tensor names in header order, and name -> tensor number. */
    readonly index: NameIndex,
    private readonly dtypes: Uint8Array,
    private readonly offsets: Float64Array,
    private readonly lengths: Float64Array,
    /** Tensor i's dims are dims[shapeAt[i]] .. dims[shapeAt[i + 1]]. */
    private readonly shapeAt: Uint32Array,
    private readonly dims: Float64Array,
    /** Tensor numbers by data offset, or null when header order is already data order. */
    private readonly order: Uint32Array | null,
  ) {
    this.names = index.names;
  }

  get count(): number {
    return this.names.length;
  }

  /** The number of the tensor named `name`, if there is one. */
  find(name: unknown): number | undefined {
    return this.index.get(name);
  }

  /** Tensor numbers in data (file) order. */
  *dataOrder(): Generator<number, void, void> {
    const order = this.order;
    for (let k = 0; k < this.names.length; k++) yield order === null ? k : order[k]!;
  }

  dtype(i: number): string {
    return DTYPE_TABLE[this.dtypes[i]!]![0];
  }

  tensorDType(i: number): DType | null {
    return DTYPE_TABLE[this.dtypes[i]!]![1].tensor;
  }

  /** A fresh array. */
  shape(i: number): number[] {
    const out: number[] = [];
    for (let k = this.shapeAt[i]!, to = this.shapeAt[i + 1]!; k < to; k++) out.push(this.dims[k]!);
    return out;
  }

  offset(i: number): number {
    return this.offsets[i]!;
  }

  byteLength(i: number): number {
    return this.lengths[i]!;
  }

  entry(i: number): TensorEntry {
    return { name: this.names[i]!, dtype: this.dtype(i), tensorDType: this.tensorDType(i), shape: this.shape(i), offset: this.offset(i), byteLength: this.byteLength(i) };
  }

  /** Names sorted by UTF-8 bytes; computed once and shared, so callers must not change it. */
  sortedNames(): readonly string[] {
    return (this.#sorted ??= sortNames(this.names.slice()));
  }
}

// Strings without surrogates order the same by UTF-16 units as by code points, and the built-in sort
// (native comparisons, and linear on the sorted runs writers produce) is several times faster than a
// comparator.
const SURROGATE = /[\ud800-\udfff]/;

/** Sorts names in place by their UTF-8 bytes (compareUtf8 order). */
export function sortNames(names: string[]): string[] {
  for (const n of names) if (SURROGATE.test(n)) return names.sort(compareUtf8);
  return names.sort();
}

/**
 * Tensor names and an open-addressing hash table over them (name -> number). For a million names it is
 * several times cheaper than a Map, and the hashes come for free from the header scan.
 */
export class NameIndex {
  readonly names: string[] = [];
  // Name number + 1 per slot; 0 is empty.
  private table: Int32Array;
  private mask: number;

  constructor(expected: number) {
    let size = 16;
    while (size < expected * 2) size *= 2;
    this.table = new Int32Array(size);
    this.mask = size - 1;
  }

  get size(): number {
    return this.names.length;
  }

  /** The number of `name` (whose stringHash is `hash`), or -1. */
  find(name: string, hash = stringHash(name)): number {
    const { table, mask, names } = this;
    for (let j = hash & mask; ; j = (j + 1) & mask) {
      const e = table[j]!;
      if (e === 0) return -1;
      if (names[e - 1] === name) return e - 1;
    }
  }

  /** Adds a name that is not in the index yet; returns its number. */
  add(name: string, hash = stringHash(name)): number {
    if ((this.names.length + 1) * 2 > this.table.length) this.rehash();
    const { table, mask } = this;
    let j = hash & mask;
    while (table[j] !== 0) j = (j + 1) & mask;
    table[j] = this.names.push(name);
    return this.names.length - 1;
  }

  /** For names that are not strings too: undefined. */
  get(name: unknown): number | undefined {
    if (typeof name !== "string") return undefined;
    const t = this.find(name);
    return t < 0 ? undefined : t;
  }

  private rehash(): void {
    const size = this.table.length * 2;
    const table = new Int32Array(size);
    const mask = size - 1;
    for (let t = 0; t < this.names.length; t++) {
      let j = stringHash(this.names[t]!) & mask;
      while (table[j] !== 0) j = (j + 1) & mask;
      table[j] = t + 1;
    }
    this.table = table;
    this.mask = mask;
  }
}

/** A Float64Array that grows by doubling. */
class Float64Vec {
  a: Float64Array;
  n = 0;
  constructor(capacity: number) {
    this.a = new Float64Array(Math.max(capacity, 16));
  }
  push(v: number): void {
    if (this.n === this.a.length) {
      const next = new Float64Array(this.a.length * 2);
      next.set(this.a);
      this.a = next;
    }
    this.a[this.n++] = v;
  }
}

/** An ERR_SAFETENSORS error naming the file (and the tensor, when given). */
export function formatError(file: string, message: string, tensor?: string): PeftError {
  return peftError("ERR_SAFETENSORS", `safetensors ${file}: ${tensor === undefined ? "" : `tensor ${JSON.stringify(tensor)}: `}${message}`);
}

/**
 * Checks the 8-byte little-endian header length (`prefix` holds the file's first bytes, up to 8) against the
 * file size and the 100 MB limit; returns N.
 */
export function checkHeaderLength(prefix: Uint8Array, fileSize: number, file: string): number {
  if (fileSize < 8) throw formatError(file, `file is ${fileSize} bytes, too short for the 8-byte header length`);
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_SIZE)) throw formatError(file, `header length ${n} exceeds the ${MAX_HEADER_SIZE}-byte limit`);
  if (8 + Number(n) > fileSize) throw formatError(file, `header length ${n} runs past the end of the file (${fileSize} bytes)`);
  return Number(n);
}

/**
 * Validates the header bytes of a file of `fileSize` bytes and returns its layout. The rules are checked in a
 * fixed order: the whole header's JSON syntax first, then each member in header order (the first broken rule
 * of the first broken entry is reported), then how the data tiles the file. The header is walked once,
 * without a JSON tree; the work and memory are linear in its size with small constants.
 */
export function parseLayout(header: Uint8Array, fileSize: number, file: string): Layout {
  // The spec requires the header to begin with '{' (so a file cannot start like another format).
  if (header[0] !== 0x7b) throw formatError(file, "header does not start with '{'");
  const p = new HeaderParser(header, 8 + header.length, file);
  try {
    checkUtf8(header);
    p.document();
  } catch (e) {
    if (!(e instanceof JsonSyntaxError)) throw e;
    throw formatError(file, `invalid header JSON: ${e.reason} at header byte ${e.pos} (file byte ${e.pos + 8})`);
  }
  if (p.error) throw p.error;
  return p.layout(fileSize);
}

// The first rule an entry breaks is kept while the walk goes on: a JSON syntax error anywhere in the header
// is reported before any rule of the format, and an earlier member's error before a later one's.
class HeaderParser extends JsonReader {
  error: PeftError | undefined;
  private metadata: Record<string, string> = {};
  private metadataAt = -1;
  private readonly index: NameIndex;
  private dtypes: Uint8Array;
  private offsets: Float64Array;
  private lengths: Float64Array;
  private shapeAt: Uint32Array;
  private readonly dims = new Float64Vec(256);
  // Per entry, reset by entry(): what its members held.
  private dtypeKind: JsonKind | null = null;
  private dtypeName = "";
  private unknownField: string | undefined;
  private shapeKind: JsonKind | null = null;
  private shapeBad = -1;
  private shapeBadAt = 0;
  private shapeStart = 0;
  private offsetsKind: JsonKind | null = null;
  private offsetsBad = -1;
  private offsetsBadAt = 0;
  private offsetsCount = 0;
  private dataBegin = 0;
  private dataEnd = 0;
  // indexList's result.
  private listKind: JsonKind = "array";
  private listBad = -1;
  private listBadAt = 0;
  private listCount = 0;

  constructor(header: Uint8Array, private readonly dataStart: number, private readonly file: string) {
    super(header);
    // A valid entry takes at least 50 bytes (`"":{"dtype":"U8","shape":[],"data_offsets":[0,0]},`), which
    // bounds the count; untouched pages of these arrays cost no memory.
    const most = Math.floor(header.length / 50) + 1;
    this.index = new NameIndex(most);
    this.dtypes = new Uint8Array(most);
    this.offsets = new Float64Array(most);
    this.lengths = new Float64Array(most);
    this.shapeAt = new Uint32Array(most + 1);
  }

  // Not reached for a valid header (see the bound above); kept so the arrays can never silently drop a tensor.
  private grow(): void {
    const n = this.dtypes.length * 2;
    const dtypes = new Uint8Array(n);
    dtypes.set(this.dtypes);
    this.dtypes = dtypes;
    const offsets = new Float64Array(n);
    offsets.set(this.offsets);
    this.offsets = offsets;
    const lengths = new Float64Array(n);
    lengths.set(this.lengths);
    this.lengths = lengths;
    const shapeAt = new Uint32Array(n + 1);
    shapeAt.set(this.shapeAt);
    this.shapeAt = shapeAt;
  }

  private note(message: string, tensor?: string): void {
    this.error ??= formatError(this.file, message, tensor);
  }

  /** The header object, depth 1; its members' values are at depth 1. */
  document(): void {
    const objPos = this.i++;
    if (!this.objectEmpty()) {
      do {
        const kp = this.i;
        const name = this.key();
        const hash = this.hash;
        if (name === "__metadata__" ? this.metadataAt >= 0 : this.index.find(name, hash) >= 0) this.duplicateKey(objPos, 1, name, kp);
        this.expect(0x3a, "':'");
        if (name === "__metadata__") {
          this.metadataAt = kp;
          this.parseMetadata();
        } else this.entry(name, this.index.add(name, hash));
      } while (this.objectNext());
    }
    this.end();
  }

  private parseMetadata(): void {
    this.ws();
    if (this.b[this.i] !== 0x7b) {
      const kind = this.skip(1);
      if (kind !== "null") this.note(`__metadata__ must be an object of strings, got ${kind}`);
      return;
    }
    const objPos = this.i++;
    if (this.objectEmpty()) return;
    const out: Record<string, string> = {};
    const keys = new Set<string>();
    do {
      const kp = this.i;
      const k = this.key();
      if (keys.has(k)) this.duplicateKey(objPos, 2, k, kp);
      keys.add(k);
      this.expect(0x3a, "':'");
      this.ws();
      const at = this.i;
      if (this.b[at] === 0x22) define(out, k, this.string());
      else {
        const kind = this.skip(2);
        this.note(`__metadata__ value for ${JSON.stringify(k)} must be a string, got ${kind} (header byte ${at})`);
      }
    } while (this.objectNext());
    this.metadata = out;
  }

  // One tensor entry: {"dtype": "...", "shape": [...], "data_offsets": [begin, end]} in any order. Fields
  // are read straight into the flat arrays; anything else is only checked (skip) and its kind remembered.
  private entry(name: string, t: number): void {
    this.ws();
    if (this.b[this.i] !== 0x7b) {
      const kind = this.skip(1);
      this.note(`entry must be an object with dtype, shape and data_offsets, got ${kind}`, name);
      return;
    }
    const objPos = this.i++;
    this.dtypeKind = this.shapeKind = this.offsetsKind = null;
    this.unknownField = undefined;
    let others: Set<string> | undefined;
    if (!this.objectEmpty()) {
      do {
        const kp = this.i;
        const k = this.key();
        const seen = k === "dtype" ? this.dtypeKind !== null : k === "shape" ? this.shapeKind !== null : k === "data_offsets" ? this.offsetsKind !== null : others?.has(k) === true;
        if (seen) this.duplicateKey(objPos, 2, k, kp);
        this.expect(0x3a, "':'");
        if (k === "dtype") {
          this.ws();
          if (this.b[this.i] === 0x22) {
            this.dtypeKind = "string";
            this.dtypeName = this.string();
          } else this.dtypeKind = this.skip(2);
        } else if (k === "shape") this.shapeList();
        else if (k === "data_offsets") this.offsetsList();
        else {
          (others ??= new Set()).add(k);
          this.unknownField ??= k;
          this.skip(2);
        }
      } while (this.objectNext());
    }
    if (this.error === undefined) this.check(name, t);
  }

  // A list of indices at depth 3 (the entry is at 2). Each item is checked as the JSON value it is; the first
  // that is not a non-negative integer is remembered by index and byte. Shape dims go onto `dims`; of the
  // offsets, the first two are kept.
  private indexList(isShape: boolean): void {
    this.ws();
    this.listBad = -1;
    this.listCount = 0;
    if (this.b[this.i] !== 0x5b) {
      this.listKind = this.skip(2);
      return;
    }
    this.listKind = "array";
    if (this.arrayEmpty(3)) return;
    do {
      this.ws();
      const at = this.i;
      const c = this.b[at]!;
      let ok = false;
      if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
        const v = this.numberValue();
        ok = this.integer && v >= 0 && !Object.is(v, -0);
        if (ok && isShape) this.dims.push(v);
        else if (ok && this.listCount === 0) this.dataBegin = v;
        else if (ok && this.listCount === 1) this.dataEnd = v;
      } else this.skip(3);
      if (!ok && this.listBad < 0) {
        this.listBad = this.listCount;
        this.listBadAt = at;
      }
      this.listCount++;
    } while (this.arrayNext());
  }

  private shapeList(): void {
    this.shapeStart = this.dims.n;
    this.indexList(true);
    this.shapeKind = this.listKind;
    this.shapeBad = this.listBad;
    this.shapeBadAt = this.listBadAt;
  }

  private offsetsList(): void {
    this.indexList(false);
    this.offsetsKind = this.listKind;
    this.offsetsBad = this.listBad;
    this.offsetsBadAt = this.listBadAt;
    this.offsetsCount = this.listCount;
  }

  private shapeText(): string {
    return Array.from(this.dims.a.subarray(this.shapeStart, this.dims.n)).join(", ");
  }

  // The entry's rules, in the order they are reported.
  private check(name: string, t: number): void {
    if (this.unknownField !== undefined) return this.note(`unknown field ${JSON.stringify(this.unknownField)}`, name);
    if (this.dtypeKind === null || this.shapeKind === null || this.offsetsKind === null)
      return this.note(`missing field ${this.dtypeKind === null ? "dtype" : this.shapeKind === null ? "shape" : "data_offsets"}`, name);
    if (this.dtypeKind !== "string") return this.note(`dtype must be a string, got ${this.dtypeKind}`, name);
    const dt = this.dtypeName;
    const code = DTYPE_CODE.get(dt);
    if (code === undefined) return this.note(`unknown dtype ${JSON.stringify(dt)} (known: ${DTYPE_TABLE.map((d) => d[0]).join(", ")})`, name);
    if (this.shapeKind !== "array") return this.note(`shape must be an array of non-negative integers, got ${this.shapeKind}`, name);
    if (this.shapeBad >= 0) return this.note(`shape[${this.shapeBad}] must be a non-negative integer (header byte ${this.shapeBadAt})`, name);
    if (this.offsetsKind !== "array") return this.note(`data_offsets must be an array of non-negative integers, got ${this.offsetsKind}`, name);
    if (this.offsetsBad >= 0) return this.note(`data_offsets[${this.offsetsBad}] must be a non-negative integer (header byte ${this.offsetsBadAt})`, name);
    if (this.offsetsCount !== 2) return this.note(`data_offsets must be [begin, end], got ${this.offsetsCount} numbers`, name);
    const begin = this.dataBegin;
    const end = this.dataEnd;
    if (begin > end) return this.note(`data_offsets [${begin}, ${end}] has begin > end`, name);

    // Element count times bits, refusing anything past 2^53 (no file can be that large).
    const dims = this.dims.a;
    const from = this.shapeStart;
    const to = this.dims.n;
    let bits = DTYPE_TABLE[code]![1].bits;
    for (let k = from; k < to; k++) if (dims[k] === 0) bits = 0;
    if (bits !== 0)
      for (let k = from; k < to; k++) if ((bits *= dims[k]!) > Number.MAX_SAFE_INTEGER) return this.note(`shape [${this.shapeText()}] of ${dt} is too large`, name);
    if (bits % 8 !== 0) return this.note(`shape [${this.shapeText()}] of ${dt} does not fill whole bytes`, name);
    if (end - begin !== bits / 8)
      return this.note(`data_offsets [${begin}, ${end}] hold ${end - begin} bytes but ${dt} shape [${this.shapeText()}] needs ${bits / 8}`, name);

    if (t >= this.dtypes.length) this.grow();
    this.dtypes[t] = code;
    this.offsets[t] = this.dataStart + begin;
    this.lengths[t] = end - begin;
    this.shapeAt[t + 1] = to;
  }

  /** The layout of a header that broke no rule, after checking that its data tiles the rest of the file. */
  layout(fileSize: number): Layout {
    const n = this.index.size;
    // Views of the first n entries (no copy: the pages past them, never written, take no memory).
    const offsets = this.offsets.subarray(0, n);
    const lengths = this.lengths.subarray(0, n);
    // Writers put the data in header order; only other files need sorting (by offset, then size, then
    // header order, as a stable sort would).
    let order: Uint32Array | null = null;
    for (let k = 1; k < n; k++) {
      if (offsets[k]! < offsets[k - 1]! || (offsets[k] === offsets[k - 1] && lengths[k]! < lengths[k - 1]!)) {
        order = new Uint32Array(n);
        for (let j = 0; j < n; j++) order[j] = j;
        order.sort((a, b) => offsets[a]! - offsets[b]! || lengths[a]! - lengths[b]! || a - b);
        break;
      }
    }
    const layout = new Layout(
      this.metadata, this.index, this.dtypes.subarray(0, n), offsets, lengths,
      this.shapeAt.subarray(0, n + 1), this.dims.a.subarray(0, this.dims.n), order,
    );
    checkCoverage(layout, this.dataStart, fileSize, this.file);
    return layout;
  }
}

// Sorted by offset, the tensors must tile the data area exactly: no gap, no overlap, nothing after.
function checkCoverage(layout: Layout, dataStart: number, fileSize: number, file: string): void {
  let at = dataStart;
  let prev = -1;
  const rel = (x: number) => x - dataStart;
  for (const t of layout.dataOrder()) {
    const offset = layout.offset(t);
    if (offset > at)
      throw formatError(file, `gap of ${offset - at} bytes in the data before it (data bytes [${rel(at)}, ${rel(offset)}) belong to no tensor)`, layout.names[t]);
    if (offset < at) {
      const p = layout.names[prev]!;
      throw formatError(file, `data [${rel(offset)}, ${rel(offset + layout.byteLength(t))}) overlaps tensor ${JSON.stringify(p)} [${rel(layout.offset(prev))}, ${rel(at)})`, layout.names[t]);
    }
    at += layout.byteLength(t);
    prev = t;
  }
  if (at > fileSize) throw formatError(file, `data ends at byte ${at} but the file has ${fileSize} bytes (truncated?)`, layout.names[prev]);
  if (at < fileSize) throw formatError(file, `${fileSize - at} trailing bytes after the last tensor's data (the data area must end the file)`);
}

/**
 * A plain object with the given keys in that order. Filled with a null prototype (no Object.prototype
 * lookups, several times faster for a large object; "__proto__" becomes an own property like any other name),
 * then given Object.prototype.
 */
export function recordOf<T>(keys: Iterable<string>, valueOf: (key: string) => T): Record<string, T> {
  const out = Object.create(null) as Record<string, T>;
  for (const k of keys) out[k] = valueOf(k);
  return Object.setPrototypeOf(out, Object.prototype) as Record<string, T>;
}

/** Sets an own enumerable property, even for "__proto__". */
export function define<T>(obj: Record<string, T>, key: string, value: T): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}
