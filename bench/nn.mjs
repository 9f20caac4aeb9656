// Training-op kernels (activations, log-softmax, cross-entropy, dropout, the fused AdamW step) on 4M-element
// f32 tensors, against a memcpy moving the same number of bytes in the same run: these ops stream memory,
// so the ratio says how close each gets to bandwidth. Outputs are fresh tensors, as in eager PyTorch, so
// both sides pay first-touch page faults (the baseline copies into a fresh buffer too); AdamW updates in
// place, so its baseline copies into memory that is already mapped.
// Each case: { name, bytes, run(), baseline() } plus optional setup()/teardown().
// Run alone with `node bench/nn.mjs` (after `npm run build:ts`); that also times every kernel path
// (baseline x86-64, AVX2, AVX-512) against each other.
import { fileURLToPath } from "node:url";
import { Tensor } from "../dist/index.js";
import * as F from "../dist/kernels.js";
import { timePerPath } from "./paths.mjs";

const N = 1 << 22;
const ROWS = 512;
const COLS = N / ROWS;
let t;

function setup() {
  if (t) return;
  t = {
    x: Tensor.randn([N], { seed: 1 }),
    dy: Tensor.randn([N], { seed: 2 }),
    logits: Tensor.randn([ROWS, COLS], { seed: 3 }),
    target: Tensor.fromArray(Array.from({ length: ROWS }, (_, i) => (i * 7919) % COLS), [ROWS], "i64"),
    p: Tensor.randn([N], { seed: 4 }),
    g: Tensor.randn([N], { seed: 5 }),
    m: Tensor.zeros([N]),
    v: Tensor.zeros([N]),
    step: 0,
    src: Buffer.alloc(14 * N * 4, 1),
    dst: Buffer.alloc(14 * N * 4),
  };
}

function teardown() {
  if (!t) return;
  for (const v of Object.values(t)) if (v instanceof Tensor) v.dispose();
  t = undefined;
}

// memcpy of half the bytes (each byte is read once and written once), into fresh or mapped memory
const memcpyOf = (bytes, fresh) => () => {
  setup();
  t.src.subarray(0, bytes / 2).copy(fresh ? Buffer.allocUnsafeSlow(bytes / 2) : t.dst);
};

function kase(name, bytes, run, freshOutput = true) {
  return { name, bytes, setup, teardown, run: () => (setup(), run()), baseline: memcpyOf(bytes, freshOutput) };
}

export const cases = [
  ...["gelu", "gelu_tanh", "silu"].flatMap((k) => [
    kase(`${k} forward, 4M f32`, 8 * N, () => F.activation(k, t.x).dispose()),
    kase(`${k} backward, 4M f32`, 12 * N, () => F.activationBackward(k, t.x, t.dy).dispose()),
  ]),
  kase(`logSoftmax ${ROWS}x${COLS} f32`, 8 * N, () => F.logSoftmax(t.logits).dispose()),
  kase(`crossEntropy ${ROWS}x${COLS} f32 (loss + grad)`, 8 * N, () => F.crossEntropy(t.logits, t.target).grad.dispose()),
  kase("dropout p=0.1, 4M f32", 8 * N, () => F.dropout(t.x, 0.1, 1, 1).dispose()),
  // reads p, g, m, v and writes p, m, v
  kase("adamwStep, 4M f32 parameters", 28 * N, () =>
    F.adamwStep([t.p], [t.g], [t.m], [t.v], { step: ++t.step, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 }), false),
];

if (process.argv[1] === fileURLToPath(import.meta.url)) timePerPath(cases, { setup, teardown });
