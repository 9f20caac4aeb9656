import { describe, expect, it, vi } from "vitest";
import {
  Conv1D, Linear, LoraConfig, LoraLayer, LoraLinear, Module, ModulesToSaveWrapper, PeftModel, Tensor, getPeftModel,
  getPeftModelStateDict, setPeftModelStateDict, type BackwardOptions, type LoraLayerOptions,
} from "../lib/index.js";
import { MLP } from "./helpers/models.js";
import { expectClose } from "./helpers/nn-reference.js";
import { errorCode } from "./helpers/errors.js";

const code = errorCode;

const quiet = () => vi.spyOn(process, "emitWarning").mockImplementation(() => {});

function randomizeLora(m: PeftModel, adapter = "default", seed = 1) {
  for (const [, mod] of m.namedModules())
    if (mod instanceof LoraLayer && mod.adapterNames.includes(adapter)) {
      const B = (mod.loraB.get(adapter) as Linear).weight;
      B.copyFrom(Tensor.randn(B.shape, { seed: seed++, std: 0.05 }));
    }
}

describe("getPeftModel on PEFT's custom-model MLP", () => {
  it("prints PEFT's trainable-parameter line (original of modules_to_save frozen)", () => {
    const log = vi.spyOn(console, "log").mockImplementation(() => {});
    const m = getPeftModel(new MLP(), new LoraConfig({ targetModules: ["seq.0", "seq.2"], modulesToSave: ["seq.4"] }));
    expect(m.printTrainableParameters()).toBe("trainable params: 52,162 || all params: 4,100,164 || trainable%: 1.2722");
    expect(log).toHaveBeenCalledWith("trainable params: 52,162 || all params: 4,100,164 || trainable%: 1.2722");
    log.mockRestore();
    expect(m.getNbTrainableParameters()).toEqual([52162, 4100164]);
    expect(m.targetedModuleNames).toEqual(["seq.0", "seq.2"]);
    expect(m.unmatchedTargets).toEqual([]);
  });

  it("uses PEFT's in-memory names", () => {
    const m = getPeftModel(new MLP(8), new LoraConfig({ targetModules: ["seq.0", "seq.2"], modulesToSave: ["seq.4"], r: 2 }));
    const names = [...m.namedParameters()].map(([n]) => n);
    expect(names).toEqual([
      "base_model.model.seq.0.base_layer.weight", "base_model.model.seq.0.base_layer.bias",
      "base_model.model.seq.0.lora_A.default.weight", "base_model.model.seq.0.lora_B.default.weight",
      "base_model.model.seq.2.base_layer.weight", "base_model.model.seq.2.base_layer.bias",
      "base_model.model.seq.2.lora_A.default.weight", "base_model.model.seq.2.lora_B.default.weight",
      "base_model.model.seq.4.original_module.weight", "base_model.model.seq.4.original_module.bias",
      "base_model.model.seq.4.modules_to_save.default.weight", "base_model.model.seq.4.modules_to_save.default.bias",
    ]);
    const trainable = [...m.namedParameters()].filter(([, p]) => p.requiresGrad).map(([n]) => n);
    expect(trainable).toEqual(names.filter((n) => n.includes("lora_") || n.includes("modules_to_save")));
    expect(m.toString()).toContain("(0): LoraLinear(");
  });

  it("the regex target of the guide and a wrong target's error", () => {
    const m = getPeftModel(new MLP(8), new LoraConfig({ targetModules: "seq\\.[02]" }));
    expect(m.targetedModuleNames).toEqual(["seq.0", "seq.2"]);
    expect(code(() => getPeftModel(new MLP(8), new LoraConfig({ targetModules: ["fc9"] })))).toBe("ERR_TARGET_NOT_FOUND");
    expect(() => getPeftModel(new MLP(8), new LoraConfig({ targetModules: ["seq.1"] }))).toThrow(/seq\.1.*ReLU/);
  });

  it("trains: the first forward equals the base model's, adapter weights move, base weights do not", () => {
    const base = new MLP(16, 3);
    const x = Tensor.randn([4, 20], { seed: 5 });
    const before = base.forward(x).toArray();
    const w0 = (base.seq.at(0) as Linear).weight.toArray();
    const m = getPeftModel(base, new LoraConfig({ targetModules: ["seq.0", "seq.2"], r: 4, modulesToSave: ["seq.4"] }));
    expect(m.forward(x).toArray()).toEqual(before);
    const dy = Tensor.fromArray(new Array(8).fill(0.1), [4, 2]);
    m.backward(dy, { inputGrad: false });
    const loraB = [...m.parameters()].filter((p) => p.requiresGrad);
    expect(loraB.every((p) => p.grad !== null)).toBe(true);
    expect([...m.parameters()].filter((p) => !p.requiresGrad).every((p) => p.grad === null)).toBe(true);
    expect((m.baseModel.model.getSubmodule("seq.0.base_layer") as Linear).weight.toArray()).toEqual(w0);
  });
});

