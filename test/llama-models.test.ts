// LlamaForCausalLM on tiny random configs against the float64 reference (test/llama-reference.ts, itself
// checked against torch on the llama-tiny fixture): grouped-query, multi-query and multi-head attention,
// llama3 and linear rope scaling, tied and untied heads, q/k/v (qwen2) and attention/MLP (llama) biases,
// left and right padding with explicit positions; gradients of every parameter against central differences
// of the reference; bf16 mode; gradient checkpointing.
import { describe, expect, it } from "vitest";
import { F, Tensor, backend, noGrad, type LlamaConfigInit, type LlamaForCausalLM } from "../lib/index.js";
import { refLlamaLogits, refShiftedLoss, type RefInputs } from "./llama-reference.js";
import { refConfigOf, refWeightsOf, tinyLlama } from "./helpers/llama-models.js";
import { expectClose } from "./helpers/numeric.js";

const CONFIGS: Record<string, LlamaConfigInit> = {
  // GQA 4:2 with an explicit head_dim that is not hidden/heads, llama3 rope with every band in use
  // (wavelengths 6.3, 63, 628, 6283 against the bands 16..64).
  "llama GQA + llama3 rope": {
    vocabSize: 31, hiddenSize: 24, intermediateSize: 40, numHiddenLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2, headDim: 8,
    ropeScaling: { type: "llama3", factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 },
  },
  // qwen2: q/k/v biases, no o_proj bias; multi-head; tied head; linear rope scaling
  "qwen2 MHA tied + linear rope": {
    modelType: "qwen2", vocabSize: 29, hiddenSize: 16, intermediateSize: 24, numHiddenLayers: 2, numAttentionHeads: 2, numKeyValueHeads: 2,
    tieWordEmbeddings: true, ropeScaling: { type: "linear", factor: 2 }, ropeTheta: 500,
  },
  // mistral: multi-query (one kv head)
  "mistral MQA": { modelType: "mistral", vocabSize: 23, hiddenSize: 16, intermediateSize: 20, numHiddenLayers: 1, numAttentionHeads: 4, numKeyValueHeads: 1 },
  // llama attention_bias (q/k/v/o) and mlp_bias
  "llama biases": { vocabSize: 19, hiddenSize: 12, intermediateSize: 18, numHiddenLayers: 1, numAttentionHeads: 3, numKeyValueHeads: 1, qkvBias: true, mlpBias: true },
};

// A batch of three rows of 7: full, right-padded (3 pads) and left-padded (2 pads, positions start at 0 on
// the first real token as generate() would give them). The left pads' queries see no key: their output is 0.
const T = 7;
function batch(V: number) {
  const ids = [[1, 5, 9, 2, 7, 3, 4], [2, 8, 6, 1, 0, 0, 0], [0, 0, 3, 9, 4, 7, 1]].map((r) => r.map((t) => t % V));
  const mask = [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1]];
  const positions = [[0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 2, 3, 4]];
  const labels = ids.map((r, b) => r.map((t, i) => (mask[b][i] ? t : -100)));
  const t = (rows: number[][], dtype: "i64" | "i32" = "i64") => Tensor.fromArray(rows.flat(), [rows.length, T], dtype);
  return {
    ref: { ids, attentionMask: mask, positionIds: positions } as RefInputs,
    labels,
    tensors: { ids: t(ids), attentionMask: t(mask, "i32"), positionIds: t(positions), labels: t(labels) },
  };
}

// f32 against float64 through a couple of layers: case.json's tolerance for the same computation.
const f32Tol = (want: Float64Array) => (i: number) => 2e-4 + 2e-4 * Math.abs(want[i]);

function run(model: LlamaForCausalLM, b: ReturnType<typeof batch>) {
  return model.forward(b.tensors.ids, { attentionMask: b.tensors.attentionMask, positionIds: b.tensors.positionIds, labels: b.tensors.labels });
}

