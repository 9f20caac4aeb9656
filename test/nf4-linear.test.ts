// The 4-bit linear (quant4Linear / quant4LinearGradInput) on every ISA path against float64 references over the
// dequantised weight, and Linear4bit: construction, compute dtypes, one autograd node with a dx-only backward,
// transformers' state-dict keys and round trips, quantising while loading, bad input.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { Linear, Linear4bit, Module, PeftError, Tensor, backend, loadModelWeights, saveSafetensorsSync } from "../lib/index.js";
import { quant4Linear, quant4LinearGradInput, quant4Quantize, type Quant4Operand } from "../lib/ops.js";
import { UNIT, expectClose, expectError, forEachIsa, uniform } from "./helpers/numeric.js";
import { dequantize, gradInputRef, linearRef, type QT } from "./helpers/nf4-ref.js";

const dir = mkdtempSync(join(tmpdir(), "nf4-linear-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const rnd = (shape: number[], seed: number, dtype: "f32" | "bf16" | "f16" = "f32") =>
  Tensor.fromArray(uniform(shape.reduce((a, b) => a * b, 1), -1, 1, seed), shape, dtype);

function quantized(N: number, K: number, t: QT, bs: number, seed: number) {
  const w = rnd([N, K], seed);
  const [packed, absmax] = quant4Quantize(w, t, bs);
  const wd = dequantize(packed.view() as Uint8Array, absmax.toFloat32Array(), t, bs, N * K);
  w.dispose();
  const op = (computeDtype: "f32" | "bf16" = "f32"): Quant4Operand => ({ packed, absmax, quantType: t, blocksize: bs, shape: [N, K], dtype: "f32", computeDtype });
  return { op, wd };
}

// f32 accumulation over K products (and the bias): |err| <= (K + 2)·u·Σ|x·w| (a GEMM's bound, blocked sums are
// no worse), plus one rounding of y into its dtype.
const bound = (K: number, mag: Float64Array, y: Float64Array, dt: "f32" | "bf16" | "f16") => (i: number) =>
  (K + 2) * UNIT.f32 * mag[i] + UNIT[dt] * Math.abs(y[i]) + 1e-30;

describe("quant4Linear and quant4LinearGradInput", () => {
  // K = 64/128: the panel path (AVX-512), odd K the portable one; N past a panel of 32, and not a multiple.
  const SHAPES: [number, number, number, number][] = [[1, 7, 17, 32], [7, 33, 127, 64], [17, 64, 45, 64], [16, 128, 70, 128], [3, 96, 33, 32]];

  it("y = x·Wᵀ + b over the dequantised weight, every ISA, NF4 and FP4, f32/bf16/f16 x", () => {
    forEachIsa((isa) => {
      for (const t of ["nf4", "fp4"] as const)
        for (const [M, K, N, bs] of SHAPES) {
          const q = quantized(N, K, t, bs, M + K + N);
          const b = rnd([N], 5);
          for (const dt of ["f32", "bf16", "f16"] as const) {
            const x = rnd([M, K], M * 3 + K, dt);
            const y = quant4Linear(x, q.op(), b);
            expect(y.dtype).toBe(dt);
            expect(y.shape).toEqual([M, N]);
            const ref = linearRef(x.toFloat64Array(), q.wd, b.toFloat64Array(), M, K, N);
            expectClose(y.toFloat64Array(), ref.y, bound(K, ref.mag, ref.y, dt), `${isa} ${t} ${dt} ${M}x${K}x${N}`);
            x.dispose(), y.dispose();
          }
          b.dispose();
        }
    });
  });

  it("dx = dy·W, every ISA (K % 32 == 0 takes the AVX-512 row unpacker)", () => {
    forEachIsa((isa) => {
      for (const t of ["nf4", "fp4"] as const)
        for (const [M, K, N, bs] of SHAPES) {
          const q = quantized(N, K, t, bs, M + 2 * K + N);
          const dy = rnd([M, N], M + 11);
          const dx = quant4LinearGradInput(dy, q.op());
          const ref = gradInputRef(dy.toFloat64Array(), q.wd, M, K, N);
          expectClose(dx.toFloat64Array(), ref.dx, bound(N, ref.mag, ref.dx, "f32"), `${isa} ${t} dx ${M}x${K}x${N}`);
          dy.dispose(), dx.dispose();
        }
    });
  });

  it("computeDtype bf16 rounds each weight to bf16 before the f32 sums", () => {
    forEachIsa(() => {
      const [M, K, N] = [5, 64, 40];
      const q = quantized(N, K, "nf4", 64, 9);
      const x = rnd([M, K], 3, "bf16");
      const y = quant4Linear(x, q.op("bf16"), null);
      const wb = Tensor.fromArray(q.wd, [N, K], "bf16").toFloat64Array();
      const ref = linearRef(x.toFloat64Array(), wb, null, M, K, N);
      expectClose(y.toFloat64Array(), ref.y, bound(K, ref.mag, ref.y, "bf16"), "bf16 compute");
    });
  });

  it("a weight quantised from f16/bf16 dequantises into that dtype first (QuantState.dtype), on every path", () => {
    forEachIsa((isa) => {
      const [M, K, N] = [3, 96, 48];
      const q = quantized(N, K, "fp4", 32, 13);
      for (const wdt of ["f16", "bf16"] as const)
        for (const cdt of ["f32", "bf16"] as const) {
          const x = rnd([M, K], 14, cdt);
          const y = quant4Linear(x, { ...q.op(cdt), dtype: wdt }, null);
          const w1 = Tensor.fromArray(q.wd, [N, K], wdt), w2 = w1.to(cdt);
          const ref = linearRef(x.toFloat64Array(), w2.toFloat64Array(), null, M, K, N);
          expectClose(y.toFloat64Array(), ref.y, bound(K, ref.mag, ref.y, cdt), `${isa} W ${wdt} compute ${cdt}`);
          for (const t of [x, y, w1, w2]) t.dispose();
        }
    });
  });

  it("the small-batch path (M <= 16 on AVX-512; any M with bf16 compute on AMX): every row count, chunks of 16/32/64 k-steps, partial panels, rounded weights", () => {
    // M <= 8 takes both halves of a 32-column panel in one pass, 9..16 one half a pass; from M = 17 the GEMM path,
    // or on AMX row tiles in pairs (33 and 47: a pair and a single tile) over a panel dequantised once.
    // K = 48 with blocks of 64: a block spans rows, chunks of gcd(48, 64) = 16 k-steps; K = 96 / bs 32: chunks of
    // 32. bf16 x with bf16 compute takes the AMX tiles where K % 32 == 0 (and AMX is on), else the FMA kernel.
    const amxOn = backend.features.includes("amx");
    const amxPaths = amxOn ? [true, false] : [false];
    forEachIsa((isa) => {
      for (const amx of amxPaths) {
        backend.setAmx(amx);
        for (const [K, N, bs] of [[48, 33, 64], [96, 70, 32], [192, 64, 64]] as const) {
          const q = quantized(N, K, "nf4", bs, K + N);
          const b = rnd([N], 7);
          const wb = Tensor.fromArray(q.wd, [N, K], "bf16");
          for (const M of [...Array.from({ length: 17 }, (_, i) => i + 1), 33, 47])
            for (const cdt of ["f32", "bf16"] as const) {
              const x = rnd([M, K], M + K, cdt);
              const y = quant4Linear(x, q.op(cdt), M % 2 ? b : null);
              const ref = linearRef(x.toFloat64Array(), cdt === "f32" ? q.wd : wb.toFloat64Array(), M % 2 ? b.toFloat64Array() : null, M, K, N);
              expectClose(y.toFloat64Array(), ref.y, bound(K, ref.mag, ref.y, cdt), `${isa} amx ${amx} ${cdt} M=${M} K=${K} N=${N}`);
              x.dispose(), y.dispose();
            }
          b.dispose(), wb.dispose();
        }
        // Weights dequantised into f16 and computed in bf16 (two roundings), on both pass shapes.
        const [K, N] = [64, 45];
        const q = quantized(N, K, "fp4", 64, 21);
        for (const M of [4, 13]) {
          const x = rnd([M, K], M, "bf16");
          const y = quant4Linear(x, { ...q.op("bf16"), dtype: "f16" }, null);
          const w1 = Tensor.fromArray(q.wd, [N, K], "f16"), w2 = w1.to("bf16");
          const ref = linearRef(x.toFloat64Array(), w2.toFloat64Array(), null, M, K, N);
          expectClose(y.toFloat64Array(), ref.y, bound(K, ref.mag, ref.y, "bf16"), `${isa} amx ${amx} M=${M} W f16 compute bf16`);
          for (const t of [x, y, w1, w2]) t.dispose();
        }
      }
      backend.setAmx(amxOn);
    });
  });

  it("dx with bf16 dy and bf16 compute (AMX reads W's rows as bf16 pairs above 16 rows): rows past a k-pair, f16 weights", () => {
    const amxOn = backend.features.includes("amx");
    forEachIsa((isa) => {
      for (const amx of amxOn ? [true, false] : [false]) {
        backend.setAmx(amx);
        for (const [M, K, N, bs, wdt] of [[17, 64, 45, 64, "f32"], [33, 96, 70, 32, "f32"], [40, 128, 33, 128, "f16"], [9, 64, 20, 64, "f32"]] as const) {
          const q = quantized(N, K, "nf4", bs, M + N);
          const w1 = Tensor.fromArray(q.wd, [N, K], wdt), w2 = w1.to("bf16");
          const dy = rnd([M, N], M + 1, "bf16");
          const dx = quant4LinearGradInput(dy, { ...q.op("bf16"), dtype: wdt });
          expect(dx.dtype).toBe("bf16");
          const ref = gradInputRef(dy.toFloat64Array(), w2.toFloat64Array(), M, K, N);
          expectClose(dx.toFloat64Array(), ref.dx, bound(N, ref.mag, ref.dx, "bf16"), `${isa} amx ${amx} dx ${M}x${K}x${N} W ${wdt}`);
          for (const t of [w1, w2, dy, dx]) t.dispose();
        }
      }
      backend.setAmx(amxOn);
    });
  });

  it("gives the same bits on 1, 2 and 5 threads (each output sums its k in one order), small and large batches", () => {
    const threads = backend.threads;
    const [K, N] = [128, 200];
    const q = quantized(N, K, "nf4", 64, 5);
    try {
      for (const [M, cdt] of [[3, "f32"], [16, "f32"], [40, "f32"], [5, "bf16"], [40, "bf16"]] as const) {
        const x = rnd([M, K], M, cdt);
        const runs = [1, 2, 5].map((t) => {
          backend.setNumThreads(t);
          const y = quant4Linear(x, q.op(cdt), null);
          const v = Array.from(y.toFloat64Array());
          y.dispose();
          return v;
        });
        expect(runs[1], `${M} ${cdt} 2 threads`).toEqual(runs[0]);
        expect(runs[2], `${M} ${cdt} 5 threads`).toEqual(runs[0]);
        x.dispose();
      }
    } finally {
      backend.setNumThreads(threads);
    }
  });

  it("empty batches, and inputs that do not fit the weight", () => {
    const q = quantized(9, 17, "nf4", 64, 1);
    expect(quant4Linear(Tensor.zeros([0, 17]), q.op(), null).shape).toEqual([0, 9]);
    expect(quant4LinearGradInput(Tensor.zeros([2, 0, 9]), q.op()).shape).toEqual([2, 0, 17]);
    expectError(() => quant4Linear(Tensor.zeros([2, 16]), q.op(), null), PeftError, "ERR_SHAPE", /x has 16 features .* the 4-bit weight \(9, 17\) expects 17/);
    expectError(() => quant4Linear(Tensor.zeros([2, 17]), q.op(), Tensor.zeros([8])), PeftError, "ERR_SHAPE", /bias must have shape \[9\]/);
    expectError(() => quant4LinearGradInput(Tensor.zeros([2, 17], { dtype: "i32" }), q.op()), PeftError, "ERR_DTYPE", /dy must be f32, f16 or bf16/);
  });
});

describe("Linear4bit", () => {
  it("fromLinear quantises the weight (bitsandbytes' layout) and forward is the 4-bit op", () => {
    const lin = new Linear(33, 17, { seed: 1 });
    const q = Linear4bit.fromLinear(lin, { quantType: "nf4", compressStatistics: false });
    const [p, a] = quant4Quantize(lin.weight, "nf4", 64);
    expect(q.weight.dtype).toBe("u8");
    expect(q.weight.shape).toEqual([Math.ceil((17 * 33) / 2), 1]);
    expect(q.weight.requiresGrad).toBe(false);
    expect(Array.from(q.weight.view() as Uint8Array)).toEqual(Array.from(p.view() as Uint8Array));
    expect(q.toString()).toContain("Linear4bit(in_features=33, out_features=17, bias=True, quant_type=nf4, blocksize=64)");
    const x = rnd([7, 33], 2);
    const want = quant4Linear(x, { packed: p, absmax: a, quantType: "nf4", blocksize: 64, shape: [17, 33], dtype: "f32", computeDtype: "f32" }, lin.bias);
    expect(Array.from(q.forward(x).toFloat32Array())).toEqual(Array.from(want.toFloat32Array()));
    const dq = q.dequantizeWeight();
    expect(dq.shape).toEqual([17, 33]);
    expect(Array.from(dq.toFloat64Array())).toEqual(Array.from(dequantize(p.view() as Uint8Array, a.toFloat32Array(), "nf4", 64, 17 * 33)));
    lin.dispose();
  });

  it("defaults as bitsandbytes' Linear4bit: fp4, blocksize 64, compressed statistics; a fresh layer is a quantised Linear", () => {
    const q = new Linear4bit(70, 9, { seed: 3 });
    expect([q.quantType, q.blocksize, q.compressStatistics]).toEqual(["fp4", 64, true]);
    expect(Object.keys(q.stateDict())).toEqual(["weight", "bias", "weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map", "weight.quant_state.bitsandbytes__fp4"]);
    const ref = Linear4bit.fromLinear(new Linear(70, 9, { seed: 3 }));
    expect(Array.from(q.weight.view() as Uint8Array)).toEqual(Array.from(ref.weight.view() as Uint8Array));
  });

  it("casts x to the compute dtype and y back (bf16 compute with f32 x), f16/bf16 x computed in their own dtype", () => {
    const lin = new Linear(64, 20, { seed: 4 });
    const q = Linear4bit.fromLinear(lin, { quantType: "nf4", computeDtype: "bf16" });
    const x = rnd([3, 64], 5);
    const y = q.forward(x);
    expect(y.dtype).toBe("f32");
    const xb = x.to("bf16");
    const want = quant4Linear(xb, q.operand("bf16"), lin.bias!.to("bf16")).to("f32");
    expect(Array.from(y.toFloat32Array())).toEqual(Array.from(want.toFloat32Array()));
    const q2 = Linear4bit.fromLinear(lin, { quantType: "nf4" });
    expect(q2.forward(rnd([2, 64], 6, "f16")).dtype).toBe("f16");
    expect(q2.forward(Tensor.zeros([0, 64])).shape).toEqual([0, 20]);
  });

  it("is one graph node whose backward gives dx and the bias gradient; the 4-bit weight gets none", () => {
    const q = Linear4bit.fromLinear(new Linear(64, 24, { seed: 7 }), { quantType: "nf4" });
    const x = rnd([6, 64], 8);
    x.requiresGrad = true;
    const y = q.forward(x);
    expect(y.gradFn?.name).toBe("Linear4bitBackward");
    const dy = rnd([6, 24], 9);
    y.backward(dy);
    expect(Array.from(x.grad!.toFloat32Array())).toEqual(Array.from(quant4LinearGradInput(dy, q.operand()).toFloat32Array()));
    const db = new Float64Array(24);
    dy.toFloat64Array().forEach((v, i) => (db[i % 24] += v));
    expectClose(q.bias!.grad!.toFloat64Array(), db, (i) => 8 * UNIT.f32 * Math.abs(db[i]) + 1e-6, "db");
    expect(q.weight.grad).toBeNull();
    // The tape-free path gives the same dx.
    q.train();
    q.forward(rnd([6, 64], 8));
    expect(Array.from(q.backward(dy)!.toFloat32Array())).toEqual(Array.from(x.grad!.toFloat32Array()));
    q.weight.requiresGrad = true;
    expectError(() => q.forward(x), PeftError, "ERR_UNSUPPORTED", /the 4-bit weight has no gradient/);
  });

  it("state dict round trip with transformers' keys (plain and nested statistics), through safetensors", () => {
    for (const compress of [false, true]) {
      const q = Linear4bit.fromLinear(new Linear(45, 13, { seed: 10 }), { quantType: "nf4", compressStatistics: compress, blocksize: 32 });
      const sd = q.stateDict();
      const keys = ["weight", "bias", "weight.absmax", "weight.quant_map", ...(compress ? ["weight.nested_absmax", "weight.nested_quant_map"] : []), "weight.quant_state.bitsandbytes__nf4"];
      expect(Object.keys(sd)).toEqual(keys);
      expect(sd["weight.absmax"].dtype).toBe(compress ? "u8" : "f32");
      const file = join(dir, `l4-${compress}.safetensors`);
      saveSafetensorsSync(file, sd);
      const back = Linear4bit.fromStateDict(Object.fromEntries(Object.entries(sd).map(([k, v]) => [k, v.to(v.dtype)])));
      expect(back.quantState).toEqual(q.quantState);
      const x = rnd([4, 45], 11);
      expect(Array.from(back.forward(x).toFloat32Array())).toEqual(Array.from(q.forward(x).toFloat32Array()));
      // loadStateDict into an empty layer of the same configuration.
      const empty = Linear4bit.empty(45, 13, { quantType: "nf4", compressStatistics: compress, blocksize: 32 });
      empty.loadStateDict(sd);
      expect(Array.from(empty.forward(x).toFloat32Array())).toEqual(Array.from(q.forward(x).toFloat32Array()));
      const clone = q.clone();
      expect(Array.from(clone.forward(x).toFloat32Array())).toEqual(Array.from(q.forward(x).toFloat32Array()));
    }
  });

  it("fromStateDict names what is missing or inconsistent", () => {
    const q = Linear4bit.fromLinear(new Linear(16, 4, { seed: 12 }), { quantType: "nf4", compressStatistics: true });
    const sd = q.stateDict();
    const without = (k: string) => Object.fromEntries(Object.entries(sd).filter(([key]) => key !== k));
    expectError(() => Linear4bit.fromStateDict(without("weight.quant_state.bitsandbytes__nf4")), PeftError, "ERR_CHECKPOINT", /exactly one "weight.quant_state.bitsandbytes__nf4"/);
    expectError(() => Linear4bit.fromStateDict(without("weight.absmax")), PeftError, "ERR_CHECKPOINT", /no "weight.absmax"/);
    expectError(() => Linear4bit.fromStateDict(without("weight.nested_absmax")), PeftError, "ERR_CHECKPOINT", /nested but weight.nested_absmax/);
    expectError(() => Linear4bit.fromStateDict({ ...sd, weight: Tensor.zeros([5, 1], { dtype: "u8" }) }), PeftError, "ERR_SHAPE", /weight must hold 32 bytes/);
    expectError(() => Linear4bit.fromStateDict({ ...sd, "weight.absmax": Tensor.zeros([1]) }), PeftError, "ERR_CHECKPOINT", /weight.absmax must be u8 \[1\]/);
    expectError(() => Linear4bit.fromLinear(new Linear(4, 4), { quantType: "int4" as QT }), PeftError, "ERR_CONFIG", /quantType must be "nf4" or "fp4"/);
    expectError(() => Linear4bit.fromLinear(new Linear(4, 4), { blocksize: 48 }), PeftError, "ERR_CONFIG", /blocksize must be one of/);
    const bad = new Linear(4, 4);
    bad.weight.view()[5] = NaN;
    expectError(() => Linear4bit.fromLinear(bad), RangeError, "ERR_OUT_OF_RANGE", /row 1, column 1/);
  });

  it("quantize: \"nf4\" in the loader replaces each Linear as it loads, lm_head and skipModules kept", () => {
    class Tiny extends Module {
      q_proj = this.registerModule("q_proj", new Linear(64, 32, { seed: 1 }));
      up = this.registerModule("up", new Linear(64, 32, { seed: 2 }));
      lm_head = this.registerModule("lm_head", new Linear(32, 10, { seed: 3 }));
      forward(x: Tensor) {
        return x;
      }
    }
    const src = new Tiny();
    const file = join(dir, "tiny.safetensors");
    saveSafetensorsSync(file, src.stateDict());
    const m = new Tiny();
    loadModelWeights(m, file, { quantize: "nf4", skipModules: ["up"], compressStatistics: true, computeDtype: "bf16" });
    expect(m.q_proj).toBeInstanceOf(Linear4bit);
    expect(m.up).toBeInstanceOf(Linear);
    expect(m.lm_head).toBeInstanceOf(Linear);
    const l = m.q_proj as unknown as Linear4bit;
    expect([l.quantType, l.compressStatistics, l.computeDtype]).toEqual(["nf4", true, "bf16"]);
    const want = Linear4bit.fromLinear(src.q_proj, { quantType: "nf4", compressStatistics: true });
    expect(Array.from(l.weight.view() as Uint8Array)).toEqual(Array.from(want.weight.view() as Uint8Array));
    expectError(() => loadModelWeights(new Tiny(), file, { quantize: "nf4", threshold: 6 }), PeftError, "ERR_CONFIG", /threshold applies to quantize: "int8" only/);
    expectError(() => loadModelWeights(new Tiny(), file, { quantize: "int8", blocksize: 64 }), PeftError, "ERR_CONFIG", /blocksize applies to quantize: "nf4" or "fp4" only/);
    expectError(() => loadModelWeights(new Tiny(), file, { quantize: "nf4", blocksize: 100 }), PeftError, "ERR_CONFIG", /blocksize must be one of/);
  });
});
