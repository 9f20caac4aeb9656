// Where every tensor of a checkpoint lies: one safetensors file, a sharded checkpoint's index, or a model
// directory holding either. Only headers (and the index) are read and checked here; the descriptors stay
// open so the loader reads tensor data straight into parameters, synchronously or not.
import { closeSync, statSync } from "node:fs";
import { join } from "node:path";
import { peftError } from "../errors.js";
import type { DType } from "../tensor.js";
import { checkPath } from "./file-io.js";
import { sortNames, type Layout } from "./safetensors-format.js";
import { openHeaderSync } from "./safetensors-read.js";
import { crossCheck, missingShard, parseIndex, readIndexSync } from "./sharded.js";

/** One tensor's place: the file (descriptor and path) and its entry in that file's layout. */
export interface TensorPlace {
  readonly fd: number;
  readonly file: string;
  readonly layout: Layout;
  readonly t: number;
}

export class CheckpointLayout implements Disposable {
  #fds: number[];
  #places: Map<string, TensorPlace>;
  #names: string[] | undefined;

  constructor(readonly path: string, fds: number[], places: Map<string, TensorPlace>) {
    this.#fds = fds;
    this.#places = places;
  }

  /** Tensor names, sorted. */
  keys(): string[] {
    return (this.#names ??= sortNames([...this.#places.keys()])).slice();
  }

  place(name: string): TensorPlace | undefined {
    return this.#places.get(name);
  }

  /** dtype as the file names it, the Tensor dtype it loads as (null: none), shape and size in bytes. */
  info(name: string): { dtype: string; tensorDType: DType | null; shape: number[]; byteLength: number } {
    const p = this.#places.get(name);
    if (!p) throw peftError("ERR_CHECKPOINT", `${this.path}: no tensor named ${JSON.stringify(name)}`);
    return { dtype: p.layout.dtype(p.t), tensorDType: p.layout.tensorDType(p.t), shape: p.layout.shape(p.t), byteLength: p.layout.byteLength(p.t) };
  }

  close(): void {
    const fds = this.#fds;
    this.#fds = [];
    for (const fd of fds) closeSync(fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

const INDEX_NAME = "model.safetensors.index.json";
const SINGLE_NAME = "model.safetensors";

// A model directory as transformers saves one: the sharded index when there is one, else the single file.
function resolveCheckpoint(path: string, op: string): string {
  let isDir = false;
  try {
    isDir = statSync(path).isDirectory();
  } catch {
    return path; // opening it reports what is wrong, with the system's own message
  }
  if (!isDir) return path;
  for (const name of [INDEX_NAME, SINGLE_NAME]) {
    try {
      if (statSync(join(path, name)).isFile()) return join(path, name);
    } catch {
      /* try the next name */
    }
  }
  throw peftError("ERR_CHECKPOINT", `${op}: ${path} is a directory with neither ${INDEX_NAME} nor ${SINGLE_NAME}`);
}

/**
 * Opens a checkpoint for loading: `path` is a safetensors file, a `.json` shard index or a directory holding
 * either. Every header (and the index against the shards) is validated before this returns.
 */
export function openCheckpointLayout(path: string, op: string): CheckpointLayout {
  const file = resolveCheckpoint(checkPath(path, op), op);
  const fds: number[] = [];
  const places = new Map<string, TensorPlace>();
  const add = (shard: string) => {
    const { fd, layout } = openHeaderSync(shard);
    fds.push(fd);
    for (let t = 0; t < layout.count; t++) places.set(layout.names[t]!, { fd, file: shard, layout, t });
    return layout;
  };
  try {
    if (!file.endsWith(".json")) add(file);
    else {
      const index = parseIndex(readIndexSync(file), file);
      const keys = new Map<string, Iterable<string>>();
      for (const shard of index.shards) {
        try {
          keys.set(shard, add(shard).names);
        } catch (e) {
          throw missingShard(e, index, shard, file);
        }
      }
      crossCheck(index, keys, file);
    }
  } catch (e) {
    for (const fd of fds) closeSync(fd);
    throw e;
  }
  return new CheckpointLayout(file, fds, places);
}
