// The functional ops' native kernels (elementwise, reductions, the strided copy) on 16M-element tensors,
// against a memcpy moving the same number of bytes in the same run: these ops stream memory, so the ratio
// says how close each gets to bandwidth (target: 0.8x for the elementwise ops and the reductions). Outputs
// are fresh tensors, as in eager PyTorch; freed blocks of the same size come back from the allocator's
// cache already mapped, so the baseline copies into mapped memory too. A reduction writes almost nothing:
// its baseline copies half its bytes (the same traffic). The machine's own read / read-modify-write
// bandwidth on the pool's threads is reported beside it.
// Each case: { name, bytes, run(), baseline() } plus optional setup()/teardown().
// Run alone with `node bench/functional.mjs` (after `npm run build:ts`); that also times every kernel path
// (baseline x86-64, AVX2, AVX-512) against each other.
import { fileURLToPath } from "node:url";
import { Tensor } from "../dist/index.js";
import { native } from "../dist/native.js";
import { ceilingRate } from "./ceilings.mjs";
import { timePerPath } from "./paths.mjs";

const R = 4096, C = 4096, N = R * C;
let t;

function setup() {
  if (t) return;
  t = {
    a: Tensor.randn([R, C], { seed: 1 }),
    b: Tensor.randn([R, C], { seed: 2 }),
    row: Tensor.randn([C], { seed: 3 }),
    ah: Tensor.randn([R, C], { seed: 4, dtype: "bf16" }),
    src: Buffer.alloc(6 * N, 1),
    dst: Buffer.alloc(6 * N),
  };
  t.ha = Tensor.handle(t.a);
  t.hb = Tensor.handle(t.b);
  t.hrow = Tensor.handle(t.row);
  t.hah = Tensor.handle(t.ah);
}

function teardown() {
  if (!t) return;
  for (const v of Object.values(t)) if (v instanceof Tensor) v.dispose();
  t = undefined;
}

// memcpy of half the bytes (each byte is read once and written once) into mapped memory
const memcpyOf = (bytes) => () => {
  setup();
  t.src.subarray(0, bytes / 2).copy(t.dst);
};

const target = { baseline: "baseline", min: 0.8 };
// reads: a reduction (compared with the read bandwidth); otherwise reads and writes (read-modify-write).
function kase(name, bytes, run, { withTarget = true, reads = false, dtype = "f32" } = {}) {
  return {
    name, shape: `${R}x${C}`, dtype, bytes, setup, teardown,
    run: () => (setup(), run()), baseline: memcpyOf(bytes),
    baselines: [reads ? { name: "DRAM read bandwidth", rate: () => ceilingRate("dram-read") } : { name: "DRAM RMW bandwidth", rate: () => ceilingRate("dram-rmw") }],
    ...(withTarget ? { target } : {}),
  };
}

const ew = (op, ins, out = "f32", s = []) => native.elementwise(op, ins, out, s).dispose();
const red = (op, x, dims) => {
  const r = native.reduce(op, x, dims, false, 1, "f32");
  r.values.dispose();
  r.indices?.dispose();
};

const reads = { reads: true };
export const cases = [
  kase("add", 12 * N, () => ew("add", [t.ha, t.hb])),
  kase("mul", 12 * N, () => ew("mul", [t.ha, t.hb])),
  kase("exp", 8 * N, () => ew("exp", [t.ha])),
  kase("add, broadcast row [C]", 8 * N, () => ew("add", [t.ha, t.hrow])),
  kase("exp bf16 -> bf16", 4 * N, () => ew("exp", [t.hah], "bf16"), { dtype: "bf16" }),
  kase("sum over the last dim", 4 * N, () => red("sum", t.ha, [1]), reads),
  kase("sum over the first dim", 4 * N, () => red("sum", t.ha, [0]), reads),
  kase("sum over everything", 4 * N, () => red("sum", t.ha, []), reads),
  kase("max over the last dim (with indices)", 4 * N, () => red("max", t.ha, [1]), reads),
  kase("transpose copy", 8 * N, () => native.copyStrided(t.ha, [C, R], [1, C], 0, null, [], 0).dispose(), { withTarget: false }),
];

if (process.argv[1] === fileURLToPath(import.meta.url)) timePerPath(cases, { setup, teardown });
