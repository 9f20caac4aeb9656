import { afterEach, describe, expect, it } from "vitest";
import { Worker } from "node:worker_threads";
import { Tensor, backend, linear } from "../lib/index.js";
import { nativePath } from "../lib/native.js";

// Worker bodies use the addon directly (they run plain JS, not the TypeScript sources).
const workerBody = `
const { parentPort, workerData } = require("node:worker_threads");
const native = require(workerData.path);
const K = 96, N = 80, M = 64;
const x = native.fromArray(Float64Array.from({ length: M * K }, (_, i) => ((i * 7) % 13) - 6), [M, K], "f32", "cpu");
const w = native.fromArray(Float64Array.from({ length: N * K }, (_, i) => ((i * 5) % 11) - 5), [N, K], "f32", "cpu");
let last;
for (let r = 0; r < workerData.reps; r++) {
  const y = native.linear(x, w, null);
  if (last) { y.dispose(); continue; }
  last = y;
}
parentPort.postMessage(Array.from(last.toFloat32Array()));
`;

function runWorker(reps: number): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const w = new Worker(workerBody, { eval: true, workerData: { path: nativePath, reps } });
    w.once("message", resolve);
    w.once("error", reject);
  });
}

describe("thread pool", () => {
  const threads = backend.threads;
  afterEach(() => backend.setNumThreads(threads));

  it("two worker threads use the addon at once and get the main thread's answer", async () => {
    const K = 96, N = 80, M = 64;
    const x = Tensor.fromArray(Float64Array.from({ length: M * K }, (_, i) => ((i * 7) % 13) - 6), [M, K]);
    const w = Tensor.fromArray(Float64Array.from({ length: N * K }, (_, i) => ((i * 5) % 11) - 5), [N, K]);
    const want = Array.from(linear(x, w).toFloat32Array());
    const [a, b] = await Promise.all([runWorker(200), runWorker(200)]);
    expect(a).toEqual(want);
    expect(b).toEqual(want);
  });

  it("survives a worker terminated in the middle of native work", async () => {
    const body = `
      const { parentPort, workerData } = require("node:worker_threads");
      const native = require(workerData.path);
      const x = native.zeros([512, 512], "f32", "cpu"), w = native.zeros([512, 512], "f32", "cpu");
      parentPort.postMessage("started");
      for (;;) native.linear(x, w, null).dispose();
    `;
    for (let i = 0; i < 3; i++) {
      const w = new Worker(body, { eval: true, workerData: { path: nativePath } });
      await new Promise((r) => w.once("message", r));
      await new Promise((r) => setTimeout(r, 20));
      await w.terminate();
    }
    // The pool still works for this thread.
    const y = linear(Tensor.fromArray([1, 2], [1, 2]), Tensor.fromArray([3, 4], [1, 2]));
    expect(y.toArray()).toEqual([11]);
  });

  it("setNumThreads changes the pool; results do not depend on it", () => {
    const x = Tensor.randn([33, 47], { seed: 1 }), w = Tensor.randn([29, 47], { seed: 2 });
    backend.setNumThreads(1);
    expect(backend.threads).toBe(1);
    const a = linear(x, w).toFloat32Array();
    backend.setNumThreads(2);
    expect(backend.threads).toBe(2);
    const b = linear(x, w).toFloat32Array();
    expect(Array.from(b)).toEqual(Array.from(a));
    expect(() => backend.setNumThreads(0)).toThrow(RangeError);
    expect(() => backend.setNumThreads(1.5)).toThrow(RangeError);
    expect(() => backend.setNumThreads("2" as never)).toThrow(TypeError);
  });
});
