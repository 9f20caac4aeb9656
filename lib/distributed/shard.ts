// Each rank's part of a data set. Every rank must get the same number of items (a rank with one batch
// more would wait in a collective the others never start), so arrays are padded by wrapping around, or
// cut, to a multiple of the world size, and iterables (length unknown) drop their last incomplete round.
import { isArray, optionsArg, rangeError, shownValue, typeError, describe } from "../errors.js";
import { group } from "./collectives.js";

export interface ShardOptions {
  /** Arrays: cut to a multiple of the world size instead of padding with items from the start. */
  dropLast?: boolean;
  /** Default: this process's rank and world size (distributed.init()). */
  rank?: number;
  worldSize?: number;
}

function place(opts: ShardOptions): { rank: number; size: number; dropLast: boolean } {
  const o = optionsArg(opts, "distributed.shard");
  const size = o.worldSize ?? group.worldSize;
  const rank = o.rank ?? group.rank;
  if (!Number.isInteger(size) || size < 1) throw rangeError(`distributed.shard: worldSize must be an integer >= 1, got ${shownValue(size)}`);
  if (!Number.isInteger(rank) || rank < 0 || rank >= size) throw rangeError(`distributed.shard: rank must be an integer in [0, ${size}), got ${shownValue(rank)}`);
  return { rank, size, dropLast: o.dropLast === true };
}

/**
 * Items rank, rank + worldSize, rank + 2·worldSize, … (PyTorch's DistributedSampler without shuffling): the
 * ranks' batches at one step together are the consecutive items a single process would take. Arrays
 * give an array of ceil(n / worldSize) items (floor with dropLast); iterables a lazy iterable.
 */
export function shard<T>(data: readonly T[], opts?: ShardOptions): T[];
export function shard<T>(data: Iterable<T>, opts?: ShardOptions): Iterable<T>;
export function shard<T>(data: AsyncIterable<T>, opts?: ShardOptions): AsyncIterable<T>;
export function shard<T>(data: readonly T[] | Iterable<T> | AsyncIterable<T>, opts: ShardOptions = {}): T[] | Iterable<T> | AsyncIterable<T> {
  const { rank, size, dropLast } = place(opts);
  if (isArray(data)) {
    const items = data as readonly T[];
    const n = items.length;
    const total = dropLast ? n - (n % size) : n === 0 ? 0 : Math.ceil(n / size) * size;
    const out: T[] = [];
    for (let i = rank; i < total; i += size) out.push(items[i % n]);
    return out;
  }
  if (data !== null && typeof data === "object" && Symbol.iterator in data) return rounds(data as Iterable<T>, rank, size);
  if (data !== null && typeof data === "object" && Symbol.asyncIterator in data) return roundsAsync(data as AsyncIterable<T>, rank, size);
  throw typeError(`distributed.shard: the data set must be an array or an (async) iterable, got ${describe(data)}`);
}

function* rounds<T>(data: Iterable<T>, rank: number, size: number): Iterable<T> {
  let i = 0, mine: T | undefined;
  for (const item of data) {
    if (i === rank) mine = item;
    if (++i === size) {
      yield mine as T;
      i = 0;
    }
  }
}

async function* roundsAsync<T>(data: AsyncIterable<T>, rank: number, size: number): AsyncIterable<T> {
  let i = 0, mine: T | undefined;
  for await (const item of data) {
    if (i === rank) mine = item;
    if (++i === size) {
      yield mine as T;
      i = 0;
    }
  }
}
