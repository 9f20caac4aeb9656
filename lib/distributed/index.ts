// Data-parallel training across processes and machines on Open MPI: `distributed.init()` under
// `mpirun -n 4 --hostfile hosts node train.mjs`, collectives on host tensors, DistributedDataParallel.
// The MPI module is optional and loaded on first use (lib/distributed/native.ts).
import { mpiModule } from "./native.js";
import {
  allGatherBytes,
  allReduce,
  allReduceAsync,
  barrier,
  barrierAsync,
  broadcast,
  broadcastAsync,
  finalize,
  group,
  init,
  type InitOptions,
  type ReduceOp,
} from "./collectives.js";
import { DistributedDataParallel, type DistributedDataParallelOptions, type DistributedStats } from "./ddp.js";
import { shard, type ShardOptions } from "./shard.js";

export { DistributedDataParallel, type DistributedDataParallelOptions, type DistributedStats, type InitOptions, type ReduceOp, type ShardOptions };

/** The process group and its collectives (see collectives.ts for the exact semantics). */
export const distributed = {
  /** Whether the MPI module loads here (it is looked for on first read). */
  get available(): boolean {
    return mpiModule().module !== null;
  },
  /** Why `available` is false ("" when it is true). */
  get unavailableReason(): string {
    return mpiModule().reason;
  },
  /** This process's rank (0 before init()). */
  get rank(): number {
    return group.rank;
  },
  /** The number of processes (1 before init(), or without a launcher). */
  get worldSize(): number {
    return group.worldSize;
  },
  get initialized(): boolean {
    return group.initialized && !group.finalized;
  },
  /** Whether an MPI launcher started this process (false: a world of one without MPI). */
  get launched(): boolean {
    return group.launched;
  },
  /** The MPI library's version line ("" without MPI). */
  get library(): string {
    return group.library;
  },
  init,
  finalize,
  allReduce,
  allReduceAsync,
  broadcast,
  broadcastAsync,
  barrier,
  barrierAsync,
  allGatherBytes,
  shard,
  /** The class (a getter, so the object lists no callable that needs `new`). */
  get DistributedDataParallel(): typeof DistributedDataParallel {
    return DistributedDataParallel;
  },
};
