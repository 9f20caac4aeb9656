// Data-parallel LoRA training on Open MPI (loopback): the MLP stack of bench/step.mjs (2 blocks of
// Linear(1024→2816) → SiLU → Linear(2816→1024), LoRA r=16 on every Linear, f32, AdamW) on a global batch
// of T=512 tokens, as 2 ranks × 1 kernel thread (T/2 each, DistributedDataParallel) and as 1 process × 2
// threads. Reports the step times, their ratio (target >= 0.9x), and the gradient all-reduce's share of
// the 2-rank step: the exchange alone with every rank ready (target <= 5 %), and in the steps the time
// backward waited for it at its end (which also holds the wait for a slower rank) and its time on the MPI
// thread (overlapped with backward). Not a bench/run.mjs family (it needs mpirun):
//   node bench/distributed.mjs [--steps N]      (after `npx tsc -p tsconfig.json` and `npm run build`)
import { spawnSync } from "node:child_process";
import { fileURLToPath, pathToFileURL } from "node:url";

const T = 512, E = 1024, I = 2816, R = 16, BLOCKS = 2;
const args = process.argv.slice(2);
const steps = Number(args[args.indexOf("--steps") + 1]) > 0 ? Number(args[args.indexOf("--steps") + 1]) : 6;

async function worker() {
  const { AdamW, DistributedDataParallel, F, Linear, LoraConfig, SiLU, Sequential, Tensor, distributed, getPeftModel, tidy } = await import("../dist/index.js");
  distributed.init();
  const { rank, worldSize } = distributed;
  const layers = [];
  for (let b = 0; b < BLOCKS; b++) layers.push(new Linear(E, I, { seed: 2 * b }), new SiLU(), new Linear(I, E, { seed: 2 * b + 1 }));
  const targets = layers.map((l, i) => (l instanceof Linear ? String(i) : null)).filter((n) => n !== null);
  const model = getPeftModel(new Sequential(...layers), new LoraConfig({ r: R, loraAlpha: 2 * R, targetModules: targets, initLoraWeights: "gaussian" }));
  model.train();
  const ddp = new DistributedDataParallel(model);
  const opt = new AdamW(ddp.parameters.map(([, p]) => p), { lr: 1e-4 });
  const t = T / worldSize;
  const x = Tensor.randn([t, E], { seed: 7 + rank });
  const zeros = Tensor.zeros([t, E]);
  const times = [];
  for (let s = 0; s < steps + 1; s++) {
    if (s === 1) ddp.resetStats();
    distributed.barrier();
    const t0 = performance.now();
    const loss = tidy(() => F.mseLoss(model.forward(x), zeros));
    loss.backward();
    opt.step();
    opt.zeroGrad();
    loss.dispose();
    if (s > 0) times.push((performance.now() - t0) / 1000);
  }
  const stats = { ...ddp.stats };
  // The exchange alone, every rank ready (after a barrier): what it costs without load imbalance.
  const alone = [];
  for (let s = 0; s < 7; s++) {
    distributed.barrier();
    const t0 = performance.now();
    ddp.synchronize();
    alone.push((performance.now() - t0) / 1000);
  }
  const exchange = alone.sort((a, b) => a - b)[alone.length >> 1];
  const median = times.sort((a, b) => a - b)[times.length >> 1];
  const total = times.reduce((a, b) => a + b, 0);
  if (rank === 0) {
    const gradBytes = ddp.parameters.reduce((n, [, p]) => n + p.numel * 4, 0);
    console.log(`RESULT ${JSON.stringify({ worldSize, median, total, exchange, gradBytes, buckets: ddp.bucketCount, stats })}`);
  }
}

function launch(argv, env) {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: "utf8", env: { ...process.env, ...env }, timeout: 600_000 });
  const line = `${r.stdout}`.split("\n").find((l) => l.startsWith("RESULT "));
  if (r.status !== 0 || !line) {
    console.error(`${argv.join(" ")} failed (exit ${r.status}):\n${r.stdout}\n${r.stderr}`);
    process.exit(1);
  }
  return JSON.parse(line.slice(7));
}

function main() {
  const self = fileURLToPath(import.meta.url);
  const mpiEnv = { OMPI_ALLOW_RUN_AS_ROOT: "1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: "1", OMPI_MCA_btl: "self,vader", OMPI_MCA_btl_vader_single_copy_mechanism: "none" };
  const two = launch(["mpirun", "-n", "2", "--oversubscribe", "--bind-to", "none", process.execPath, self, "--worker", "--steps", String(steps)], { ...mpiEnv, NODE_PEFT_NUM_THREADS: "1" });
  const one = launch([process.execPath, self, "--worker", "--steps", String(steps)], { NODE_PEFT_NUM_THREADS: "2" });
  const s = two.stats;
  const aloneShare = two.exchange / two.median;
  const waitShare = s.waitSeconds / two.total;
  const commShare = s.commSeconds / two.total;
  const ratio = one.median / two.median;
  console.log(`MLP stack ${BLOCKS}x(${E}→${I}→${E}) LoRA r=${R}, f32, global batch T=${T}, ${steps} steps (medians)`);
  console.log(`  gradients exchanged per step: ${(two.gradBytes / 2 ** 20).toFixed(2)} MiB in ${two.buckets} bucket(s), ${s.overlapped} of ${s.allReduces} all-reduces started during backward`);
  console.log(`  1 rank  x 2 threads: ${(one.median * 1000).toFixed(1)} ms/step`);
  console.log(`  2 ranks x 1 thread : ${(two.median * 1000).toFixed(1)} ms/step  -> ${ratio.toFixed(2)}x the 1-rank speed (target >= 0.9x: ${ratio >= 0.9 ? "met" : "missed"})`);
  console.log(`  gradient exchange alone (every rank ready): ${(two.exchange * 1000).toFixed(2)} ms = ${(100 * aloneShare).toFixed(2)} % of the 2-rank step (target <= 5 %: ${aloneShare <= 0.05 ? "met" : "missed"})`);
  console.log(`  in the steps: backward waited ${(100 * waitShare).toFixed(2)} % of the step time for the exchange at its end (this includes waiting for the ` +
    `slower rank); the all-reduces ran ${(100 * commShare).toFixed(2)} % of it on the MPI thread, overlapping backward`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  if (args.includes("--worker")) await worker();
  else main();
}
