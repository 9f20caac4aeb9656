// Run by test/distributed-mpi.test.ts under `mpirun -n 2`: rank 1 fails one way (argv[2]) while rank 0 waits
// in an all-reduce; the job must end with a non-zero exit and a message naming the rank.
//   kill:  rank 1 is killed (SIGKILL): Open MPI's launcher sees a rank exit without finalize and ends the job.
//   throw: rank 1 throws an uncaught error: its exit hook aborts the job (MPI_Abort).
//   stuck: rank 1 stays alive but never joins: rank 0's collective times out (timeoutSeconds) and aborts.
import { distributed, Tensor } from "../../dist/index.js";

const mode = process.argv[2];
distributed.init({ timeoutSeconds: mode === "stuck" ? 1 : 60 });
distributed.barrier();
if (distributed.rank === 1) {
  if (mode === "kill") process.kill(process.pid, "SIGKILL");
  if (mode === "throw") throw new Error("rank 1 failed on purpose");
  if (mode === "stuck") Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60_000);
}
const t = Tensor.fromArray([1, 2, 3], [3], "f32");
for (let i = 0; i < 1000; i++) distributed.allReduce(t);
console.log("rank 0 finished: the failure went unnoticed");
