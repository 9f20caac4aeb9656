// Thread counts far above this machine's cores (users have 16-128): every partitioned kernel must cover its
// work exactly once and give the single-thread result. GEMMs split only M and N, never K, and the other
// kernels give each element to one thread in a fixed order, so those results are bit-identical across
// counts; the convolution's backward sums per-thread partials (dW over images and pixels, dx through them),
// so its gradients agree to the rounding of those sums.
import { afterAll, describe, expect, it } from "vitest";
import { AdamW, Conv2d, F, Linear, LoraConfig, Sequential, SiLU, Tensor, backend, getPeftModel, manualSeed } from "../lib/index.js";

const start = backend.threads;
afterAll(() => backend.setNumThreads(start));
const COUNTS = [1, 16, 64, 128];

// One training step of a small LoRA model and a convolution's forward/backward, in f32 and bf16 mode;
// returns the numbers it produced: `exact` (outputs, loss, gradients, AdamW-updated adapters) and the
// convolution's gradients `summed` (dx and dW).
function step(dtype: "f32" | "bf16"): { exact: Float32Array[]; summed: Float32Array[] } {
  manualSeed(11);
  const base = new Sequential(new Linear(129, 127), new SiLU(), new Linear(127, 33)).to(dtype);
  const model = getPeftModel(base, new LoraConfig({ r: 7, targetModules: ["0", "2"], initLoraWeights: false }));
  const conv = new Conv2d(5, 7, 3, { padding: 1, seed: 2 });
  const x = Tensor.randn([131, 129], { seed: 3 }).to(dtype);
  const y = model.forward(x);
  const loss = F.crossEntropy(y, Tensor.fromArray(Array.from({ length: 131 }, (_, i) => i % 33), [131], "i64"));
  const img = Tensor.randn([3, 5, 17, 19], { seed: 4 });
  img.requiresGrad = true;
  const c = conv.forward(img);
  const closs = F.mseLoss(F.softmax(c, 1), Tensor.zeros(c.shape));
  loss.backward();
  closs.backward();
  const params = [...model.parameters()].filter((p) => p.requiresGrad);
  const grads = params.map((p) => p.grad!.toFloat32Array());
  new AdamW(params, { lr: 1e-2 }).step();
  const sum = F.sum(Tensor.randn([1 << 17], { seed: 5 }));
  const exact = [y, loss, c, closs, sum, ...params].map((t) => t.toFloat32Array()).concat(grads);
  return { exact, summed: [img.grad!, conv.weight.grad!, conv.bias!.grad!].map((t) => t.toFloat32Array()) };
}

// Reassociating a sum of n f32 terms moves it by at most about n·2⁻²⁴ of the largest partial sum; the largest
// result bounds those partials here (the terms are of mixed sign but bounded by the same scale).
function expectSummed(got: Float32Array, want: Float32Array, terms: number, what: string) {
  let scale = 0;
  for (const v of want) scale = Math.max(scale, Math.abs(v));
  for (let j = 0; j < got.length; j++) expect(Math.abs(got[j] - want[j]), `${what}[${j}]`).toBeLessThanOrEqual(terms * 2 ** -24 * scale);
}

describe("thread counts above the core count", () => {
  for (const dtype of ["f32", "bf16"] as const)
    it(`a LoRA + conv training step is the same with ${COUNTS.join(", ")} threads (${dtype})`, () => {
      backend.setNumThreads(1);
      const want = step(dtype);
      for (const n of COUNTS.slice(1)) {
        backend.setNumThreads(n);
        expect(backend.threads).toBe(n);
        const got = step(dtype);
        got.exact.forEach((g, i) => expect(g, `${n} threads, tensor ${i}`).toEqual(want.exact[i]));
        // dx: 7 output channels x 9 taps per input pixel; dW and db: 3 images x 17 x 19 pixels.
        expectSummed(got.summed[0], want.summed[0], 7 * 9, `${n} threads, conv dx`);
        expectSummed(got.summed[1], want.summed[1], 3 * 17 * 19, `${n} threads, conv dW`);
        expectSummed(got.summed[2], want.summed[2], 3 * 17 * 19, `${n} threads, conv db`);
      }
    });
});
