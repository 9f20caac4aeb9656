// DoRA on Embedding (PEFT's DoraEmbeddingLayer / DoraEmbeddingVariant): the norm per embedding dimension over
// the vocabulary, y = c ⊙ (W[id] + s·B·A[:, id]), gradients of A, B and m, merge and unmerge.
import { describe, expect, it } from "vitest";
import { Embedding, LoraEmbedding, Tensor, noGrad } from "../lib/index.js";
import { EPS, expectClose, numericGrad, values } from "./helpers/nn-reference.js";

const eps = EPS.f32;

function makeEmb(num: number, dim: number, r: number, seed = 3) {
  const base = new Embedding(num, dim);
  base.weight.copyFrom(Tensor.fromArray(values(num * dim, seed), [num, dim]));
  const l = new LoraEmbedding(base, { r, loraAlpha: 3, useDora: true, initLoraWeights: false });
  const { A, B } = l.loraFactors("default");
  A.copyFrom(Tensor.fromArray(values(A.numel, seed + 1), A.shape));
  B.copyFrom(Tensor.fromArray(values(B.numel, seed + 2).map((v) => 0.5 * v), B.shape));
  return l;
}

/** n_d = ‖W[:, d] + s·(B·A)[d, :]‖ over the vocabulary (W (num, dim), A (r, num), B (dim, r)). */
function refNorms(W: Float64Array, A: Float64Array, B: Float64Array, num: number, dim: number, r: number, s: number): Float64Array {
  const n = new Float64Array(dim);
  for (let d = 0; d < dim; d++) {
    let acc = 0;
    for (let v = 0; v < num; v++) {
      let t = 0;
      for (let j = 0; j < r; j++) t += B[d * r + j] * A[j * num + v];
      acc += (W[v * dim + d] + s * t) ** 2;
    }
    n[d] = Math.sqrt(acc);
  }
  return n;
}

function refForward(ids: number[], W: Float64Array, A: Float64Array, B: Float64Array, m: Float64Array, n: Float64Array, num: number, dim: number, r: number, s: number) {
  const y = new Float64Array(ids.length * dim);
  ids.forEach((id, t) => {
    for (let d = 0; d < dim; d++) {
      let u = 0;
      for (let j = 0; j < r; j++) u += B[d * r + j] * A[j * num + id];
      y[t * dim + d] = (m[d] / n[d]) * (W[id * dim + d] + s * u);
    }
  });
  return y;
}

describe("DoRA on Embedding", () => {
  it("magnitude init per embedding dimension; forward against float64; A, B, m gradients against finite differences", () => {
    const num = 11, dim = 7, r = 3;
    const l = makeEmb(num, dim, r);
    const W = l.baseLayer.weight.toFloat64Array();
    const s = l.scaling.default;
    // Init with the factors now set: a fresh adapter's magnitude is the norm of its own factors.
    l.updateLayer({ adapterName: "fresh", r, loraAlpha: 3, useDora: true, initLoraWeights: false });
    const f = l.loraFactors("fresh");
    const n0 = refNorms(W, f.A.toFloat64Array(), f.B.toFloat64Array(), num, dim, r, l.scaling.fresh);
    expect(l.doraMagnitude("fresh")!.shape).toEqual([dim]);
    // An f32 sum of num squares and r-term products: relative (num + r + 4)·eps.
    expectClose(l.doraMagnitude("fresh")!.toFloat64Array(), n0, (i) => (num + r + 4) * eps * n0[i], "magnitude");
    l.deleteAdapter("fresh");
    const m = l.doraMagnitude("default")!;
    m.copyFrom(Tensor.fromArray(values(dim, 9).map((v) => 1 + 0.5 * v), [dim]));
    const { A, B } = l.loraFactors("default");
    const a = A.toFloat64Array(), b = B.toFloat64Array(), mv = m.toFloat64Array();
    const n = refNorms(W, a, b, num, dim, r, s);
    const ids = [3, 0, 10, 3, 7];
    l.train();
    using idT = Tensor.fromArray(ids, [ids.length], "i32");
    const y = l.forward(idT);
    const want = refForward(ids, W, a, b, mv, n, num, dim, r, s);
    expectClose(y.toFloat64Array(), want, (i) => 1e-5 * (1 + Math.abs(want[i])), "y");
    const G = values(y.numel, 13);
    using g = Tensor.fromArray(G, y.shape);
    y.backward(g);
    y.dispose();
    const sizes = [a.length, b.length, mv.length];
    const loss = (v: Float64Array) => {
      const [aa, bb, mm] = [v.subarray(0, sizes[0]), v.subarray(sizes[0], sizes[0] + sizes[1]), v.subarray(sizes[0] + sizes[1])];
      return refForward(ids, W, aa, bb, mm, n, num, dim, r, s).reduce((acc, e, i) => acc + e * G[i], 0);
    };
    const want2 = numericGrad(loss, new Float64Array([...a, ...b, ...mv]));
    const tol = (i: number) => 1e-4 * (1 + Math.abs(want2[i]));
    expectClose(A.grad!.toFloat64Array(), want2.subarray(0, sizes[0]), tol, "dA");
    expectClose(B.grad!.toFloat64Array(), want2.subarray(sizes[0], sizes[0] + sizes[1]), (i) => tol(i + sizes[0]), "dB");
    expectClose(m.grad!.toFloat64Array(), want2.subarray(sizes[0] + sizes[1]), (i) => tol(i + sizes[0] + sizes[1]), "dm");
    l.dispose();
  });

  it("merge gives the DoRA output from the base alone; unmerge restores W; state entries use PEFT's names", () => {
    const l = makeEmb(9, 5, 2, 17);
    l.eval();
    expect(l.adapterStateEntries("default").map(([k]) => k)).toEqual(["lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"]);
    using ids = Tensor.fromArray([1, 8, 0, 4], [2, 2], "i32");
    using y0 = noGrad(() => l.forward(ids));
    const W0 = l.baseLayer.weight.toFloat64Array();
    l.merge();
    using y1 = noGrad(() => l.forward(ids));
    expectClose(y1.toFloat64Array(), y0.toFloat64Array(), (i) => 1e-5 * (1 + Math.abs(y0.toFloat64Array()[i])), "merged y");
    l.unmerge();
    expectClose(l.baseLayer.weight.toFloat64Array(), W0, () => 1e-5, "W after unmerge");
    l.dispose();
  });
});
