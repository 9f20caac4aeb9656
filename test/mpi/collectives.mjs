// Run by test/distributed-mpi.test.ts under `mpirun -n 2` and `-n 3`: every collective and dtype against a
// float64 reference, every rank with the same bits, the async forms, bad inputs, and DistributedDataParallel
// over models that differ between ranks. Prints one RESULT line per rank.
import { distributed, DistributedDataParallel, Linear, LoraConfig, Sequential, Tensor, getPeftModel } from "../../dist/index.js";

const failures = [];
const check = (cond, what) => {
  if (!cond) failures.push(what);
};

distributed.init({ timeoutSeconds: 20 });
const { rank, worldSize: n } = distributed;

// Rank r's value i (different on every rank, of both signs, no tiny magnitudes).
const value = (r, i) => (Math.sin(i * 0.37 + r * 1.3) + 0.05 * (r + 1)) * (r + 1);
// Unit roundoff of the dtype the result is rounded to (f16/bf16 are reduced in f32 and rounded once).
const UNIT = { f32: 2 ** -24, bf16: 2 ** -8, f16: 2 ** -11 };

function sameOnAllRanks(t, what) {
  const parts = distributed.allGatherBytes(new Uint8Array(t.bytes()));
  for (const p of parts) check(Buffer.compare(Buffer.from(p), Buffer.from(parts[0])) === 0, `${what}: ranks hold different bits`);
}

for (const dtype of ["f32", "bf16", "f16"]) {
  for (const size of [0, 1, 7, 17, 33, 127, 4099]) {
    for (const op of ["sum", "mean", "max"]) {
      const inputs = Array.from({ length: n }, (_, r) => Tensor.fromArray(Array.from({ length: size }, (_, i) => value(r, i)), [size], dtype).toFloat32Array());
      const t = Tensor.fromArray(inputs[rank], [size], dtype);
      distributed.allReduce(t, { op });
      const got = t.toFloat32Array();
      for (let i = 0; i < size; i++) {
        const xs = inputs.map((a) => a[i]);
        let want = op === "max" ? Math.max(...xs) : xs.reduce((a, b) => a + b, 0);
        if (op === "mean") want /= n;
        // The f32 accumulation of n terms (n - 1 roundings of partial sums at most sum|x|), the mean's
        // division, then one rounding to the dtype; max is exact.
        const absSum = xs.reduce((a, b) => a + Math.abs(b), 0) / (op === "mean" ? n : 1);
        const tol = op === "max" ? 0 : (n + 1) * 2 ** -24 * absSum + UNIT[dtype] * Math.abs(want) + (dtype === "f16" ? 2 ** -24 : 0);
        if (!(Math.abs(got[i] - want) <= tol)) {
          check(false, `allReduce ${op} ${dtype} size ${size} [${i}]: ${got[i]} vs ${want} (tol ${tol})`);
          break;
        }
      }
      sameOnAllRanks(t, `allReduce ${op} ${dtype} ${size}`);
      t.dispose();
    }
  }
}

// Broadcast from the last rank, every dtype, bits exact.
for (const dtype of ["f32", "bf16", "f16", "i32", "i64", "u8", "i8"]) {
  for (const size of [1, 17, 127]) {
    const root = n - 1;
    const vals = (r) => Array.from({ length: size }, (_, i) => (dtype === "u8" ? (i * 7 + r) % 250 : dtype === "i8" ? ((i + r) % 100) - 50 : value(r, i) * 10));
    const t = Tensor.fromArray(vals(rank), [size], dtype);
    const want = Tensor.fromArray(vals(root), [size], dtype);
    distributed.broadcast(t, root);
    check(Buffer.compare(Buffer.from(t.bytes()), Buffer.from(want.bytes())) === 0, `broadcast ${dtype} ${size}: not rank ${root}'s bits`);
    t.dispose();
    want.dispose();
  }
}

// The async forms, with the event loop running meanwhile.
{
  const t = Tensor.fromArray([rank + 1, 2 * (rank + 1)], [2], "f32");
  let ticks = 0;
  const timer = setInterval(() => ticks++, 0);
  await distributed.allReduceAsync(t, { op: "sum" });
  await distributed.barrierAsync();
  const b = Tensor.fromArray([rank], [1], "f32");
  await distributed.broadcastAsync(b, 0);
  clearInterval(timer);
  const s = (n * (n + 1)) / 2;
  check(t.toFloat32Array()[0] === s && t.toFloat32Array()[1] === 2 * s, `allReduceAsync: ${t.toFloat32Array()}`);
  check(b.toFloat32Array()[0] === 0, "broadcastAsync");
}
distributed.barrier();

