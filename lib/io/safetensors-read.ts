// Reading safetensors files: a lazy handle (openSafetensors) and whole-file loads (sync and async). Tensor data
// goes from the file straight into each tensor's native storage with positioned reads, no staging copy.
// There is no mmap: Node has none built in, and a mapping would tie tensors to the file's lifetime; an
// opt-in mmap would need a native helper.
import { closeSync, fstatSync, openSync } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import { Tensor, describe, transientBytes } from "../tensor.js";
import { typeError } from "../errors.js";
import { checkPath, readFully, readFullySync, runAsync, runSync, type IoPlan } from "./file-io.js";
import { checkHeaderLength, formatError, parseLayout, recordOf, type Layout } from "./safetensors-format.js";

/** A safetensors file open for lazy reads. Tensors it returns stay valid after close(). */
export interface SafetensorsFile extends Disposable {
  readonly path: string;
  /** Tensor names, sorted. */
  keys(): string[];
  metadata(): Record<string, string>;
  /** dtype as the file names it ("BF16", "F8_E4M3", ...). */
  info(name: string): { dtype: string; shape: number[] };
  get(name: string): Tensor;
  /** The raw little-endian bytes of any tensor, whatever its dtype. */
  getBytes(name: string): Buffer;
  close(): void;
}

/** Reads and validates the header: the 8-byte length, then the JSON. Nothing else is allocated. */
export function* headerPlan(fileSize: number, file: string): IoPlan<Layout> {
  const prefix = new Uint8Array(Math.min(8, fileSize));
  yield { buf: prefix, pos: 0 };
  const header = new Uint8Array(checkHeaderLength(prefix, fileSize, file));
  yield { buf: header, pos: 8 };
  return parseLayout(header, fileSize, file);
}

// Tensors have at most this many dimensions (the native limit); the format itself has none.
const MAX_TENSOR_DIMS = 16;

function checkLoadable(layout: Layout, t: number, file: string): void {
  if (layout.tensorDType(t) === null)
    throw formatError(file, `dtype ${layout.dtype(t)} has no Tensor dtype; read its raw bytes with getBytes()`, layout.names[t]);
  const ndim = layout.shape(t).length;
  if (ndim > MAX_TENSOR_DIMS)
    throw formatError(file, `shape has ${ndim} dimensions; tensors have at most ${MAX_TENSOR_DIMS} (read its raw bytes with getBytes())`, layout.names[t]);
}

// Tensors smaller than this are read several at a time: one read of up to GATHER bytes into a staging
// buffer, then copied out. A file of many small tensors then costs a few reads instead of one per tensor
// (for the async loaders each read is a thread-pool round trip, ~50 us). Larger tensors are read straight
// into their storage.
const SMALL = 64 << 10;
const GATHER = 1 << 20;

// A fresh tensor (and, unless it is empty, the writable zero-copy view of its storage that the read fills).
function allocFor(layout: Layout, t: number, file: string): { tensor: Tensor; target: Uint8Array | null } {
  checkLoadable(layout, t, file);
  const n = layout.byteLength(t);
  // Faulting fresh pages in is most of a large read from the page cache; the pool does it on every core first.
  const tensor = Tensor.zeros(layout.shape(t), { dtype: layout.tensorDType(t)!, touch: n >= SMALL });
  return { tensor, target: n === 0 ? null : transientBytes(tensor, true) };
}

/** Reads every tensor of a validated layout, in file order; keyed by name in sorted order. */
export function* tensorsPlan(layout: Layout, file: string): IoPlan<Record<string, Tensor>> {
  for (const t of layout.dataOrder()) checkLoadable(layout, t, file);
  const made: (Tensor | undefined)[] = new Array(layout.count);
  // Small tensors waiting to be read together: their targets, and the file range they cover (contiguous,
  // since the data tiles the file in this order).
  const pending: Uint8Array[] = [];
  let from = 0;
  let to = 0;
  let stage: Buffer | undefined;
  function* flush(): IoPlan<void> {
    if (pending.length === 1) yield { buf: pending[0]!, pos: from };
    else if (pending.length > 1) {
      stage ??= Buffer.allocUnsafe(GATHER);
      yield { buf: stage.subarray(0, to - from), pos: from };
      let at = 0;
      for (const target of pending) {
        target.set(stage.subarray(at, at + target.length));
        at += target.length;
      }
    }
    pending.length = 0;
  }
  try {
    for (const t of layout.dataOrder()) {
      const { tensor, target } = allocFor(layout, t, file);
      made[t] = tensor;
      if (!target) continue;
      const pos = layout.offset(t);
      if (pending.length > 0 && (target.length >= SMALL || pos !== to || to - from + target.length > GATHER)) yield* flush();
      if (target.length >= SMALL) yield { buf: target, pos };
      else {
        if (pending.length === 0) from = to = pos;
        pending.push(target);
        to += target.length;
      }
    }
    yield* flush();
  } catch (err) {
    for (const t of made) t?.dispose();
    throw err;
  }
  return recordOf(layout.sortedNames(), (name) => made[layout.find(name)!]!);
}

