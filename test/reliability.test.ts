// Contracts found by probing as a hostile user would: arguments whose getters dispose tensors, writes through
// kept views, backward out of order, adapter names that are Object.prototype keys, merges that must be
// all-or-nothing, state-dict loads that must not half-apply, and native memory after dispose.
import { describe, expect, it, vi } from "vitest";
import {
  Linear, LoraConfig, LoraLayer, Module, Tensor, getPeftModel, getPeftModelStateDict, linear, setPeftModelStateDict,
  type PeftModel,
} from "../lib/index.js";
import { errorCode } from "./helpers/errors.js";
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadSafetensors, loadSafetensorsSync, loadShardedSafetensors, openSafetensors, openSharded } from "../lib/index.js";
import { distIndex, runNode } from "./helpers/child.js";

const code = errorCode;

class TwoLayers extends Module {
  a: Linear;
  b: Linear;
  constructor(dtype: "f32" | "f16" | "bf16" = "f32") {
    super();
    this.a = this.registerModule("a", new Linear(4, 3, { dtype, seed: 1 }));
    this.b = this.registerModule("b", new Linear(3, 2, { dtype, seed: 2 }));
  }
  override forward(x: Tensor): Tensor {
    const h = this.a.forward(x);
    const y = this.b.forward(h);
    h.dispose();
    return y;
  }
  override backward(dy: Tensor): Tensor | null {
    const dh = this.b.backward(dy)!;
    const dx = this.a.backward(dh);
    dh.dispose();
    return dx;
  }
}

const layer = (m: PeftModel, name: "a" | "b") => (m.baseModel.model as TwoLayers)[name] as unknown as LoraLayer & { baseLayer: Linear };
const weightOf = (l: LoraLayer, which: "lora_A" | "lora_B", adapter = "default") =>
  ((which === "lora_A" ? l.loraA : l.loraB).get(adapter) as Linear).weight;

describe("arguments are read before native state is touched", () => {
  it("a shape getter that disposes the tensor gives ERR_DISPOSED, never a crash (child process)", () => {
    const r = runNode(`
      import { Tensor } from ${JSON.stringify(distIndex)};
      const out = [];
      const attempt = (f) => { try { f(); out.push("ok"); } catch (e) { out.push(e.code); } };
      for (let i = 0; i < 50; i++) {
        const t = Tensor.randn([2, 3]);
        const s = [3, 0];
        Object.defineProperty(s, 1, { get() { t.dispose(); return 2; } });
        attempt(() => t.reshape(s));
        // The same through the native handle directly: the storage stays alive for the whole call.
        const u = Tensor.randn([2, 3]);
        const s2 = [3, 0];
        Object.defineProperty(s2, 1, { get() { u.dispose(); return 2; } });
        attempt(() => Tensor.handle(u).reshape(s2).toFloat32Array());
        const p = new Proxy([2, 2], { get(o, k) { if (k === "0") t.dispose(); return o[k]; } });
        attempt(() => Tensor.zeros(p));
      }
      console.log(JSON.stringify([...new Set(out)]));`);
    expect(r.signal).toBeNull();
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual(["ERR_DISPOSED", "ok"]);
  });

  it("shape arguments are validated in one place with the op's name", () => {
    const t = Tensor.zeros([2, 3]);
    expect(() => t.reshape("6" as never)).toThrow(/reshape: shape must be an array/);
    expect(() => t.reshape([3, "2"] as never)).toThrow(TypeError);
    expect(code(() => Tensor.zeros([1.5]))).toBe("ERR_OUT_OF_RANGE");
    expect(code(() => Tensor.zeros(new Array(17).fill(1)))).toBe("ERR_OUT_OF_RANGE");
    expect(() => Tensor.randn([-1])).toThrow(/Tensor.randn: shape\[0\] must be a non-negative integer/);
  });
});

