// F.scaledDotProductAttention against a float64 reference (forward and the q/k/v gradients) on odd sizes,
// grouped-query heads, causal with fewer queries than keys, key masks with a fully masked row, f32 and bf16,
// every kernel path; gradcheck; and the argument checks.
import { describe, expect, it } from "vitest";
import { F, PeftError, Tensor, gradcheck } from "../lib/index.js";
import { UNIT, expectClose, expectError, forEachIsa, tensorOf, uniform } from "./helpers/numeric.js";
import { distIndex, runNode } from "./helpers/child.js";

interface Dims { B: number; T: number; S: number; Hq: number; Hkv: number; D: number }

/**
 * Attention forward and backward in float64 from the same inputs. With `abs` every product takes absolute
 * values and every difference becomes a sum: the result bounds the magnitude the roundings act on.
 */
function reference(d: Dims, q: Float64Array, k: Float64Array, v: Float64Array, dO: Float64Array,
  mask: Float64Array | null, causal: boolean, scale: number, abs = false) {
  const { B, T, S, Hq, Hkv, D } = d;
  const group = Hq / Hkv;
  const o = new Float64Array(B * T * Hq * D), dq = new Float64Array(o.length);
  const dk = new Float64Array(B * S * Hkv * D), dv = new Float64Array(dk.length);
  const m = abs ? Math.abs : (x: number) => x;
  let maxScore = 0;
  const qi = (b: number, t: number, h: number) => ((b * T + t) * Hq + h) * D;
  const ki = (b: number, s: number, h: number) => ((b * S + s) * Hkv + h) * D;
  for (let b = 0; b < B; b++)
    for (let h = 0; h < Hq; h++) {
      const hk = Math.floor(h / group);
      for (let i = 0; i < T; i++) {
        const p = new Float64Array(S), ok = new Array<boolean>(S);
        let mx = -Infinity;
        for (let j = 0; j < S; j++) {
          ok[j] = (!causal || j <= S - T + i) && (!mask || mask[b * S + j] !== 0);
          let s = 0, sa = 0;
          for (let e = 0; e < D; e++) {
            s += q[qi(b, i, h) + e] * k[ki(b, j, hk) + e];
            sa += Math.abs(q[qi(b, i, h) + e] * k[ki(b, j, hk) + e]);
          }
          p[j] = s * scale;
          maxScore = Math.max(maxScore, sa * Math.abs(scale));
          if (ok[j]) mx = Math.max(mx, p[j]);
        }
        let z = 0;
        for (let j = 0; j < S; j++) z += ok[j] ? Math.exp(p[j] - mx) : 0;
        for (let j = 0; j < S; j++) p[j] = ok[j] ? Math.exp(p[j] - mx) / z : 0;
        // dP = dO·vᵀ, δ = Σ P∘dP, dS = P∘(dP − δ)
        const dp = new Float64Array(S);
        let delta = 0;
        for (let j = 0; j < S; j++) {
          for (let e = 0; e < D; e++) {
            o[qi(b, i, h) + e] += p[j] * m(v[ki(b, j, hk) + e]);
            dp[j] += m(dO[qi(b, i, h) + e] * v[ki(b, j, hk) + e]);
            dv[ki(b, j, hk) + e] += p[j] * m(dO[qi(b, i, h) + e]);
          }
          delta += p[j] * dp[j];
        }
        for (let j = 0; j < S; j++) {
          const ds = p[j] * (abs ? dp[j] + delta : dp[j] - delta) * m(scale);
          for (let e = 0; e < D; e++) {
            dq[qi(b, i, h) + e] += ds * m(k[ki(b, j, hk) + e]);
            dk[ki(b, j, hk) + e] += ds * m(q[qi(b, i, h) + e]);
          }
        }
      }
    }
  return { o, dq, dk, dv, maxScore };
}

function randomMask(B: number, S: number, seed: number, fullyMaskedRow: boolean): number[] {
  const r = uniform(B * S, 0, 1, seed);
  return r.map((x, i) => (fullyMaskedRow && i < S ? 0 : x < 0.25 ? 0 : 1));
}