describe("adapters: add, set, delete, disable, merge", () => {
  it("add/set/delete with PEFT's activation rules", () => {
    quiet();
    const m = getPeftModel(new MLP(8), new LoraConfig({ targetModules: ["seq.0"], r: 2 }));
    m.addAdapter("other", new LoraConfig({ targetModules: ["seq.0", "seq.2"], r: 3 }));
    expect(m.activeAdapters).toEqual(["default"]);
    const l2 = m.baseModel.model.getSubmodule("seq.2") as LoraLinear;
    expect(l2.adapterNames).toEqual(["other"]);
    // a layer created for the inactive adapter is frozen and does not change the output
    expect((l2.loraA.get("other") as Linear).weight.requiresGrad).toBe(false);
    randomizeLora(m, "other");
    const x = Tensor.randn([3, 20], { seed: 1 });
    const yDefault = m.forward(x).toArray();
    m.setAdapter("other");
    expect((l2.loraA.get("other") as Linear).weight.requiresGrad).toBe(true);
    const yOther = m.forward(x).toArray();
    expect(yOther).not.toEqual(yDefault);
    expect(code(() => m.setAdapter("nope"))).toBe("ERR_CONFIG");
    expect(code(() => m.addAdapter("other", new LoraConfig({ targetModules: ["seq.0"] })))).toBe("ERR_CONFIG");
    const A = (l2.loraA.get("other") as Linear).weight;
    m.deleteAdapter("other");
    expect(A.disposed).toBe(true);
    expect(m.activeAdapters).toEqual(["default"]);
    expect(Object.keys(m.peftConfig)).toEqual(["default"]);
    expect(m.forward(x).toArray()).toEqual(yDefault);
  });

  it("disableAdapter() is a scope: base output inside, adapters back after, nesting works", () => {
    const m = getPeftModel(new MLP(8), new LoraConfig({ targetModules: ["seq.0", "seq.2"], modulesToSave: ["seq.4"] }));
    randomizeLora(m);
    const saved = m.baseModel.model.getSubmodule("seq.4") as ModulesToSaveWrapper;
    (saved.modulesToSave.get("default") as Linear).weight.copyFrom(Tensor.randn([2, 8], { seed: 9 }));
    const x = Tensor.randn([3, 20], { seed: 2 });
    const withAdapters = m.forward(x).toArray();
    const base = new MLP(8);
    const plain = base.forward(x).toArray();
    {
      using _outer = m.disableAdapter();
      expect(m.forward(x).toArray()).toEqual(plain);
      {
        using _inner = m.disableAdapter();
        expect(m.forward(x).toArray()).toEqual(plain);
      }
      expect(m.forward(x).toArray()).toEqual(plain);
    }
    expect(m.forward(x).toArray()).toEqual(withAdapters);
  });

  it("mergeAdapter/unmergeAdapter keep outputs; mergeAndUnload and unload give plain models", () => {
    quiet();
    const make = () => {
      const m = getPeftModel(new MLP(12, 4), new LoraConfig({ targetModules: ["seq.0", "seq.2"], modulesToSave: ["seq.4"], r: 4 }));
      randomizeLora(m);
      return m;
    };
    const x = Tensor.randn([5, 20], { seed: 3 });
    const m = make();
    const y = m.forward(x).toFloat32Array();
    m.mergeAdapter();
    expectClose(m.forward(x).toFloat32Array(), y, () => 1e-5, "merged");
    m.unmergeAdapter();
    expectClose(m.forward(x).toFloat32Array(), y, () => 1e-5, "unmerged");
    const merged = m.mergeAndUnload();
    expect([...merged.namedModules()].some(([, mod]) => mod instanceof LoraLayer || mod instanceof ModulesToSaveWrapper)).toBe(false);
    expect([...merged.namedParameters()].map(([n]) => n)).toEqual(["seq.0.weight", "seq.0.bias", "seq.2.weight", "seq.2.bias", "seq.4.weight", "seq.4.bias"]);
    expectClose(merged.forward(x).toFloat32Array(), y, () => 1e-5, "mergeAndUnload");
    const u = make();
    const plain = new MLP(12, 4).forward(x).toArray();
    const unloaded = u.unload();
    expect(unloaded.forward(x).toArray()).toEqual(plain);
  });

  it("modulesToSave: one active copy, original frozen, copies per adapter", () => {
    quiet();
    const m = getPeftModel(new MLP(8), new LoraConfig({ targetModules: ["seq.0"], modulesToSave: ["seq.4"] }));
    m.addAdapter("b", new LoraConfig({ targetModules: ["seq.0"], modulesToSave: ["seq.4"] }));
    const w = m.baseModel.model.getSubmodule("seq.4") as ModulesToSaveWrapper;
    expect(w.adapterNames).toEqual(["default", "b"]);
    expect([...w.originalModule.parameters()].every((p) => !p.requiresGrad)).toBe(true);
    expect([...w.modulesToSave.get("default").parameters()].every((p) => p.requiresGrad)).toBe(true);
    expect([...w.modulesToSave.get("b").parameters()].every((p) => !p.requiresGrad)).toBe(true);
    m.setAdapter("b");
    expect(w.activeAdapter).toBe("b");
    expect([...w.modulesToSave.get("b").parameters()].every((p) => p.requiresGrad)).toBe(true);
    expect(() => m.setAdapter(["default", "b"])).toThrow(/multiple/);
  });

  it("bias 'all' and 'lora_only' make the right biases trainable", () => {
    const all = getPeftModel(new MLP(8), new LoraConfig({ targetModules: ["seq.0"], bias: "all" }));
    expect([...all.namedParameters()].filter(([, p]) => p.requiresGrad).map(([n]) => n).filter((n) => n.endsWith("bias"))).toEqual([
      "base_model.model.seq.0.base_layer.bias", "base_model.model.seq.2.bias", "base_model.model.seq.4.bias",
    ]);
    const only = getPeftModel(new MLP(8), new LoraConfig({ targetModules: ["seq.0"], bias: "lora_only" }));
    expect([...only.namedParameters()].filter(([, p]) => p.requiresGrad).map(([n]) => n).filter((n) => n.endsWith("bias"))).toEqual([
      "base_model.model.seq.0.base_layer.bias",
    ]);
  });
});

