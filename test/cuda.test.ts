// The CUDA kernels against the CPU backend. Without a GPU they run on the emulated device (the same .cu
// sources on the CPU through native/cuda/emu); on a machine with a GPU, NODE_PEFT_CUDA unset runs them
// on the hardware.
import { afterAll, describe, expect, it } from "vitest";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { root } from "./helpers/child.js";
import { EPS, expectClose, values } from "./helpers/nn-reference.js";

// Set before the addon decides what the cuda device is (at its first use).
if (process.env.NODE_PEFT_CUDA === undefined && !process.env.NODE_PEFT_CUDA_REAL) process.env.NODE_PEFT_CUDA = "emu";
const { Tensor, backend, linear, PeftError, F } = await import("../lib/index.js");
import { errorCode } from "./helpers/errors.js";

const code = errorCode;

const ORDERS = ["forward", "reverse", "random"] as const;
afterAll(() => {
  if (backend.cuda.emulated) backend.setCudaEmulationOrder("forward");
});

describe("the cuda device", () => {
  it("is available (emulated without a GPU) and says so", () => {
    const c = backend.cuda;
    expect(c.available).toBe(true);
    expect(c.devices.length).toBe(1);
    if (c.emulated) expect(c.reason).toMatch(/emulated/);
  });

  it("round-trips every dtype through to('cuda') / to('cpu')", () => {
    for (const dtype of ["f32", "f16", "bf16", "i8", "u8", "i32", "i64"] as const) {
      const h = Tensor.fromArray([0, 1, -2, 3, 100, -7, 5], [7], dtype);
      const d = h.to("cuda");
      expect(d.device).toBe("cuda");
      expect(d.to("cpu").toArray()).toEqual(h.toArray());
    }
    expect(Tensor.zeros([0, 3], { device: "cuda" }).to("cpu").numel).toBe(0);
  });

  it("randn on cuda draws the CPU's numbers", () => {
    const a = Tensor.randn([33], { seed: 4, device: "cuda" }).to("cpu").toArray();
    expect(a).toEqual(Tensor.randn([33], { seed: 4 }).toArray());
  });

  for (const order of ORDERS) {
    it(`converts f32/f16/bf16 bit-exactly like the CPU (${order} order)`, () => {
      if (backend.cuda.emulated) backend.setCudaEmulationOrder(order);
      const src = Tensor.fromArray(values(127, 3).map((v) => v * 1000), [127]);
      for (const from of ["f32", "f16", "bf16"] as const)
        for (const to of ["f32", "f16", "bf16"] as const) {
          const cpu = src.to(from).to(to);
          const dev = src.to(from).to("cuda").to(to).to("cpu");
          expect(Array.from(dev.bytes()), `${from} -> ${to}`).toEqual(Array.from(cpu.bytes()));
        }
    });
  }

  for (const order of ORDERS)
    for (const [M, K, N] of [[1, 1, 1], [7, 17, 33], [33, 127, 7], [0, 16, 16], [17, 33, 127]] as const) {
      it(`tensor-core linear matches the CPU for f16 and bf16 at M=${M} K=${K} N=${N} (${order})`, () => {
        if (backend.cuda.emulated) backend.setCudaEmulationOrder(order);
        for (const dt of ["f16", "bf16"] as const) {
          const x = Tensor.fromArray(values(M * K, 1), [M, K], dt), w = Tensor.fromArray(values(N * K, 2), [N, K], dt);
          const b = Tensor.fromArray(values(N, 3), [N], "f32");
          const want = linear(x.to("f32"), w.to("f32"), b).toFloat64Array(); // exact inputs, f32 accumulation
          const absx = x.toFloat64Array().map(Math.abs), absw = w.toFloat64Array().map(Math.abs);
          const y = linear(x.to("cuda"), w.to("cuda"), b.to("cuda"));
          expect(y.dtype).toBe(dt);
          expect(y.shape).toEqual([M, N]);
          const got = y.to("cpu").toFloat64Array();
          expectClose(got, want, (i) => {
            const m = Math.floor(i / N), n = i % N;
            let s = Math.abs(b.toFloat64Array()[n]);
            for (let k = 0; k < K; k++) s += absx[m * K + k] * absw[n * K + k];
            return 2 * (K + 2) * EPS.f32 * s + EPS[dt] * Math.abs(want[i]) + 1e-30;
          }, `${dt} y`);
        }
      });
    }

  it("ops without a cuda kernel are ERR_NOT_ON_DEVICE; mixed devices are ERR_DEVICE", () => {
    const xd = Tensor.zeros([2, 3], { dtype: "f32", device: "cuda" });
    expect(code(() => F.exp(xd))).toBe("ERR_NOT_ON_DEVICE");
    expect(code(() => linear(Tensor.zeros([2, 3], { dtype: "f16" }), Tensor.zeros([4, 3], { dtype: "f16", device: "cuda" })))).toBe("ERR_DEVICE");
    expect(() => xd.view()).toThrow(PeftError);
    expect(code(() => xd.to("i32"))).toBe("ERR_NOT_ON_DEVICE");
  });

  // The suite builds and runs its own binaries, not the addon: the sanitizer pass (which reruns this file
  // against the addon's ASan build) would only repeat it.
  it.runIf(backend.cuda.emulated && process.env.NODE_PEFT_BUILD !== "asan")("the emulator's own suite: every kernel in three orders, a missing barrier caught, faults reported", () => {
    const r = spawnSync("bash", [join(root, "scripts", "cuda-emu-test.sh")], { cwd: root, encoding: "utf8", timeout: 300_000 });
    if (r.status !== 0) console.log(r.stdout.slice(-4000), r.stderr.slice(-4000));
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/missing __syncthreads/i);
  }, 300_000); // it compiles the emulator, its self-test and three check programs first: over two minutes on a loaded 2-core machine
});
