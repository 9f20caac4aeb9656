// Reading state dicts that torch.save wrote (`adapter_model.bin`, `pytorch_model.bin`): a zip archive of
// stored entries holding `<name>/data.pkl` (the pickled dict, read by the restricted unpickler) and one
// `<name>/data/<key>` entry per storage. Tensor data is read from the archive straight into each tensor;
// a non-contiguous view is gathered from its storage's bytes. Every tensor is described and checked
// before the first one is allocated.
import { closeSync, openSync, readSync } from "node:fs";
import { peftError } from "../errors.js";
import { DTYPE_SIZE, Tensor, transientBytes } from "../tensor.js";
import { checkPath, readFullySync } from "./file-io.js";
import { unpickleStateDict, type TensorRef } from "./torch-pickle.js";
import { readZipDirectory, type ZipEntry } from "./zip-stored.js";

// The pickle of a state dict is a few bytes a tensor; a larger one is not a state dict.
const MAX_PICKLE = 256 << 20;

interface Planned {
  name: string;
  ref: TensorRef;
  entry: ZipEntry;
  contiguous: boolean;
}

function checkpointError(file: string, msg: string) {
  return peftError("ERR_CHECKPOINT", `${file}: ${msg}`);
}

/** The archive's one top-level folder holding data.pkl. */
function archivePrefix(entries: Map<string, ZipEntry>, file: string): string {
  const pkl = [...entries.keys()].filter((n) => /^[^/]+\/data\.pkl$/.test(n));
  if (pkl.length !== 1) throw checkpointError(file, pkl.length ? "the archive holds more than one data.pkl" : "the archive holds no <name>/data.pkl (not a torch.save file)");
  return pkl[0]!.slice(0, -"data.pkl".length);
}

function readEntry(fd: number, entry: ZipEntry, file: string): Uint8Array {
  const buf = new Uint8Array(entry.size);
  readFullySync(fd, buf, entry.offset, file);
  return buf;
}

function isContiguous(shape: number[], stride: number[]): boolean {
  let want = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] !== 1 && stride[i] !== want) return false;
    want *= shape[i]!;
  }
  return true;
}

/** Checks one tensor against its storage entry; returns what reading it needs. */
function plan(name: string, value: unknown, entries: Map<string, ZipEntry>, prefix: string, file: string): Planned {
  const ref = value as TensorRef;
  if (typeof name !== "string") throw checkpointError(file, "a state-dict key is not a string");
  if (ref === null || typeof ref !== "object" || ref.kind !== "tensor") throw checkpointError(file, `${JSON.stringify(name)} is not a tensor`);
  const s = ref.storage;
  if (s.dtype === null) throw peftError("ERR_DTYPE", `${file}: ${JSON.stringify(name)} is a torch ${s.torchType}, which has no tensor dtype`);
  const entry = entries.get(`${prefix}data/${s.key}`);
  if (!entry) throw checkpointError(file, `${JSON.stringify(name)}: storage ${JSON.stringify(s.key)} is not in the archive`);
  if (entry.size !== s.numel * s.elementSize)
    throw checkpointError(file, `${JSON.stringify(name)}: storage ${JSON.stringify(s.key)} holds ${entry.size} bytes, not ${s.numel} × ${s.elementSize}`);
  const numel = ref.shape.reduce((a, b) => a * b, 1);
  // The furthest element the view reaches must lie inside the storage.
  const last = ref.offset + ref.shape.reduce((a, d, i) => a + (d > 0 ? (d - 1) * ref.stride[i]! : 0), 0);
  if (numel > 0 && last >= s.numel) throw checkpointError(file, `${JSON.stringify(name)}: its view reaches past its storage (${s.numel} elements)`);
  return { name, ref, entry, contiguous: isContiguous(ref.shape, ref.stride) };
}