describe("state dicts with PEFT's file keys", () => {
  it("strips the adapter name, saves modules_to_save as <path>.<param>, and round-trips", () => {
    quiet();
    const m = getPeftModel(new MLP(8), new LoraConfig({ targetModules: ["seq.0", "seq.2"], modulesToSave: ["seq.4"], bias: "lora_only" }));
    randomizeLora(m);
    const sd = getPeftModelStateDict(m);
    expect(Object.keys(sd).sort()).toEqual([
      "base_model.model.seq.0.bias", "base_model.model.seq.0.lora_A.weight", "base_model.model.seq.0.lora_B.weight",
      "base_model.model.seq.2.bias", "base_model.model.seq.2.lora_A.weight", "base_model.model.seq.2.lora_B.weight",
      "base_model.model.seq.4.bias", "base_model.model.seq.4.weight",
    ]);
    const n = getPeftModel(new MLP(8, 50), new LoraConfig({ targetModules: ["seq.0", "seq.2"], modulesToSave: ["seq.4"], bias: "lora_only" }));
    setPeftModelStateDict(n, sd);
    const x = Tensor.randn([2, 20], { seed: 4 });
    // seq.0/seq.2 base weights differ between the two models, so compare the adapter tensors
    for (const [k, t] of Object.entries(getPeftModelStateDict(n))) expect(t.toArray()).toEqual(sd[k].toArray());
    void x;
  });

  it("reports missing, unexpected and mis-shaped keys without copying anything", () => {
    const m = getPeftModel(new MLP(8), new LoraConfig({ targetModules: ["seq.0"] }));
    const sd = getPeftModelStateDict(m);
    const a = sd["base_model.model.seq.0.lora_A.weight"];
    delete sd["base_model.model.seq.0.lora_B.weight"];
    sd["base_model.model.seq.9.lora_A.weight"] = Tensor.zeros([1]);
    sd["base_model.model.seq.0.lora_A.weight"] = Tensor.zeros([3, 3]);
    expect(() => setPeftModelStateDict(m, sd)).toThrow(/missing: base_model\.model\.seq\.0\.lora_B\.weight \[8, 8\].*unexpected: base_model\.model\.seq\.9\.lora_A\.weight \[1\].*shape mismatch/);
    expect(a.disposed).toBe(false);
  });
});