describe("writes through a kept view reach every later op", () => {
  it("linear after writing through view() or bytes() sees the new weight", () => {
    const x = Tensor.randn([40, 64], { seed: 2 });
    const xs = x.toFloat32Array();
    for (const how of ["view", "bytes"] as const) {
      const w = Tensor.randn([48, 64], { seed: 1 });
      const w00 = w.toFloat32Array()[0];
      const v = how === "view" ? (w.view() as Float32Array) : new Float32Array(w.bytes().buffer);
      const y1 = linear(x, w).toFloat32Array(); // packs W (and would cache the pack)
      v[0] = 100; // W[0][0]: only column 0 of y changes, by (100 - W[0][0])·x[i][0]
      const y2 = linear(x, w).toFloat32Array();
      for (let i = 0; i < 40; i++) {
        const want = y1[i * 48] + (100 - w00) * xs[i * 64];
        expect(Math.abs(y2[i * 48] - want)).toBeLessThan(1e-4 * (1 + Math.abs(want)));
        expect(y2[i * 48 + 1]).toBe(y1[i * 48 + 1]);
      }
    }
  });
});

describe("backward needs a training forward", () => {
  const model = () => getPeftModel(new TwoLayers(), new LoraConfig({ r: 2, targetModules: ["a", "b"] }));
  const x = Tensor.randn([5, 4], { seed: 3 });
  const dy = Tensor.randn([5, 2], { seed: 4 });

  it("is ERR_STATE without any forward, after an eval forward, and when run twice", () => {
    expect(code(() => model().backward(dy))).toBe("ERR_STATE");
    const m = model();
    m.eval();
    m.forward(x).dispose();
    expect(code(() => m.backward(dy))).toBe("ERR_STATE");
    m.train();
    m.forward(x).dispose();
    m.eval();
    m.forward(x).dispose();
    expect(code(() => m.backward(dy))).toBe("ERR_STATE");
    m.train();
    m.forward(x).dispose();
    m.backward(dy)!.dispose();
    expect(code(() => m.backward(dy))).toBe("ERR_STATE");
  });

  it("holds for a frozen plain Linear and with the adapters disabled", () => {
    const lin = new Linear(4, 3);
    lin.weight.requiresGrad = false;
    lin.bias!.requiresGrad = false;
    expect(code(() => lin.backward(Tensor.zeros([5, 3])))).toBe("ERR_STATE");
    const m = model();
    m.train();
    using _ = m.disableAdapter();
    m.forward(x).dispose();
    m.backward(dy)!.dispose();
    expect(code(() => m.backward(dy))).toBe("ERR_STATE");
  });
});

describe("adapter names are plain strings, never prototype keys", () => {
  it("refuses names that only exist on Object.prototype", () => {
    const m = getPeftModel(new TwoLayers(), new LoraConfig({ r: 2, targetModules: ["a"] }));
    for (const n of ["toString", "hasOwnProperty", "constructor", "__proto__", "valueOf"]) {
      expect(code(() => m.setAdapter(n))).toBe("ERR_CONFIG");
      expect(code(() => m.deleteAdapter(n))).toBe("ERR_CONFIG");
      expect(code(() => getPeftModelStateDict(m, { adapterName: n }))).toBe("ERR_CONFIG");
    }
    expect(m.activeAdapters).toEqual(["default"]);
    expect(layer(m, "a").activeAdapters).toEqual(["default"]);
  });

  it("accepts them as real adapter names", () => {
    const m = getPeftModel(new TwoLayers(), new LoraConfig({ r: 2, targetModules: ["a"] }));
    for (const n of ["constructor", "__proto__", "toString"]) m.addAdapter(n, new LoraConfig({ r: 3, targetModules: ["a"] }));
    expect(Object.keys(m.peftConfig).sort()).toEqual(["__proto__", "constructor", "default", "toString"]);
    m.setAdapter("__proto__");
    expect(layer(m, "a").r["__proto__"]).toBe(3);
    expect(weightOf(layer(m, "a"), "lora_A", "__proto__").requiresGrad).toBe(true);
    m.deleteAdapter("__proto__");
    expect(Object.keys(m.peftConfig).sort()).toEqual(["constructor", "default", "toString"]);
    expect(Object.getPrototypeOf(layer(m, "a").r)).toBeNull();
  });
});