/** Copies a strided view out of its storage's bytes into `out` (row-major). */
function gather(storage: Uint8Array, ref: TensorRef, out: Uint8Array, es: number): void {
  const { shape, stride } = ref;
  const idx = new Array<number>(shape.length).fill(0);
  const n = shape.reduce((a, b) => a * b, 1);
  for (let k = 0; k < n; k++) {
    let at = ref.offset;
    for (let d = 0; d < shape.length; d++) at += idx[d]! * stride[d]!;
    out.set(storage.subarray(at * es, at * es + es), k * es);
    for (let d = shape.length - 1; d >= 0 && ++idx[d]! === shape[d]; d--) idx[d] = 0;
  }
}

/** Reads the directory and the pickle, and checks every tensor against its storage; allocates no tensor. */
function describeOpen(fd: number, file: string): Planned[] {
  const magic = new Uint8Array(4);
  readSync(fd, magic, 0, 4, 0);
  if (magic[0] === 0x80) throw peftError("ERR_UNSUPPORTED", `${file}: a legacy (before torch 1.6) torch.save file; re-save it with a current torch or as safetensors`);
  if (magic[0] !== 0x50 || magic[1] !== 0x4b) throw checkpointError(file, "not a torch.save zip archive");
  const entries = readZipDirectory(fd, file);
  const prefix = archivePrefix(entries, file);
  const order = entries.get(`${prefix}byteorder`);
  if (order && new TextDecoder().decode(readEntry(fd, { ...order, size: Math.min(order.size, 16) }, file)) !== "little")
    throw peftError("ERR_UNSUPPORTED", `${file}: written on a big-endian machine`);
  const pkl = entries.get(`${prefix}data.pkl`)!;
  if (pkl.size > MAX_PICKLE) throw checkpointError(file, `data.pkl is ${pkl.size} bytes; at most ${MAX_PICKLE} are accepted`);
  const dict = unpickleStateDict(readEntry(fd, pkl, file), file);
  return [...dict].map(([k, v]) => plan(k as string, v, entries, prefix, file));
}

function withFile<T>(path: string, op: string, fn: (fd: number, file: string) => T): T {
  const file = checkPath(path, op);
  const fd = openSync(file, "r");
  try {
    return fn(fd, file);
  } finally {
    closeSync(fd);
  }
}

/** Names, dtypes and shapes of a torch.save state dict, read without loading any tensor. */
export function describeTorchCheckpoint(path: string): Map<string, { dtype: string; shape: number[] }> {
  return withFile(path, "describeTorchCheckpoint", (fd, file) =>
    new Map(describeOpen(fd, file).map((p) => [p.name, { dtype: p.ref.storage.dtype!, shape: p.ref.shape }])),
  );
}

/**
 * Loads a state dict saved by torch.save (the zip format of torch >= 1.6) without executing anything from it:
 * only tensors (float32/16, bfloat16, int64/32, int8, uint8, bool as u8) in a dict or OrderedDict are accepted;
 * anything else is an ERR_CHECKPOINT naming the file.
 */
export function loadTorchCheckpoint(path: string): Record<string, Tensor> {
  return withFile(path, "loadTorchCheckpoint", (fd, file) => {
    const plans = describeOpen(fd, file);
    const made: Tensor[] = [];
    const storageBytes = new Map<string, Uint8Array>();
    const out: Record<string, Tensor> = {};
    try {
      for (const p of plans) {
        const { storage } = p.ref;
        const t = Tensor.zeros(p.ref.shape, { dtype: storage.dtype! });
        made.push(t);
        const bytes = transientBytes(t, true);
        const es = DTYPE_SIZE[t.dtype];
        if (bytes.length > 0 && p.contiguous) readFullySync(fd, bytes, p.entry.offset + p.ref.offset * es, file);
        else if (bytes.length > 0) {
          let all = storageBytes.get(storage.key);
          if (!all) storageBytes.set(storage.key, (all = readEntry(fd, p.entry, file)));
          gather(all, p.ref, bytes, es);
        }
        // defineProperty: a key such as "__proto__" is a plain entry, not the prototype.
        Object.defineProperty(out, p.name, { value: t, enumerable: true, writable: true, configurable: true });
      }
    } catch (e) {
      for (const t of made) t.dispose();
      throw e;
    }
    return out;
  });
}