describe("custom modules", () => {
  class Scale extends Module {
    weight: Tensor;
    constructor(readonly n: number) {
      super();
      this.weight = this.registerParameter("weight", Tensor.fromArray(new Array(n).fill(2), [n]));
    }
    override forward(x: Tensor): Tensor {
      const v = x.toFloat32Array(), w = this.weight.toFloat32Array();
      return Tensor.fromArray(v.map((e, i) => e * w[i % this.n]), x.shape);
    }
  }
  class LoraScale extends LoraLayer {
    constructor(base: Scale, opts: LoraLayerOptions) {
      super(base);
      this.updateLayer(opts);
    }
    protected features(): [number, number] {
      return [(this.baseLayer as Scale).n, (this.baseLayer as Scale).n];
    }
    override forward(x: Tensor): Tensor {
      return this.baseLayer.forward(x);
    }
    override backward(_dy: Tensor, _o?: BackwardOptions): Tensor | null {
      return null;
    }
    merge(): void {}
    unmerge(): void {}
    getDeltaWeight(): Tensor {
      return Tensor.zeros([1]);
    }
  }
  class Net extends Module {
    scale = new Scale(4);
    fc: Linear;
    constructor() {
      super();
      this.registerModule("scale", this.scale);
      this.fc = this.registerModule("fc", new Linear(4, 3));
    }
    override forward(x: Tensor): Tensor {
      return this.fc.forward(this.scale.forward(x));
    }
  }

  it("registerCustomModule maps a user type to a user LoraLayer; own fields follow the swap", () => {
    const config = new LoraConfig({ targetModules: ["scale", "fc"], r: 2 });
    config.registerCustomModule(new Map([[Scale, LoraScale]]));
    const net = new Net();
    const m = getPeftModel(net, config);
    expect(m.baseModel.model.getSubmodule("scale")).toBeInstanceOf(LoraScale);
    expect(net.fc).toBeInstanceOf(LoraLinear);
    expect(m.forward(Tensor.zeros([1, 4])).shape).toEqual([1, 3]);
    expect(() => getPeftModel(new Net(), new LoraConfig({ targetModules: ["scale"] }))).toThrow(/scale.*Scale/);
  });

  it("Conv1D targets become fan_in_fan_out LoRA layers", () => {
    quiet();
    class G extends Module {
      c_attn = new Conv1D(18, 6);
      constructor() {
        super();
        this.registerModule("c_attn", this.c_attn);
      }
      override forward(x: Tensor): Tensor {
        return this.c_attn.forward(x);
      }
    }
    const m = getPeftModel(new G(), new LoraConfig({ targetModules: ["c_attn"], fanInFanOut: true }));
    expect((m.baseModel.model.getSubmodule("c_attn") as LoraLinear).fanInFanOut).toBe(true);
  });
});

describe("addAdapter after getPeftModel", () => {
  it("defaults a config without targetModules from the model type the model was wrapped with (PEFT's model_type)", () => {
    class Attn extends Module {
      q_proj = this.registerModule("q_proj", new Linear(6, 6, { seed: 1 }));
      v_proj = this.registerModule("v_proj", new Linear(6, 6, { seed: 2 }));
      o_proj = this.registerModule("o_proj", new Linear(6, 6, { seed: 3 }));
      forward(x: Tensor): Tensor {
        return this.o_proj.forward(this.v_proj.forward(this.q_proj.forward(x)));
      }
    }
    const m = getPeftModel(new Attn(), new LoraConfig({ r: 2 }), { modelType: "llama" });
    m.addAdapter("second", new LoraConfig({ r: 3 }));
    const holders = [...m.namedModules()].filter(([, mod]) => mod instanceof LoraLayer && (mod as LoraLayer).adapterNames.includes("second")).map(([n]) => n.split(".").pop());
    // llama's LoRA defaults: q_proj and v_proj, as for the first adapter
    expect(holders.sort()).toEqual(["q_proj", "v_proj"]);
    m.dispose();
  });
});
