// Positioned whole-buffer reads and writes, sync and async, and drivers that run an I/O "plan" (a generator
// yielding requests) either way. Readers and writers are written once as plans; only these drivers differ.
import { read, readSync, writeSync } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { typeError } from "../errors.js";
import { formatError } from "./safetensors-format.js";

export function checkPath(path: unknown, op: string): string {
  if (typeof path !== "string" || path === "") throw typeError(`${op}: path must be a non-empty string`);
  return path;
}

/** Fill (read) or drain (write) all of `buf` at file offset `pos`. */
export interface IoRequest {
  buf: Uint8Array;
  pos: number;
}

export type IoPlan<T> = Generator<IoRequest, T, void>;

// One syscall moves at most ~2 GiB on Linux; larger requests go in pieces.
const CHUNK = 1 << 30;

function shortRead(file: string, pos: number): Error {
  return formatError(file, `file ended early at byte ${pos} (was it changed or truncated while open?)`);
}

export function readFullySync(fd: number, buf: Uint8Array, pos: number, file: string): void {
  for (let done = 0; done < buf.length; ) {
    const n = readSync(fd, buf, done, Math.min(CHUNK, buf.length - done), pos + done);
    if (n === 0) throw shortRead(file, pos + done);
    done += n;
  }
}

/** What a positioned async read needs: a FileHandle, or a plain descriptor wrapped by fdReader. */
export interface PositionalReader {
  read(buf: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
}

/** Async positioned reads on a descriptor opened synchronously (the header was read with it already). */
export function fdReader(fd: number): PositionalReader {
  return {
    read: (buf, offset, length, position) =>
      new Promise((ok, fail) => read(fd, buf, offset, length, position, (e, bytesRead) => (e ? fail(e) : ok({ bytesRead })))),
  };
}

async function readRange(h: PositionalReader, buf: Uint8Array, pos: number, from: number, to: number, file: string): Promise<void> {
  for (let done = from; done < to; ) {
    const { bytesRead } = await h.read(buf, done, Math.min(CHUNK, to - done), pos + done);
    if (bytesRead === 0) throw shortRead(file, pos + done);
    done += bytesRead;
  }
}

// Filling fresh memory costs a page fault per page, which dominates a read from the page cache; faults on
// separate threads proceed in parallel, so large buffers are read in pieces by several pool threads at once.
const PIECE = 4 << 20;
const READERS = 4;

export async function readFully(h: PositionalReader, buf: Uint8Array, pos: number, file: string): Promise<void> {
  if (buf.length <= PIECE) return readRange(h, buf, pos, 0, buf.length, file);
  let next = 0;
  const reader = async () => {
    while (next < buf.length) {
      const from = next;
      next = Math.min(buf.length, from + PIECE);
      await readRange(h, buf, pos, from, next, file);
    }
  };
  // Settle every piece before reporting a failure, so no read is still writing when the caller cleans up.
  const results = await Promise.allSettled(Array.from({ length: READERS }, reader));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failed) throw failed.reason;
}

export function writeFullySync(fd: number, buf: Uint8Array, pos: number): void {
  for (let done = 0; done < buf.length; ) done += writeSync(fd, buf, done, Math.min(CHUNK, buf.length - done), pos + done);
}

export async function writeFully(h: FileHandle, buf: Uint8Array, pos: number): Promise<void> {
  for (let done = 0; done < buf.length; )
    done += (await h.write(buf, done, Math.min(CHUNK, buf.length - done), pos + done)).bytesWritten;
}

/** Runs a plan with `io` doing each request; an I/O error is thrown into the plan so it can clean up. */
export function runSync<T>(plan: IoPlan<T>, io: (r: IoRequest) => void): T {
  for (let step = plan.next(); ; ) {
    if (step.done) return step.value;
    try {
      io(step.value);
    } catch (e) {
      step = plan.throw(e);
      continue;
    }
    step = plan.next();
  }
}

export async function runAsync<T>(plan: IoPlan<T>, io: (r: IoRequest) => Promise<void>): Promise<T> {
  for (let step = plan.next(); ; ) {
    if (step.done) return step.value;
    try {
      await io(step.value);
    } catch (e) {
      step = plan.throw(e);
      continue;
    }
    step = plan.next();
  }
}
