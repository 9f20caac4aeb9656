// bf16 mode (README "bf16 mode"): bf16 base weights and activations, f32 adapters with f32 gradients and
// optimizer state, f32 losses. Checked against the same model run in f32 from the same (bf16-representable)
// weights and inputs.
import { describe, expect, it } from "vitest";
import { AdamW, F, Linear, LoraConfig, SiLU, Sequential, Tensor, getPeftModel, manualSeed } from "../lib/index.js";

function build(dtype: "f32" | "bf16") {
  manualSeed(3);
  // The f32 twin starts from the bf16-rounded base weights, so only activation roundings differ.
  const base = new Sequential(new Linear(33, 64), new SiLU(), new Linear(64, 17)).to("bf16");
  if (dtype === "f32") base.to("f32");
  manualSeed(4);
  const model = getPeftModel(base, new LoraConfig({ r: 4, loraAlpha: 8, targetModules: ["0", "2"], initLoraWeights: false }));
  return model;
}

function relNorm(a: Float32Array, b: Float32Array): number {
  let d = 0, n = 0;
  for (let i = 0; i < a.length; i++) d += (a[i] - b[i]) ** 2, n += b[i] ** 2;
  return Math.sqrt(d / n);
}

describe("bf16 mode", () => {
  it("keeps adapters, their gradients and AdamW's updates in f32 while the base and activations are bf16", () => {
    const model = build("bf16"), ref = build("f32");
    const trainable = (m: typeof model) => [...m.namedParameters()].filter(([, p]) => p.requiresGrad);
    for (const [name, p] of trainable(model)) expect(p.dtype, name).toBe("f32");
    for (const [name, p] of model.namedParameters()) if (!p.requiresGrad) expect(p.dtype, name).toBe("bf16");

    manualSeed(5);
    const x32 = Tensor.randn([7, 33]).to("bf16").to("f32"); // bf16-representable inputs for both runs
    const target = Tensor.fromArray(Array.from({ length: 7 }, (_, i) => (i * 5) % 17), [7], "i64");
    const y = model.forward(x32.to("bf16"));
    expect(y.dtype).toBe("bf16");
    const loss = F.crossEntropy(y, target);
    expect(loss.dtype).toBe("f32");
    loss.backward();
    const yRef = ref.forward(x32);
    const lossRef = F.crossEntropy(yRef, target);
    lossRef.backward();
    // Each activation is rounded to bf16 (relative error <= 2^-9) about four times between input and loss
    // (layer output, SiLU, layer output, logits); the loss and gradients move by a few times that.
    expect(Math.abs(loss.toArray()[0] - lossRef.toArray()[0])).toBeLessThan(8 * 2 ** -9 * Math.abs(lossRef.toArray()[0]));
    const refGrads = new Map(trainable(ref).map(([n, p]) => [n, p.grad!.toFloat32Array()]));
    for (const [name, p] of trainable(model)) {
      expect(p.grad!.dtype, name).toBe("f32");
      expect(relNorm(p.grad!.toFloat32Array(), refGrads.get(name)!), name).toBeLessThan(8 * 2 ** -9);
    }
    const opt = new AdamW(trainable(model).map(([, p]) => p), { lr: 1e-2 });
    const before = trainable(model).map(([, p]) => p.toFloat32Array());
    opt.step();
    trainable(model).forEach(([name, p], i) => {
      expect(p.dtype, name).toBe("f32");
      // AdamW's first step moves every weight with a nonzero gradient by lr (in f32, not bf16's 8 bits).
      const after = p.toFloat32Array(), g = p.grad!.toFloat32Array();
      for (let j = 0; j < after.length; j++)
        if (Math.abs(g[j]) > 1e-6) expect(Math.abs(Math.abs(after[j] - before[i][j]) - 1e-2) / 1e-2).toBeLessThan(0.02);
    });
  });

  it("returns every loss in f32 for bf16 and f16 inputs, with the input gradient in the input's dtype", () => {
    for (const dt of ["bf16", "f16"] as const) {
      const logits = Tensor.randn([5, 7]).to(dt);
      logits.requiresGrad = true;
      const t = Tensor.fromArray([0, 1, 2, 3, 6], [5], "i64");
      for (const loss of [F.crossEntropy(logits, t), F.nllLoss(F.logSoftmax(logits), t), F.mseLoss(logits, Tensor.zeros([5, 7]).to(dt))]) {
        expect(loss.dtype).toBe("f32");
        loss.backward();
        expect(logits.grad!.dtype).toBe(dt);
        logits.grad = null;
      }
    }
  });

  it("still runs f32 inputs through a bf16 layer (the weight is widened, the output is f32)", () => {
    const lin = new Linear(17, 7).to("bf16");
    const x = Tensor.randn([3, 17]);
    const y = lin.forward(x);
    expect(y.dtype).toBe("f32");
    const w = lin.weight.to("f32");
    const want = F.linear(x, w, lin.bias!.to("f32"));
    expect(relNorm(y.toFloat32Array(), want.toFloat32Array())).toBeLessThan(1e-6);
  });
});