/** Bound of one result element from the float64 reference (`r`) and the magnitude run (`m`). */
function tolerance(d: Dims, dtype: "f32" | "bf16", maxScore: number) {
  const { S, D } = d;
  // Each score is a D-term f32 dot product (relative error ≤ D·u of Σ|q·k|, ≤ maxScore); exp turns that absolute
  // error into a relative error of every probability, and the online softmax's rescalings and the S-term sums
  // over keys add S·u. Everything is accumulated in f32 (u = 2^-24), bf16 results rounded once at the end.
  const u = UNIT.f32;
  // The backward's row term Σ dO·O reads the stored output, already rounded to bf16 (as flash attention
  // does): one more bf16 rounding relative to the magnitude the reference's |dS| terms carry.
  const rel = u * (4 * D * (1 + maxScore) + 4 * S + 64) + (dtype === "bf16" ? 2 * UNIT.bf16 : 0);
  const out = UNIT[dtype];
  return (m: Float64Array, r: Float64Array) => (i: number) => rel * m[i] + out * Math.abs(r[i]) + 1e-30;
}

function check(d: Dims, dtype: "f32" | "bf16", opts: { causal?: boolean; mask?: number[] | null; seed?: number; scale?: number }, what: string) {
  const { B, T, S, Hq, Hkv, D } = d;
  const seed = opts.seed ?? 1;
  const q = tensorOf(uniform(B * T * Hq * D, -1, 1, seed), [B, T, Hq, D], dtype);
  const k = tensorOf(uniform(B * S * Hkv * D, -1, 1, seed + 1), [B, S, Hkv, D], dtype);
  const v = tensorOf(uniform(B * S * Hkv * D, -1, 1, seed + 2), [B, S, Hkv, D], dtype);
  const g = tensorOf(uniform(B * T * Hq * D, -1, 1, seed + 3), [B, T, Hq, D], dtype);
  const maskT = opts.mask ? Tensor.fromArray(opts.mask, [B, S], "u8") : null;
  const mask = opts.mask ? Float64Array.from(opts.mask) : null;
  const causal = opts.causal ?? false, scale = opts.scale ?? 1 / Math.sqrt(D);
  for (const t of [q.t, k.t, v.t]) t.requiresGrad = true;
  const y = F.scaledDotProductAttention(q.t, k.t, v.t, { causal, attentionMask: maskT, scale });
  expect(y.shape).toEqual([B, T, Hq, D]);
  expect(y.dtype).toBe(dtype);
  y.backward(g.t);
  const ref = reference(d, q.v, k.v, v.v, g.v, mask, causal, scale);
  const mag = reference(d, q.v.map(Math.abs), k.v.map(Math.abs), v.v.map(Math.abs), g.v.map(Math.abs), mask, causal, scale, true);
  const tol = tolerance(d, dtype, ref.maxScore);
  expectClose(y.toFloat64Array(), ref.o, tol(mag.o, ref.o), `${what} out`);
  expectClose(q.t.grad!.toFloat64Array(), ref.dq, tol(mag.dq, ref.dq), `${what} dq`);
  expectClose(k.t.grad!.toFloat64Array(), ref.dk, tol(mag.dk, ref.dk), `${what} dk`);
  expectClose(v.t.grad!.toFloat64Array(), ref.dv, tol(mag.dv, ref.dv), `${what} dv`);
  for (const t of [q.t, k.t, v.t, g.t, y, maskT]) t?.dispose();
}

const HEADS: [number, number][] = [[1, 1], [4, 2], [8, 2]];

