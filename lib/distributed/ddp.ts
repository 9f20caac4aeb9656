// Data-parallel training: every rank holds the whole model and trains on its own part of each batch; the
// gradients of the trainable parameters are averaged over the ranks before the optimizer step, so every
// rank takes the same step (with LoRA only the adapters' r·(in + out) per layer travel).
//
// During an autograd backward (loss.backward()) a parameter's gradient is final once no graph node left to
// run can still write it (the nodes that saved it, or have it as an input); a bucket whose gradients are
// all final starts its all-reduce on the MPI thread while backward goes on, and buckets start in one fixed
// order on every rank (a bucket waits for the ones before it), so the ranks' collectives always match.
// The backward returns once every bucket is averaged. A tape-free `model.backward(dy)` has no graph to
// watch: call synchronize() after it.
import { Tensor } from "../tensor.js";
import { Module } from "../nn/index.js";
import { describe, optionsArg, peftError, rangeError, shownValue, typeError } from "../errors.js";
import { observeBackward } from "../autograd/observe.js";
import type { Node } from "../autograd/node.js";
import { allGatherBytes, barrierAsync, group, startBroadcast } from "./collectives.js";
import { makeBuckets, type Bucket } from "./buckets.js";
import { shard, type ShardOptions } from "./shard.js";

export interface DistributedDataParallelOptions {
  /** Most bytes of gradients exchanged in one all-reduce (default 0.25 MiB: LoRA gradients are small, and
   * several buckets let the first exchanges overlap the rest of backward). */
  bucketCapMB?: number;
  /** Start a bucket's exchange during backward once its gradients are final (default true); false: all at its end. */
  overlap?: boolean;
}

/** Time spent on gradient exchange since construction (or resetStats()). */
export interface DistributedStats {
  /** Backward passes whose gradients were averaged. */
  syncs: number;
  /** All-reduces run, and their seconds on the MPI thread (overlapping backward where overlap is on). */
  allReduces: number;
  commSeconds: number;
  /** All-reduces started during backward (overlapping the rest of it) rather than at its end. */
  overlapped: number;
  /** Seconds the JS thread waited for exchanges at the end of backward (what the exchange adds to a step). */
  waitSeconds: number;
}

interface PassState {
  /** Graph node -> indices of the parameters it may still write. */
  writers: Map<Node, number[]>;
  /** Per parameter: nodes left to run that may write it (-1: no node of the graph refers to it). */
  pending: number[];
  next: number;
}

export class DistributedDataParallel implements Disposable {
  readonly module: Module;
  /** The trainable parameters, by name, as every rank has them. */
  readonly parameters: ReadonlyArray<readonly [string, Tensor]>;
  readonly stats: DistributedStats = { syncs: 0, allReduces: 0, commSeconds: 0, overlapped: 0, waitSeconds: 0 };
  readonly #buckets: Bucket[];
  readonly #bucketOf: number[];
  readonly #index = new Map<Tensor, number>();
  readonly #overlap: boolean;
  #stopObserving: (() => void) | null;
  #pass: PassState | null = null;
  #noSync = 0;