describe("safe merges are all or nothing", () => {
  const quiet = () => vi.spyOn(process, "emitWarning").mockImplementation(() => {});

  it("an f16 weight that would overflow to +Inf is refused and left as it was", () => {
    for (const dtype of ["f16", "bf16"] as const) {
      const m = getPeftModel(new TwoLayers(dtype), new LoraConfig({ r: 1, loraAlpha: 1, targetModules: ["a"] }));
      const l = layer(m, "a");
      const big = dtype === "f16" ? 60000 : 3e38;
      l.baseLayer.weight.copyFrom(Tensor.fromArray(new Array(12).fill(big), [3, 4]));
      weightOf(l, "lora_A").copyFrom(Tensor.fromArray([1, 1, 1, 1], [1, 4]));
      weightOf(l, "lora_B").copyFrom(Tensor.fromArray([big / 6, 0, 0], [3, 1]));
      const before = Array.from(l.baseLayer.weight.view());
      expect(code(() => m.mergeAdapter({ safeMerge: true }))).toBe("ERR_STATE");
      expect(Array.from(l.baseLayer.weight.view())).toEqual(before);
      expect(l.merged).toBe(false);
      // Just below the overflow threshold merges.
      weightOf(l, "lora_B").copyFrom(Tensor.fromArray([dtype === "f16" ? 5000 : 1e37, 0, 0], [3, 1]));
      m.mergeAdapter({ safeMerge: true });
      expect(Number.isFinite(l.baseLayer.weight.toFloat32Array()[0])).toBe(true);
    }
  });

  it("a NaN in a later layer's adapter leaves the earlier layers unmerged", () => {
    const spy = quiet();
    const m = getPeftModel(new TwoLayers(), new LoraConfig({ r: 1, targetModules: ["a", "b"], initLoraWeights: false }));
    const wa = Array.from(layer(m, "a").baseLayer.weight.toFloat32Array());
    const wb = Array.from(layer(m, "b").baseLayer.weight.toFloat32Array());
    weightOf(layer(m, "b"), "lora_B").copyFrom(Tensor.fromArray([Number.NaN, 0], [2, 1]));
    expect(() => m.mergeAdapter({ safeMerge: true })).toThrow(/adapter default seems to be broken/);
    expect(() => m.mergeAndUnload({ safeMerge: true })).toThrow(/broken/);
    expect(Array.from(layer(m, "a").baseLayer.weight.toFloat32Array())).toEqual(wa);
    expect(Array.from(layer(m, "b").baseLayer.weight.toFloat32Array())).toEqual(wb);
    expect([layer(m, "a").merged, layer(m, "b").merged]).toEqual([false, false]);
    spy.mockRestore();
  });
});

describe("state-dict loads check everything before copying anything", () => {
  it("loadStateDict with a disposed tensor under a later key leaves every weight unchanged", () => {
    const net = new TwoLayers();
    const before = net.stateDict();
    const snapshot = Object.fromEntries(Object.entries(before).map(([k, t]) => [k, Array.from(t.toFloat32Array())]));
    const sd: Record<string, Tensor> = {};
    for (const [k, t] of Object.entries(before)) sd[k] = Tensor.randn(t.shape, { seed: 9 });
    sd["b.bias"].dispose();
    expect(code(() => net.loadStateDict(sd))).toBe("ERR_DISPOSED");
    for (const [k, t] of Object.entries(net.stateDict())) expect(Array.from(t.toFloat32Array())).toEqual(snapshot[k]);
  });

  it("keys are own entries: 'constructor' is missing, not Object", () => {
    const net = new TwoLayers();
    const sd = Object.fromEntries(Object.entries(net.stateDict()));
    expect(net.loadStateDict(sd)).toEqual({ missingKeys: [], unexpectedKeys: [] });
    const odd = { ...sd, constructor: Tensor.zeros([1]) };
    expect(() => net.loadStateDict(odd)).toThrow(/unexpected keys: constructor/);
    expect(net.loadStateDict(odd, { strict: false }).unexpectedKeys).toEqual(["constructor"]);
  });

  it("setPeftModelStateDict with a disposed tensor copies nothing", () => {
    const m = getPeftModel(new TwoLayers(), new LoraConfig({ r: 2, targetModules: ["a", "b"] }));
    const sd = getPeftModelStateDict(m);
    const snapshot = Object.fromEntries(Object.entries(sd).map(([k, t]) => [k, Array.from(t.toFloat32Array())]));
    const fresh: Record<string, Tensor> = {};
    for (const [k, t] of Object.entries(sd)) fresh[k] = Tensor.randn(t.shape, { seed: 5 });
    const keys = Object.keys(fresh);
    fresh[keys[keys.length - 1]].dispose();
    expect(() => setPeftModelStateDict(m, fresh)).toThrow(/disposed: /);
    for (const [k, t] of Object.entries(getPeftModelStateDict(m))) expect(Array.from(t.toFloat32Array())).toEqual(snapshot[k]);
  });
});

