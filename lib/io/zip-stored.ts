// The central directory of a zip archive whose entries are stored (not compressed), as torch.save writes
// them: each entry's data is a byte range of the file, read in place. Zip64 records are followed (torch
// writes them for large checkpoints). Anything else (compression, encryption, multi-disk archives, ranges
// outside the file) is an error naming the archive; nothing here allocates more than the directory.
import { fstatSync } from "node:fs";
import { peftError, type PeftError } from "../errors.js";
import { readFullySync } from "./file-io.js";

export interface ZipEntry {
  /** Absolute file offset of the entry's data. */
  offset: number;
  size: number;
}

const EOCD = 0x06054b50;
const ZIP64_LOCATOR = 0x07064b50;
const ZIP64_EOCD = 0x06064b50;
const CENTRAL = 0x02014b50;
const LOCAL = 0x04034b50;
const MAX_COMMENT = 0xffff;
const MAX_ENTRIES = 1_000_000;
// The central directory of a checkpoint is small (a few hundred bytes an entry); this bounds what a crafted
// archive can make us allocate before anything is checked.
const MAX_DIRECTORY = 256 << 20;

function zipError(file: string, msg: string): PeftError {
  return peftError("ERR_CHECKPOINT", `${file}: not a readable torch zip archive: ${msg}`);
}

function read(fd: number, file: string, pos: number, n: number, size: number): DataView {
  if (pos < 0 || n < 0 || pos + n > size) throw zipError(file, `a record at byte ${pos} (${n} bytes) runs past the end of the file (${size} bytes)`);
  const buf = new Uint8Array(n);
  readFullySync(fd, buf, pos, file);
  return new DataView(buf.buffer);
}

function u64(v: DataView, at: number, file: string): number {
  const n = v.getBigUint64(at, true);
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw zipError(file, `a 64-bit size or offset (${n}) is too large`);
  return Number(n);
}

/** Finds the end-of-central-directory record (it sits before an optional comment of up to 64 KiB). */
function findEnd(fd: number, file: string, size: number): { at: number; v: DataView } {
  const span = Math.min(size, 22 + MAX_COMMENT);
  const tail = read(fd, file, size - span, span, size);
  for (let i = span - 22; i >= 0; i--) {
    if (tail.getUint32(i, true) === EOCD) return { at: size - span + i, v: new DataView(tail.buffer, i, 22) };
  }
  throw zipError(file, "no end-of-central-directory record");
}

/** Entry name -> data range, for every entry of the archive open on `fd`. */
export function readZipDirectory(fd: number, file: string): Map<string, ZipEntry> {
  const size = fstatSync(fd).size;
  const { at, v } = findEnd(fd, file, size);
  if (v.getUint16(4, true) !== 0 || v.getUint16(6, true) !== 0) throw zipError(file, "multi-disk archives are not supported");
  let count = v.getUint16(10, true);
  let dirSize = v.getUint32(12, true);
  let dirOffset = v.getUint32(16, true);
  if (count === 0xffff || dirSize === 0xffffffff || dirOffset === 0xffffffff) {
    const loc = read(fd, file, at - 20, 20, size);
    if (loc.getUint32(0, true) !== ZIP64_LOCATOR) throw zipError(file, "zip64 fields without a zip64 locator");
    const z = read(fd, file, u64(loc, 8, file), 56, size);
    if (z.getUint32(0, true) !== ZIP64_EOCD) throw zipError(file, "the zip64 locator points at no zip64 record");
    count = u64(z, 32, file);
    dirSize = u64(z, 40, file);
    dirOffset = u64(z, 48, file);
  }
  if (count > MAX_ENTRIES) throw zipError(file, `${count} entries; at most ${MAX_ENTRIES} are accepted`);
  if (dirSize > MAX_DIRECTORY) throw zipError(file, `a central directory of ${dirSize} bytes; at most ${MAX_DIRECTORY} are accepted`);
  const dir = read(fd, file, dirOffset, dirSize, size);
  const entries = new Map<string, ZipEntry>();
  const names = new TextDecoder("utf-8", { fatal: true });
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + 46 > dirSize || dir.getUint32(p, true) !== CENTRAL) throw zipError(file, `central directory entry ${i} is malformed`);
    const flags = dir.getUint16(p + 8, true);
    const method = dir.getUint16(p + 10, true);
    let compSize = dir.getUint32(p + 20, true);
    let rawSize = dir.getUint32(p + 24, true);
    const nameLen = dir.getUint16(p + 28, true);
    const extraLen = dir.getUint16(p + 30, true);
    const commentLen = dir.getUint16(p + 32, true);
    let local = dir.getUint32(p + 42, true);
    const end = p + 46 + nameLen + extraLen + commentLen;
    if (end > dirSize) throw zipError(file, `central directory entry ${i} runs past the directory`);
    let name: string;
    try {
      name = names.decode(new Uint8Array(dir.buffer, p + 46, nameLen));
    } catch {
      throw zipError(file, `entry ${i} has a name that is not UTF-8`);
    }
    // Zip64 extended information: the 64-bit values, in this order, for the fields that overflowed.
    for (let e = p + 46 + nameLen; e + 4 <= p + 46 + nameLen + extraLen; ) {
      const id = dir.getUint16(e, true), len = dir.getUint16(e + 2, true);
      if (id === 1) {
        let q = e + 4;
        const next = () => {
          if (q + 8 > e + 4 + len) throw zipError(file, `entry ${JSON.stringify(name)} has a short zip64 field`);
          const n = u64(dir, q, file);
          q += 8;
          return n;
        };
        if (rawSize === 0xffffffff) rawSize = next();
        if (compSize === 0xffffffff) compSize = next();
        if (local === 0xffffffff) local = next();
      }
      e += 4 + len;
    }
    if (flags & 1) throw zipError(file, `entry ${JSON.stringify(name)} is encrypted`);
    if (method !== 0) throw zipError(file, `entry ${JSON.stringify(name)} is compressed (method ${method}); torch writes stored entries only`);
    if (compSize !== rawSize) throw zipError(file, `entry ${JSON.stringify(name)} is stored but its sizes differ (${compSize} vs ${rawSize})`);
    if (entries.has(name)) throw zipError(file, `entry ${JSON.stringify(name)} appears twice`);
    const lh = read(fd, file, local, 30, size);
    if (lh.getUint32(0, true) !== LOCAL) throw zipError(file, `entry ${JSON.stringify(name)} has no local header at byte ${local}`);
    const offset = local + 30 + lh.getUint16(26, true) + lh.getUint16(28, true);
    if (offset + rawSize > size) throw zipError(file, `entry ${JSON.stringify(name)} runs past the end of the file`);
    entries.set(name, { offset, size: rawSize });
    p = end;
  }
  return entries;
}
