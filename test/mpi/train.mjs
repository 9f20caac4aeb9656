// Run by test/distributed-mpi.test.ts: LoRA on a small MLP stack for a few AdamW steps with a global batch of
// GLOBAL samples, split over the ranks (DistributedDataParallel, distributed.shard) or all in one process
// (no launcher: a world of one). Rank 0 writes the loss and the trainable parameters after every step to
// <out>/trace.json and the adapter through ddp.savePretrained (<out>/rank<r>/: only rank0/ may appear).
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { distributed, DistributedDataParallel, F, Linear, LoraConfig, ReLU, Sequential, Tensor, AdamW, getPeftModel, manualSeed } from "../../dist/index.js";

const out = process.argv[2];
const STEPS = 4, GLOBAL = 12, IN = 16, HIDDEN = 32, OUT = 4;

distributed.init({ timeoutSeconds: 30 });
const { rank, worldSize } = distributed;
manualSeed(0);
const base = new Sequential(new Linear(IN, HIDDEN, { seed: 1 }), new ReLU(), new Linear(HIDDEN, HIDDEN, { seed: 2 }), new ReLU(), new Linear(HIDDEN, OUT, { seed: 3 }));
const peft = getPeftModel(base, new LoraConfig({ r: 4, loraAlpha: 8, targetModules: ["0", "2", "4"], initLoraWeights: "gaussian" }));

// One bucket per parameter (tiny cap), so exchanges start while backward still runs.
const ddp = new DistributedDataParallel(peft, { bucketCapMB: 1e-4 });
const samples = Array.from({ length: STEPS * GLOBAL }, (_, i) => ({
  x: Array.from({ length: IN }, (_, j) => Math.sin(0.3 * i + 0.7 * j)),
  y: Array.from({ length: OUT }, (_, j) => Math.cos(0.5 * i - j)),
}));
const mine = ddp.shard(samples);
const B = GLOBAL / worldSize;
const params = ddp.parameters.map(([, p]) => p);
const opt = new AdamW(params, { lr: 0.01, weightDecay: 0.01 });
const trace = [];
peft.train();
for (let step = 0; step < STEPS; step++) {
  const batch = mine.slice(step * B, step * B + B);
  const x = Tensor.fromArray(batch.flatMap((s) => s.x), [B, IN]);
  const y = Tensor.fromArray(batch.flatMap((s) => s.y), [B, OUT]);
  const loss = F.mseLoss(peft.forward(x), y);
  loss.backward();
  opt.step();
  opt.zeroGrad();
  // The global batch's loss: the mean of the ranks' means (equal local batches).
  distributed.allReduce(loss, { op: "mean" });
  trace.push({ loss: loss.toFloat32Array()[0], params: params.map((p) => Array.from(p.toFloat32Array())) });
  for (const t of [x, y, loss]) t.dispose();
}
await ddp.savePretrained(join(out, `rank${rank}`));
if (rank === 0) {
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, "trace.json"), JSON.stringify({ worldSize, names: ddp.parameters.map(([n]) => n), buckets: ddp.bucketCount, stats: ddp.stats, trace }));
}
console.log(`RESULT ${JSON.stringify({ rank, worldSize, stats: ddp.stats })}`);
