// bitsandbytes' 4-bit quantisation (quant4Quantize / quant4Dequantize, nn/quant-4bit.ts) against the algorithm
// written out in test/helpers/nf4-ref.ts: codes, packing (first value in the high nibble) and absmax compared
// exactly, for NF4 and FP4, every block size, f32/bf16/f16 weights, odd sizes, all-zero blocks; the nested
// statistics (double quantisation) against a float64 nearest-code reference; bad input.
import { describe, expect, it } from "vitest";
import { PeftError, Tensor } from "../lib/index.js";
import { quant4Dequantize, quant4Quantize } from "../lib/ops.js";
import {
  absmaxF32, compressStatistics, dynamicMap8, packQuantState, quantize4bit, unpackQuantState,
} from "../lib/nn/quant-4bit.js";
import { expectError, uniform } from "./helpers/numeric.js";
import { FP4, NF4, code, dequantize, nearest8, quantize, table, type QT } from "./helpers/nf4-ref.js";

const f = Math.fround;
const TYPES: QT[] = ["nf4", "fp4"];

function weight(rows: number, cols: number, seed: number, dtype: "f32" | "bf16" | "f16" = "f32") {
  const t = Tensor.fromArray(uniform(rows * cols, -2, 2, seed), [rows, cols], dtype);
  return { t, v: t.toFloat64Array() };
}

const operand = (packed: Tensor, absmax: Tensor, quantType: QT, blocksize: number, shape: [number, number], dtype: "f32" | "bf16" | "f16" = "f32") =>
  ({ packed, absmax, quantType, blocksize, shape, dtype, computeDtype: "f32" as const });

describe("the code tables and the comparison tree", () => {
  it("are bitsandbytes' get_4bit_type values", () => {
    expect(Array.from(table("nf4"))).toEqual(NF4.map(f));
    expect(FP4.slice(0, 8)).toEqual([0, 0.0625, 8, 12, 4, 6, 2, 3].map((v) => f(v / 12)));
  });

  it("maps every code value to itself and each midpoint to the lower code", () => {
    for (const t of TYPES) {
      const tab = table(t);
      // One weight per code value, scaled so absmax is 1 (a block holding 1.0): each must quantise to its own code.
      const vals = tab.filter((v, i) => !(t === "fp4" && i === 8)); // -0 quantises as +0
      const [p, a] = quant4Quantize(Tensor.fromArray([...vals, 1], [vals.length + 1]), t, 32);
      const codes = Array.from({ length: vals.length }, (_, i) => ((p.view() as Uint8Array)[i >> 1] >> (i % 2 ? 0 : 4)) & 15);
      expect(codes.map((c) => tab[c])).toEqual(vals);
      expect(a.toFloat32Array()[0]).toBe(1);
      p.dispose(), a.dispose();
    }
    // Exactly on the NF4 midpoint between 0 and 0.0796: the lower code (strict comparison).
    const mid = f((NF4[7] + NF4[8]) / 2);
    expect(code("nf4", mid)).toBe(7);
    const [p, a] = quant4Quantize(Tensor.fromArray([mid, 1], [2]), "nf4", 32);
    expect((p.view() as Uint8Array)[0] >> 4).toBe(7);
    p.dispose(), a.dispose();
  });
});

