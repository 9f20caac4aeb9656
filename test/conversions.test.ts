import { describe, expect, it } from "vitest";
import { Tensor } from "../lib/index.js";

// Exact decoders (the references): f16 and bf16 bit patterns to float64.
function f16ToNumber(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
function bf16ToNumber(h: number): number {
  const b = new DataView(new ArrayBuffer(4));
  b.setUint32(0, h << 16);
  return b.getFloat32(0);
}

const allBits = Uint16Array.from({ length: 65536 }, (_, i) => i);

describe.each([
  ["f16", f16ToNumber],
  ["bf16", bf16ToNumber],
] as const)("%s conversions", (dtype, decode) => {
  it("decodes every bit pattern exactly", () => {
    const got = Tensor.fromBits(allBits, [65536], dtype).toFloat64Array();
    for (let i = 0; i < 65536; i++) {
      const want = decode(i);
      if (Number.isNaN(want)) expect(Number.isNaN(got[i])).toBe(true);
      else expect(Object.is(got[i], want) || got[i] === want).toBe(true);
    }
  });

  it("round-trips every non-NaN bit pattern through f32 unchanged, and keeps NaN a NaN", () => {
    const f32 = Tensor.fromBits(allBits, [65536], dtype).to("f32");
    const back = f32.to(dtype).view() as Uint16Array;
    for (let i = 0; i < 65536; i++) {
      if (Number.isNaN(decode(i))) expect(Number.isNaN(decode(back[i]))).toBe(true);
      else expect(back[i]).toBe(i);
    }
  });

  it("rounds ties to even, and just off a tie to the nearer value", () => {
    // Midpoints between consecutive finite positive values (exact in f64, and in f32 for these formats).
    const lows: number[] = [], mids: number[] = [], above: number[] = [], below: number[] = [];
    for (let h = 1; h < 0x7bff; h += 97) {
      const a = decode(h), b = decode(h + 1);
      const mid = (a + b) / 2;
      if (Math.fround(mid) !== mid) continue;
      lows.push(h);
      mids.push(mid);
      above.push(Math.fround(mid + (b - a) / 8));
      below.push(Math.fround(mid - (b - a) / 8));
    }
    const enc = (xs: number[]) => Tensor.fromArray(Float32Array.from(xs), [xs.length], "f32").to(dtype).view() as Uint16Array;
    const m = enc(mids), up = enc(above), down = enc(below);
    lows.forEach((h, i) => {
      expect(m[i]).toBe(h % 2 === 0 ? h : h + 1);
      expect(up[i]).toBe(h + 1);
      expect(down[i]).toBe(h);
    });
  });

  it("keeps infinities and signed zeros", () => {
    const t = Tensor.fromArray([Infinity, -Infinity, 0, -0], [4], dtype).toFloat64Array();
    expect(t[0]).toBe(Infinity);
    expect(t[1]).toBe(-Infinity);
    expect(Object.is(t[2], 0)).toBe(true);
    expect(Object.is(t[3], -0)).toBe(true);
  });
});

describe("f16 range edges", () => {
  it("overflows to infinity at the rounding boundary and keeps subnormals", () => {
    const t = Tensor.fromArray([65504, 65519.99, 65520, 1e6, 2 ** -24, 2 ** -25, 2 ** -25 * 1.01, 2 ** -14], [8], "f16");
    const v = t.toFloat64Array();
    expect(Array.from(v)).toEqual([65504, 65504, Infinity, Infinity, 2 ** -24, 0, 2 ** -24, 2 ** -14]);
  });
  it("bf16 overflows to infinity past the largest finite value", () => {
    const max = bf16ToNumber(0x7f7f);
    const v = Tensor.fromArray([max, 3.4e38, Number.MAX_VALUE], [3], "bf16").toFloat64Array();
    expect(v[0]).toBe(max);
    expect(v[1]).toBe(Infinity); // 3.4e38 rounds up past max
    expect(v[2]).toBe(Infinity);
  });
});

describe("float to integer", () => {
  it("rounds half to even and saturates, NaN to 0", () => {
    const src = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999, 127.5, 128, -129, 1e30, -1e30, NaN];
    expect(Tensor.fromArray(src, [src.length], "i8").toArray()).toEqual([0, 2, 2, 0, -2, -2, 2, 127, 127, -128, 127, -128, 0]);
    expect(Tensor.fromArray(src, [src.length], "u8").toArray()).toEqual([0, 2, 2, 0, 0, 0, 2, 128, 128, 0, 255, 0, 0]);
    expect(Tensor.fromArray(src, [src.length], "i32").toArray()).toEqual([0, 2, 2, 0, -2, -2, 2, 128, 128, -129, 2147483647, -2147483648, 0]);
  });

  it("converts between every pair of dtypes with the same rules from f32", () => {
    const vals = [0, 1, -1, 3, -7, 100, -100, 0.5, 1.5, -2.5];
    const dtypes = ["f32", "f16", "bf16", "i8", "u8", "i32", "i64"] as const;
    for (const a of dtypes) {
      const t = Tensor.fromArray(vals, [vals.length], a);
      const asA = t.toFloat64Array();
      for (const b of dtypes) {
        const direct = Tensor.fromArray(asA, [vals.length], b).toArray();
        expect(t.to(b).toArray(), `${a} -> ${b}`).toEqual(direct);
      }
    }
  });

  it("saturates between integer types and keeps i64 beyond 2^53 exact", () => {
    const big = BigInt64Array.from([9007199254740993n, -9223372036854775808n, 9223372036854775807n, 300n, -300n]);
    const t = Tensor.fromArray(big, [5], "i64");
    expect(Array.from(t.view() as BigInt64Array)).toEqual(Array.from(big));
    expect(t.to("i32").toArray()).toEqual([2147483647, -2147483648, 2147483647, 300, -300]);
    expect(t.to("i8").toArray()).toEqual([127, -128, 127, 127, -128]);
    expect(t.to("u8").toArray()).toEqual([255, 0, 255, 255, 0]);
    expect(Array.from(t.to("i32").to("i64").view() as BigInt64Array)).toEqual([2147483647n, -2147483648n, 2147483647n, 300n, -300n]);
  });

  it("saturates JS numbers beyond the i64 range", () => {
    const v = Tensor.fromArray([1e20, -1e20, 2 ** 62], [3], "i64").view() as BigInt64Array;
    expect(Array.from(v)).toEqual([9223372036854775807n, -9223372036854775808n, 2n ** 62n]);
  });
});