describe("scaledDotProductAttention", () => {
  it("matches the float64 reference on odd sizes, GQA, causal (T < S) and key masks, f32 and bf16, every kernel path", () => {
    forEachIsa((isa) => {
      for (const dtype of ["f32", "bf16"] as const)
        for (const [T, S] of [[1, 1], [7, 7], [17, 33], [33, 17], [7, 127]])
          for (const D of [8, 20, 64]) {
            const [Hq, Hkv] = HEADS[(T + S + D) % 3];
            const d = { B: 2, T, S, Hq, Hkv, D };
            const w = `${isa} ${dtype} T=${T} S=${S} D=${D} H=${Hq}/${Hkv}`;
            check(d, dtype, {}, `${w}`);
            if (T <= S) check(d, dtype, { causal: true, seed: 5 }, `${w} causal`);
            check(d, dtype, { mask: randomMask(2, S, T + S, true), causal: T <= S, seed: 9 }, `${w} masked`);
          }
    });
  });

  it("handles 127×127 causal with 8/2 heads and a fully masked row", () => {
    check({ B: 2, T: 127, S: 127, Hq: 8, Hkv: 2, D: 20 }, "f32", { causal: true, mask: randomMask(2, 127, 3, true) }, "127 causal");
  });

  it("empty batch, empty sequences and a custom scale", () => {
    check({ B: 0, T: 7, S: 7, Hq: 4, Hkv: 2, D: 8 }, "f32", {}, "B=0");
    check({ B: 2, T: 0, S: 7, Hq: 4, Hkv: 2, D: 8 }, "f32", {}, "T=0");
    check({ B: 2, T: 3, S: 0, Hq: 4, Hkv: 2, D: 8 }, "f32", {}, "S=0");
    check({ B: 1, T: 5, S: 9, Hq: 2, Hkv: 1, D: 8 }, "f32", { scale: 0.7, causal: true }, "scale 0.7");
  });

  it("a query with every key masked outputs 0 and gets 0 gradient; causal with T > S masks the first rows", () => {
    check({ B: 1, T: 9, S: 4, Hq: 2, Hkv: 2, D: 8 }, "f32", { causal: true }, "T > S causal");
    check({ B: 2, T: 3, S: 5, Hq: 2, Hkv: 1, D: 8 }, "f32", { mask: [0, 0, 0, 0, 0, 1, 0, 1, 1, 0] }, "all masked batch");
  });

  it("passes gradcheck (f32)", () => {
    const leaf = (shape: number[], seed: number) => {
      const t = Tensor.fromArray(uniform(shape.reduce((a, b) => a * b, 1), -1, 1, seed), shape);
      t.requiresGrad = true;
      return t;
    };
    const mask = Tensor.fromArray([1, 1, 0, 1, 1, 1, 1, 0, 1, 1], [2, 5], "i32");
    const [q, k, v] = [leaf([2, 3, 4, 6], 1), leaf([2, 5, 2, 6], 2), leaf([2, 5, 2, 6], 3)];
    expect(gradcheck((a, b, c) => F.scaledDotProductAttention(a, b, c, { causal: true, attentionMask: mask }), [q, k, v], { eps: 1e-2, atol: 2e-3, rtol: 2e-2 })).toBe(true);
  });

  it("tensors on a device without these kernels get ERR_NOT_ON_DEVICE naming the op (emulated cuda, child process)", () => {
    const r = runNode(`
      import { F, Tensor } from ${JSON.stringify(distIndex)};
      const z = (shape) => Tensor.zeros(shape, { device: "cuda" });
      const calls = {
        attention: () => F.scaledDotProductAttention(z([1, 3, 2, 8]), z([1, 3, 2, 8]), z([1, 3, 2, 8])),
        rotaryEmbedding: () => F.rotaryEmbedding(z([1, 3, 2, 8]), z([1, 3, 8]), z([1, 3, 8])),
        rmsNorm: () => F.rmsNorm(z([3, 8]), null),
      };
      const out = {};
      for (const [k, f] of Object.entries(calls)) { try { f(); out[k] = "ok"; } catch (e) { out[k] = e.code + " " + e.message; } }
      console.log(JSON.stringify(out));`, { NODE_PEFT_CUDA: "emu" });
    expect(r.stderr).toBe("");
    for (const [op, msg] of Object.entries(JSON.parse(r.stdout) as Record<string, string>)) expect(msg).toMatch(new RegExp(`^ERR_NOT_ON_DEVICE ${op}: no cuda kernel`));
  });

  it("keyLength reads the first positions of longer k/v buffers in place, bit-equal to the same keys alone", () => {
    forEachIsa((isa) => {
      for (const dtype of ["f32", "bf16"] as const)
        for (const [T, S, L] of [[1, 1, 7], [1, 17, 33], [7, 33, 127], [3, 0, 5]]) {
          const [B, Hq, Hkv, D] = [2, 4, 2, 20];
          // Buffers of L positions per batch row whose first S are the keys; the rest is noise that must not leak.
          const buf = uniform(B * L * Hkv * D, -1, 1, T + S), vbuf = uniform(buf.length, -1, 1, T + S + 1);
          const firstS = (a: number[]) => Array.from({ length: B }, (_, b) => a.slice(b * L * Hkv * D, (b * L + S) * Hkv * D)).flat();
          const q = tensorOf(uniform(B * T * Hq * D, -1, 1, L), [B, T, Hq, D], dtype).t;
          const [kb, vb] = [tensorOf(buf, [B, L, Hkv, D], dtype).t, tensorOf(vbuf, [B, L, Hkv, D], dtype).t];
          const [k, v] = [tensorOf(firstS(buf), [B, S, Hkv, D], dtype).t, tensorOf(firstS(vbuf), [B, S, Hkv, D], dtype).t];
          const mask = S ? Tensor.fromArray(randomMask(B, S, S, false), [B, S], "u8") : null;
          for (const opts of [{}, { causal: true }, { causal: T <= S, attentionMask: mask }]) {
            const want = F.scaledDotProductAttention(q, k, v, opts), got = F.scaledDotProductAttention(q, kb, vb, { ...opts, keyLength: S });
            expect(Array.from(got.toFloat64Array()), `${isa} ${dtype} T=${T} S=${S} L=${L} ${JSON.stringify(Object.keys(opts))}`).toEqual(Array.from(want.toFloat64Array()));
            want.dispose(), got.dispose();
          }
          for (const t of [q, kb, vb, k, v, mask]) t?.dispose();
        }
    });
  });

  it("decode shapes (T ≤ 4) read an f32/bf16 cache in place: odd sizes with keyLength < capacity match the float64 reference", () => {
    forEachIsa((isa) => {
      for (const dtype of ["f32", "bf16"] as const)
        for (const [T, S, D] of [[1, 1, 7], [1, 7, 17], [1, 17, 64], [1, 33, 33], [1, 127, 20], [3, 17, 7], [4, 33, 64], [2, 0, 17]]) {
          const [B, Hq, Hkv, L] = [2, 6, 2, S + 5];
          const d = { B, T, S, Hq, Hkv, D };
          // Cache buffers of L positions per batch row whose first S are the keys; the rest must not leak.
          const buf = uniform(B * L * Hkv * D, -1, 1, S + D), vbuf = uniform(buf.length, -1, 1, S + D + 1);
          const firstS = (a: Float64Array) => Float64Array.from(Array.from({ length: B }, (_, b) => Array.from(a.subarray(b * L * Hkv * D, (b * L + S) * Hkv * D))).flat());
          const q = tensorOf(uniform(B * T * Hq * D, -1, 1, T + D), [B, T, Hq, D], dtype);
          const [kb, vb] = [tensorOf(buf, [B, L, Hkv, D], dtype), tensorOf(vbuf, [B, L, Hkv, D], dtype)];
          const [kv, vv] = [firstS(kb.v), firstS(vb.v)];
          const maskArr = S ? randomMask(B, S, S + T, true) : null;
          const mask = maskArr ? Tensor.fromArray(maskArr, [B, S], "u8") : null;
          for (const opts of [{ causal: true }, { causal: T <= S, attentionMask: mask }]) {
            const got = F.scaledDotProductAttention(q.t, kb.t, vb.t, { ...opts, keyLength: S });
            const m = opts.attentionMask ? Float64Array.from(maskArr!) : null, g = new Float64Array(q.v.length);
            const ref = reference(d, q.v, kv, vv, g, m, opts.causal, 1 / Math.sqrt(D));
            const mag = reference(d, q.v.map(Math.abs), kv.map(Math.abs), vv.map(Math.abs), g, m, opts.causal, 1 / Math.sqrt(D), true);
            expectClose(got.toFloat64Array(), ref.o, tolerance(d, dtype, ref.maxScore)(mag.o, ref.o), `${isa} ${dtype} T=${T} S=${S} D=${D} mask=${!!opts.attentionMask}`);
            got.dispose();
          }
          for (const t of [q.t, kb.t, vb.t, mask]) t?.dispose();
        }
    });
  });

  it("keyLength: out-of-range values and a wanted gradient are named errors", () => {
    const q = Tensor.zeros([1, 3, 4, 8]), k = Tensor.zeros([1, 5, 2, 8]);
    const sdpa = F.scaledDotProductAttention;
    for (const bad of [6, -1, 1.5, "2"])
      expect(() => sdpa(q, k, k, { keyLength: bad as number })).toThrow(/scaledDotProductAttention: keyLength must be an integer from 0 to the 5 positions/);
    expectError(() => sdpa(q, k, k, { keyLength: 3, attentionMask: Tensor.zeros([1, 5]) }), PeftError, "ERR_SHAPE", /attentionMask must be a \[batch, keys\] = \[1, 3\]/);
    const ql = Tensor.zeros([1, 3, 4, 8]);
    ql.requiresGrad = true;
    expectError(() => sdpa(ql, k, k, { keyLength: 3 }), PeftError, "ERR_UNSUPPORTED", /keyLength 3 reads longer k\/v buffers in place, which has no gradient/);
    const all = sdpa(ql, k, k, { keyLength: 5 });
    expect(all.requiresGrad).toBe(true);
  });

  it("rejects bad inputs with errors naming the op and tensor", () => {
    const z = (shape: number[], dtype: "f32" | "bf16" | "i32" = "f32") => Tensor.zeros(shape, { dtype });
    const q = z([1, 3, 4, 8]), k = z([1, 5, 2, 8]);
    const sdpa = F.scaledDotProductAttention;
    expectError(() => sdpa(z([3, 4, 8]), k, k), PeftError, "ERR_SHAPE", /scaledDotProductAttention: q must have 4 dimensions/);
    expectError(() => sdpa(q, z([1, 5, 3, 8]), z([1, 5, 3, 8])), PeftError, "ERR_SHAPE", /4 heads are not a multiple of k\/v's 3 heads/);
    expectError(() => sdpa(q, k, z([1, 5, 2, 7])), PeftError, "ERR_SHAPE", /v \[1, 5, 2, 7\] must have k's shape/);
    expectError(() => sdpa(q, z([1, 5, 2, 6]), z([1, 5, 2, 6])), PeftError, "ERR_SHAPE", /batch and headDim/);
    expectError(() => sdpa(q, z([1, 5, 2, 8], "bf16"), z([1, 5, 2, 8], "bf16")), PeftError, "ERR_DTYPE", /k is bf16 but q is f32/);
    expectError(() => sdpa(z([1, 3, 4, 8], "i32"), k, k), PeftError, "ERR_DTYPE", /q must be f32 or bf16, got i32/);
    expectError(() => sdpa(q, k, k, { attentionMask: z([1, 4]) }), PeftError, "ERR_SHAPE", /attentionMask must be a \[batch, keys\] = \[1, 5\]/);
    expect(() => sdpa(q, k, k, { causal: 1 as unknown as boolean })).toThrow(/causal must be a boolean/);
    expect(() => sdpa(q, k, k, { scale: NaN })).toThrow(/scale must be a finite number/);
    expect(() => sdpa(q, k, {} as Tensor)).toThrow(TypeError);
  });
});