describe("quant4Quantize: bitsandbytes' quantize_4bit", () => {
  it("matches the reference bit for bit: NF4/FP4, block sizes 32..4096, f32/bf16/f16, odd sizes", () => {
    for (const t of TYPES)
      for (const bs of [32, 64, 128, 4096])
        for (const dt of ["f32", "bf16", "f16"] as const)
          for (const [N, K] of [[1, 1], [7, 17], [33, 127], [3, 64]]) {
            const w = weight(N, K, N * 7 + K + bs, dt);
            const [p, a] = quant4Quantize(w.t, t, bs);
            const ref = quantize(w.v, t, bs);
            expect(p.dtype).toBe("u8");
            expect(p.shape).toEqual([Math.ceil((N * K) / 2), 1]);
            expect(Array.from(p.view() as Uint8Array), `${t} bs ${bs} ${dt} ${N}x${K}`).toEqual(Array.from(ref.packed));
            expect(Array.from(a.toFloat32Array())).toEqual(Array.from(ref.absmax));
            p.dispose(), a.dispose(), w.t.dispose();
          }
  });

  it("packs the first of two values in the high nibble", () => {
    // 1.0 then -1.0: NF4 codes 15 and 0.
    const [p, a] = quant4Quantize(Tensor.fromArray([1, -1, 0.5], [3]), "nf4", 64);
    const bytes = Array.from(p.view() as Uint8Array);
    expect(bytes[0]).toBe(0xf0);
    // 0.5 is code 12 (0.4407 < 0.5 <= 0.5016), the padding past the end quantises 0 (code 7).
    expect(bytes[1]).toBe((12 << 4) | 7);
    p.dispose(), a.dispose();
  });

  it("all-zero blocks: absmax 0, NaN scaled values take code 0 as on CUDA, and dequantise to zero", () => {
    const v = new Array(64).fill(0).concat(uniform(64, -1, 1, 3));
    for (const t of TYPES) {
      const [p, a] = quant4Quantize(Tensor.fromArray(v, [2, 64]), t, 64);
      expect(a.toFloat32Array()[0]).toBe(0);
      expect(Array.from((p.view() as Uint8Array).slice(0, 32)).every((b) => b === 0)).toBe(true);
      const w = quant4Dequantize(operand(p, a, t, 64, [2, 64]));
      const got = w.toFloat32Array();
      expect(Array.from(got.slice(0, 64)).every((x) => x === 0)).toBe(true);
      expect(Array.from(got.slice(64))).toEqual(Array.from(dequantize(quantize(v, t, 64).packed, quantize(v, t, 64).absmax, t, 64, 128).slice(64)));
      p.dispose(), a.dispose(), w.dispose();
    }
  });

  it("NaN and infinite weights are a RangeError naming the value, its row and column", () => {
    for (const bad of [NaN, Infinity, -Infinity]) {
      const v = uniform(3 * 5, -1, 1, 1);
      v[2 * 5 + 3] = bad;
      const t = Tensor.fromArray(v, [3, 5]);
      expectError(() => quant4Quantize(t, "nf4", 64), RangeError, "ERR_OUT_OF_RANGE", /value 13 \(row 2, column 3\)/, /NaN or infinite/);
      t.dispose();
    }
  });

  it("refuses a bad quant type or block size, and non-float weights", () => {
    const t = Tensor.fromArray([1, 2], [2]);
    expectError(() => quant4Quantize(t, "int4" as QT, 64), PeftError, "ERR_CONFIG", /quantType must be "nf4" or "fp4"/);
    for (const bs of [16, 100, 8192]) expectError(() => quant4Quantize(t, "nf4", bs), PeftError, "ERR_CONFIG", /blocksize must be one of/);
    const i = Tensor.fromArray([1, 2], [2], "i32");
    expectError(() => quant4Quantize(i, "nf4", 64), PeftError, "ERR_DTYPE", /weight must be f32, f16 or bf16/);
    t.dispose(), i.dispose();
  });

  it("an empty weight gives no codes and no blocks", () => {
    const [p, a] = quant4Quantize(Tensor.zeros([0, 5]), "nf4", 64);
    expect(p.shape).toEqual([0, 1]);
    expect(a.shape).toEqual([0]);
    p.dispose(), a.dispose();
  });
});

describe("quant4Dequantize: bitsandbytes' dequantize_4bit", () => {
  it("gives table[code]·absmax in f32, rounded to the weight's dtype", () => {
    for (const t of TYPES)
      for (const [N, K, bs] of [[7, 17, 32], [33, 127, 64], [5, 300, 256]] as const)
        for (const wdt of ["f32", "bf16", "f16"] as const) {
          const w = weight(N, K, N + K, "f32");
          const [p, a] = quant4Quantize(w.t, t, bs);
          const got = quant4Dequantize(operand(p, a, t, bs, [N, K], wdt));
          const ref = dequantize(p.view() as Uint8Array, a.toFloat32Array(), t, bs, N * K);
          const want = Tensor.fromArray(ref, [N, K], wdt);
          expect(got.shape).toEqual([N, K]);
          expect(Array.from(got.toFloat32Array())).toEqual(Array.from(want.toFloat32Array()));
          p.dispose(), a.dispose(), got.dispose(), want.dispose(), w.t.dispose();
        }
  });

  it("checks the operands against the weight's shape", () => {
    const [p, a] = quant4Quantize(Tensor.fromArray(uniform(70, -1, 1, 2), [7, 10]), "nf4", 64);
    expectError(() => quant4Dequantize(operand(p, a, "nf4", 64, [7, 12])), PeftError, "ERR_SHAPE", /packed weight of a \(7, 12\) weight holds 42 bytes/);
    expectError(() => quant4Dequantize(operand(p, a, "nf4", 32, [7, 10])), PeftError, "ERR_SHAPE", /absmax must have shape \[3\]/);
    expectError(() => quant4Dequantize(operand(a, a, "nf4", 64, [7, 10])), PeftError, "ERR_DTYPE", /packed weight must be u8/);
    p.dispose(), a.dispose();
  });
});

