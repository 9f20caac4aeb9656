// Model loading from a 1 GiB bf16 checkpoint (16 layers of 4096 x 8192, llama-style names): the tree built
// empty and filled straight from the file (buildModelFromCheckpoint[Async]) against loadSafetensors[Sync] of
// the same file in the same run, which allocates and reads the same bytes without building modules. Target:
// at least 0.7x its speed. The page cache is warm for both.
// Run alone with `node bench/loading.mjs` (after `npx tsc -p tsconfig.json`).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Tensor, buildModelFromCheckpoint, buildModelFromCheckpointAsync, loadSafetensors, loadSafetensorsSync, saveSafetensorsSync } from "../dist/index.js";

const LAYERS = 16;
const ROWS = 4096;
const COLS = 8192;
const bytes = LAYERS * ROWS * COLS * 2;

let dir;
let file;

function setup() {
  if (dir) return;
  dir = mkdtempSync(join(tmpdir(), "node-peft-bench-load-"));
  file = join(dir, "model.safetensors");
  const tensors = {};
  for (let i = 0; i < LAYERS; i++) tensors[`model.layers.${i}.mlp.up_proj.weight`] = Tensor.rand([ROWS, COLS], { seed: i, dtype: "bf16" });
  saveSafetensorsSync(file, tensors);
  for (const t of Object.values(tensors)) t.dispose();
  drop(loadSafetensorsSync(file)); // warm the page cache
}

function teardown() {
  if (!dir) return;
  rmSync(dir, { recursive: true, force: true });
  dir = file = undefined;
}

function drop(loaded) {
  for (const t of Object.values(loaded)) t.dispose();
}

const target = { baseline: "baseline", min: 0.7, note: "≥ 70 % of loadSafetensors of the same file" };

export const cases = [
  {
    name: "buildModelFromCheckpointAsync 1 GiB bf16 (page cache warm)",
    dtype: "bf16",
    bytes,
    setup,
    teardown,
    async run() {
      setup();
      (await buildModelFromCheckpointAsync(file)).dispose();
    },
    async baseline() {
      setup();
      drop(await loadSafetensors(file));
    },
    target,
  },
  {
    name: "buildModelFromCheckpoint 1 GiB bf16 (sync, page cache warm)",
    dtype: "bf16",
    bytes,
    setup,
    teardown,
    run() {
      setup();
      buildModelFromCheckpoint(file).dispose();
    },
    baseline() {
      setup();
      drop(loadSafetensorsSync(file));
    },
    target,
  },
];

// Standalone: the median of a few interleaved runs each, as GB/s and as a ratio.
async function main() {
  const time = async (fn) => {
    const t0 = process.hrtime.bigint();
    await fn();
    return Number(process.hrtime.bigint() - t0) / 1e9;
  };
  const median = (xs) => xs.sort((a, b) => a - b)[xs.length >> 1];
  try {
    setup();
    for (const c of cases) {
      const ours = [], base = [];
      for (let i = 0; i < 5; i++) {
        ours.push(await time(c.run));
        base.push(await time(c.baseline));
      }
      const [tr, tb] = [median(ours), median(base)];
      console.log(`${c.name}: ${(bytes / tr / 1e9).toFixed(2)} GB/s; loadSafetensors ${(bytes / tb / 1e9).toFixed(2)} GB/s; ratio ${(tb / tr).toFixed(2)}`);
    }
  } finally {
    teardown();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
