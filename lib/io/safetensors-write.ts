// Writing safetensors files the way Python's safetensors does (header layout, tensor order, 8-byte padding,
// {"format": "pt"} metadata that transformers requires), atomically: the data goes to a temporary file in
// the target's directory, is fsynced and renamed over the target, then the directory is fsynced. On any
// error the temporary file is removed and an existing target is left as it was. A writer killed mid-save
// cannot clean up; the next save into the directory removes what it left (sweepStaleTemps).
import { randomBytes } from "node:crypto";
import { closeSync, fsyncSync, openSync, readdirSync, renameSync, unlinkSync } from "node:fs";
import { open, readdir, rename, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { DTYPE_SIZE, Tensor, describe, transientBytes } from "../tensor.js";
import { peftError, typeError } from "../errors.js";
import { checkPath, runAsync, runSync, writeFully, writeFullySync, type IoPlan } from "./file-io.js";
import { MAX_HEADER_SIZE, compareForWrite, define, fileDType, formatError } from "./safetensors-format.js";

type TensorMap = Record<string, Tensor> | Map<string, Tensor>;

interface Prepared {
  /** Length prefix, JSON and padding. */
  header: Buffer;
  /** Tensor data in file order (zero-copy views of host storage). */
  data: Uint8Array[];
  /** Host copies made for device tensors, released after the write. */
  copies: Tensor[];
}

// Lone surrogates cannot be encoded as UTF-8, so such a string would not survive a round trip.
const LONE_SURROGATE = /\p{Cs}/u;

export function checkName(op: string, file: string, name: unknown): string {
  if (typeof name !== "string") throw typeError(`${op}: tensor names must be strings, got ${describe(name)}`);
  if (name === "") throw formatError(file, "tensor names must be non-empty");
  if (name === "__metadata__") throw formatError(file, "__metadata__ is reserved for metadata and is not a valid tensor name");
  if (LONE_SURROGATE.test(name)) throw formatError(file, "name contains a lone surrogate (not encodable as UTF-8)", name);
  return name;
}

function mergedMetadata(op: string, file: string, metadata: unknown): Record<string, string> {
  // "format" comes first and defaults to "pt"; the caller may set it (and anything else).
  const out: Record<string, string> = { format: "pt" };
  if (metadata === undefined || metadata === null) return out;
  if (typeof metadata !== "object" || Array.isArray(metadata) || metadata instanceof Map)
    throw typeError(`${op}: metadata must be an object of strings, got ${describe(metadata)}`);
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== "string") throw typeError(`${op}: metadata value for ${JSON.stringify(k)} must be a string, got ${describe(v)}`);
    if (LONE_SURROGATE.test(k) || LONE_SURROGATE.test(v))
      throw formatError(file, `metadata entry ${JSON.stringify(k)} contains a lone surrogate (not encodable as UTF-8)`);
    define(out, k, v);
  }
  return out;
}

/** What the header says of one tensor. */
export interface HeaderEntry {
  name: string;
  dtype: string; // the file's dtype name, e.g. "BF16"
  shape: readonly number[];
  nbytes: number;
}

/**
 * The header bytes (length prefix, JSON, space padding to 8) for entries laid out in the reference's order,
 * and each entry's data offset (from the end of the header).
 */
export function buildHeader(
  op: string,
  file: string,
  entries: HeaderEntry[],
  metadata: unknown,
): { header: Buffer; order: (HeaderEntry & { offset: number })[] } {
  const meta = mergedMetadata(op, file, metadata);
  const sorted = [...entries].sort(compareForWrite);
  let offset = 0;
  const parts = [`{"__metadata__":${JSON.stringify(meta)}`];
  const order = sorted.map((e) => {
    const at = offset;
    offset += e.nbytes;
    parts.push(`,${JSON.stringify(e.name)}:{"dtype":"${e.dtype}","shape":[${e.shape.join(",")}],"data_offsets":[${at},${offset}]}`);
    return { ...e, offset: at };
  });
  parts.push("}");
  const json = Buffer.from(parts.join(""), "utf8");
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded > MAX_HEADER_SIZE) throw formatError(file, `header would be ${padded} bytes, over the ${MAX_HEADER_SIZE}-byte limit`);
  const header = Buffer.alloc(8 + padded, 0x20);
  header.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(header, 8);
  return { header, order };
}

