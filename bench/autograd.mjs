// Autograd against the tape-free path: a demo-MLP LoRA training step (forward, loss, backward) recorded as a
// graph of module nodes vs the same step through Module.backward, and the cost of the graph itself per node.
import { F, LoraConfig, Module, Sequential, Linear, ReLU, LogSoftmax, Tensor, getPeftModel, nllLoss, noGrad, tidy } from "../dist/index.js";

class MLP extends Module {
  constructor() {
    super();
    this.seq = this.registerModule("seq", new Sequential(new Linear(20, 2000, { seed: 1 }), new ReLU(), new Linear(2000, 2000, { seed: 2 }), new ReLU(), new Linear(2000, 2, { seed: 3 }), new LogSoftmax()));
  }
  forward(x) {
    return this.seq.forward(x);
  }
  backward(dy, o) {
    return this.seq.backward(dy, o);
  }
}

const BATCH = 256;
let s;
function setup() {
  if (s) return;
  const model = getPeftModel(new MLP(), new LoraConfig({ r: 8, targetModules: ["seq.0", "seq.2"], modulesToSave: ["seq.4"] }));
  model.train();
  s = {
    model,
    params: [...model.parameters()].filter((p) => p.requiresGrad),
    x: Tensor.randn([BATCH, 20], { seed: 4 }),
    y: Tensor.fromArray(Array.from({ length: BATCH }, (_, i) => i % 2), [BATCH], "i64"),
    leaf: Object.assign(Tensor.randn([1], { seed: 5 }), { requiresGrad: true }),
  };
}
function teardown() {
  if (!s) return;
  s.model.dispose();
  s.x.dispose();
  s.y.dispose();
  s.leaf.dispose();
  s = undefined;
}
const zeroGrad = () => {
  for (const p of s.params) {
    p.grad?.dispose();
    p.grad = null;
  }
};

// FLOPs of one step: forward 2·B·(20·2000 + 2000·2000 + 2000·2) and a backward of about twice that (the first
// layer needs no dx), LoRA's rank-8 terms being a rounding error.
const FLOPS = 3 * 2 * BATCH * (20 * 2000 + 2000 * 2000 + 2000 * 2);

function autogradStep() {
  const loss = tidy(() => F.nllLoss(s.model.forward(s.x), s.y));
  loss.backward();
  loss.dispose();
  zeroGrad();
}

function tapeFreeStep() {
  const out = s.model.forward(s.x);
  const { grad } = nllLoss(out, s.y);
  s.model.backward(grad, { inputGrad: false })?.dispose();
  out.dispose();
  grad.dispose();
  zeroGrad();
}

const NODES = 200;
function chain(record) {
  const body = () =>
    tidy(() => {
      let h = s.leaf;
      for (let i = 0; i < NODES; i++) h = F.mul(h, 1.0001);
      if (record) h.backward();
      return null;
    });
  return record ? body() : noGrad(body);
}

export const cases = [
  {
    name: `demo MLP + LoRA r=8 training step (B=${BATCH}) through autograd`,
    flops: FLOPS,
    setup,
    teardown,
    run: () => (setup(), autogradStep()),
    baselines: [{ name: "tape-free Module.backward", run: () => (setup(), tapeFreeStep()) }],
    target: { baseline: "tape-free Module.backward", min: 1 / 1.03, note: "autograd step <= 1.03x the tape-free step" },
  },
  {
    name: `graph overhead: ${NODES} scalar ops recorded and run backward`,
    setup,
    teardown,
    unit: "µs/node",
    measure: () => {
      setup();
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < 20; i++) chain(true);
      const t1 = process.hrtime.bigint();
      for (let i = 0; i < 20; i++) chain(false);
      const t2 = process.hrtime.bigint();
      // per node: (record + backward) minus the same ops without a graph
      return Number(t1 - t0 - (t2 - t1)) / 1e3 / 20 / NODES;
    },
  },
];
