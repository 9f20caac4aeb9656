// Sharded checkpoints: a `model.safetensors.index.json` whose weight_map names, for each tensor, the shard
// file holding it. The map is checked against the shards' own headers before any tensor is read: every
// listed shard exists, every key is in the shard the map names, and no tensor is in two shards.
import { readFileSync, statSync } from "node:fs";
import { open, readFile, stat, type FileHandle } from "node:fs/promises";
import { dirname, isAbsolute, relative, resolve } from "node:path";
import { describe, type Tensor } from "../tensor.js";
import { shownValue, typeError } from "../errors.js";
import { checkPath } from "./file-io.js";
import { JsonSyntaxError, parseJsonStrict, type JsonNode } from "./json-strict.js";
import { MAX_HEADER_SIZE, compareUtf8, define, formatError, recordOf, sortNames, type Layout } from "./safetensors-format.js";
import { available, openSafetensors, readHeaderAsync, readTensorsAsync, type SafetensorsFile } from "./safetensors-read.js";

/** A sharded checkpoint open for lazy reads; tensors it returns stay valid after close(). */
export interface ShardedSafetensors extends Disposable {
  readonly path: string;
  /** Tensor names across all shards, sorted. */
  keys(): string[];
  /** The index's "metadata" object (e.g. total_size), as plain JSON values. */
  metadata(): Record<string, unknown>;
  /** Shard file paths, sorted. */
  shards(): string[];
  /** The path of the shard holding `name`. */
  shardOf(name: string): string;
  info(name: string): { dtype: string; shape: number[] };
  get(name: string): Tensor;
  getBytes(name: string): Buffer;
  close(): void;
}

export interface ShardIndex {
  metadata: Record<string, unknown>;
  /** Tensor name -> shard path. */
  weightMap: Map<string, string>;
  /** Shard paths, sorted. */
  shards: string[];
}

// An index is a small JSON file: one as large as the biggest header we accept is refused before it is read.
function checkIndexSize(size: number, indexPath: string): void {
  if (size > MAX_HEADER_SIZE) throw formatError(indexPath, `the index is ${size} bytes; at most ${MAX_HEADER_SIZE} are accepted`);
}

export function readIndexSync(file: string): Uint8Array {
  checkIndexSize(statSync(file).size, file);
  return readFileSync(file);
}

async function readIndex(file: string): Promise<Uint8Array> {
  checkIndexSize((await stat(file)).size, file);
  return readFile(file);
}

export function parseIndex(bytes: Uint8Array, indexPath: string): ShardIndex {
  let root: JsonNode;
  try {
    root = parseJsonStrict(bytes);
  } catch (e) {
    if (!(e instanceof JsonSyntaxError)) throw e;
    throw formatError(indexPath, `invalid index JSON: ${e.message}`);
  }
  if (root.kind !== "object") throw formatError(indexPath, "index is not a JSON object");
  const wm = root.entries.get("weight_map");
  if (!wm || wm.kind !== "object") throw formatError(indexPath, "index has no weight_map object");
  const meta = root.entries.get("metadata");
  if (meta && meta.kind !== "object" && meta.kind !== "null") throw formatError(indexPath, "index metadata must be an object");

  const dir = dirname(indexPath);
  const weightMap = new Map<string, string>();
  for (const [name, v] of wm.entries) {
    if (v.kind !== "string" || v.value === "") throw formatError(indexPath, `weight_map entry must be a shard file name`, name);
    const shard = resolve(dir, v.value);
    const rel = relative(dir, shard);
    if (rel.startsWith("..") || isAbsolute(rel) || isAbsolute(v.value))
      throw formatError(indexPath, `shard ${JSON.stringify(v.value)} is outside the index's directory`, name);
    weightMap.set(name, shard);
  }
  const metadata = meta?.kind === "object" ? (plain(meta) as Record<string, unknown>) : {};
  return { metadata, weightMap, shards: [...new Set(weightMap.values())].sort(compareUtf8) };
}

function plain(n: JsonNode): unknown {
  switch (n.kind) {
    case "object": {
      const o: Record<string, unknown> = {};
      for (const [k, v] of n.entries) define(o, k, plain(v));
      return o;
    }
    case "array": return n.items.map(plain);
    case "null": return null;
    default: return n.value;
  }
}