/** Validates everything and builds the header; nothing is written yet. */
function prepare(op: string, file: string, tensors: unknown, metadata: unknown): Prepared {
  if (tensors === null || typeof tensors !== "object" || Array.isArray(tensors))
    throw typeError(`${op}: tensors must be an object or Map of name -> Tensor, got ${describe(tensors)}`);
  const byName = new Map<string, Tensor>();
  const entries = (tensors instanceof Map ? [...tensors] : Object.entries(tensors)).map(([k, t]) => {
    const name = checkName(op, file, k);
    if (!(t instanceof Tensor)) throw typeError(`${op}: tensor ${JSON.stringify(name)} must be a Tensor, got ${describe(t)}`);
    if (t.disposed) throw peftError("ERR_DISPOSED", `${op}: tensor ${JSON.stringify(name)} has been disposed`);
    byName.set(name, t);
    return { name, dtype: fileDType(t.dtype), shape: t.shape, nbytes: t.numel * DTYPE_SIZE[t.dtype] };
  });
  const { header, order } = buildHeader(op, file, entries, metadata);
  const copies: Tensor[] = [];
  const data = order.map(({ name }) => {
    const tensor = byName.get(name)!;
    // Transient views: written out before the save returns, so they do not turn the pack cache off.
    if (tensor.device === "cpu") return transientBytes(tensor, false);
    const host = tensor.to("cpu");
    copies.push(host);
    return transientBytes(host, false);
  });
  return { header, data, copies };
}

// Small pieces (the header, biases, norms) are gathered into one buffer so a file of thousands of tensors
// does not cost thousands of syscalls; large tensors are written straight from their storage.
const STAGE = 1 << 20;

function* writePlan(p: Prepared): IoPlan<void> {
  const stage = Buffer.allocUnsafe(STAGE);
  let used = 0;
  let pos = 0;
  for (const piece of [p.header, ...p.data]) {
    if (used > 0 && (used + piece.length > STAGE || piece.length >= STAGE / 4)) {
      yield { buf: stage.subarray(0, used), pos: pos - used };
      used = 0;
    }
    if (piece.length >= STAGE / 4) yield { buf: piece, pos };
    else {
      stage.set(piece, used);
      used += piece.length;
    }
    pos += piece.length;
  }
  if (used > 0) yield { buf: stage.subarray(0, used), pos: pos - used };
}

