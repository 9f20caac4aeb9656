import { mkdtempSync, readFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it, vi } from "vitest";
import { Conv1D, Conv2d, Embedding, F, Linear, LoraConfig, LoraLayer, LoraLinear, Module, PeftModel, Tensor, getPeftModel, manualSeed } from "../lib/index.js";
import { dropoutMask } from "../lib/kernels.js";
import { registerFactorLayout } from "../lib/tuners/lora/factor-layout.js";
import { exactSvd } from "../lib/linalg/low-rank-svd.js";
import { MLP } from "./helpers/models.js";
import { errorCode } from "./helpers/errors.js";
import { matmul64, maxAbsDiff } from "./helpers/svd-reference.js";

const U = 2 ** -24; // f32 unit roundoff
const tmp = mkdtempSync(join(tmpdir(), "node-peft-weighted-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const quiet = () => vi.spyOn(process, "emitWarning").mockImplementation(() => {});

/** Two rank-4 adapters on seq.0 (20 → 12) and seq.2 (12 → 12) with scalings 2 and 0.5, random A and B. */
function model(extra: { r?: number; loraAlpha?: number; useRslora?: boolean } = {}) {
  quiet();
  const m = getPeftModel(new MLP(12), new LoraConfig({ targetModules: ["seq.0", "seq.2"], r: 4, loraAlpha: 8, initLoraWeights: false }), { adapterName: "a" });
  m.addAdapter("b", new LoraConfig({ targetModules: ["seq.0", "seq.2"], r: 4, loraAlpha: 2, initLoraWeights: false }));
  m.addAdapter("c", new LoraConfig({ targetModules: ["seq.0", "seq.2"], r: extra.r ?? 6, loraAlpha: extra.loraAlpha ?? 6, useRslora: extra.useRslora, initLoraWeights: false }));
  return m;
}
const LAYERS = ["seq.0", "seq.2"];
const layer = (m: PeftModel, key: string) => m.baseModel.model.getSubmodule(key) as LoraLayer;

/** An adapter's factors in float64, with its scaling. */
function factors(m: PeftModel, key: string, name: string) {
  const l = layer(m, key);
  const { A, B } = l.loraFactors(name);
  return { A: A.toFloat64Array(), B: B.toFloat64Array(), r: l.r[name], s: l.scaling[name], m: B.shape[0], n: A.shape[1] };
}
/** scaling·B·A of an adapter, float64 from its stored factors. */
function delta(m: PeftModel, key: string, name: string) {
  const f = factors(m, key, name);
  return matmul64(f.B, f.A, f.m, f.r, f.n).map((x) => x * f.s);
}
/** Σ |B_it|·|A_tj| over the factors' rank, the scale f32 roundings of B·A act on (per entry, max). */
function productScale(B: ArrayLike<number>, A: ArrayLike<number>, m: number, r: number, n: number) {
  return Math.max(...matmul64(Array.from(B, Math.abs), Array.from(A, Math.abs), m, r, n));
}
/** A delta written as f32 factors of rank r: each factor entry rounds once, so |error| ≤ 2u·Σ|B||A|. */
function expectFactorsOf(m: PeftModel, key: string, name: string, want: Float64Array) {
  const f = factors(m, key, name);
  expect(f.s).toBe(1);
  const got = matmul64(f.B, f.A, f.m, f.r, f.n);
  expect(maxAbsDiff(got, want)).toBeLessThanOrEqual(3 * U * productScale(f.B, f.A, f.m, f.r, f.n) + 1e-300);
}

// ---- PEFT's merge_utils in float64, written straight from merge_utils.py ----
function magnitudeRef(x: Float64Array, density: number): Float64Array {
  const k = Math.trunc(density * x.length);
  const order = Array.from(x.keys()).sort((i, j) => Math.abs(x[j]) - Math.abs(x[i]) || i - j);
  const out = new Float64Array(x.length);
  for (const i of order.slice(0, k)) out[i] = x[i];
  return out;
}
function mergeRef(tasks: Float64Array[], w: number[], sign?: "total" | "frequency"): Float64Array {
  return tasks[0].map((_, i) => {
    if (!sign) return tasks.reduce((acc, t, j) => acc + w[j] * t[i], 0);
    const vote = tasks.reduce((acc, t) => acc + (sign === "total" ? t[i] : Math.sign(t[i])), 0);
    const maj = vote >= 0 ? 1 : -1;
    const keep = tasks.map((t) => Math.sign(t[i]) === maj);
    const n = keep.filter(Boolean).length;
    return tasks.reduce((acc, t, j) => acc + (keep[j] ? w[j] * t[i] : 0), 0) / Math.max(n, 1);
  });
}
/** DARE's pruning from the same Philox draws (dropout's mask with p = 1 − density). */
function dareRef(x: Float64Array, density: number, seed: number, stream: number): Float64Array {
  using mask = dropoutMask([x.length], 1 - density, seed, stream);
  const k = mask.toFloat64Array();
  return x.map((v, i) => v * k[i]);
}

const W = [0.7, -1.3];

describe("addWeightedAdapter: the combination types against float64 references", () => {
  it("cat: A's scaled by weight·scaling stacked, B's side by side; r is the sum of ranks", () => {
    const m = model();
    m.addWeightedAdapter(["a", "c"], W, "cat", { combinationType: "cat" });
    for (const key of LAYERS) {
      expect(layer(m, key).r.cat).toBe(10);
      // Σ w·(s·B·A): cat carries each source's scaling once.
      const a = delta(m, key, "a"), c = delta(m, key, "c");
      expectFactorsOf(m, key, "cat", a.map((x, i) => W[0] * x + W[1] * c[i]));
    }
    expect(m.peftConfig.cat).toMatchObject({ r: 10, loraAlpha: 10, useRslora: false, rankPattern: {}, alphaPattern: {} });
  });

  it("linear: √|w·s| on both factors with the sign on A (negative weights included)", () => {
    const m = model();
    m.addWeightedAdapter(["a", "b"], W, "lin", { combinationType: "linear" });
    for (const key of LAYERS) {
      const fa = factors(m, key, "a"), fb = factors(m, key, "b");
      const c = [W[0] * fa.s, W[1] * fb.s];
      const A = mergeRef([fa.A, fb.A], c.map((x) => Math.sqrt(Math.abs(x)) * Math.sign(x)));
      const B = mergeRef([fa.B, fb.B], c.map((x) => Math.sqrt(Math.abs(x))));
      expectFactorsOf(m, key, "lin", matmul64(B, A, fa.m, 4, fa.n));
      expect(layer(m, key).r.lin).toBe(4);
    }
  });

  for (const type of ["ties", "magnitude_prune", "dare_linear", "dare_ties"] as const)
    for (const sign of ["total", "frequency"] as const) {
      if (sign === "frequency" && !type.includes("ties")) continue;
      it(`${type}${type.includes("ties") ? ` (${sign})` : ""}: the factor-wise merge of PEFT's merge_utils`, () => {
        const m = model();
        const density = 0.6, seed = 11;
        m.addWeightedAdapter(["a", "b"], W, "t", { combinationType: type, density, majoritySignMethod: sign, seed });
        let stream = 0; // draws: per layer, A of each source, then B of each source
        for (const key of LAYERS) {
          const fa = factors(m, key, "a"), fb = factors(m, key, "b");
          const c = [W[0] * fa.s, W[1] * fb.s];
          const prune = (x: Float64Array) => (type.startsWith("dare") ? dareRef(x, density, seed, stream++) : magnitudeRef(x, density));
          const signRule = type.includes("ties") ? sign : undefined;
          const A = mergeRef([prune(fa.A), prune(fb.A)], c.map((x) => Math.sqrt(Math.abs(x)) * Math.sign(x)), signRule);
          const B = mergeRef([prune(fa.B), prune(fb.B)], c.map((x) => Math.sqrt(Math.abs(x))), signRule);
          expectFactorsOf(m, key, "t", matmul64(B, A, fa.m, 4, fa.n));
        }
      });
    }

  it("svd: the exact truncated SVD of Σ w·s·(s·B·A), without forming it (PEFT weights the scaled delta)", () => {
    const m = model();
    m.addWeightedAdapter(["a", "c"], W, "s4", { svdRank: 4 });
    m.addWeightedAdapter(["a", "c"], W, "sAll", { svdRank: 10 });
    for (const key of LAYERS) {
      const fa = factors(m, key, "a"), fc = factors(m, key, "c");
      const da = delta(m, key, "a"), dc = delta(m, key, "c");
      const ref = da.map((x, i) => W[0] * fa.s * x + W[1] * fc.s * dc[i]);
      const best = exactSvd(ref, fa.m, fa.n, 4);
      const sum = best.s.reduce((a, b) => a + b, 0);
      // The reference's own float64 error is far below the f32 rounding of the stored factors (≤ 2u·Σσ).
      const want = new Float64Array(fa.m * fa.n);
      for (let j = 0; j < 4; j++) for (let i = 0; i < fa.m; i++) for (let c = 0; c < fa.n; c++) want[i * fa.n + c] += best.us.data[j * fa.m + i] * best.v.data[j * fa.n + c];
      const f = factors(m, key, "s4");
      expect(f.r).toBe(4);
      const got = matmul64(f.B, f.A, f.m, 4, f.n);
      expect(maxAbsDiff(got, want)).toBeLessThanOrEqual(4 * U * sum);
      const sv = exactSvd(got, f.m, f.n, 4).s;
      for (let j = 0; j < 4; j++) expect(Math.abs(sv[j] - best.s[j])).toBeLessThanOrEqual(4 * U * sum);
      // A holds Vh: orthonormal rows (to f32 rounding).
      for (let p = 0; p < 4; p++) {
        let d = 0;
        for (let c = 0; c < f.n; c++) d += f.A[p * f.n + c] ** 2;
        expect(Math.abs(d - 1)).toBeLessThanOrEqual(4 * f.n * U);
      }
      // Rank 10 ≥ rank(Δ): the product is Δ itself; rank 10 > min(m, n) on seq.2 pads with zeros.
      const fall = factors(m, key, "sAll");
      expect(fall.r).toBe(10);
      expect(maxAbsDiff(matmul64(fall.B, fall.A, f.m, 10, f.n), ref)).toBeLessThanOrEqual(4 * U * productScale(fall.B, fall.A, f.m, 10, f.n));
    }
  });

  for (const type of ["ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd"] as const)
    it(`${type} (exact SVD, full rank): the merged delta of PEFT's merge_utils`, () => {
      const m = model();
      const density = 0.5, seed = 5;
      m.addWeightedAdapter(["a", "b"], W, "t", { combinationType: type, density, seed, svdMethod: "exact", svdRank: 12 });
      let stream = 0; // draws: per layer, each source's delta, then the SVD's test matrix
      for (const key of LAYERS) {
        const fa = factors(m, key, "a"), fb = factors(m, key, "b");
        const prune = (x: Float64Array) => (type.startsWith("dare") ? dareRef(x, density, seed, stream++) : magnitudeRef(x, density));
        const tasks = [prune(delta(m, key, "a")), prune(delta(m, key, "b"))];
        stream++;
        const want = mergeRef(tasks, [W[0] * fa.s, W[1] * fb.s], type.includes("ties") ? "total" : undefined);
        // Deltas formed in f32 (rank-4 sums: ≤ 5u relative to Σ|B||A|·s), then stored as f32 factors.
        const scale = Math.max(...[fa, fb].map((f, j) => Math.abs(W[j] * f.s * f.s) * productScale(f.B, f.A, f.m, f.r, f.n))) / density;
        const f = factors(m, key, "t");
        const got = matmul64(f.B, f.A, f.m, f.r, f.n);
        expect(maxAbsDiff(got, want)).toBeLessThanOrEqual(2 * 6 * U * scale + 3 * U * productScale(f.B, f.A, f.m, f.r, f.n));
      }
    });

  it("the full-delta route (randomized SVD) agrees with the factored one when nothing is pruned", () => {
    const m = model();
    m.addWeightedAdapter(["a", "c"], W, "factored", { svdRank: 3 });
    m.addWeightedAdapter(["a", "c"], W, "full", { combinationType: "dare_linear_svd", density: 1, svdRank: 3 });
    for (const key of LAYERS) {
      const fa = factors(m, key, "a"), fc = factors(m, key, "c");
      const da = delta(m, key, "a"), dc = delta(m, key, "c");
      const ref = exactSvd(da.map((x, i) => W[0] * fa.s * x + W[1] * fc.s * dc[i]), fa.m, fa.n, 4);
      const f1 = factors(m, key, "factored"), f2 = factors(m, key, "full");
      const p1 = matmul64(f1.B, f1.A, f1.m, 3, f1.n), p2 = matmul64(f2.B, f2.A, f2.m, 3, f2.n);
      // The full route forms the delta in f32: a perturbation E with ‖E‖ ≤ 6u·Σ terms; the truncated
      // product moves by at most ‖E‖·(1 + 4σ₁/(σ₃ − σ₄)) (Wedin), plus each side's factor rounding.
      const e = 6 * U * Math.sqrt(fa.m * fa.n) * Math.max(...ref.s);
      const tol = e * (1 + (4 * ref.s[0]) / (ref.s[2] - ref.s[3])) + 8 * U * (ref.s[0] + ref.s[1] + ref.s[2]);
      expect(maxAbsDiff(p1, p2)).toBeLessThanOrEqual(tol);
    }
  });

  it("svdClamp: both factors clamped to ± the q-quantile of all their entries (torch.quantile, linear)", () => {
    const m = model();
    m.addWeightedAdapter(["a", "c"], W, "free", { svdRank: 5 });
    m.addWeightedAdapter(["a", "c"], W, "clamped", { svdRank: 5, svdClamp: 0.9 });
    for (const key of LAYERS) {
      const free = factors(m, key, "free"), cl = factors(m, key, "clamped");
      const all = Float64Array.from([...free.B, ...free.A]).sort();
      const pos = 0.9 * (all.length - 1);
      const hi = all[Math.floor(pos)] + (all[Math.ceil(pos)] - all[Math.floor(pos)]) * (pos - Math.floor(pos));
      const clamp = (x: number) => Math.min(Math.max(x, -hi), hi);
      expect(maxAbsDiff(cl.B, free.B.map(clamp))).toBeLessThanOrEqual(2 * U * hi);
      expect(maxAbsDiff(cl.A, free.A.map(clamp))).toBeLessThanOrEqual(2 * U * hi);
      expect(free.B.some((x) => Math.abs(x) > hi)).toBe(true);
    }
  });
});

describe("addWeightedAdapter: PEFT's rules", () => {
  it("one source combines as linear whatever the type: the delta is weight × the source's", () => {
    const m = model({ useRslora: true, loraAlpha: 12 });
    m.addWeightedAdapter(["c"], [-0.5], "one", { combinationType: "svd" });
    for (const key of LAYERS) {
      expect(layer(m, key).r.one).toBe(6);
      // The source is rsLoRA (scaling 12/√6); the new adapter's scaling is 1, not √6 (rsLoRA off).
      expectFactorsOf(m, key, "one", delta(m, key, "c").map((x) => -0.5 * x));
    }
    expect(m.peftConfig.one).toMatchObject({ r: 6, loraAlpha: 6, useRslora: false });
  });

  it("the new adapter is inactive and frozen, targets the union, trains and saves in PEFT's format", async () => {
    const m = model();
    m.addAdapter("d", new LoraConfig({ targetModules: ["seq.0"], r: 4, initLoraWeights: false }));
    m.addWeightedAdapter(["a", "d"], [1, 1], "mix", { combinationType: "cat" });
    expect(m.activeAdapters).toEqual(["a"]);
    expect(m.peftConfig.mix.targetModules).toEqual(["seq.0", "seq.2"]);
    expect(layer(m, "seq.2").r.mix).toBe(8); // only "a" is on seq.2: its columns, then zeros
    expectFactorsOf(m, "seq.2", "mix", delta(m, "seq.2", "a"));
    expect(layer(m, "seq.0").loraFactors("mix").A.requiresGrad).toBe(false);

    m.setAdapter("mix");
    const x = Tensor.randn([5, 20], { seed: 2 });
    m.train();
    const target = Tensor.randn([5, 2], { seed: 3 });
    const loss = F.mseLoss(m.forward(x), target);
    loss.backward();
    for (const key of LAYERS) {
      const { A, B } = layer(m, key).loraFactors("mix");
      expect(A.grad).not.toBeNull();
      expect(B.grad!.toArray().some((g) => g !== 0)).toBe(true);
    }
    m.eval();
    const y = m.forward(x).toArray();
    await m.savePretrained(tmp, { adapterNames: ["mix"] });
    const config = JSON.parse(readFileSync(join(tmp, "mix", "adapter_config.json"), "utf8"));
    expect(config).toMatchObject({ r: 8, lora_alpha: 8, use_rslora: false, target_modules: ["seq.0", "seq.2"] });
    expect(existsSync(join(tmp, "mix", "adapter_model.safetensors"))).toBe(true);
    const back = await PeftModel.fromPretrained(new MLP(12), join(tmp, "mix"));
    expect(maxAbsDiff(back.forward(x).toArray(), y)).toBeLessThanOrEqual(1e-6);
  });

  it("errors: unknown adapters, unequal ranks, shared modules_to_save, mixed target types", () => {
    const m = model();
    expect(() => m.addWeightedAdapter(["a", "zz"], [1, 1], "n")).toThrow(/Adapter zz does not exist/);
    expect(() => m.addWeightedAdapter(["a", "c"], [1, 1], "n", { combinationType: "linear" })).toThrow(/same r value/);
    expect(errorCode(() => m.addWeightedAdapter(["a", "c"], [1, 1], "n", { combinationType: "dare_ties", density: 0.5 }))).toBe("ERR_CONFIG");
    expect(errorCode(() => m.addWeightedAdapter([], [], "n"))).toBe("ERR_CONFIG");
    m.addAdapter("rx", new LoraConfig({ targetModules: "seq\\.0", r: 4 }));
    expect(() => m.addWeightedAdapter(["a", "rx"], [1, 1], "n")).toThrow(/mix of list\/set and string/);
    quiet();
    const s = getPeftModel(new MLP(8), new LoraConfig({ targetModules: ["seq.0"], modulesToSave: ["seq.4"] }), { adapterName: "p" });
    s.addAdapter("q", new LoraConfig({ targetModules: ["seq.0"], modulesToSave: ["seq.4"] }));
    expect(() => s.addWeightedAdapter(["p", "q"], [1, 1], "n")).toThrow(/modules_to_save, but found 1 such instance/);
    expect(Object.keys(m.peftConfig)).not.toContain("n");
  });

  it("regex targets join as alternatives; an existing name leaves everything as it was (with a warning)", () => {
    quiet();
    const m = getPeftModel(new MLP(8), new LoraConfig({ targetModules: "seq\\.0", initLoraWeights: false }), { adapterName: "x" });
    m.addAdapter("y", new LoraConfig({ targetModules: "seq\\.2", initLoraWeights: false }));
    m.addWeightedAdapter(["x", "y"], [1, 2], "z", { combinationType: "cat" });
    expect(m.peftConfig.z.targetModules).toBe("(seq\\.0)|(seq\\.2)");
    const warn = vi.spyOn(process, "emitWarning").mockImplementation(() => {});
    warn.mockClear();
    const before = layer(m, "seq.0").loraFactors("z").A.toArray();
    m.addWeightedAdapter(["x"], [5], "z");
    expect(warn.mock.calls.some(([msg]) => /already exists/.test(String(msg)))).toBe(true);
    expect(layer(m, "seq.0").loraFactors("z").A.toArray()).toEqual(before);
  });

  it("density: required by the pruning types, ≥ 1 prunes nothing (PEFT's warning), DARE needs it > 0", () => {
    const m = model();
    expect(() => m.addWeightedAdapter(["a", "b"], W, "n", { combinationType: "ties" })).toThrow(/density/);
    expect(() => m.addWeightedAdapter(["a", "b"], W, "n", { combinationType: "ties", density: -0.1 })).toThrow(/>= 0/);
    expect(() => m.addWeightedAdapter(["a", "b"], W, "n", { combinationType: "dare_linear", density: 0 })).toThrow(/density > 0/);
    const warn = vi.spyOn(process, "emitWarning").mockImplementation(() => {});
    warn.mockClear();
    m.addWeightedAdapter(["a", "b"], W, "d1", { combinationType: "dare_linear", density: 1 });
    m.addWeightedAdapter(["a", "b"], W, "lin", { combinationType: "linear" });
    expect(warn.mock.calls.filter(([msg]) => /greater than or equal to 1, no pruning/.test(String(msg)))).toHaveLength(1);
    for (const key of LAYERS) expect(factors(m, key, "d1").A).toEqual(factors(m, key, "lin").A);
    m.addWeightedAdapter(["a", "b"], W, "m0", { combinationType: "magnitude_prune", density: 0 });
    expect(factors(m, "seq.0", "m0").A.every((x) => x === 0)).toBe(true);
  });

  it("DARE's drop repeats with a seed and follows the global generator without one", () => {
    const m = model();
    m.addWeightedAdapter(["a", "b"], W, "s1", { combinationType: "dare_ties", density: 0.5, seed: 3 });
    m.addWeightedAdapter(["a", "b"], W, "s2", { combinationType: "dare_ties", density: 0.5, seed: 3 });
    m.addWeightedAdapter(["a", "b"], W, "s3", { combinationType: "dare_ties", density: 0.5, seed: 4 });
    manualSeed(9);
    m.addWeightedAdapter(["a", "b"], W, "g1", { combinationType: "dare_linear", density: 0.5 });
    manualSeed(9);
    m.addWeightedAdapter(["a", "b"], W, "g2", { combinationType: "dare_linear", density: 0.5 });
    expect(factors(m, "seq.2", "s1").A).toEqual(factors(m, "seq.2", "s2").A);
    expect(factors(m, "seq.2", "s1").A).not.toEqual(factors(m, "seq.2", "s3").A);
    expect(factors(m, "seq.2", "g1").B).toEqual(factors(m, "seq.2", "g2").B);
  });

  it("a failure part-way leaves no new adapter behind", () => {
    const m = model();
    const { A } = layer(m, "seq.2").loraFactors("b");
    A.copyFrom(Tensor.fromArray(A.toArray().map((x, i) => (i === 0 ? NaN : x)), A.shape));
    const before = m.targetedModuleNames;
    expect(errorCode(() => m.addWeightedAdapter(["a", "b"], W, "bad", { combinationType: "magnitude_prune_svd", density: 0.9 }))).toBe("ERR_STATE");
    expect(Object.keys(m.peftConfig)).toEqual(["a", "b", "c"]);
    for (const key of LAYERS) expect(layer(m, key).adapterNames).not.toContain("bad");
    expect(m.targetedModuleNames).toEqual(before);
  });
});

describe("addWeightedAdapter: bad arguments are coded errors naming the method", () => {
  const m = model();
  const cases: [string, () => void, string][] = [
    ["adapters not an array", () => m.addWeightedAdapter("a" as never, [1], "n"), "ERR_INVALID_ARG_TYPE"],
    ["a non-string adapter", () => m.addWeightedAdapter([1 as never], [1], "n"), "ERR_INVALID_ARG_TYPE"],
    ["weights not numbers", () => m.addWeightedAdapter(["a"], ["1" as never], "n"), "ERR_INVALID_ARG_TYPE"],
    ["a NaN weight", () => m.addWeightedAdapter(["a"], [NaN], "n"), "ERR_INVALID_ARG_TYPE"],
    ["one weight per adapter", () => m.addWeightedAdapter(["a", "b"], [1], "n"), "ERR_CONFIG"],
    ["a dotted name", () => m.addWeightedAdapter(["a"], [1], "x.y"), "ERR_CONFIG"],
    ["options null", () => m.addWeightedAdapter(["a"], [1], "n", null as never), "ERR_INVALID_ARG_TYPE"],
    ["an unknown combination type", () => m.addWeightedAdapter(["a", "b"], [1, 1], "n", { combinationType: "mean" as never }), "ERR_CONFIG"],
    ["svdRank 0", () => m.addWeightedAdapter(["a", "b"], [1, 1], "n", { svdRank: 0 }), "ERR_CONFIG"],
    ["svdRank as a string", () => m.addWeightedAdapter(["a", "b"], [1, 1], "n", { svdRank: "4" as never }), "ERR_INVALID_ARG_TYPE"],
    ["svdClamp above 1", () => m.addWeightedAdapter(["a", "b"], [1, 1], "n", { svdClamp: 1.5 }), "ERR_CONFIG"],
    ["an unknown sign method", () => m.addWeightedAdapter(["a", "b"], [1, 1], "n", { majoritySignMethod: "mean" as never }), "ERR_CONFIG"],
    ["svdFullMatrices not a boolean", () => m.addWeightedAdapter(["a", "b"], [1, 1], "n", { svdFullMatrices: 1 as never }), "ERR_INVALID_ARG_TYPE"],
    ["an unknown svdMethod", () => m.addWeightedAdapter(["a", "b"], [1, 1], "n", { svdMethod: "lanczos" as never }), "ERR_CONFIG"],
    ["a snake_case option", () => m.addWeightedAdapter(["a", "b"], [1, 1], "n", { combination_type: "cat" } as never), "ERR_CONFIG"],
    ["a negative seed", () => m.addWeightedAdapter(["a", "b"], [1, 1], "n", { seed: -1 }), "ERR_OUT_OF_RANGE"],
  ];
  for (const [name, fn, code] of cases)
    it(name, () => {
      expect(errorCode(fn)).toBe(code);
      expect(fn).toThrow(/addWeightedAdapter|does not exist|same r/);
      expect(Object.keys(m.peftConfig)).not.toContain("n");
    });
});

describe("registerFactorLayout", () => {
  // A layer type can say how its factors map to matrices; this one reads and writes them itself.
  class KernelBase extends Linear {}
  class KernelLora extends LoraLinear {}
  it("a registered layout is the one the combination reads and writes through", () => {
    quiet();
    let reads = 0, writes = 0;
    registerFactorLayout(KernelLora, {
      read(l, name) {
        reads++;
        const A = (l.loraA.get(name) as Linear).weight, B = (l.loraB.get(name) as Linear).weight;
        return { a: A.toFloat32Array(), b: B.toFloat32Array(), r: l.r[name], m: B.shape[0], n: A.shape[1] };
      },
      write(l, name, a, b, k) {
        writes++;
        (l.loraA.get(name) as Linear).weight.copyFrom(Tensor.fromArray(Array.from(a), [k, 20]));
        (l.loraB.get(name) as Linear).weight.copyFrom(Tensor.fromArray(Array.from(b), [12, k]));
      },
    });
    const base = new MLP(12);
    base.setSubmodule("seq.0", new KernelBase(20, 12, { seed: 4 }));
    const config = new LoraConfig({ targetModules: ["seq.0"], r: 3, initLoraWeights: false });
    config.registerCustomModule(new Map([[KernelBase, KernelLora]]));
    const m = getPeftModel(base, config, { adapterName: "a" });
    m.addWeightedAdapter(["a"], [2], "twice");
    expect([reads, writes]).toEqual([1, 1]);
    expectFactorsOf(m, "seq.0", "twice", delta(m, "seq.0", "a").map((x) => 2 * x));
    expect(() => registerFactorLayout(KernelLora, {} as never)).toThrow(/read and write/);
  });
});

describe("addWeightedAdapter on Conv2d, Embedding and Conv1D LoRA layers", () => {
  class Net extends Module {
    emb = this.registerModule("emb", new Embedding(11, 6, { seed: 1 }));
    conv = this.registerModule("conv", new Conv2d(3, 4, [3, 2], { seed: 2 }));
    gpt = this.registerModule("gpt", new Conv1D(5, 7, { seed: 3 })); // GPT-2's Conv1D: fan_in_fan_out
  }
  /** A layer's delta in its own layout (getDeltaWeight), float64, and the f32 scale its rounding acts on. */
  function deltaOf(m: PeftModel, key: string, name: string) {
    const l = layer(m, key);
    using d = l.getDeltaWeight(name);
    const { A, B } = l.loraFactors(name);
    const r = l.r[name];
    const scale = l.scaling[name] * productScale(B.toFloat64Array(), A.toFloat64Array(), B.numel / r, r, A.numel / r);
    return { d: d.toFloat64Array(), scale, r };
  }
  for (const [type, extra] of [["cat", {}], ["svd", { svdRank: 6 }], ["ties_svd", { density: 1, svdRank: 6, svdMethod: "exact" }]] as const)
    it(`${type}: the new delta in each layer's own layout is the weighted sum of the sources'`, () => {
      quiet();
      const config = (r: number, loraAlpha: number) => new LoraConfig({ targetModules: ["emb", "conv", "gpt"], r, loraAlpha, initLoraWeights: false });
      const m = getPeftModel(new Net(), config(3, 6), { adapterName: "a" });
      m.addAdapter("b", config(3, 3));
      expect(layer(m, "conv").loraFactors("a").A.shape).toEqual([3, 3, 3, 2]);
      expect(layer(m, "emb").loraFactors("a").A.shape).toEqual([3, 11]);
      m.addWeightedAdapter(["a", "b"], [0.5, -2], "n", { combinationType: type, ...extra });
      for (const key of ["emb", "conv", "gpt"]) {
        const a = deltaOf(m, key, "a"), b = deltaOf(m, key, "b"), n = deltaOf(m, key, "n");
        // cat weights each delta once; the *_svd types by weight·scaling (PEFT).
        const ca = 0.5 * (type === "cat" ? 1 : 2), cb = -2 * (type === "cat" ? 1 : 1);
        // ties (density 1 prunes nothing): where the signs disagree only the elected sign's term stays.
        const want = type === "ties_svd" ? mergeRef([a.d, b.d], [ca, cb], "total") : a.d.map((x, i) => ca * x + cb * b.d[i]);
        const tol = 4 * U * (Math.abs(ca) * a.scale + Math.abs(cb) * b.scale) + 4 * U * n.scale;
        expect(maxAbsDiff(n.d, want)).toBeLessThanOrEqual(tol);
      }
    });
});