  /**
   * Checks that every rank has the same trainable parameters (names, shapes, dtypes), copies rank 0's
   * values to every rank, and from then on averages gradients in every backward.
   */
  constructor(model: Module, opts: DistributedDataParallelOptions = {}) {
    const op = "DistributedDataParallel";
    if (!(model instanceof Module)) throw typeError(`${op}: the model must be a Module (a PeftModel), got ${describe(model)}`);
    const o = optionsArg(opts, op);
    const capMB = o.bucketCapMB ?? 0.25;
    if (typeof capMB !== "number" || !(capMB > 0) || !Number.isFinite(capMB)) throw rangeError(`${op}: bucketCapMB must be a number > 0, got ${shownValue(capMB)}`);
    if (!group.initialized) throw peftError("ERR_STATE", `${op}: call distributed.init() first`);
    this.module = model;
    this.#overlap = o.overlap !== false;
    this.parameters = [...model.namedParameters()].filter(([, p]) => p.requiresGrad);
    for (const [name, p] of this.parameters) {
      if (p.dtype !== "f32" && p.dtype !== "f16" && p.dtype !== "bf16") throw peftError("ERR_DTYPE", `${op}: trainable parameter "${name}" is ${p.dtype}; gradients are averaged for f32, f16 and bf16`);
      if (p.device !== "cpu") throw peftError("ERR_NOT_ON_DEVICE", `${op}: trainable parameter "${name}" is on ${p.device}; the exchange runs on host tensors`);
    }
    checkSameParameters(this.parameters, capMB);
    const copies = this.parameters.map(([, p]) => startBroadcast(p, 0, op));
    for (const c of copies) c.wait();
    // Reverse registration order: the last layers' gradients are final first.
    const order = this.parameters.map(([, p]) => p).reverse();
    this.#buckets = makeBuckets(order, capMB * 1024 * 1024);
    this.parameters.forEach(([, p], i) => this.#index.set(p, i));
    this.#bucketOf = new Array(this.parameters.length);
    this.#buckets.forEach((b, bi) => b.params.forEach((p) => (this.#bucketOf[this.#index.get(p)!] = bi)));
    this.#stopObserving = observeBackward({
      begin: (nodes) => this.#begin(nodes),
      nodeDone: (node) => this.#nodeDone(node),
      end: (error) => this.#end(error),
    });
  }

  get bucketCount(): number {
    return this.#buckets.length;
  }

  /** The wrapped module's forward. */
  forward(...args: unknown[]): unknown {
    return (this.module.forward as (...a: unknown[]) => unknown)(...args);
  }

  /**
   * While the returned scope is open, backward only accumulates gradients locally (gradient accumulation);
   * the first backward after it averages what was accumulated.
   */
  noSync(): Disposable {
    this.#noSync++;
    let open = true;
    return {
      [Symbol.dispose]: () => {
        if (open) this.#noSync--;
        open = false;
      },
    };
  }

  /**
   * Averages the gradients over the ranks now: the buckets not yet started, then waits for all. A no-op
   * after an autograd backward (it did this); needed after a tape-free `module.backward(dy)`.
   */
  synchronize(): void {
    this.#pass = null;
    for (const b of this.#buckets) if (!b.inFlight) b.launch();
    const t0 = performance.now();
    for (const b of this.#buckets) {
      this.stats.commSeconds += b.finish();
      this.stats.allReduces++;
    }
    this.stats.waitSeconds += (performance.now() - t0) / 1000;
    this.stats.syncs++;
  }

  resetStats(): void {
    Object.assign(this.stats, { syncs: 0, allReduces: 0, commSeconds: 0, overlapped: 0, waitSeconds: 0 });
  }

  /** This rank's part of a data set (see distributed.shard). */
  shard<T>(data: readonly T[], opts?: ShardOptions): T[];
  shard<T>(data: Iterable<T>, opts?: ShardOptions): Iterable<T>;
  shard<T>(data: AsyncIterable<T>, opts?: ShardOptions): AsyncIterable<T>;
  shard<T>(data: readonly T[] | Iterable<T> | AsyncIterable<T>, opts?: ShardOptions): T[] | Iterable<T> | AsyncIterable<T> {
    return shard(data as readonly T[], opts);
  }

  /**
   * Rank 0 saves the model (`savePretrained` of a PeftModel); the other ranks write nothing. Every rank
   * returns once the checkpoint is complete (a barrier), so any rank may read it afterwards.
   */
  async savePretrained(dir: string, opts?: { adapterNames?: string[] }): Promise<void> {
    const save = (this.module as Module & { savePretrained?: (d: string, o?: object) => Promise<void> }).savePretrained;
    if (typeof save !== "function") throw peftError("ERR_STATE", "DistributedDataParallel.savePretrained: the model has no savePretrained (wrap a PeftModel)");
    if (group.rank === 0) await save.call(this.module, dir, opts);
    await barrierAsync();
  }

  /** Stops watching backward and frees the buckets' buffers (waiting for any exchange still in flight). */
  dispose(): void {
    this.#stopObserving?.();
    this.#stopObserving = null;
    for (const b of this.#buckets) {
      if (b.inFlight) b.finish();
      b.dispose();
    }
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  #begin(nodes: ReadonlySet<Node>): void {
    if (this.#noSync > 0) return;
    const pending = new Array<number>(this.parameters.length).fill(0);
    const writers = new Map<Node, number[]>();
    for (const node of nodes) {
      const mine: number[] = [];
      const see = (t: Tensor) => {
        const i = this.#index.get(t);
        if (i !== undefined && !mine.includes(i)) mine.push(i);
      };
      for (const t of node.savedSources) see(t);
      for (const e of node.next) if (e && "leaf" in e) see(e.leaf);
      for (const i of mine) pending[i]++;
      if (mine.length) writers.set(node, mine);
    }
    // A backward of some other model: nothing to average (every rank runs the same graphs, so all skip it).
    if (writers.size === 0) {
      this.#pass = null;
      return;
    }
    // A parameter no node refers to may still get a gradient some other way: its bucket waits for the end.
    for (let i = 0; i < pending.length; i++) if (pending[i] === 0) pending[i] = -1;
    for (const b of this.#buckets) b.ready = 0;
    this.#pass = { writers, pending, next: 0 };
  }

  #nodeDone(node: Node): void {
    const pass = this.#pass;
    if (!pass || !this.#overlap) return;
    const mine = pass.writers.get(node);
    if (!mine) return;
    for (const i of mine) if (--pass.pending[i] === 0) this.#buckets[this.#bucketOf[i]].ready++;
    // In bucket order on every rank, so the ranks' all-reduces match one to one.
    while (pass.next < this.#buckets.length && this.#buckets[pass.next].ready === this.#buckets[pass.next].params.length) {
      this.#buckets[pass.next++].launch();
      this.stats.overlapped++;
    }
  }

  #end(error: unknown): void {
    if (!this.#pass) return;
    if (error === undefined) return this.synchronize();
    // A failed backward: finish what was started (the other ranks started it too), average nothing more.
    this.#pass = null;
    for (const b of this.#buckets) if (b.inFlight) b.finish();
  }
}

/** Every rank's trainable parameters (names, shapes, dtypes) and bucket size against rank 0's. */
function checkSameParameters(params: ReadonlyArray<readonly [string, Tensor]>, capMB: number): void {
  const mine = { capMB, params: params.map(([n, p]) => [n, p.shape.join("x"), p.dtype]) };
  const parts = allGatherBytes(new TextEncoder().encode(JSON.stringify(mine)), "DistributedDataParallel");
  const all = parts.map((b) => JSON.parse(new TextDecoder().decode(b)) as typeof mine);
  const ref = all[0];
  const show = (e: string[] | undefined) => (e ? `[${e[1].replace(/x/g, ", ")}] ${e[2]}` : "absent");
  const problems: string[] = [];
  all.forEach((other, r) => {
    if (r === 0) return;
    if (other.capMB !== ref.capMB) problems.push(`rank ${r} has bucketCapMB ${other.capMB}, rank 0 ${ref.capMB}`);
    const a = new Map(ref.params.map((e) => [e[0], e]));
    const b = new Map(other.params.map((e) => [e[0], e]));
    for (const name of new Set([...a.keys(), ...b.keys()])) {
      const x = a.get(name), y = b.get(name);
      if (x && y && x[1] === y[1] && x[2] === y[2]) continue;
      problems.push(`"${name}" is ${show(y)} on rank ${r} but ${show(x)} on rank 0`);
      break;
    }
    if (!problems.length && other.params.map((e) => e[0]).join() !== ref.params.map((e) => e[0]).join())
      problems.push(`rank ${r} registers the trainable parameters in another order than rank 0`);
  });
  if (problems.length)
    throw peftError("ERR_DISTRIBUTED", `DistributedDataParallel: the ranks' trainable parameters differ: ${problems.slice(0, 5).join("; ")}`);
}