/** A fresh temporary name next to `file`: `.<name>.<pid>.<12 hex digits>.tmp`. */
export function tempPath(file: string): string {
  return join(dirname(file), `.${basename(file)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
}

// Exactly the names tempPath makes; the pid is the writer's.
const TEMP_NAME = /^\..+\.([1-9][0-9]{0,9})\.[0-9a-f]{12}\.tmp$/;

/** The writer's pid when `name` is a tempPath name whose writer is no longer running, else 0. */
function deadWriter(name: string): number {
  const m = TEMP_NAME.exec(name);
  if (!m) return 0;
  const pid = Number(m[1]);
  if (pid === process.pid || pid > 0x7fffffff) return 0;
  try {
    process.kill(pid, 0);
    return 0; // running
  } catch (e) {
    // EPERM: running, under another user. Anything but ESRCH counts as running.
    return (e as { code?: string }).code === "ESRCH" ? pid : 0;
  }
}

/**
 * Removes the temporary files that saves killed mid-write (SIGKILL, power loss) left in `dir`: regular files
 * named exactly as tempPath names them whose writer pid is no longer running on this machine. A running
 * writer's file (EPERM counts as running) and every other file are left alone. Saves call it for their
 * target's directory; it never throws and returns the paths it removed.
 *
 * The pid is judged on this machine: a directory shared with writers on other hosts (or in other pid
 * namespaces) can hold their live temporary files, which would be taken for stale.
 */
export function sweepStaleTemps(dir: string): string[] {
  const removed: string[] = [];
  try {
    for (const d of readdirSync(dir, { withFileTypes: true })) {
      if (!d.isFile() || deadWriter(d.name) === 0) continue;
      const p = join(dir, d.name);
      try {
        unlinkSync(p);
        removed.push(p);
      } catch {
        /* removed by someone else, or not ours to remove */
      }
    }
  } catch {
    /* an unreadable directory: the save itself will report what is wrong */
  }
  return removed;
}

/** sweepStaleTemps with asynchronous file-system calls. */
export async function sweepStaleTempsAsync(dir: string): Promise<string[]> {
  const removed: string[] = [];
  try {
    for (const d of await readdir(dir, { withFileTypes: true })) {
      if (!d.isFile() || deadWriter(d.name) === 0) continue;
      const p = join(dir, d.name);
      try {
        await unlink(p);
        removed.push(p);
      } catch {
        /* removed by someone else, or not ours to remove */
      }
    }
  } catch {
    /* an unreadable directory: the save itself will report what is wrong */
  }
  return removed;
}

// Directory fsync makes the rename durable; some filesystems refuse it on directories, which is harmless.
const DIR_SYNC_UNSUPPORTED = new Set(["EINVAL", "EISDIR", "EPERM", "EACCES", "ENOTSUP"]);
export function ignoreDirSyncRefusal(e: unknown): void {
  if (!DIR_SYNC_UNSUPPORTED.has((e as { code?: string }).code ?? "")) throw e;
}

/** Writes `tensors` to `path` atomically. */
export function saveSafetensorsSync(path: string, tensors: TensorMap, metadata?: Record<string, string>): void {
  const file = checkPath(path, "saveSafetensorsSync");
  const p = prepare("saveSafetensorsSync", file, tensors, metadata);
  try {
    sweepStaleTemps(dirname(file));
    const tmp = tempPath(file);
    let fd = openSync(tmp, "wx");
    try {
      runSync(writePlan(p), (r) => writeFullySync(fd, r.buf, r.pos));
      fsyncSync(fd);
      const f = fd;
      fd = -1;
      closeSync(f);
      renameSync(tmp, file);
    } catch (e) {
      if (fd >= 0) closeSync(fd);
      try { unlinkSync(tmp); } catch { /* already gone */ }
      throw e;
    }
    try {
      const dir = openSync(dirname(file), "r");
      try { fsyncSync(dir); } finally { closeSync(dir); }
    } catch (e) {
      ignoreDirSyncRefusal(e);
    }
  } finally {
    for (const t of p.copies) t.dispose();
  }
}

/** Writes `tensors` to `path` atomically, with asynchronous writes. */
export async function saveSafetensors(path: string, tensors: TensorMap, metadata?: Record<string, string>): Promise<void> {
  const file = checkPath(path, "saveSafetensors");
  const p = prepare("saveSafetensors", file, tensors, metadata);
  try {
    await sweepStaleTempsAsync(dirname(file));
    const tmp = tempPath(file);
    const h = await open(tmp, "wx");
    let closed = false;
    try {
      await runAsync(writePlan(p), (r) => writeFully(h, r.buf, r.pos));
      await h.sync();
      closed = true;
      await h.close();
      await rename(tmp, file);
    } catch (e) {
      if (!closed) await h.close().catch(() => {});
      await unlink(tmp).catch(() => {});
      throw e;
    }
    try {
      const dir = await open(dirname(file), "r");
      try { await dir.sync(); } finally { await dir.close(); }
    } catch (e) {
      ignoreDirSyncRefusal(e);
    }
  } finally {
    for (const t of p.copies) t.dispose();
  }
}
