// Wrong arguments to public functions: each call returns or throws an Error with a string `code`, quickly,
// and building its message never throws (symbols, bigints, proxies, null-prototype objects, detached typed
// arrays and sparse arrays of length 2^32-1 included).
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  AdamW, CheckpointModule, Embedding, F, GELU, LORA_DISPATCHERS, Linear, LoraConfig, LoraLinear, Module, ModuleList, PeftError,
  PeftModel, Sequential, SiLU, Tensor, checkTargetModuleExists, configToJSONString, defaultFeedforwardModules,
  defaultTargetModules, findTargetModules, getPeftModel, gradcheck, openSharded, saveSafetensorsSync, tidy,
} from "../lib/index.js";
import { errorCode } from "./helpers/errors.js";

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any;

const SPARSE = () => new Array(2 ** 32 - 1);
const NULL_PROTO = () => Object.create(null) as object;
const TRAPPED = () => new Proxy({}, { get: () => { throw new Error("trap"); }, getPrototypeOf: () => null });
function detached(): Float32Array {
  const buf = new ArrayBuffer(16);
  const view = new Float32Array(buf);
  structuredClone(buf, { transfer: [buf] });
  return view;
}

function model(): PeftModel {
  const seq = new Sequential(new Linear(4, 4, { seed: 1 }), new SiLU(), new Linear(4, 2, { seed: 2 }));
  return getPeftModel(seq, new LoraConfig({ targetModules: ["0", "2"], r: 2 }));
}

function lora(): LoraLinear {
  return new LoraLinear(new Linear(4, 3, { seed: 1 }), { r: 2 });
}

