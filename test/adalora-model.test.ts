// AdaLoRA through getPeftModel: AdaLoraConfig (PEFT's fields, defaults, checks and JSON), default targets, the
// rank allocator (budget schedule, one allocation step against a float64 reference of PEFT's RankAllocator), the
// orthogonal regulariser (value and gradient), PEFT-format adapter files with a rank pattern (pruned ranks), a short
// training run whose ranks shrink to target_r, and bad inputs.
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  AdaLoraConfig, AdaLoraModel, AdamW, RankAllocator, Conv2d, Embedding, Linear, Module, ModuleDict, ModuleList, PeftError, PeftModel, SVDLinear, Tensor,
  configFromJSON, configFromPretrained, configToJSONString, getPeftModel, loadSafetensors, manualSeed, mergeCheckpoint, mseLoss, openSafetensors, saveSafetensors,
} from "../lib/index.js";
import { expectClose, expectError } from "./helpers/numeric.js";
import { values } from "./helpers/nn-reference.js";

const tmp = mkdtempSync(join(tmpdir(), "node-peft-adalora-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
beforeEach(() => {
  vi.spyOn(process, "emitWarning").mockImplementation(() => {});
  vi.spyOn(console, "log").mockImplementation(() => {});
});
afterEach(() => vi.restoreAllMocks());

/** A llama-like stack: layers.i.self_attn.{q_proj, v_proj} (d → d), then a head (d → 3). */
class TinyLlama extends Module {
  readonly modelType = "llama";
  readonly paths: string[];
  constructor(readonly d = 8, n = 2, seed = 0) {
    super();
    const layers = Array.from({ length: n }, (_, i) =>
      new ModuleDict({ self_attn: new ModuleDict({ q_proj: new Linear(d, d, { seed: seed + 3 * i }), v_proj: new Linear(d, d, { seed: seed + 3 * i + 1 }) }) }));
    this.registerModule("layers", new ModuleList(layers));
    this.registerModule("head", new Linear(d, 3, { seed: seed + 99 }));
    this.paths = [...layers.flatMap((_, i) => [`layers.${i}.self_attn.q_proj`, `layers.${i}.self_attn.v_proj`]), "head"];
  }
  override forward(x: Tensor): Tensor {
    for (const p of this.paths) x = this.getSubmodule(p).forward(x);
    return x;
  }
}

const cfg = (o: ConstructorParameters<typeof AdaLoraConfig>[0] = {}) => new AdaLoraConfig({ totalStep: 10, ...o });
const layerAt = (m: PeftModel, path: string) => m.baseModel.model.getSubmodule(path) as SVDLinear;
const tuner = (m: PeftModel) => m.baseModel as AdaLoraModel;
const set = (t: Tensor, v: ArrayLike<number>) => t.copyFrom(Tensor.fromArray(v, t.shape));

describe("AdaLoraConfig", () => {
  it("PEFT's defaults and JSON: LoRA's keys plus AdaLoRA's, peft_type ADALORA, rank_pattern null; round trip", () => {
    const c = cfg();
    expect(c).toMatchObject({ targetR: 8, initR: 12, tinit: 0, tfinal: 0, deltaT: 1, beta1: 0.85, beta2: 0.85, orthRegWeight: 0.5, totalStep: 10, rankPattern: null, r: 8, loraAlpha: 8 });
    const j = c.toJSON();
    expect(j).toMatchObject({ peft_type: "ADALORA", target_r: 8, init_r: 12, tinit: 0, tfinal: 0, deltaT: 1, beta1: 0.85, beta2: 0.85, orth_reg_weight: 0.5, total_step: 10, rank_pattern: null, use_dora: false, loftq_config: {}, lora_alpha: 8, alpha_pattern: {} });
    const text = configToJSONString(new AdaLoraConfig({ totalStep: 1000, initR: 12, targetR: 4, deltaT: 10, beta1: 0.5, orthRegWeight: 0 }));
    expect(text).toMatch(/"deltaT": 10,/);
    expect(text).toMatch(/"orth_reg_weight": 0\.0,/);
    expect(text).toMatch(/"beta1": 0\.5,/);
    const back = configFromJSON(JSON.parse(text));
    expect(back).toBeInstanceOf(AdaLoraConfig);
    expect(configToJSONString(back)).toBe(text);
    const rp = { "layers.0.self_attn.q_proj.lora_E": [true, false, true] };
    const withPattern = AdaLoraConfig.fromJSON({ ...JSON.parse(text), rank_pattern: rp });
    expect(withPattern.rankPattern).toEqual(rp);
    expect(configFromJSON(withPattern.toJSON())).toMatchObject({ rankPattern: rp, deltaT: 10 });
  });

  it("PEFT's checks: total_step required and > 0, a budgeting phase, orth_reg_weight >= 0, betas in (0, 1); DoRA and LoftQ refused; r is ignored (warned)", () => {
    expectError(() => new AdaLoraConfig(), PeftError, "ERR_CONFIG", /AdaLoRA does not work when `total_step` is None, supply a value > 0\./);
    expectError(() => new AdaLoraConfig({ totalStep: 0 }), PeftError, "ERR_CONFIG", /total_step/);
    expectError(() => cfg({ tinit: 5, tfinal: 5 }), PeftError, "ERR_CONFIG", /don't allow for a budgeting phase/);
    expect(cfg({ tinit: 4, tfinal: 5 }).tinit).toBe(4);
    expectError(() => cfg({ orthRegWeight: -0.1 }), PeftError, "ERR_CONFIG", /`orth_reg_weight` should be greater than or equal to 0/);
    expectError(() => cfg({ beta1: 1 }), PeftError, "ERR_CONFIG", /beta1 must be in \(0, 1\)/);
    expectError(() => cfg({ beta2: 0 }), PeftError, "ERR_CONFIG", /beta2 must be in \(0, 1\)/);
    expectError(() => cfg({ deltaT: 0 }), PeftError, "ERR_CONFIG", /deltaT must be a positive integer/);
    expectError(() => cfg({ initR: -1 }), PeftError, "ERR_CONFIG", /initR must be an integer >= 0/);
    expectError(() => cfg({ targetR: 1.5 }), PeftError, "ERR_CONFIG", /targetR must be an integer/);
    expectError(() => cfg({ useDora: true as never }), PeftError, "ERR_CONFIG", /ADALORA does not support DoRA/);
    expectError(() => AdaLoraConfig.fromJSON({ total_step: 5, loftq_config: { loftq_bits: 4 } }), PeftError, "ERR_CONFIG", /does not support LOFTQ/);
    expectError(() => AdaLoraConfig.fromJSON({ total_step: 5, rank_pattern: { a: [1, 0] } }), TypeError, "ERR_INVALID_ARG_TYPE", /rank_pattern\["a"\]\[0\] must be a boolean/);
    expectError(() => AdaLoraConfig.fromJSON({ total_step: 5, peft_type: "LORA" }), PeftError, "ERR_CONFIG", /expected "ADALORA"/);
    // LoRA's own rules still hold.
    expectError(() => cfg({ targetModules: ".*q", layersToTransform: [0] }), PeftError, "ERR_CONFIG", /`layers_to_transform` cannot be used/);
    const warn = vi.mocked(process.emitWarning);
    cfg({ r: 16 });
    expect(warn.mock.calls.some(([m]) => String(m).includes("`r` is not used in AdaLora"))).toBe(true);
  });

  it("configFromPretrained reads an AdaLoRA adapter_config.json", async () => {
    const dir = join(tmp, "cfg");
    mkdirSync(dir);
    writeFileSync(join(dir, "adapter_config.json"), JSON.stringify({ peft_type: "ADALORA", total_step: 100, init_r: 6, target_r: 2, target_modules: ["q_proj"] }));
    const c = await configFromPretrained(dir);
    expect(c).toBeInstanceOf(AdaLoraConfig);
    expect(c).toMatchObject({ totalStep: 100, initR: 6, targetR: 2, targetModules: ["q_proj"] });
  });
});

describe("getPeftModel with AdaLoraConfig", () => {
  it("default targets from the AdaLoRA mapping (llama: q_proj, v_proj); only A, E, B train; ranknum counted, frozen", () => {
    const m = getPeftModel(new TinyLlama(), cfg({ initR: 3 }));
    expect(m.peftType).toBe("ADALORA");
    expect(m.baseModel).toBeInstanceOf(AdaLoraModel);
    expect(m.targetedModuleNames).toEqual(["layers.0.self_attn.q_proj", "layers.0.self_attn.v_proj", "layers.1.self_attn.q_proj", "layers.1.self_attn.v_proj"]);
    expect(m.peftConfig.default).toMatchObject({ targetModules: ["q_proj", "v_proj"] });
    expect([...m.namedParameters()].filter(([, p]) => p.requiresGrad).map(([n]) => n).slice(0, 3)).toEqual([
      "base_model.model.layers.0.self_attn.q_proj.lora_A.default",
      "base_model.model.layers.0.self_attn.q_proj.lora_B.default",
      "base_model.model.layers.0.self_attn.q_proj.lora_E.default",
    ]);
    // 4 layers × (3·8 + 8·3 + 3) trainable; all: base 4·72 + 27 plus adapters plus one ranknum per layer.
    expect(m.getNbTrainableParameters()).toEqual([4 * 51, 4 * 72 + 27 + 4 * 51 + 4]);
    expect(tuner(m).trainableAdapterName).toBe("default");
    expect(tuner(m).rankAllocator!.initBgt).toBe(12);
    expect(tuner(m).rankAllocator!.targetBgt).toBe(32);
  });

  it("bad targets and setups: unsupported module types, a second trainable adapter, add_weighted_adapter, no gradients", () => {
    class WithConv extends Module {
      constructor() {
        super();
        this.registerModule("conv", new Conv2d(2, 2, 1));
        this.registerModule("emb", new Embedding(4, 2));
        this.registerModule("grouped", new Conv2d(2, 2, 1, { groups: 2 }));
      }
      override forward(x: Tensor) {
        return x;
      }
    }
    expectError(() => getPeftModel(new WithConv(), cfg({ targetModules: ["emb"] })), PeftError, "ERR_UNSUPPORTED", /emb/, /Embedding/, /only the following module types are supported: Linear, Conv1D, Conv2d/);
    expectError(() => getPeftModel(new WithConv(), cfg({ targetModules: ["grouped"] })), PeftError, "ERR_UNSUPPORTED", /grouped/, /groups=2 is not supported/);
    expect(getPeftModel(new WithConv(), cfg({ targetModules: ["conv"] })).targetedModuleNames).toEqual(["conv"]);
    expectError(() => getPeftModel(new WithConv(), cfg()), PeftError, "ERR_CONFIG", /targetModules/);
    // The AdaLoRA table's gpt2 entry (c_attn), which this model lacks.
    expect(() => getPeftModel(new TinyLlama(), cfg(), { modelType: "gpt2" })).toThrow(/Target modules \{'c_attn'\} not found/);
    const m = getPeftModel(new TinyLlama(), cfg({ initR: 2 }));
    expectError(() => m.addAdapter("second", cfg({ initR: 2 })), PeftError, "ERR_CONFIG", /supports only 1 trainable adapter/);
    m.addAdapter("frozen", cfg({ initR: 2, inferenceMode: true, targetModules: ["q_proj"] }));
    expect(Object.keys(m.peftConfig)).toEqual(["default", "frozen"]);
    expectError(() => m.addWeightedAdapter(["default"], [1], "w"), PeftError, "ERR_UNSUPPORTED", /addWeightedAdapter is not supported for ADALORA/);
    expectError(() => tuner(m).addWeightedAdapter(), TypeError, "ERR_INVALID_ARG_TYPE", /AdaLoraModel does not support add_weighted_adapter/);
    expectError(() => tuner(m).updateAndAllocate(1), PeftError, "ERR_STATE", /has no gradient; call it after backward and before zeroGrad/);
    expectError(() => tuner(m).updateAndAllocate(-1), TypeError, "ERR_INVALID_ARG_TYPE", /the step must be an integer >= 0/);
    expectError(() => new RankAllocator({} as Module, m.peftConfig.default as AdaLoraConfig, "default"), TypeError, "ERR_INVALID_ARG_TYPE", /RankAllocator: model must be a Module/);
    expectError(() => tuner(m).rankAllocator!.budgetSchedule(1.5), TypeError, "ERR_INVALID_ARG_TYPE", /budgetSchedule: the step/);
    expectError(() => tuner(m).rankAllocator!.maskUsingRankPattern(null as never), TypeError, "ERR_INVALID_ARG_TYPE", /rank pattern object/);
    // Deleting the trainable adapter drops its allocator; a new trainable adapter gets one.
    m.deleteAdapter("default");
    expect(tuner(m).rankAllocator).toBeNull();
    expectError(() => tuner(m).updateAndAllocate(1), PeftError, "ERR_STATE", /no trainable AdaLoRA adapter/);
    m.addAdapter("next", cfg({ initR: 2, targetModules: ["v_proj"] }));
    expect(tuner(m).trainableAdapterName).toBe("next");
    expect(tuner(m).rankAllocator!.initBgt).toBe(2 * 2);
    const inf = getPeftModel(new TinyLlama(), cfg({ initR: 2, inferenceMode: true }));
    expectError(() => tuner(inf).updateAndAllocate(1), PeftError, "ERR_STATE", /no trainable AdaLoRA adapter/);
    expectError(() => tuner(inf).orthogonalRegularization(), PeftError, "ERR_STATE", /no trainable AdaLoRA adapter/);
  });
});

describe("RankAllocator", () => {
  it("the cubic budget schedule (PEFT's formula, Python's int()) at several steps", () => {
    // 2 layers × initR 12 = 24 at the start, 2 × targetR 8 = 16 at the end; tinit 2, tfinal 3, total 15, deltaT 2.
    class Two extends Module {
      constructor() {
        super();
        this.registerModule("q_proj", new Linear(4, 4));
        this.registerModule("v_proj", new Linear(4, 4));
      }
      override forward(x: Tensor) {
        return x;
      }
    }
    const m = getPeftModel(new Two(), cfg({ targetModules: ["q_proj", "v_proj"], tinit: 2, tfinal: 3, totalStep: 15, deltaT: 2 }));
    const a = tuner(m).rankAllocator!;
    // step: [budget, mask] — e.g. step 3: ⌊8·0.9³ + 16⌋ = ⌊21.832⌋ = 21; step 7: ⌊8·0.5³ + 16⌋ = 17.
    const want: Record<number, [number, boolean]> = { 0: [24, false], 2: [24, false], 3: [21, false], 4: [20, true], 7: [17, false], 8: [16, true], 11: [16, false], 12: [16, true], 13: [16, true], 20: [16, true] };
    for (const [step, [budget, mask]] of Object.entries(want)) expect(a.budgetSchedule(Number(step)), `step ${step}`).toEqual({ budget, maskInd: mask });
  });

  it("one allocation step against a float64 reference of PEFT's update_ipt / mask_to_budget (two updates, then masks)", () => {
    const b1 = 0.7, b2 = 0.6;
    const m = getPeftModel(new TinyLlama(5, 1), cfg({ initR: 4, targetR: 2, beta1: b1, beta2: b2, totalStep: 10 }));
    const layers = ["layers.0.self_attn.q_proj", "layers.0.self_attn.v_proj"].map((p) => layerAt(m, p));
    // Reference state: per tensor, value, EMAs.
    type S = { p: Float64Array; ea: Float64Array; eu: Float64Array; rows: number; cols: number };
    const ref: Record<string, S>[] = layers.map(() => ({}));
    let seed = 1;
    layers.forEach((l, li) => {
      const f = l.svdFactors("default");
      for (const [k, t] of Object.entries(f)) {
        set(t, values(t.numel, seed++));
        ref[li][k] = { p: t.toFloat64Array(), ea: new Float64Array(t.numel), eu: new Float64Array(t.numel), rows: t.shape[0], cols: t.shape[1] };
      }
    });
    const step = (s: number) => {
      layers.forEach((l, li) => {
        for (const [k, t] of Object.entries(l.svdFactors("default"))) {
          t.grad?.dispose();
          t.grad = Tensor.fromArray(values(t.numel, 100 * s + seed++), t.shape);
          const R = ref[li][k], g = t.grad.toFloat64Array();
          R.p = t.toFloat64Array();
          for (let i = 0; i < g.length; i++) {
            const ipt = Math.abs(R.p[i] * g[i]);
            R.ea[i] = b1 * R.ea[i] + (1 - b1) * ipt;
            R.eu[i] = b2 * R.eu[i] + (1 - b2) * Math.abs(ipt - R.ea[i]);
          }
        }
      });
      const res = tuner(m).updateAndAllocate(s)!;
      // budget = ⌊(8 − 4)·(1 − s/10)³ + 4⌋; k = 8 − budget triplets masked.
      const budget = Math.trunc(4 * (1 - s / 10) ** 3 + 4);
      expect(res.budget).toBe(budget);
      const scores = ref.map((L) => {
        const { A, B, E } = L;
        return Array.from({ length: 4 }, (_, j) => {
          let a = 0, b = 0;
          for (let c = 0; c < A.cols; c++) a += A.ea[j * A.cols + c] * A.eu[j * A.cols + c];
          for (let o = 0; o < B.rows; o++) b += B.ea[o * 4 + j] * B.eu[o * 4 + j];
          return E.ea[j] * E.eu[j] + a / A.cols + b / B.rows;
        });
      });
      const threshold = scores.flat().sort((x, y) => x - y)[8 - budget - 1];
      const keep = scores.map((sc) => sc.map((v) => !(v <= threshold)));
      expect(res.rankPattern).toEqual({ "layers.0.self_attn.q_proj.lora_E": keep[0], "layers.0.self_attn.v_proj.lora_E": keep[1] });
      expect(m.peftConfig.default.rankPattern).toEqual(res.rankPattern);
      layers.forEach((l, li) => {
        const e = l.svdFactors("default").E.toFloat64Array();
        const want = ref[li].E.p.map((v, j) => (keep[li][j] ? v : 0));
        expectClose(e, want, () => 0, `E of layer ${li} after step ${s}`);
      });
      return keep;
    };
    const k1 = step(1); // budget ⌊4·0.729 + 4⌋ = 6: 2 masked
    expect(k1.flat().filter((v) => !v).length).toBe(2);
    step(2); // masked E entries are now 0, so their importance drops
  });

  it("the orthogonal regulariser: orth_reg_weight · mean ‖AAᵀ − I‖_F, ‖BᵀB − I‖_F, and its gradient (float64 reference)", () => {
    const m = getPeftModel(new TinyLlama(7, 1), cfg({ initR: 3, orthRegWeight: 0.3 }));
    const ls = ["layers.0.self_attn.q_proj", "layers.0.self_attn.v_proj"].map((p) => layerAt(m, p));
    let seed = 5;
    const mats: { P: Tensor; isA: boolean }[] = [];
    for (const l of ls) {
      const { A, B } = l.svdFactors("default");
      set(A, values(A.numel, seed++));
      set(B, values(B.numel, seed++));
      mats.push({ P: A, isA: true }, { P: B, isA: false });
    }
    let sum = 0;
    const want: Float64Array[] = [];
    for (const { P, isA } of mats) {
      const p = P.toFloat64Array();
      const [rows, cols] = P.shape;
      const r = isA ? rows : cols, inner = isA ? cols : rows;
      const at = (i: number, k: number) => (isA ? p[i * cols + k] : p[k * cols + i]); // row i of A, column i of B
      const C = new Float64Array(r * r);
      for (let i = 0; i < r; i++) for (let j = 0; j < r; j++) {
        let s = 0;
        for (let k = 0; k < inner; k++) s += at(i, k) * at(j, k);
        C[i * r + j] = s - (i === j ? 1 : 0);
      }
      const f = Math.sqrt(C.reduce((s, v) => s + v * v, 0));
      sum += f;
      // d‖C‖/dA = 2·C·A/‖C‖ (A: r × in); d‖C‖/dB = 2·B·C/‖C‖ (B: out × r); times w / (number of matrices).
      const g = new Float64Array(p.length);
      for (let i = 0; i < r; i++) for (let k = 0; k < inner; k++) {
        let s = 0;
        for (let j = 0; j < r; j++) s += C[i * r + j] * at(j, k);
        g[isA ? i * cols + k : k * cols + i] = ((2 * s) / f) * (0.3 / 4);
      }
      want.push(g);
    }
    const res = tuner(m).orthogonalRegularization();
    expect(res.matrices).toBe(4);
    expect(Math.abs(res.value - (0.3 * sum) / 4)).toBeLessThan(1e-5 * res.value);
    mats.forEach(({ P }, i) => expectClose(P.grad!.toFloat64Array(), want[i], (j) => 1e-5 * (1 + Math.abs(want[i][j])), `grad ${i}`));
    // grad: false leaves the gradients alone.
    const before = mats[0].P.grad!.toFloat64Array();
    expect(tuner(m).orthogonalRegularization({ grad: false }).value).toBeCloseTo(res.value, 6);
    expect([...mats[0].P.grad!.toFloat64Array()]).toEqual([...before]);
  });
});

describe("AdaLoRA checkpoints and training", () => {
  it("a PEFT-format AdaLoRA adapter (pruned ranks, rank_pattern in the config) loads, runs as PEFT computes it, and saves back the same files", async () => {
    const dir = join(tmp, "peft-adalora");
    mkdirSync(dir);
    const d = 6, initR = 4;
    const pattern: Record<string, boolean[]> = {
      "layers.0.self_attn.q_proj.lora_E": [true, false, true, false],
      "layers.0.self_attn.v_proj.lora_E": [false, false, false, true],
    };
    // What PEFT 0.19 writes for this adapter: LoraConfig's keys (AdaLoraConfig is one) and AdaLoRA's, the adapter
    // name stripped from the rank_pattern keys.
    const config = {
      alora_invocation_tokens: null, alpha_pattern: {}, arrow_config: null, auto_mapping: null, base_model_name_or_path: null, beta1: 0.85,
      beta2: 0.85, bias: "none", corda_config: null, deltaT: 1, ensure_weight_tying: false, eva_config: null, exclude_modules: null,
      fan_in_fan_out: false, inference_mode: true, init_lora_weights: true, init_r: initR, layer_replication: null, layers_pattern: null,
      layers_to_transform: null, loftq_config: {}, lora_alpha: 16, lora_bias: false, lora_dropout: 0.0, lora_ga_config: null,
      megatron_config: null, megatron_core: "megatron.core", modules_to_save: null, orth_reg_weight: 0.5, peft_type: "ADALORA",
      peft_version: "0.19.1", qalora_group_size: 16, r: 8, rank_pattern: pattern, revision: null, target_modules: ["v_proj", "q_proj"],
      target_parameters: null, target_r: 2, task_type: null, tfinal: 0, tinit: 0, total_step: 10, trainable_token_indices: null,
      use_bdlora: null, use_dora: false, use_qalora: false, use_rslora: false,
    };
    writeFileSync(join(dir, "adapter_config.json"), JSON.stringify(config, null, 2));
    const tensors: Record<string, Tensor> = {};
    const raw: Record<string, Float64Array> = {};
    let seed = 1;
    for (const [key, mask] of Object.entries(pattern)) {
      const path = key.slice(0, -".lora_E".length), r = mask.filter(Boolean).length;
      for (const [which, shape] of [["lora_A", [r, d]], ["lora_B", [d, r]], ["lora_E", [r, 1]]] as const) {
        const v = values(shape[0] * shape[1], seed++);
        tensors[`base_model.model.${path}.${which}`] = Tensor.fromArray(v, shape);
        raw[`${path}.${which}`] = tensors[`base_model.model.${path}.${which}`].toFloat64Array();
      }
    }
    await saveSafetensors(join(dir, "adapter_model.safetensors"), tensors, { format: "pt" });

    const model = new TinyLlama(d, 1);
    const plain = new TinyLlama(d, 1);
    const m = await PeftModel.fromPretrained(model, dir);
    expect(m.peftConfig.default).toBeInstanceOf(AdaLoraConfig);
    const q = layerAt(m, "layers.0.self_attn.q_proj"), v = layerAt(m, "layers.0.self_attn.v_proj");
    expect([q.r.default, v.r.default]).toEqual([2, 1]);
    expect([q.ranknumOf("default"), v.ranknumOf("default")]).toEqual([initR, initR]); // the scaling is the unpruned one
    expect(q.svdFactors("default").B.shape).toEqual([d, 2]);
    // Float64 reference: each adapted layer adds x·(A⊙E)ᵀ·Bᵀ·16/(4 + 1e-5).
    const x = Tensor.fromArray(values(3 * d, 77), [3, d]);
    const s = 16 / Math.fround(initR + Math.fround(1e-5));
    let h = x.toFloat64Array();
    for (const p of ["layers.0.self_attn.q_proj", "layers.0.self_attn.v_proj"]) {
      const base = plain.getSubmodule(p) as Linear;
      const yb = base.forward(Tensor.fromArray(h, [3, d])).toFloat64Array();
      const A = raw[`${p}.lora_A`], B = raw[`${p}.lora_B`], E = raw[`${p}.lora_E`], r = E.length;
      h = yb.map((yv, i) => {
        const row = Math.floor(i / d), o = i % d;
        let acc = 0;
        for (let j = 0; j < r; j++) {
          let t = 0;
          for (let k = 0; k < d; k++) t += h[row * d + k] * A[j * d + k] * E[j];
          acc += t * B[o * r + j];
        }
        return yv + acc * s;
      });
    }
    const want = plain.getSubmodule("head").forward(Tensor.fromArray(h, [3, d])).toFloat64Array();
    expectClose(m.forward(x).toFloat64Array(), want, (i) => 1e-5 * (1 + Math.abs(want[i])), "loaded AdaLoRA forward");

    const out = join(tmp, "peft-adalora-resaved");
    await m.savePretrained(out);
    const saved = JSON.parse(readFileSync(join(out, "adapter_config.json"), "utf8"));
    expect(saved).toEqual(config);
    const back = await loadSafetensors(join(out, "adapter_model.safetensors"));
    expect(Object.keys(back).sort()).toEqual(Object.keys(tensors).sort());
    for (const [k, t] of Object.entries(tensors)) {
      expect(back[k].shape, k).toEqual(t.shape);
      expect([...back[k].toFloat32Array()], k).toEqual([...t.toFloat32Array()]);
    }
    using f = openSafetensors(join(out, "adapter_model.safetensors"));
    expect(f.metadata()).toEqual({ format: "pt" });

    // `node-peft merge` (mergeCheckpoint) gives the weights mergeAndUnload gives.
    const baseFile = join(tmp, "tiny-base.safetensors");
    await saveSafetensors(baseFile, Object.fromEntries([...new TinyLlama(d, 1).namedParameters()]), { format: "pt" });
    const summary = await mergeCheckpoint({ base: baseFile, adapter: dir, out: join(tmp, "tiny-merged.safetensors") });
    expect(summary.merged.sort()).toEqual(["layers.0.self_attn.q_proj.weight", "layers.0.self_attn.v_proj.weight"]);
    const mergedFile = await loadSafetensors(join(tmp, "tiny-merged.safetensors"));
    const unloaded = m.mergeAndUnload();
    for (const [k, p] of unloaded.namedParameters()) expectClose(mergedFile[k].toFloat64Array(), p.toFloat64Array(), () => 1e-6, k);
  });

  it("training: loss falls, the budget shrinks to target_r per layer, the final pattern holds, and the saved adapter is pruned and reloads", async () => {
    manualSeed(3);
    const d = 8, total = 40, tinit = 6, tfinal = 8;
    const config = cfg({ initR: 6, targetR: 2, tinit, tfinal, totalStep: total, deltaT: 2, loraAlpha: 8, orthRegWeight: 0.1 });
    const m = getPeftModel(new TinyLlama(d, 2), config);
    m.train();
    const t = tuner(m);
    // The target: the same stack with shifted q/v weights (a low-rank-ish change to learn).
    const teacher = new TinyLlama(d, 2);
    for (const [n, p] of teacher.namedParameters()) if (/proj\.weight$/.test(n)) set(p, p.toFloat64Array().map((v, i) => v + 0.3 * Math.sin(i)));
    const xs = Tensor.fromArray(values(32 * d, 5), [32, d]);
    const target = teacher.forward(xs);
    const opt = new AdamW([...m.parameters()].filter((p) => p.requiresGrad), { lr: 0.02, weightDecay: 0 });
    const losses: number[] = [];
    for (let step = 0; step <= total + 2; step++) {
      const y = m.forward(xs);
      const { loss, grad } = mseLoss(y, target);
      losses.push(loss);
      y.backward(grad);
      t.orthogonalRegularization();
      opt.step();
      t.updateAndAllocate(step);
      opt.zeroGrad();
      if (step === total - tfinal) {
        // The final allocation: exactly the target budget (targetR per layer) is kept.
        const kept = Object.values(m.peftConfig.default.rankPattern!).flat().filter(Boolean).length;
        expect(kept).toBe(2 * 4);
      }
    }
    expect(losses.at(-1)!).toBeLessThan(0.5 * losses[0]);
    const pattern = m.peftConfig.default.rankPattern!;
    expect(Object.keys(pattern)).toHaveLength(4);
    // The masked singular values stay zero through the last steps (re-masked after each optimizer step).
    for (const [key, keep] of Object.entries(pattern)) {
      const l = layerAt(m, key.slice(0, -".lora_E".length));
      const e = l.svdFactors("default").E.toFloat32Array();
      keep.forEach((k, j) => k || expect(e[j], key).toBe(0));
    }
    m.eval();
    const yTrained = m.forward(xs).toFloat64Array();
    const dir = join(tmp, "trained");
    await m.savePretrained(dir);
    using f = openSafetensors(join(dir, "adapter_model.safetensors"));
    const ranks = f.keys().filter((k) => k.endsWith("lora_E")).map((k) => f.info(k).shape[0]);
    expect(ranks.reduce((a, b) => a + b, 0)).toBe(8);
    expect(f.keys().some((k) => k.includes("ranknum"))).toBe(false);
    const loaded = await PeftModel.fromPretrained(new TinyLlama(d, 2), dir);
    expectClose(loaded.forward(xs).toFloat64Array(), yTrained, (i) => 1e-5 * (1 + Math.abs(yTrained[i])), "reloaded");
    // isTrainable: one trainable adapter with its allocator again.
    const again = await PeftModel.fromPretrained(new TinyLlama(d, 2), dir, { isTrainable: true });
    expect(tuner(again).trainableAdapterName).toBe("default");
    expect([...again.parameters()].some((p) => p.requiresGrad)).toBe(true);
  });

  it("checkpoints that do not fit their config are refused with ERR_CHECKPOINT before any layer is made", async () => {
    const write = async (name: string, config: object, tensors: Record<string, Tensor>) => {
      const dir = join(tmp, name);
      mkdirSync(dir);
      writeFileSync(join(dir, "adapter_config.json"), JSON.stringify({ peft_type: "ADALORA", total_step: 10, target_modules: ["q_proj"], ...config }));
      await saveSafetensors(join(dir, "adapter_model.safetensors"), tensors);
      return dir;
    };
    const q = "base_model.model.layers.0.self_attn.q_proj";
    const full = { [`${q}.lora_A`]: Tensor.zeros([3, 8]), [`${q}.lora_E`]: Tensor.zeros([3, 1]), [`${q}.lora_B`]: Tensor.zeros([8, 3]) };
    const cases: [string, object, Record<string, Tensor>, RegExp][] = [
      ["mask-length", { init_r: 3, rank_pattern: { "layers.0.self_attn.q_proj.lora_E": [true, true] } }, full, /rank_pattern entry .*q_proj.lora_E has 2 entries but init_r is 3/],
      ["init-r", { init_r: 4 }, full, /q_proj.lora_A has shape \[3, 8\] but the config gives layers.0.self_attn.q_proj rank 4 \(.*init_r/],
      ["pruned", { init_r: 3, rank_pattern: { "layers.0.self_attn.q_proj.lora_E": [true, false, true] } }, full, /rank 2 \(the ranks its rank_pattern keeps/],
      ["features", { init_r: 3 }, { ...full, [`${q}.lora_A`]: Tensor.zeros([3, 5]) }, /shape mismatch: .*lora_A \[3, 5\] vs model \[3, 8\]/],
    ];
    for (const [name, config, tensors, msg] of cases)
      await expect(PeftModel.fromPretrained(new TinyLlama(8, 1), await write(name, config, tensors)), name).rejects.toMatchObject({ code: "ERR_CHECKPOINT", message: expect.stringMatching(msg) });
    // And the same file fits the right config.
    const ok = await PeftModel.fromPretrained(new TinyLlama(8, 1), await write("fits", { init_r: 3 }, full));
    expect(layerAt(ok, "layers.0.self_attn.q_proj").r.default).toBe(3);
  });

  it("several adapters: active ones add up; disableAdapter gives the base; mergeAndUnload keeps the output", () => {
    const m = getPeftModel(new TinyLlama(5, 1), cfg({ initR: 3 }));
    m.addAdapter("other", cfg({ initR: 2, inferenceMode: true, targetModules: ["q_proj", "v_proj"] }));
    let seed = 1;
    for (const l of tuner(m).adaLoraLayers()) for (const n of l.adapterNames) for (const t of Object.values(l.svdFactors(n))) set(t, values(t.numel, seed++));
    m.eval();
    const x = Tensor.fromArray(values(10, 9), [2, 5]);
    const only = (names: string[]) => {
      m.setAdapter(names);
      return m.forward(x).toFloat64Array();
    };
    const both = only(["default", "other"]);
    // Each layer is base + Σ adapters: check through the deltas on one layer.
    const q = layerAt(m, "layers.0.self_attn.q_proj");
    const xs = x.toFloat64Array(), W = q.baseLayer.weight.toFloat64Array(), bias = q.baseLayer.bias!.toFloat64Array();
    const dq = ["default", "other"].map((n) => q.getDeltaWeight(n).toFloat64Array());
    const want = Array.from({ length: 10 }, (_, i) => {
      const row = Math.floor(i / 5), o = i % 5;
      let v = bias[o];
      for (let k = 0; k < 5; k++) v += xs[row * 5 + k] * (W[o * 5 + k] + dq[0][o * 5 + k] + dq[1][o * 5 + k]);
      return v;
    });
    expectClose(q.forward(x).toFloat64Array(), want, (i) => 1e-5 * (1 + Math.abs(want[i])), "two adapters on q_proj");
    {
      using _ = m.disableAdapter();
      const plain = new TinyLlama(5, 1);
      expectClose(m.forward(x).toFloat64Array(), plain.forward(x).toFloat64Array(), () => 0, "disabled");
    }
    const merged = m.mergeAndUnload();
    expect(merged.getSubmodule("layers.0.self_attn.q_proj")).toBeInstanceOf(Linear);
    expectClose(merged.forward(x).toFloat64Array(), both, (i) => 1e-5 * (1 + Math.abs(both[i])), "merged and unloaded");
  });

  it("init_r 0 is allowed (PEFT): the layers add nothing", () => {
    const m = getPeftModel(new TinyLlama(4, 1), cfg({ initR: 0 }));
    const x = Tensor.fromArray(values(8, 1), [2, 4]);
    const base = ["layers.0.self_attn.q_proj", "layers.0.self_attn.v_proj"].reduce((h, p) => layerAt(m, p).baseLayer.forward(h), x);
    expect([...m.forward(x).toFloat32Array()]).toEqual([...m.baseModel.model.getSubmodule("head").forward(base).toFloat32Array()]);
    expect(layerAt(m, "layers.0.self_attn.q_proj").svdFactors("default").A.shape).toEqual([0, 4]);
  });
});