// Gathered bytes of different lengths come back by rank.
{
  const parts = distributed.allGatherBytes(new TextEncoder().encode("r".repeat(rank + 1)));
  check(parts.length === n && parts.every((p, r) => p.length === r + 1), "allGatherBytes lengths");
}

// Bad inputs: thrown before any collective starts (so on every rank alike), named.
const expectThrow = (fn, code, re, what) => {
  try {
    fn();
    check(false, `${what}: did not throw`);
  } catch (e) {
    check(e.code === code && re.test(e.message), `${what}: ${e.code} ${e.message}`);
  }
};
expectThrow(() => distributed.allReduce([1, 2]), "ERR_INVALID_ARG_TYPE", /allReduce: the tensor must be a Tensor/, "allReduce array");
expectThrow(() => distributed.allReduce(Tensor.fromArray([1], [1], "i32")), "ERR_DTYPE", /allReduce: the tensor is i32/, "allReduce i32");
expectThrow(() => distributed.allReduce(Tensor.zeros([2]), { op: "min" }), "ERR_INVALID_ARG_TYPE", /op must be "sum", "mean" or "max", got "min"/, "allReduce min");
expectThrow(() => distributed.broadcast(Tensor.zeros([2]), n), "ERR_OUT_OF_RANGE", new RegExp(`root ${n} is not a rank`), "broadcast root");
const gone = Tensor.zeros([2]);
gone.dispose();
expectThrow(() => distributed.allReduce(gone), "ERR_DISPOSED", /disposed/, "allReduce disposed");

// DistributedDataParallel after a tape-free backward (synchronize()), f32 and bf16 adapters: every rank's
// gradients become the mean of the ranks' (f32 sums of n terms, then the division; bf16 rounded once).
for (const dtype of ["f32", "bf16"]) {
  const model = getPeftModel(new Sequential(new Linear(16, 8, { seed: 1, dtype })), new LoraConfig({ r: 4, targetModules: ["0"], initLoraWeights: "gaussian" }));
  model.to(dtype);
  const ddp = new DistributedDataParallel(model, { bucketCapMB: 1e-4 });
  model.train();
  const x = Tensor.fromArray(Array.from({ length: 3 * 16 }, (_, i) => value(rank, i)), [3, 16], dtype);
  model.forward(x).dispose();
  model.backward(Tensor.fromArray(Array.from({ length: 3 * 8 }, (_, i) => value(rank + 7, i)), [3, 8], dtype));
  const local = ddp.parameters.map(([, p]) => p.grad.toFloat32Array());
  const all = local.map((g) => distributed.allGatherBytes(new Uint8Array(g.buffer)).map((b) => new Float32Array(Uint8Array.from(b).buffer)));
  ddp.synchronize();
  ddp.parameters.forEach(([name, p], k) => {
    const got = p.grad.toFloat32Array();
    for (let i = 0; i < got.length; i++) {
      const xs = all[k].map((g) => g[i]);
      const want = xs.reduce((a, b) => a + b, 0) / n;
      const tol = (n + 1) * 2 ** -24 * (xs.reduce((a, b) => a + Math.abs(b), 0) / n) + UNIT[dtype] * Math.abs(want);
      if (!(Math.abs(got[i] - want) <= tol)) {
        check(false, `DDP synchronize ${dtype} ${name}[${i}]: ${got[i]} vs ${want}`);
        break;
      }
    }
  });
  check(ddp.stats.allReduces === ddp.bucketCount && ddp.bucketCount === 2, `DDP ${dtype}: ${ddp.stats.allReduces} all-reduces in ${ddp.bucketCount} buckets`);
  ddp.dispose();
  model.dispose();
}

// Ranks other than 0 build LoRA r = 8 instead of 4: every rank gets the same error, naming the parameter.
{
  const model = getPeftModel(new Sequential(new Linear(16, 8, { seed: 1 })), new LoraConfig({ r: rank === 0 ? 4 : 8, targetModules: ["0"] }));
  let error = null;
  try {
    new DistributedDataParallel(model);
  } catch (e) {
    error = e;
  }
  check(
    error?.code === "ERR_DISTRIBUTED" && /"[\w.]*lora_A\.default\.weight" is \[8, 16\] f32 on rank 1 but \[4, 16\] f32 on rank 0/.test(error.message),
    `DistributedDataParallel over different models: ${error?.code} ${error?.message}`,
  );
}

distributed.finalize();
expectThrow(() => distributed.barrier(), "ERR_STATE", /finalize\(\) has been called/, "barrier after finalize");
console.log(`RESULT ${JSON.stringify({ rank, worldSize: n, library: distributed.library, failures })}`);