const dir = mkdtempSync(join(tmpdir(), "node-peft-args-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** call -> the code it must throw. */
const cases: [string, () => unknown, string][] = [
  // Sparse arrays of length 2^32-1: refused by length, never walked.
  ["PeftModel#setAdapter(sparse)", () => model().setAdapter(SPARSE()), "ERR_OUT_OF_RANGE"],
  ["LoraLinear#setAdapter(sparse)", () => lora().setAdapter(SPARSE()), "ERR_OUT_OF_RANGE"],
  ["F.cat(sparse)", () => F.cat(SPARSE()), "ERR_OUT_OF_RANGE"],
  ["F.expand(x, sparse)", () => F.expand(Tensor.zeros([2]), SPARSE()), "ERR_OUT_OF_RANGE"],
  ["F.split(x, sparse)", () => F.split(Tensor.zeros([2]), SPARSE()), "ERR_OUT_OF_RANGE"],
  ["new ModuleList(sparse)", () => new ModuleList(SPARSE()), "ERR_OUT_OF_RANGE"],
  ["Module#to(sparse)", () => new Linear(2, 2).to(SPARSE() as Any), "ERR_INVALID_ARG_TYPE"],
  ["defaultFeedforwardModules(sparse)", () => defaultFeedforwardModules(SPARSE() as Any), "ERR_INVALID_ARG_TYPE"],
  ["new PeftError(code, sparse)", () => { throw new PeftError("ERR_X", SPARSE() as Any); }, "ERR_X"],
  ["LoraLinear#getDeltaWeight(sparse)", () => lora().getDeltaWeight(SPARSE() as Any), "ERR_INVALID_ARG_TYPE"],
  ["PeftModel#addAdapter(sparse, config)", () => model().addAdapter(SPARSE() as Any, new LoraConfig({ targetModules: ["0"] })), "ERR_CONFIG"],
  ["LoraConfig.fromJSON({key: sparse})", () => LoraConfig.fromJSON({ dispose: SPARSE() }), "ERR_CONFIG"],
  ["new LoraConfig({targetModules: sparse})", () => new LoraConfig({ targetModules: SPARSE() }), "ERR_CONFIG"],
  ["mergeAdapter({adapterNames: sparse})", () => model().mergeAdapter({ adapterNames: SPARSE() }), "ERR_OUT_OF_RANGE"],

  // Missing, null and non-object arguments and options.
  ["configToJSONString()", () => (configToJSONString as Any)(), "ERR_INVALID_ARG_TYPE"],
  ["configToJSONString(null)", () => configToJSONString(null as Any), "ERR_INVALID_ARG_TYPE"],
  ["configToJSONString(1)", () => configToJSONString(1 as Any), "ERR_INVALID_ARG_TYPE"],
  ["findTargetModules()", () => (findTargetModules as Any)(), "ERR_INVALID_ARG_TYPE"],
  ["findTargetModules(8, null)", () => (findTargetModules as Any)(8, null), "ERR_INVALID_ARG_TYPE"],
  ["findTargetModules(8, config, opts)", () => (findTargetModules as Any)(8, { targetModules: ["a"] }, { isLinearLike: () => false, isSupported: () => true, typeName: () => "x" }), "ERR_INVALID_ARG_TYPE"],
  ["checkTargetModuleExists()", () => (checkTargetModuleExists as Any)(), "ERR_INVALID_ARG_TYPE"],
  ["checkTargetModuleExists(null, key)", () => checkTargetModuleExists(null as Any, "a"), "ERR_INVALID_ARG_TYPE"],
  ["checkTargetModuleExists(config, non-string key)", () => checkTargetModuleExists({ targetModules: ["a"] }, [4, 0] as Any), "ERR_INVALID_ARG_TYPE"],
  ["checkTargetModuleExists({excludeModules: 3})", () => checkTargetModuleExists({ excludeModules: 3 } as Any, "a"), "ERR_INVALID_ARG_TYPE"],
  ["checkTargetModuleExists({targetModules: [1]})", () => checkTargetModuleExists({ targetModules: [1] } as Any, "a"), "ERR_INVALID_ARG_TYPE"],
  ["new AdamW()", () => new (AdamW as Any)(), "ERR_INVALID_ARG_TYPE"],
  ["new AdamW(detached)", () => new AdamW(detached() as Any), "ERR_INVALID_ARG_TYPE"],
  ["new AdamW(params, {betas: 1})", () => new AdamW([], { betas: 1 as Any }), "ERR_INVALID_ARG_TYPE"],
  ["new AdamW(sparse)", () => new AdamW(SPARSE()), "ERR_OUT_OF_RANGE"],
  ["new GELU(null)", () => new GELU(null as Any), "ERR_INVALID_ARG_TYPE"],
  ["F.gelu(x, null)", () => F.gelu(Tensor.zeros([2]), null as Any), "ERR_INVALID_ARG_TYPE"],
  ["F.clamp(x, null)", () => F.clamp(Tensor.zeros([2]), null as Any), "ERR_INVALID_ARG_TYPE"],
  ["Module#loadStateDict(x, null)", () => new Linear(2, 2).loadStateDict({}, null as Any), "ERR_INVALID_ARG_TYPE"],
  ["SiLU#backward(dy, null)", () => new SiLU().backward(Tensor.zeros([2]), null as Any), "ERR_INVALID_ARG_TYPE"],
  ["Sequential#backward()", () => (new Sequential(new SiLU()).backward as Any)(), "ERR_INVALID_ARG_TYPE"],
  ["Sequential#backward(non-tensor)", () => new Sequential(new SiLU()).backward({ dim: -3 } as Any), "ERR_INVALID_ARG_TYPE"],
  ["LoraLinear#backward()", () => (lora().backward as Any)(), "ERR_INVALID_ARG_TYPE"],
  ["Embedding#forward(Proxy(tensor))", () => new Embedding(4, 2).forward(new Proxy(Tensor.zeros([2], { dtype: "i32" }), {})), "ERR_INVALID_ARG_TYPE"],
  ["F.add(Proxy(tensor), 1)", () => F.add(new Proxy(Tensor.zeros([2]), {}), 1), "ERR_INVALID_ARG_TYPE"],
  ["PeftModel#mergeAdapter(null)", () => model().mergeAdapter(null as Any), "ERR_INVALID_ARG_TYPE"],
  ["PeftModel#mergeAndUnload(null)", () => model().mergeAndUnload(null as Any), "ERR_INVALID_ARG_TYPE"],
  ["PeftModel#mergeAdapter({adapterNames: 1})", () => model().mergeAdapter({ adapterNames: 1 as Any }), "ERR_INVALID_ARG_TYPE"],
  ["LoraLinear#merge(null)", () => lora().merge(null as Any), "ERR_INVALID_ARG_TYPE"],
  ["LoraLinear#checkMerge(null)", () => lora().checkMerge(null as Any), "ERR_INVALID_ARG_TYPE"],
  ["Tensor#bytes(null)", () => Tensor.zeros([2]).bytes(null as Any), "ERR_INVALID_ARG_TYPE"],
  ["Tensor.zeros(shape, null)", () => Tensor.zeros([2], null as Any), "ERR_INVALID_ARG_TYPE"],
  ["LORA_DISPATCHERS[0](target)", () => (LORA_DISPATCHERS[0] as Any)(new Linear(2, 2)), "ERR_INVALID_ARG_TYPE"],
  ["new PeftModel(model, config, null)", () => new PeftModel(new Linear(2, 2), new LoraConfig({ targetModules: ["a"] }), null as Any), "ERR_INVALID_ARG_TYPE"],
  ["gradcheck(fn, sparse)", () => gradcheck((x) => x, SPARSE()), "ERR_OUT_OF_RANGE"],
  ["gradcheck(fn, inputs, null)", () => gradcheck((x) => x, [Tensor.zeros([1])], null as Any), "ERR_INVALID_ARG_TYPE"],
  ["tidy(class)", () => tidy(class {} as Any), "ERR_INVALID_ARG_TYPE"],

  // Messages built from symbols, bigints, proxies and null-prototype objects.
  ["Module#to(4n)", () => new Linear(2, 2).to(4n as Any), "ERR_INVALID_ARG_TYPE"],
  ["Tensor#to(Symbol())", () => Tensor.zeros([2]).to(Symbol() as Any), "ERR_INVALID_ARG_TYPE"],
  ["defaultTargetModules(Symbol())", () => defaultTargetModules(Symbol() as Any, "llama"), "ERR_INVALID_ARG_TYPE"],
  ["defaultTargetModules(LORA, Symbol())", () => defaultTargetModules("LORA", Symbol() as Any), "ERR_INVALID_ARG_TYPE"],
  ["defaultFeedforwardModules(Symbol())", () => defaultFeedforwardModules(Symbol() as Any), "ERR_INVALID_ARG_TYPE"],
  ["defaultFeedforwardModules(Proxy)", () => defaultFeedforwardModules(TRAPPED() as Any), "ERR_INVALID_ARG_TYPE"],
  ["defaultTargetModules(LORA, null-prototype)", () => defaultTargetModules("LORA", NULL_PROTO() as Any), "ERR_INVALID_ARG_TYPE"],
  ["Sequential#at(null-prototype)", () => new Sequential(new SiLU()).at(NULL_PROTO() as Any), "ERR_INVALID_ARG_TYPE"],
  ["Sequential#at(Proxy)", () => new Sequential(new SiLU()).at(TRAPPED() as Any), "ERR_INVALID_ARG_TYPE"],
  ["ModuleList#at(detached)", () => new ModuleList([new SiLU()]).at(detached() as Any), "ERR_INVALID_ARG_TYPE"],
  ["ModuleList#at(Symbol())", () => new ModuleList([new SiLU()]).at(Symbol() as Any), "ERR_INVALID_ARG_TYPE"],
  ["PeftModel#deleteAdapter(Symbol())", () => model().deleteAdapter(Symbol() as Any), "ERR_CONFIG"],
  ["PeftModel#deleteAdapter(null-prototype)", () => model().deleteAdapter(NULL_PROTO() as Any), "ERR_CONFIG"],
  ["LoraLinear#deleteAdapter(Proxy)", () => lora().deleteAdapter(TRAPPED() as Any), "ERR_CONFIG"],
  ["LoraLinear#deleteAdapter(Symbol())", () => lora().deleteAdapter(Symbol() as Any), "ERR_CONFIG"],
  ["LoraLinear#getDeltaWeight(Symbol())", () => lora().getDeltaWeight(Symbol() as Any), "ERR_INVALID_ARG_TYPE"],
  ["LoraLinear#updateLayer({adapterName: Symbol()})", () => lora().updateLayer({ adapterName: Symbol() as Any, r: 2 }), "ERR_CONFIG"],
  ["LoraLinear#updateLayer({r: null-prototype})", () => lora().updateLayer({ r: NULL_PROTO() as Any }), "ERR_CONFIG"],
  ["LoraLinear#updateLayer({initLoraWeights: 1n})", () => lora().updateLayer({ r: 2, initLoraWeights: 1n as Any }), "ERR_UNSUPPORTED"],
  ["CheckpointModule#forward (kind Proxy)", () => new CheckpointModule(TRAPPED() as Any), "ERR_INVALID_ARG_TYPE"],
  ["CheckpointModule#forward(getters)", () => new CheckpointModule("Block").forward(TRAPPED() as Any), "ERR_UNSUPPORTED"],
  ["new PeftError(x, Symbol())", () => { throw new PeftError(class {} as Any, Symbol() as Any); }, "ERR_UNKNOWN"],
  ["new PeftError(code, null-prototype)", () => { throw new PeftError("ERR_X", NULL_PROTO() as Any); }, "ERR_X"],

  // A module inside itself.
  ["registerModule(name, itself)", () => { const m = new Sequential(); m.registerModule("toString", m); }, "ERR_CONFIG"],
  ["registerModule(name, an ancestor)", () => { const a = new Sequential(), b = new Sequential(); a.registerModule("b", b); b.registerModule("a", a); }, "ERR_CONFIG"],
  ["setSubmodule(path, an ancestor)", () => { const a = new Sequential(new Sequential(new SiLU())); a.setSubmodule("0.0", a); }, "ERR_CONFIG"],

  // Public fields assigned wrong types.
  ["tensor.grad = 5", () => { (Tensor.zeros([2]) as Any).grad = 5; }, "ERR_INVALID_ARG_TYPE"],
  ["tensor.grad = Proxy(tensor)", () => { Tensor.zeros([2]).grad = new Proxy(Tensor.zeros([2]), {}); }, "ERR_INVALID_ARG_TYPE"],
  ["tensor.gradIndex = 1", () => { (Tensor.zeros([2]) as Any).gradIndex = 1; }, "ERR_INVALID_ARG_TYPE"],
  ["tensor.gradFn = {}", () => { (Tensor.zeros([2]) as Any).gradFn = {}; }, "ERR_INVALID_ARG_TYPE"],
];

describe("wrong arguments throw coded errors", () => {
  for (const [name, call, want] of cases) {
    it(`${name} -> ${want}`, () => {
      const t0 = Date.now();
      expect(errorCode(call)).toBe(want);
      expect(Date.now() - t0).toBeLessThan(2000);
    });
  }
});

describe("asynchronous entry points", () => {
  const rejects = async (p: () => Promise<unknown>, code: string) => {
    let err: unknown;
    try {
      await p();
    } catch (e) {
      err = e;
    }
    expect((err as { code?: unknown })?.code).toBe(code);
  };
  it("PeftModel#savePretrained(dir, null)", () => rejects(() => model().savePretrained(join(dir, "a"), null as Any), "ERR_INVALID_ARG_TYPE"));
  it("PeftModel#savePretrained(dir, {adapterNames: sparse})", () => rejects(() => model().savePretrained(join(dir, "b"), { adapterNames: SPARSE() }), "ERR_OUT_OF_RANGE"));
  it("PeftModel.fromPretrained(model, dir, null)", () => rejects(() => PeftModel.fromPretrained(new Linear(2, 2), dir, null as Any), "ERR_INVALID_ARG_TYPE"));
  it("PeftModel#loadAdapter({constructor: 1})", () => rejects(() => model().loadAdapter({ constructor: 1 } as Any, "b"), "ERR_INVALID_ARG_TYPE"));
});

describe("messages and structure", () => {
  it("toString and namedModules of a module are finite", () => {
    const m = new Sequential(new SiLU(), new Sequential(new SiLU()));
    expect(errorCode(() => m.registerModule("toString", m))).toBe("ERR_CONFIG");
    expect(m.toString()).toContain("SiLU");
    expect([...m.namedModules()].map(([n]) => n)).toEqual(["", "0", "1", "1.0"]);
  });

  it("a chain of 20000 modules is walked without overflowing the stack", () => {
    const root = new Sequential();
    let at: Module = root;
    for (let i = 0; i < 20000; i++) at = at.registerModule("c", new Sequential());
    expect([...root.namedModules()].length).toBe(20001);
    expect(root.toString().length).toBeGreaterThan(0);
  });

  it("PeftError coerces what is not a string", () => {
    const e = new PeftError(class {} as Any, Symbol() as Any);
    expect(e.code).toBe("ERR_UNKNOWN");
    expect(e.message).toBe("a symbol");
  });

  it("a huge string argument is clipped in the message", () => {
    try {
      model().deleteAdapter("x".repeat(1_000_000));
      expect.unreachable();
    } catch (e) {
      expect((e as Error).message.length).toBeLessThan(1000);
    }
  });

  it("disposing and zeroGrad after a wrong grad assignment still work", () => {
    const l = new Linear(2, 2);
    expect(errorCode(() => { (l.weight as Any).grad = "x"; })).toBe("ERR_INVALID_ARG_TYPE");
    expect(l.weight.grad).toBe(null);
    l.zeroGrad();
    l.dispose();
  });

  it("ShardedFile#info with a bigint name", () => {
    const shard = "model-00001-of-00001.safetensors";
    saveSafetensorsSync(join(dir, shard), { a: Tensor.zeros([2]) });
    writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: { a: shard } }));
    using f = openSharded(join(dir, "model.safetensors.index.json"));
    expect(errorCode(() => f.info(4n as Any))).toBe("ERR_INVALID_ARG_TYPE");
    expect(errorCode(() => f.info("b"))).toBe("ERR_SAFETENSORS");
  });
});