/** Checks the weight_map against what each shard's header holds. */
export function crossCheck(index: ShardIndex, shardKeys: Map<string, Iterable<string>>, indexPath: string): void {
  const seen = new Map<string, string>();
  for (const [shard, keys] of shardKeys) {
    for (const k of keys) {
      const other = seen.get(k);
      if (other !== undefined) throw formatError(indexPath, `is in two shards, ${other} and ${shard}`, k);
      seen.set(k, shard);
      if (!index.weightMap.has(k)) throw formatError(indexPath, `is in shard ${shard} but not in the weight_map`, k);
    }
  }
  for (const [k, shard] of index.weightMap) {
    const actual = seen.get(k);
    if (actual !== shard)
      throw formatError(indexPath, `the weight_map puts it in ${shard}, which does not hold it${actual ? ` (it is in ${actual})` : ""}`, k);
  }
}

export function missingShard(e: unknown, index: ShardIndex, shard: string, indexPath: string): unknown {
  if ((e as { code?: string }).code !== "ENOENT") return e;
  const first = [...index.weightMap].find(([, s]) => s === shard)![0];
  return formatError(indexPath, `shard ${shard} does not exist (the weight_map lists it for ${JSON.stringify(first)} and others)`);
}

/** Opens every shard of a sharded checkpoint (headers only) and checks the index against them. */
export function openSharded(indexPath: string): ShardedSafetensors {
  const file = checkPath(indexPath, "openSharded");
  const index = parseIndex(readIndexSync(file), file);
  const files = new Map<string, SafetensorsFile>();
  try {
    for (const shard of index.shards) {
      try {
        files.set(shard, openSafetensors(shard));
      } catch (e) {
        throw missingShard(e, index, shard, file);
      }
    }
    crossCheck(index, new Map([...files].map(([s, f]) => [s, f.keys()])), file);
  } catch (e) {
    for (const f of files.values()) f.close();
    throw e;
  }
  return new ShardedFile(file, index, files);
}

/** Loads every tensor of a sharded checkpoint, after checking the index against all shard headers. */
export async function loadShardedSafetensors(indexPath: string): Promise<Record<string, Tensor>> {
  const file = checkPath(indexPath, "loadShardedSafetensors");
  const index = parseIndex(await readIndex(file), file);
  const opened: FileHandle[] = [];
  const shards = new Map<string, { h: FileHandle; layout: Layout }>();
  const loaded = new Map<string, Tensor>();
  try {
    for (const shard of index.shards) {
      const h = await open(shard, "r").catch((e: unknown) => { throw missingShard(e, index, shard, file); });
      opened.push(h);
      shards.set(shard, { h, layout: await readHeaderAsync(h, shard) });
    }
    crossCheck(index, new Map([...shards].map(([s, { layout }]) => [s, layout.names])), file);
    for (const [shard, { h, layout }] of shards)
      for (const [k, t] of Object.entries(await readTensorsAsync(h, layout, shard))) loaded.set(k, t);
  } catch (e) {
    for (const t of loaded.values()) t.dispose();
    throw e;
  } finally {
    await Promise.all(opened.map((h) => h.close()));
  }
  return recordOf(sortNames([...loaded.keys()]), (k) => loaded.get(k)!);
}

class ShardedFile implements ShardedSafetensors {
  #closed = false;
  #names: readonly string[] | undefined;
  constructor(readonly path: string, private readonly index: ShardIndex, private readonly files: Map<string, SafetensorsFile>) {}

  private shard(name: string): SafetensorsFile {
    if (this.#closed) throw formatError(this.path, "the checkpoint has been closed");
    if (typeof name !== "string") throw typeError(`sharded checkpoint ${this.path}: a tensor name must be a string, got ${describe(name)}`);
    const s = this.index.weightMap.get(name);
    if (s === undefined) throw formatError(this.path, `no tensor named ${shownValue(name)}; ${available(this.keys(), name)}`);
    return this.files.get(s)!;
  }

  keys(): string[] {
    if (this.#closed) throw formatError(this.path, "the checkpoint has been closed");
    return (this.#names ??= sortNames([...this.index.weightMap.keys()])).slice();
  }

  metadata(): Record<string, unknown> {
    this.keys();
    return structuredClone(this.index.metadata);
  }

  shards(): string[] {
    this.keys();
    return [...this.index.shards];
  }

  shardOf(name: string): string {
    return this.shard(name).path;
  }

  info(name: string): { dtype: string; shape: number[] } {
    return this.shard(name).info(name);
  }

  get(name: string): Tensor {
    return this.shard(name).get(name);
  }

  getBytes(name: string): Buffer {
    return this.shard(name).getBytes(name);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const f of this.files.values()) f.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
