// A safetensors writer that takes tensors one at a time (bounded memory: the CLI merge of a model larger
// than RAM). The header is written from the declared names/dtypes/shapes first; each tensor then goes to
// its offset. Atomic like saveSafetensors (the same temporary names, and stale ones of killed writers swept
// first): temp file, fsync, rename; abort() leaves the target untouched.
import { closeSync, fsyncSync, openSync, renameSync, unlinkSync } from "node:fs";
import { dirname } from "node:path";
import { DTYPE_SIZE, Tensor, transientBytes, type DType } from "../tensor.js";
import { peftError } from "../errors.js";
import { checkPath, writeFullySync } from "./file-io.js";
import { fileDType } from "./safetensors-format.js";
import { buildHeader, checkName, ignoreDirSyncRefusal, sweepStaleTemps, tempPath } from "./safetensors-write.js";

export interface TensorSpec {
  name: string;
  dtype: DType;
  shape: readonly number[];
}

export class SafetensorsStreamWriter {
  readonly path: string;
  #tmp: string;
  #fd: number;
  #slots = new Map<string, { offset: number; spec: TensorSpec; written: boolean }>();
  #base: number;

  constructor(path: string, specs: TensorSpec[], metadata?: Record<string, string>) {
    const op = "SafetensorsStreamWriter";
    this.path = checkPath(path, op);
    const byName = new Map<string, TensorSpec>();
    const entries = specs.map((s) => {
      const name = checkName(op, this.path, s.name);
      if (byName.has(name)) throw peftError("ERR_SAFETENSORS", `${this.path}: tensor "${name}" declared twice`);
      byName.set(name, s);
      return { name, dtype: fileDType(s.dtype), shape: s.shape, nbytes: s.shape.reduce((a, b) => a * b, 1) * DTYPE_SIZE[s.dtype] };
    });
    const { header, order } = buildHeader(op, this.path, entries, metadata);
    for (const e of order) this.#slots.set(e.name, { offset: e.offset, spec: byName.get(e.name)!, written: false });
    this.#base = header.length;
    sweepStaleTemps(dirname(this.path));
    this.#tmp = tempPath(this.path);
    this.#fd = openSync(this.#tmp, "wx");
    try {
      writeFullySync(this.#fd, header, 0);
    } catch (e) {
      this.abort();
      throw e;
    }
  }

  /** Writes one declared tensor (same dtype and shape as declared). */
  write(name: string, t: Tensor): void {
    const slot = this.#slots.get(name);
    if (!slot) throw peftError("ERR_SAFETENSORS", `${this.path}: "${name}" was not declared`);
    if (slot.written) throw peftError("ERR_SAFETENSORS", `${this.path}: "${name}" written twice`);
    if (t.dtype !== slot.spec.dtype || t.shape.join() !== slot.spec.shape.join())
      throw peftError("ERR_SAFETENSORS", `${this.path}: "${name}" declared ${slot.spec.dtype} [${slot.spec.shape}] but given ${t.dtype} [${t.shape}]`);
    writeFullySync(this.#fd, transientBytes(t, false), this.#base + slot.offset);
    slot.written = true;
  }

  /** Every declared tensor must be written; then the file replaces `path` atomically. */
  close(): void {
    const missing = [...this.#slots].filter(([, s]) => !s.written).map(([n]) => n);
    if (missing.length) {
      this.abort();
      throw peftError("ERR_SAFETENSORS", `${this.path}: ${missing.length} declared tensors were never written (${missing.slice(0, 5).join(", ")})`);
    }
    fsyncSync(this.#fd);
    closeSync(this.#fd);
    this.#fd = -1;
    renameSync(this.#tmp, this.path);
    try {
      const dir = openSync(dirname(this.path), "r");
      try {
        fsyncSync(dir);
      } finally {
        closeSync(dir);
      }
    } catch (e) {
      ignoreDirSyncRefusal(e);
    }
  }

  /** Drops the temporary file; the target is left as it was. */
  abort(): void {
    if (this.#fd >= 0) {
      closeSync(this.#fd);
      this.#fd = -1;
    }
    try {
      unlinkSync(this.#tmp);
    } catch {
      /* already gone */
    }
  }
}