describe("double quantisation (compress_statistics)", () => {
  it("the dynamic map is create_dynamic_map(signed=True): 256 ascending values, -0.99..., 0 at 127, 1 at 255", () => {
    const m = dynamicMap8();
    expect(m.length).toBe(256);
    for (let i = 1; i < 256; i++) expect(m[i]).toBeGreaterThan(m[i - 1]);
    expect(m[127]).toBe(0);
    expect(m[255]).toBe(1);
    expect(m[0]).toBe(-m[254]);
    expect(m[254]).toBeCloseTo(0.99296875, 6);
  });

  it("quantises absmax - mean in blocks of 256 to the nearest map value, and dequantises with the offset", () => {
    const w = weight(40, 1000, 9);
    const [p, a] = quant4Quantize(w.t, "nf4", 64); // 625 blocks: three nested blocks, the last partial
    const stats = compressStatistics(a);
    const am = a.toFloat32Array();
    const mean = f(am.reduce((s, v) => s + v, 0) / am.length);
    const n = stats.nested!;
    expect(n.offset).toBe(mean);
    expect(n.blocksize).toBe(256);
    expect(stats.absmax.dtype).toBe("u8");
    const shifted = am.map((v) => f(v - mean));
    const q = stats.absmax.view() as Uint8Array;
    const map = dynamicMap8();
    const am2 = n.absmax.toFloat32Array();
    for (let b = 0; b < 3; b++) {
      const blk = shifted.slice(b * 256, (b + 1) * 256);
      expect(am2[b]).toBe(Math.max(...blk.map(Math.abs)));
      const r = f(1 / am2[b]);
      blk.forEach((v, i) => {
        const x = f(v * r);
        const j = nearest8(map, x);
        const tie = j > 0 && j < 255 && (Math.abs(x - map[j - 1]) === Math.abs(x - map[j]) || Math.abs(x - map[j + 1]) === Math.abs(x - map[j]));
        if (!tie) expect(q[b * 256 + i]).toBe(j);
      });
    }
    const back = absmaxF32(stats).toFloat32Array();
    back.forEach((v, i) => expect(v).toBe(f(f(map[q[i]] * am2[Math.floor(i / 256)]) + mean)));
    // The dequantised statistics stay within half a map step (at most 1/127 of the block's range) of the originals.
    back.forEach((v, i) => expect(Math.abs(v - am[i])).toBeLessThanOrEqual(am2[Math.floor(i / 256)] * 0.0079 + 1e-7));
    p.dispose(), a.dispose(), w.t.dispose();
  });

  it("quantize4bit with compress keeps the codes of the plain quantisation", () => {
    const w = weight(9, 70, 4);
    const [p1, s1] = quantize4bit(w.t, "fp4", 64, false);
    const [p2, s2] = quantize4bit(w.t, "fp4", 64, true);
    expect(Array.from(p2.view() as Uint8Array)).toEqual(Array.from(p1.view() as Uint8Array));
    expect(s1.nested).toBeNull();
    expect(s2.nested).not.toBeNull();
    for (const t of [p1, p2, s1.absmax, s2.absmax, s2.nested!.absmax, s2.nested!.code, w.t]) t.dispose();
  });
});

describe("the packed quant state (quant_state.bitsandbytes__<type>)", () => {
  it("is Python's json.dumps of QuantState.as_dict's non-tensor fields", () => {
    const plain = packQuantState({ quantType: "nf4", blocksize: 64, dtype: "bf16", shape: [7, 17], nested: null });
    expect(new TextDecoder().decode(plain.view() as Uint8Array)).toBe('{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [7, 17]}');
    const nested = packQuantState({ quantType: "fp4", blocksize: 128, dtype: "f32", shape: [2, 3], nested: { blocksize: 256, dtype: "float32", offset: 0.5 } });
    const text = new TextDecoder().decode(nested.view() as Uint8Array);
    expect(text).toBe('{"quant_type": "fp4", "blocksize": 128, "dtype": "float32", "shape": [2, 3], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5}');
    expect(unpackQuantState(nested, "t")).toEqual({ quantType: "fp4", blocksize: 128, dtype: "f32", shape: [2, 3], nested: { blocksize: 256, dtype: "float32", offset: 0.5 } });
    plain.dispose(), nested.dispose();
  });

  it("refuses what QuantState.from_dict refuses", () => {
    const bad = (s: string) => Tensor.fromArray(new TextEncoder().encode(s), [new TextEncoder().encode(s).length], "u8");
    expectError(() => unpackQuantState(bad("{"), "q"), PeftError, "ERR_CHECKPOINT", /not JSON/);
    expectError(() => unpackQuantState(bad('{"quant_type": "int4"}'), "q"), PeftError, "ERR_UNSUPPORTED", /quant_type "int4"/);
    expectError(() => unpackQuantState(bad('{"quant_type": "nf4", "blocksize": 60}'), "q"), PeftError, "ERR_CHECKPOINT", /blocksize 60/);
    expectError(() => unpackQuantState(bad('{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [1]}'), "q"), PeftError, "ERR_CHECKPOINT", /shape \[1\]/);
    expectError(() => unpackQuantState(bad('{"quant_type": "nf4", "blocksize": 64, "dtype": "int8", "shape": [1, 2]}'), "q"), PeftError, "ERR_CHECKPOINT", /dtype "int8"/);
  });
});