/** Opens a file and reads and validates its header; the file is closed again if that fails. */
export function openHeaderSync(file: string): { fd: number; layout: Layout } {
  const fd = openSync(file, "r");
  try {
    const size = fstatSync(fd).size;
    return { fd, layout: runSync(headerPlan(size, file), (r) => readFullySync(fd, r.buf, r.pos, file)) };
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

export async function readHeaderAsync(h: FileHandle, file: string): Promise<Layout> {
  const size = (await h.stat()).size;
  return runAsync(headerPlan(size, file), (r) => readFully(h, r.buf, r.pos, file));
}

export function readTensorsAsync(h: FileHandle, layout: Layout, file: string): Promise<Record<string, Tensor>> {
  return runAsync(tensorsPlan(layout, file), (r) => readFully(h, r.buf, r.pos, file));
}

/** Loads every tensor of a file. */
export function loadSafetensorsSync(path: string): Record<string, Tensor> {
  const file = checkPath(path, "loadSafetensorsSync");
  const { fd, layout } = openHeaderSync(file);
  try {
    return runSync(tensorsPlan(layout, file), (r) => readFullySync(fd, r.buf, r.pos, file));
  } finally {
    closeSync(fd);
  }
}

/** Loads every tensor of a file with asynchronous positioned reads. */
export async function loadSafetensors(path: string): Promise<Record<string, Tensor>> {
  const file = checkPath(path, "loadSafetensors");
  const h = await open(file, "r");
  try {
    return await readTensorsAsync(h, await readHeaderAsync(h, file), file);
  } finally {
    await h.close();
  }
}

/** Opens a file lazily: only the header is read and validated now. */
export function openSafetensors(path: string): SafetensorsFile {
  const file = checkPath(path, "openSafetensors");
  const { fd, layout } = openHeaderSync(file);
  return new LazyFile(file, fd, layout);
}

// A handle dropped without close() would keep its descriptor until the process exits (and enough of them
// end in EMFILE); the descriptor is closed when the handle is collected instead. close() unregisters it, so
// a descriptor number reused after close() is never closed twice.
const dropped = new FinalizationRegistry<number>((fd) => {
  try {
    closeSync(fd);
  } catch {
    /* nothing to report to */
  }
});

class LazyFile implements SafetensorsFile {
  #fd: number | null;

  constructor(readonly path: string, fd: number, private readonly layout: Layout) {
    this.#fd = fd;
    dropped.register(this, fd, this);
  }

  private fd(): number {
    if (this.#fd === null) throw formatError(this.path, "the file has been closed");
    return this.#fd;
  }

  private entry(name: string): number {
    this.fd();
    if (typeof name !== "string") throw typeError(`safetensors ${this.path}: a tensor name must be a string, got ${describe(name)}`);
    const t = this.layout.find(name);
    if (t === undefined) throw formatError(this.path, `no tensor named ${JSON.stringify(name)}; ${available(this.keys(), name)}`);
    return t;
  }

  keys(): string[] {
    this.fd();
    return this.layout.sortedNames().slice();
  }

  metadata(): Record<string, string> {
    this.fd();
    return Object.defineProperties({}, Object.getOwnPropertyDescriptors(this.layout.metadata));
  }

  info(name: string): { dtype: string; shape: number[] } {
    const t = this.entry(name);
    return { dtype: this.layout.dtype(t), shape: this.layout.shape(t) };
  }

  get(name: string): Tensor {
    const t = this.entry(name);
    const { tensor, target } = allocFor(this.layout, t, this.path);
    try {
      if (target) readFullySync(this.fd(), target, this.layout.offset(t), this.path);
    } catch (err) {
      tensor.dispose();
      throw err;
    }
    return tensor;
  }

  getBytes(name: string): Buffer {
    const t = this.entry(name);
    const out = Buffer.allocUnsafe(this.layout.byteLength(t));
    readFullySync(this.fd(), out, this.layout.offset(t), this.path);
    return out;
  }

  close(): void {
    if (this.#fd === null) return;
    const fd = this.#fd;
    this.#fd = null;
    dropped.unregister(this);
    closeSync(fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** "N tensors, e.g. ..." with the names that share the longest prefix with `wanted` first. */
export function available(names: string[], wanted: string): string {
  if (names.length === 0) return "the file holds no tensors";
  const common = (s: string) => {
    let i = 0;
    while (i < s.length && i < wanted.length && s[i] === wanted[i]) i++;
    return i;
  };
  const pick = names.map((n) => [common(n), n] as const).sort((a, b) => b[0] - a[0]).slice(0, 5).map((p) => JSON.stringify(p[1]));
  return `${names.length} available, e.g. ${pick.join(", ")}${names.length > 5 ? ", ..." : ""}`;
}