describe.each(Object.entries(CONFIGS))("%s", (_name, init) => {
  it("logits and loss match the float64 reference", () => {
    const model = tinyLlama(init).eval();
    const b = batch(init.vocabSize);
    const want = refLlamaLogits(refConfigOf(model.config), refWeightsOf(model), b.ref);
    const out = noGrad(() => run(model, b));
    expect(out.logits.shape).toEqual([3, T, init.vocabSize]);
    expect(out.logits.dtype).toBe("f32");
    expectClose(out.logits.toFloat64Array(), want, f32Tol(want), "logits");
    const loss = refShiftedLoss(want, b.labels, init.vocabSize);
    expect(Math.abs(out.loss!.toFloat64Array()[0] - loss)).toBeLessThan(1e-4 * loss);
    model.dispose();
  });

  it("every parameter's gradient matches central differences of the reference", () => {
    const model = tinyLlama(init);
    const b = batch(init.vocabSize);
    const { loss } = run(model, b);
    loss!.backward();
    const cfg = refConfigOf(model.config);
    const weights = refWeightsOf(model);
    const lossAt = () => refShiftedLoss(refLlamaLogits(cfg, weights, b.ref), b.labels, init.vocabSize);
    let checked = 0;
    for (const [name, p] of model.namedParameters()) {
      expect(p.grad, name).not.toBeNull();
      const g = p.grad!.toFloat64Array();
      const w = weights.get(name)!;
      let gmax = 0;
      for (const v of g) gmax = Math.max(gmax, Math.abs(v));
      // three entries per tensor, spread over it
      for (const i of [0, Math.floor(w.length / 2), w.length - 1]) {
        const x = w[i], h = 1e-5;
        w[i] = x + h;
        const up = lossAt();
        w[i] = x - h;
        const down = lossAt();
        w[i] = x;
        const fd = (up - down) / (2 * h);
        // f32 backward: relative error ~1e-5 of the tensor's largest gradient; FD error ~1e-9
        expect(Math.abs(g[i] - fd), `${name}[${i}]: ${g[i]} vs ${fd}`).toBeLessThanOrEqual(1e-4 * gmax + 1e-4 * Math.abs(fd) + 1e-7);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(20);
    model.dispose();
  });
});

describe("padding, bf16 and checkpointing", () => {
  const init = CONFIGS["llama GQA + llama3 rope"];

  it("a padded row gives the logits of the same tokens unpadded", () => {
    const model = tinyLlama(init).eval();
    const b = batch(init.vocabSize);
    noGrad(() => {
      const full = run(model, b).logits.toFloat64Array();
      const V = init.vocabSize;
      // row 2's real tokens (positions 2..6) alone
      const alone = model.forward(Tensor.fromArray(b.ref.ids[2].slice(2), [1, 5], "i64")).logits.toFloat64Array();
      const padded = full.subarray((2 * T + 2) * V, 3 * T * V);
      expectClose(padded, alone, (i) => 1e-5 + 1e-5 * Math.abs(alone[i]), "left-padded row");
      // a fully masked query row (left pad at position 0) outputs head(norm(embedding + mlp)), finite
      expect(full.subarray(2 * T * V, (2 * T + 1) * V).every(Number.isFinite)).toBe(true);
    });
    model.dispose();
  });

  it("bf16 mode: bf16 weights, activations and logits, an f32 loss, gradients in the parameters' bf16", () => {
    const model = tinyLlama(init, 1, "bf16");
    expect(model.dtype).toBe("bf16");
    for (const [, p] of model.namedParameters()) expect(p.dtype).toBe("bf16");
    const b = batch(init.vocabSize);
    // the reference runs in float64 from the bf16 weights: the difference is bf16 rounding of activations
    const want = refLlamaLogits(refConfigOf(model.config), refWeightsOf(model), b.ref);
    const { logits, loss } = run(model, b);
    expect(logits.dtype).toBe("bf16");
    expect(loss!.dtype).toBe("f32");
    let worst = 0, scale = 0;
    const got = logits.toFloat64Array();
    for (let i = 0; i < want.length; i++) (worst = Math.max(worst, Math.abs(got[i] - want[i]))), (scale = Math.max(scale, Math.abs(want[i])));
    // ~20 bf16 roundings (2^-8 each) on the way to logits of this size
    expect(worst).toBeLessThan(20 * 2 ** -8 * scale);
    const refLoss = refShiftedLoss(want, b.labels, init.vocabSize);
    expect(Math.abs(loss!.toFloat64Array()[0] - refLoss)).toBeLessThan(0.02 * refLoss);
    loss!.backward();
    for (const [name, p] of model.namedParameters()) expect(p.grad?.dtype, name).toBe("bf16");
    model.dispose();
  });

  it("a tied head stays tied through loading and dtype conversion", () => {
    const model = tinyLlama(CONFIGS["qwen2 MHA tied + linear rope"]);
    expect(model.lm_head.weight).toBe(model.model.embed_tokens.weight);
    expect([...model.namedParameters()].map(([n]) => n)).not.toContain("lm_head.weight");
    model.to("bf16");
    expect(model.lm_head.weight).toBe(model.model.embed_tokens.weight);
    expect(model.lm_head.weight.dtype).toBe("bf16");
    expect(model.lm_head.weight.requiresGrad).toBe(true);
    model.dispose();
  });

  it("the loss node: a retained graph runs twice, a scaled loss scales the gradient", () => {
    const gradOf = (f: (model: LlamaForCausalLM) => void) => {
      const model = tinyLlama(init);
      f(model);
      const g = model.lm_head.weight.grad!.toFloat64Array();
      model.dispose();
      return g;
    };
    const b = batch(init.vocabSize);
    const once = gradOf((m) => run(m, b).loss!.backward());
    const twice = gradOf((m) => {
      const { loss } = run(m, b);
      loss!.backward(undefined, { retainGraph: true });
      loss!.backward();
    });
    const scaled = gradOf((m) => F.mul(run(m, b).loss!, 3).backward());
    // the second backward accumulates into dW inside the GEMM, and 3·g rounds per row before dW sums over
    // rows: a few f32 roundings of the largest entry
    const max = once.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    expectClose(twice, once.map((v) => 2 * v), () => 2 * 2 ** -20 * max, "retained");
    expectClose(scaled, once.map((v) => 3 * v), () => 3 * 2 ** -20 * max, "scaled");
  });

  it("gradient checkpointing holds only each layer's input between forward and backward", () => {
    const cfg = { vocabSize: 50, hiddenSize: 64, intermediateSize: 192, numHiddenLayers: 4, numAttentionHeads: 4, numKeyValueHeads: 2 };
    const B = 2, L = 4, E = 64, V = 50, S = 64;
    const ids = Tensor.fromArray(Array.from({ length: B * S }, (_, i) => (i * 7) % V), [B, S], "i64");
    const held = (ckpt: boolean) => {
      const model = tinyLlama(cfg);
      if (ckpt) model.gradientCheckpointingEnable();
      // a first step packs the weights (kept for later GEMMs), so the second measures activations only
      for (let step = 0; step < 2; step++) {
        const before = backend.memory().bytes;
        const { loss, logits } = model.forward(ids, { labels: ids });
        const bytes = backend.memory().bytes - before;
        loss!.backward();
        loss!.dispose();
        logits.dispose();
        model.zeroGrad();
        if (step === 1) {
          model.dispose();
          return bytes;
        }
      }
      return 0;
    };
    const plain = held(false), ckpt = held(true);
    // checkpointed: each layer's input, the final norm's input and output, logits and their gradient (f32)
    expect(ckpt).toBeLessThanOrEqual(((L + 3) * B * S * E + 2 * B * S * V) * 4 + 64 * 1024);
    expect(plain).toBeGreaterThan(3 * ckpt);
  });

  it("gradient checkpointing gives the same gradients", () => {
    const grads = (ckpt: boolean) => {
      const model = tinyLlama(init);
      if (ckpt) model.gradientCheckpointingEnable();
      expect(model.isGradientCheckpointing).toBe(ckpt);
      const { loss, logits } = run(model, batch(init.vocabSize));
      loss!.backward();
      const out = new Map([...model.namedParameters()].map(([n, p]) => [n, Array.from(p.grad!.toFloat32Array())]));
      out.set("logits", Array.from(logits.toFloat32Array()));
      model.dispose();
      return out;
    };
    const plain = grads(false), ckpt = grads(true);
    expect([...ckpt.keys()]).toEqual([...plain.keys()]);
    // the recomputation repeats the same kernels on the same inputs: identical bits
    for (const [n, g] of plain) expect(ckpt.get(n), n).toEqual(g);
  });
});
