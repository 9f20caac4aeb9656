// The process group: init() from Open MPI's launcher environment, then collectives on host tensors in
// place. Every MPI call runs on the MPI module's own thread (native/distributed/comm.h): the synchronous
// calls block the JS thread until the collective ends (as the API returns void); the *Async variants
// leave the event loop running. Without a launcher (plain `node train.mjs`) init() makes a world of one
// process where every collective is the identity, so one script runs both ways.
//
// Semantics. allReduce: f32 reduced in f32 by MPI; f16/bf16 widened to f32 (exactly), reduced in f32 and
// rounded once to the tensor's dtype at the end (round to nearest even). mean = the f32 sum divided by the
// world size in f32 (then that single rounding). max is exact for every dtype. Every rank gets the same
// bits. Open MPI does not fix the order of the sum across ranks, so a sum may differ in the last bits from
// a sum of the same values in another order (within n·2^-24 relative for n ranks).
import { Tensor, transientBytes } from "../tensor.js";
import { native } from "../native.js";
import { describe, optionsArg, peftError, rangeError, shownValue, typeError } from "../errors.js";
import { mpiModule, type MpiModule, type CollectiveResult } from "./native.js";

export type ReduceOp = "sum" | "mean" | "max";

export interface InitOptions {
  /**
   * Seconds a collective may wait for the other ranks before the whole job is aborted (a rank dead, stuck
   * or calling other collectives): 0 waits for ever. Default NODE_PEFT_DIST_TIMEOUT or 600.
   */
  timeoutSeconds?: number;
}

interface GroupState {
  initialized: boolean;
  finalized: boolean;
  rank: number;
  worldSize: number;
  /** Started by an MPI launcher (mpirun); false for a world of one without MPI. */
  launched: boolean;
  library: string;
  mpi: MpiModule | null;
}

export const group: GroupState = { initialized: false, finalized: false, rank: 0, worldSize: 1, launched: false, library: "", mpi: null };

const REDUCE_OPS: readonly ReduceOp[] = ["sum", "mean", "max"];

function launcherSize(): number | null {
  const s = process.env.OMPI_COMM_WORLD_SIZE;
  if (s === undefined) return null;
  const n = Number(s);
  if (!Number.isInteger(n) || n < 1) throw peftError("ERR_DISTRIBUTED", `distributed.init: OMPI_COMM_WORLD_SIZE is ${shownValue(s)}, not a process count`);
  return n;
}

function timeoutOf(opts: InitOptions): number {
  const given = opts.timeoutSeconds ?? (process.env.NODE_PEFT_DIST_TIMEOUT !== undefined ? Number(process.env.NODE_PEFT_DIST_TIMEOUT) : 600);
  if (typeof given !== "number" || !Number.isFinite(given) || given < 0)
    throw typeError(`distributed.init: timeoutSeconds must be a number of seconds >= 0, got ${shownValue(given)}`);
  return given;
}

/**
 * Joins the job the launcher started (rank and size from OMPI_COMM_WORLD_*), or makes a world of one when
 * no launcher started this process. Idempotent. A process that exits with a non-zero code before
 * finalize() aborts the whole job (MPI_Abort); one that exits normally finalizes MPI.
 */
export function init(opts: InitOptions = {}): void {
  const o = optionsArg(opts, "distributed.init");
  const timeout = timeoutOf(o);
  if (group.finalized) throw peftError("ERR_STATE", "distributed.init: finalize() has been called; MPI cannot be started again in this process");
  if (group.initialized) {
    group.mpi?.setTimeout(timeout);
    return;
  }
  const size = launcherSize();
  if (size === null) {
    Object.assign(group, { initialized: true, rank: 0, worldSize: 1, launched: false });
    return;
  }
  const { module, reason } = mpiModule();
  if (!module) throw peftError("ERR_DISTRIBUTED", `distributed.init: started by an MPI launcher (OMPI_COMM_WORLD_SIZE=${size}) but ${reason}`);
  let info;
  try {
    info = module.start(timeout);
  } catch (e) {
    throw peftError("ERR_DISTRIBUTED", `distributed.init: ${(e as Error).message}`);
  }
  const envRank = Number(process.env.OMPI_COMM_WORLD_RANK);
  if (info.size !== size || (Number.isInteger(envRank) && info.rank !== envRank))
    throw peftError("ERR_DISTRIBUTED", `distributed.init: MPI says rank ${info.rank} of ${info.size}, the launcher rank ${envRank} of ${size}`);
  Object.assign(group, { initialized: true, rank: info.rank, worldSize: info.size, launched: true, library: info.library, mpi: module });
  process.on("exit", onExit);
}