// ASan keeps freed memory in quarantine, so RSS says nothing about leaks in the sanitizer build.
const rssMeaningful = process.env.NODE_PEFT_BUILD !== "asan";

describe("after dispose() nothing native stays behind", () => {
  it.runIf(rssMeaningful)("200k Tensor.zeros([1]).dispose() in a synchronous loop grow RSS by < 20 MB (child process)", () => {
    const r = runNode(`
      import { Tensor } from ${JSON.stringify(distIndex)};
      for (let i = 0; i < 20000; i++) Tensor.zeros([1]).dispose();
      const r0 = process.memoryUsage().rss;
      for (let i = 0; i < 200000; i++) Tensor.zeros([1]).dispose();
      console.log((process.memoryUsage().rss - r0) / 2 ** 20);`);
    expect(r.stderr).toBe("");
    expect(Number(r.stdout)).toBeLessThan(20);
  });

  it.runIf(rssMeaningful)("a synchronous LoRA training loop that disposes what it makes grows RSS by < 20 MB over 40k steps", () => {
    const r = runNode(`
      import { Tensor, getPeftModel, LoraConfig, AdamW, nllLoss, Module, Sequential, Linear, ReLU, LogSoftmax } from ${JSON.stringify(distIndex)};
      class MLP extends Module {
        constructor() { super(); this.seq = this.registerModule("seq", new Sequential(new Linear(20, 16), new ReLU(), new Linear(16, 16), new ReLU(), new Linear(16, 2), new LogSoftmax())); }
        forward(x) { return this.seq.forward(x); }
        backward(dy, o) { return this.seq.backward(dy, o); }
      }
      const model = getPeftModel(new MLP(), new LoraConfig({ r: 4, targetModules: ["seq.0", "seq.2"], modulesToSave: ["seq.4"] }));
      model.train();
      const opt = new AdamW([...model.parameters()].filter((p) => p.requiresGrad), { lr: 1e-3 });
      const x = Tensor.randn([8, 20], { seed: 1 });
      const y = Tensor.fromArray([0, 1, 0, 1, 0, 1, 0, 1], [8], "i64");
      const step = () => {
        const out = model.forward(x);
        const { grad } = nllLoss(out, y);
        model.backward(grad, { inputGrad: false });
        opt.step();
        opt.zeroGrad();
        out.dispose();
        grad.dispose();
      };
      for (let i = 0; i < 2000; i++) step();
      const r0 = process.memoryUsage().rss;
      for (let i = 0; i < 40000; i++) step();
      console.log((process.memoryUsage().rss - r0) / 2 ** 20);`);
    expect(r.stderr).toBe("");
    expect(Number(r.stdout)).toBeLessThan(20);
  });
});

describe("hostile files", () => {
  it("a sharded index larger than any header we accept is refused before it is read", async () => {
    const dir = mkdtempSync(join(tmpdir(), "peft-index-"));
    try {
      const file = join(dir, "model.safetensors.index.json");
      writeFileSync(file, "{");
      truncateSync(file, 100_000_001); // sparse: no disk used, nothing read
      expect(() => openSharded(file)).toThrow(/at most 100000000/);
      await expect(loadShardedSafetensors(file)).rejects.toMatchObject({ code: "ERR_SAFETENSORS" });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a valid file whose tensor has 17 dimensions: ERR_SAFETENSORS naming file and tensor; its bytes stay readable", async () => {
    const dir = mkdtempSync(join(tmpdir(), "peft-ndim-"));
    try {
      const file = join(dir, "deep.safetensors");
      const header = JSON.stringify({ deep: { dtype: "F32", shape: new Array(17).fill(1), data_offsets: [0, 4] } });
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(header.length));
      writeFileSync(file, Buffer.concat([len, Buffer.from(header), Buffer.from(new Float32Array([1.5]).buffer)]));
      expect(() => loadSafetensorsSync(file)).toThrow(/deep.*17 dimensions|17 dimensions.*deep/);
      await expect(loadSafetensors(file)).rejects.toMatchObject({ code: "ERR_SAFETENSORS" });
      const f = openSafetensors(file);
      expect(code(() => f.get("deep"))).toBe("ERR_SAFETENSORS");
      expect(f.getBytes("deep").length).toBe(4);
      f.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
