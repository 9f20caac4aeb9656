// safetensors load and save of a 1 GiB checkpoint, against a plain memcpy (Buffer.copy) of the same size
// measured in the same run. Load reads with the page cache warm, so it measures our overhead over the
// kernel's copy; save includes the fsync that makes it durable, so it is bounded by the disk.
// A load must produce new memory, so the baseline copies into a freshly allocated buffer and pays the same
// first-touch page faults; the standalone run also prints memcpy into memory already mapped, for scale.
// Each case: { name, bytes, run(), baseline() } plus optional setup()/teardown(); run and baseline may be async.
// Run alone with `node bench/safetensors.mjs` (after `npm run build:ts`).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Tensor, loadSafetensors, loadSafetensorsSync, saveSafetensors, saveSafetensorsSync } from "../dist/index.js";

const GiB = 1 << 30;
// 64 weight matrices of 16 MiB plus a bias each: the shape of a small model's checkpoint.
const LAYERS = 64;
const ROWS = 4096;
const COLS = GiB / LAYERS / 4 / ROWS;

let dir;
let file;
let tensors;
let src;
let dst;

function setup() {
  if (dir) return;
  dir = mkdtempSync(join(tmpdir(), "node-peft-bench-st-"));
  file = join(dir, "bench.safetensors");
  tensors = {};
  for (let i = 0; i < LAYERS; i++) {
    tensors[`layers.${i}.weight`] = Tensor.rand([ROWS, COLS], { seed: i });
    tensors[`layers.${i}.bias`] = Tensor.zeros([ROWS]);
  }
  saveSafetensorsSync(file, tensors);
  // Warm the page cache and the destination buffer so both sides copy memory that is already mapped.
  for (const t of Object.values(loadSafetensorsSync(file))) t.dispose();
  src = Buffer.alloc(GiB, 1);
  dst = Buffer.alloc(GiB);
}

function teardown() {
  if (!dir) return;
  for (const t of Object.values(tensors)) t.dispose();
  rmSync(dir, { recursive: true, force: true });
  dir = file = tensors = src = dst = undefined;
}

const memcpyFresh = () => {
  setup();
  src.copy(Buffer.allocUnsafeSlow(src.length));
};
const memcpyWarm = () => {
  setup();
  src.copy(dst);
};
const drop = (loaded) => {
  for (const t of Object.values(loaded)) t.dispose();
};
const bytes = LAYERS * (ROWS * COLS + ROWS) * 4;

export const cases = [
  {
    name: "safetensors load 1 GiB (async, page cache warm)",
    bytes,
    setup,
    teardown,
    async run() {
      setup();
      drop(await loadSafetensors(file));
    },
    baseline: memcpyFresh,
    target: { baseline: "baseline", min: 0.7, note: "≥ 70 % of a memcpy of the same bytes into fresh memory" },
  },
  {
    name: "safetensors load 1 GiB (sync, page cache warm)",
    bytes,
    setup,
    teardown,
    run() {
      setup();
      drop(loadSafetensorsSync(file));
    },
    baseline: memcpyFresh,
    target: { baseline: "baseline", min: 0.7, note: "≥ 70 % of a memcpy of the same bytes into fresh memory" },
  },
  {
    name: "safetensors save 1 GiB (async, atomic, fsync)",
    bytes,
    setup,
    teardown,
    async run() {
      setup();
      await saveSafetensors(join(dir, "out.safetensors"), tensors);
    },
    baseline: memcpyFresh,
  },
];

// Standalone: best of a few runs each, as GB/s and as a fraction of memcpy.
async function main() {
  const best = async (fn, reps = 5) => {
    let t = Infinity;
    for (let i = 0; i < reps; i++) {
      const t0 = process.hrtime.bigint();
      await fn();
      t = Math.min(t, Number(process.hrtime.bigint() - t0) / 1e9);
    }
    return t;
  };
  try {
    setup();
    const warm = await best(memcpyWarm);
    console.log(`memcpy into mapped memory: ${(bytes / warm / 1e9).toFixed(2)} GB/s`);
    for (const c of cases) {
      const tb = await best(c.baseline);
      const tr = await best(c.run);
      const gbs = (s) => (c.bytes / s / 1e9).toFixed(2);
      console.log(`${c.name}: ${gbs(tr)} GB/s; memcpy into fresh memory ${gbs(tb)} GB/s (ratio ${(tb / tr).toFixed(2)}); vs mapped memory ${(warm / tr).toFixed(2)}`);
    }
  } finally {
    teardown();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