function onExit(code: number): void {
  const mpi = group.mpi;
  if (!mpi || group.finalized) return;
  if (code === 0) {
    finalize();
    return;
  }
  // The comm thread calls MPI_Abort (the launcher then ends every rank); give it the moment it needs.
  mpi.abort(code, `the process is exiting with code ${code} before distributed.finalize()`);
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5000);
}

/** Leaves the job (MPI_Finalize after every queued collective). Called at a normal exit if not before. */
export function finalize(): void {
  if (!group.initialized || group.finalized) return;
  group.finalized = true;
  try {
    group.mpi?.finalize();
  } catch (e) {
    throw peftError("ERR_DISTRIBUTED", `distributed.finalize: ${(e as Error).message}`);
  }
}

function requireGroup(op: string): void {
  if (group.finalized) throw peftError("ERR_STATE", `${op}: finalize() has been called`);
  if (!group.initialized) throw peftError("ERR_STATE", `${op}: call distributed.init() first`);
}

function hostTensor(t: unknown, op: string): Tensor {
  if (!(t instanceof Tensor)) throw typeError(`${op}: the tensor must be a Tensor, got ${describe(t)}`);
  if (t.disposed) throw peftError("ERR_DISPOSED", `${op}: the tensor has been disposed`);
  if (t.device !== "cpu") throw peftError("ERR_NOT_ON_DEVICE", `${op}: the tensor is on ${t.device}; collectives run on host tensors (use .to("cpu"))`);
  return t;
}

/** A collective in flight over a tensor's storage; wait() once. */
export class InFlight {
  #done = false;
  constructor(
    private readonly ticket: number | null,
    private readonly bytes: Uint8Array | null,
  ) {}

  /** Blocks until it ends; the seconds it took on the comm thread. */
  wait(): number {
    return this.#finish(() => (this.ticket === null ? { seconds: 0 } : group.mpi!.wait(this.ticket)));
  }

  /** As wait(), leaving the event loop running (a libuv pool thread waits). */
  async waitAsync(): Promise<number> {
    if (this.ticket === null) return this.wait();
    let result: CollectiveResult | null = null, error: unknown = null;
    try {
      result = await group.mpi!.waitAsync(this.ticket);
    } catch (e) {
      error = e;
    }
    return this.#finish(() => {
      if (!result) throw error;
      return result;
    });
  }

  #finish(get: () => CollectiveResult): number {
    if (this.#done) throw peftError("ERR_STATE", "distributed: this collective has already been waited for");
    try {
      return get().seconds;
    } catch (e) {
      throw peftError("ERR_DISTRIBUTED", (e as Error).message);
    } finally {
      this.#done = true;
      if (this.bytes) native.releaseBytes(this.bytes);
    }
  }
}

function submit(op: string, kind: "allReduce" | "broadcast" | "barrier", t: Tensor | null, dtype: string, reduce: string, root: number): InFlight {
  if (group.worldSize === 1 && !group.launched) return new InFlight(null, null);
  // An empty tensor moves nothing (every rank has the same shape, so none starts a collective).
  const bytes = t && t.numel > 0 ? transientBytes(t, true) : null;
  if (t && !bytes) return new InFlight(null, null);
  try {
    return new InFlight(group.mpi!.submit(kind, bytes, dtype, reduce, root), bytes);
  } catch (e) {
    if (bytes) native.releaseBytes(bytes);
    throw peftError("ERR_DISTRIBUTED", `${op}: ${(e as Error).message}`);
  }
}

