// The safetensors format: dtype table, header-length check and header validation into a layout. Every rule
// is checked here, before anything is allocated for tensor data, and each failure names the file, the tensor
// and the rule. The rules follow the reference implementation (huggingface/safetensors, tensor.rs).
import type { DType } from "../tensor.js";
import { PeftError, peftError } from "../errors.js";
import { JsonSyntaxError, parseJsonStrict, type JsonNode } from "./json-strict.js";

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
const DTYPES = new Map(DTYPE_TABLE);
const RANK = new Map(DTYPE_TABLE.map(([name], i) => [name, i]));

/** The file's dtype name for a Tensor dtype ("bf16" -> "BF16"). */
export function fileDType(dtype: DType): string {
  return dtype.toUpperCase();
}

/** Writer order: the reference sorts by dtype (declaration order, descending), then by name bytes. */
export function compareForWrite(a: { name: string; dtype: string }, b: { name: string; dtype: string }): number {
  return RANK.get(b.dtype)! - RANK.get(a.dtype)! || compareUtf8(a.name, b.name);
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

export interface Layout {
  metadata: Record<string, string>;
  /** By name. */
  tensors: Map<string, TensorEntry>;
  /** By data offset. */
  ordered: TensorEntry[];
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

/** Validates the header bytes of a file of `fileSize` bytes and returns its layout. */
export function parseLayout(header: Uint8Array, fileSize: number, file: string): Layout {
  // The spec requires the header to begin with '{' (so a file cannot start like another format).
  if (header[0] !== 0x7b) throw formatError(file, "header does not start with '{'");
  let root: JsonNode;
  try {
    root = parseJsonStrict(header);
  } catch (e) {
    if (!(e instanceof JsonSyntaxError)) throw e;
    throw formatError(file, `invalid header JSON: ${e.reason} at header byte ${e.pos} (file byte ${e.pos + 8})`);
  }
  if (root.kind !== "object") throw formatError(file, "header is not a JSON object");

  const dataStart = 8 + header.length;
  let metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorEntry>();
  for (const [name, node] of root.entries) {
    if (name === "__metadata__") metadata = parseMetadata(node, file);
    else tensors.set(name, parseEntry(name, node, dataStart, file));
  }
  const ordered = [...tensors.values()].sort((a, b) => a.offset - b.offset || a.byteLength - b.byteLength);
  checkCoverage(ordered, dataStart, fileSize, file);
  return { metadata, tensors, ordered };
}

function parseMetadata(node: JsonNode, file: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (node.kind === "null") return out;
  if (node.kind !== "object") throw formatError(file, `__metadata__ must be an object of strings, got ${node.kind}`);
  for (const [k, v] of node.entries) {
    if (v.kind !== "string") throw formatError(file, `__metadata__ value for ${JSON.stringify(k)} must be a string, got ${v.kind} (header byte ${v.pos})`);
    define(out, k, v.value);
  }
  return out;
}

const ENTRY_FIELDS = new Set(["dtype", "shape", "data_offsets"]);

function parseEntry(name: string, node: JsonNode, dataStart: number, file: string): TensorEntry {
  const fail = (msg: string): never => { throw formatError(file, msg, name); };
  if (node.kind !== "object") return fail(`entry must be an object with dtype, shape and data_offsets, got ${node.kind}`);
  for (const k of node.entries.keys()) if (!ENTRY_FIELDS.has(k)) fail(`unknown field ${JSON.stringify(k)}`);
  const dt = node.entries.get("dtype");
  const sh = node.entries.get("shape");
  const off = node.entries.get("data_offsets");
  if (!dt || !sh || !off) return fail(`missing field ${!dt ? "dtype" : !sh ? "shape" : "data_offsets"}`);
  if (dt.kind !== "string") return fail(`dtype must be a string, got ${dt.kind}`);
  const info = DTYPES.get(dt.value);
  if (!info) return fail(`unknown dtype ${JSON.stringify(dt.value)} (known: ${[...DTYPES.keys()].join(", ")})`);

  const shape = indexList(sh, "shape", fail);
  const offsets = indexList(off, "data_offsets", fail);
  if (offsets.length !== 2) fail(`data_offsets must be [begin, end], got ${offsets.length} numbers`);
  const [begin, end] = offsets as [number, number];
  if (begin > end) fail(`data_offsets [${begin}, ${end}] has begin > end`);

  // Element count times bits, refusing anything past 2^53 (no file can be that large).
  let bits = info.bits;
  if (shape.includes(0)) bits = 0;
  else for (const d of shape) if ((bits *= d) > Number.MAX_SAFE_INTEGER) fail(`shape [${shape.join(", ")}] of ${dt.value} is too large`);
  if (bits % 8 !== 0) fail(`shape [${shape.join(", ")}] of ${dt.value} does not fill whole bytes`);
  if (end - begin !== bits / 8)
    fail(`data_offsets [${begin}, ${end}] hold ${end - begin} bytes but ${dt.value} shape [${shape.join(", ")}] needs ${bits / 8}`);
  return { name, dtype: dt.value, tensorDType: info.tensor, shape, offset: dataStart + begin, byteLength: end - begin };
}

function indexList(node: JsonNode, field: string, fail: (msg: string) => never): number[] {
  if (node.kind !== "array") return fail(`${field} must be an array of non-negative integers, got ${node.kind}`);
  return node.items.map((v, i) => {
    if (v.kind !== "number" || !v.integer || v.value < 0 || Object.is(v.value, -0))
      fail(`${field}[${i}] must be a non-negative integer (header byte ${v.pos})`);
    return v.value as number;
  });
}

// Sorted by offset, the tensors must tile the data area exactly: no gap, no overlap, nothing after.
function checkCoverage(ordered: TensorEntry[], dataStart: number, fileSize: number, file: string): void {
  let at = dataStart;
  let prev: TensorEntry | undefined;
  const rel = (x: number) => x - dataStart;
  for (const t of ordered) {
    if (t.offset > at)
      throw formatError(file, `gap of ${t.offset - at} bytes in the data before it (data bytes [${rel(at)}, ${rel(t.offset)}) belong to no tensor)`, t.name);
    if (t.offset < at)
      throw formatError(file, `data [${rel(t.offset)}, ${rel(t.offset + t.byteLength)}) overlaps tensor ${JSON.stringify(prev!.name)} [${rel(prev!.offset)}, ${rel(at)})`, t.name);
    at += t.byteLength;
    prev = t;
  }
  if (at > fileSize) throw formatError(file, `data ends at byte ${at} but the file has ${fileSize} bytes (truncated?)`, prev!.name);
  if (at < fileSize) throw formatError(file, `${fileSize - at} trailing bytes after the last tensor's data (the data area must end the file)`);
}

/** Sets an own enumerable property, even for "__proto__". */
export function define<T>(obj: Record<string, T>, key: string, value: T): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}