function reduceOpOf(opts: { op?: ReduceOp } | undefined, op: string): ReduceOp {
  const r = optionsArg(opts, op).op ?? "sum";
  if (!REDUCE_OPS.includes(r as ReduceOp)) throw typeError(`${op}: op must be "sum", "mean" or "max", got ${shownValue(r)}`);
  return r;
}

/** Starts an in-place all-reduce of a host f32/f16/bf16 tensor; wait() on the result before using it. */
export function startAllReduce(t: Tensor, opts?: { op?: ReduceOp }, op = "distributed.allReduce"): InFlight {
  const reduce = reduceOpOf(opts, op);
  requireGroup(op);
  const x = hostTensor(t, op);
  if (x.dtype !== "f32" && x.dtype !== "f16" && x.dtype !== "bf16")
    throw peftError("ERR_DTYPE", `${op}: the tensor is ${x.dtype}; all-reduce takes f32, f16 or bf16`);
  return submit(op, "allReduce", x, x.dtype, reduce, 0);
}

function rootOf(root: unknown, op: string): number {
  if (root === undefined) return 0;
  if (typeof root !== "number" || !Number.isInteger(root)) throw typeError(`${op}: root must be an integer rank, got ${shownValue(root)}`);
  if (root < 0 || root >= group.worldSize) throw rangeError(`${op}: root ${root} is not a rank of this world of ${group.worldSize}`);
  return root;
}

/** Starts an in-place broadcast of a host tensor (any dtype) from `root`. */
export function startBroadcast(t: Tensor, root?: number, op = "distributed.broadcast"): InFlight {
  requireGroup(op);
  const x = hostTensor(t, op);
  return submit(op, "broadcast", x, x.dtype, "sum", rootOf(root, op));
}

/** allReduce: every rank's tensor replaced, in place, by the sum, mean or max over the ranks (see the top). */
export function allReduce(t: Tensor, opts?: { op?: ReduceOp }): void {
  startAllReduce(t, opts).wait();
}

/** allReduce without blocking the event loop; the tensor must not be read or written until it settles. */
export function allReduceAsync(t: Tensor, opts?: { op?: ReduceOp }): Promise<void> {
  return startAllReduce(t, opts, "distributed.allReduceAsync").waitAsync().then(() => undefined);
}

/** Every rank's tensor replaced, in place, by the root's (same shape and dtype on every rank). */
export function broadcast(t: Tensor, root?: number): void {
  startBroadcast(t, root).wait();
}

/** broadcast without blocking the event loop; the tensor must not be read or written until it settles. */
export function broadcastAsync(t: Tensor, root?: number): Promise<void> {
  return startBroadcast(t, root, "distributed.broadcastAsync").waitAsync().then(() => undefined);
}

/** Returns once every rank has called it. */
export function barrier(): void {
  requireGroup("distributed.barrier");
  submit("distributed.barrier", "barrier", null, "f32", "sum", 0).wait();
}

export function barrierAsync(): Promise<void> {
  requireGroup("distributed.barrierAsync");
  return submit("distributed.barrierAsync", "barrier", null, "f32", "sum", 0).waitAsync().then(() => undefined);
}

/** Every rank's bytes (of any length), by rank. */
export function allGatherBytes(bytes: Uint8Array, op = "distributed.allGatherBytes"): Uint8Array[] {
  requireGroup(op);
  if (!(bytes instanceof Uint8Array)) throw typeError(`${op}: bytes must be a Uint8Array, got ${describe(bytes)}`);
  if (group.worldSize === 1 && !group.launched) return [bytes.slice()];
  try {
    const t = group.mpi!.submit("allGather", bytes, "u8", "sum", 0);
    return group.mpi!.wait(t).parts!;
  } catch (e) {
    throw peftError("ERR_DISTRIBUTED", `${op}: ${(e as Error).message}`);
  }
}
