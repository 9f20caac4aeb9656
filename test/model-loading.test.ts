// Loading models without waste: modules constructed empty (skipInit), checkpoints read straight into
// parameters (sync and async, single file, shards, a model directory), progress, cancellation that leaves
// nothing allocated, optional dtype conversion, the quantize hook, and the memory bound (a child process
// measures its own RSS growth while loading a ~1 GiB file).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  Conv1D, Conv2d, Embedding, Linear, Module, Tensor, backend, buildModelFromCheckpoint, buildModelFromCheckpointAsync, getRngState,
  isInitSkipped, loadModelWeights, loadModelWeightsAsync, loadSafetensorsSync, saveSafetensorsSync, skipInit, type LoadProgress,
} from "../lib/index.js";
import { distIndex, runNode } from "./helpers/child.js";

const tmp = mkdtempSync(join(tmpdir(), "node-peft-loading-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const code = async (fn: () => unknown) => {
  try {
    await fn();
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return "no error";
};

// A small llama-shaped checkpoint: embedding, two layers, a norm, a bf16 head.
function writeCheckpoint(path: string, opts: { headDType?: "bf16" | "f32" } = {}): Record<string, number[]> {
  const t: Record<string, Tensor> = {
    "model.embed_tokens.weight": Tensor.randn([11, 6], { seed: 1 }),
    "model.norm.weight": Tensor.randn([6], { seed: 2 }),
    "lm_head.weight": Tensor.randn([11, 6], { seed: 3, dtype: opts.headDType ?? "bf16" }),
  };
  for (let i = 0; i < 2; i++) {
    t[`model.layers.${i}.q_proj.weight`] = Tensor.randn([6, 6], { seed: 10 + i });
    t[`model.layers.${i}.q_proj.bias`] = Tensor.randn([6], { seed: 20 + i });
    t[`model.layers.${i}.up_proj.weight`] = Tensor.randn([9, 6], { seed: 30 + i, dtype: "f16" });
  }
  saveSafetensorsSync(path, t);
  const values = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, v.toArray()]));
  for (const v of Object.values(t)) v.dispose();
  return values;
}

const valuesOf = (m: Module) => Object.fromEntries([...m.namedParameters()].map(([k, t]) => [k, t.toArray()]));
const dtypesOf = (m: Module) => Object.fromEntries([...m.namedParameters()].map(([k, t]) => [k, t.dtype]));

describe("skipInit: modules constructed empty", () => {
  it("Linear, Conv1D, Embedding, Conv2d and a custom module allocate zeros and draw no random stream", () => {
    class Custom extends Module {
      w = this.registerParameter("w", Tensor.randn([3, 2]));
      forward(x: Tensor) {
        return x;
      }
    }
    const before = getRngState();
    const mods = skipInit(() => [new Linear(5, 4), new Conv1D(3, 4), new Embedding(7, 2), new Conv2d(2, 3, 3), new Custom(), new Linear(2, 2, { seed: 5 })]);
    expect(getRngState()).toEqual(before);
    for (const m of mods) for (const [, p] of m.namedParameters()) expect(p.toArray().every((v) => v === 0)).toBe(true);
    expect(isInitSkipped()).toBe(false);
    // The scope form, nested, restores the mode when disposed (twice is harmless).
    const outer = skipInit();
    const inner = skipInit();
    inner[Symbol.dispose]();
    inner[Symbol.dispose]();
    expect(isInitSkipped()).toBe(true);
    outer[Symbol.dispose]();
    expect(isInitSkipped()).toBe(false);
    expect(new Linear(3, 3).weight.toArray().some((v) => v !== 0)).toBe(true);
    // A throwing fn ends the scope too; a promise is refused (its later part would run outside the scope).
    expect(() => skipInit(() => { throw new Error("boom"); })).toThrow("boom");
    expect(isInitSkipped()).toBe(false);
    expect(() => skipInit((async () => 1) as never)).toThrow(/promise/);
    expect(() => skipInit(3 as never)).toThrow(TypeError);
    expect(isInitSkipped()).toBe(false);
  });
});

describe("buildModelFromCheckpoint", () => {
  const file = join(tmp, "model.safetensors");
  const want = writeCheckpoint(file);

  it("sync and async give the file's values in the file's dtypes, or converted to dtype", async () => {
    const a = buildModelFromCheckpoint(file);
    const b = await buildModelFromCheckpointAsync(file);
    expect(valuesOf(a)).toEqual(want);
    expect(valuesOf(b)).toEqual(want);
    expect(dtypesOf(a)["lm_head.weight"]).toBe("bf16");
    expect(dtypesOf(a)["model.layers.0.up_proj.weight"]).toBe("f16");
    expect(a.getSubmodule("model.layers.1.q_proj")).toBeInstanceOf(Linear);
    expect(a.getSubmodule("model.embed_tokens")).toBeInstanceOf(Embedding);
    const c = await buildModelFromCheckpointAsync(file, { dtype: "f32" });
    expect(new Set(Object.values(dtypesOf(c)))).toEqual(new Set(["f32"]));
    expect(valuesOf(c)).toEqual(want); // bf16/f16 widen exactly
    for (const m of [a, b, c]) m.dispose();
  });

  it("a sharded checkpoint, its index and a model directory load the same", async () => {
    const dir = join(tmp, "sharded");
    mkdirSync(dir);
    const all = loadSafetensorsSync(file);
    const names = Object.keys(all);
    const weightMap: Record<string, string> = {};
    for (const [s, part] of [names.slice(0, 4), names.slice(4)].entries()) {
      const shard = `model-0000${s + 1}-of-00002.safetensors`;
      saveSafetensorsSync(join(dir, shard), Object.fromEntries(part.map((k) => [k, all[k]!])));
      for (const k of part) weightMap[k] = shard;
    }
    for (const t of Object.values(all)) t.dispose();
    writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    for (const path of [join(dir, "model.safetensors.index.json"), dir]) {
      const m = await buildModelFromCheckpointAsync(path);
      expect(valuesOf(m)).toEqual(want);
      m.dispose();
      const s = buildModelFromCheckpoint(path);
      expect(valuesOf(s)).toEqual(want);
      s.dispose();
    }
    const empty = join(tmp, "empty");
    mkdirSync(empty);
    expect(await code(() => buildModelFromCheckpoint(empty))).toBe("ERR_CHECKPOINT"); // a directory with neither file
  });

  it("reports progress after each tensor, in file order, up to the totals", async () => {
    const seen: LoadProgress[] = [];
    const m = await buildModelFromCheckpointAsync(file, { dtype: "f32", onProgress: (p) => seen.push(p) });
    expect(seen.map((p) => p.loadedTensors)).toEqual(seen.map((_, i) => i + 1));
    expect(seen.at(-1)!.loadedBytes).toBe(seen.at(-1)!.totalBytes);
    expect(seen.at(-1)!.totalTensors).toBe(Object.keys(want).length);
    expect(new Set(seen.map((p) => p.name))).toEqual(new Set(Object.keys(want)));
    // The conversion is stated: the file's dtype beside the parameter's.
    expect(seen.find((p) => p.name === "lm_head.weight")).toMatchObject({ fileDType: "BF16", dtype: "f32" });
    m.dispose();
  });

  it("cancellation: an aborted signal rejects with an AbortError and leaves no tensor allocated", async () => {
    const before = backend.memory().tensors;
    const ac = new AbortController();
    ac.abort();
    const e1 = await buildModelFromCheckpointAsync(file, { signal: ac.signal }).catch((e) => e);
    expect([e1.name, e1.code]).toEqual(["AbortError", "ABORT_ERR"]);
    const mid = new AbortController();
    let calls = 0;
    const e2 = await buildModelFromCheckpointAsync(file, { signal: mid.signal, onProgress: () => ++calls === 2 && mid.abort("stop") }).catch((e) => e);
    expect([e2.name, e2.code, e2.cause]).toEqual(["AbortError", "ABORT_ERR", "stop"]);
    expect(calls).toBe(2);
    // Not more than before (the garbage collector may free earlier tests' dropped tensors meanwhile); the
    // child-process test "an abort part-way frees everything" checks the exact count.
    expect(backend.memory().tensors).toBeLessThanOrEqual(before);
    // A throwing progress callback ends the load the same way.
    const e3 = await buildModelFromCheckpointAsync(file, { onProgress: () => { throw new Error("callback"); } }).catch((e) => e);
    expect(e3.message).toBe("callback");
    expect(backend.memory().tensors).toBeLessThanOrEqual(before);
  });

  it("the quantize hook sees each module once its parameters are loaded and may replace it", async () => {
    class Int8Stub extends Module {
      constructor(readonly from: number[]) {
        super();
        this.registerParameter("q", Tensor.zeros([1], { dtype: "i8" }));
      }
      forward(x: Tensor) {
        return x;
      }
    }
    const calls: string[] = [];
    const replaced: Linear[] = [];
    const m = await buildModelFromCheckpointAsync(file, {
      quantize: (mod, path) => {
        calls.push(path);
        if (!(mod instanceof Linear) || path === "lm_head") return undefined;
        expect(mod.weight.toArray()).toEqual(want[`${path}.weight`]); // already loaded
        replaced.push(mod);
        return new Int8Stub(mod.weight.toArray());
      },
    });
    expect(calls.sort()).toEqual(["lm_head", "model.embed_tokens", "model.layers.0.q_proj", "model.layers.0.up_proj", "model.layers.1.q_proj", "model.layers.1.up_proj", "model.norm"]);
    expect(m.getSubmodule("model.layers.1.up_proj")).toBeInstanceOf(Int8Stub);
    expect(m.getSubmodule("lm_head")).toBeInstanceOf(Linear);
    expect(replaced.every((l) => l.weight.disposed)).toBe(true);
    m.dispose();
    expect(await code(() => buildModelFromCheckpointAsync(file, { quantize: () => 5 as never }))).toBe("ERR_INVALID_ARG_TYPE");
  });

  it("bad options are coded errors before anything is read", async () => {
    expect(await code(() => buildModelFromCheckpointAsync(file, { dtype: "f64" as never }))).toBe("ERR_INVALID_ARG_TYPE");
    expect(await code(() => buildModelFromCheckpointAsync(file, { signal: {} as never }))).toBe("ERR_INVALID_ARG_TYPE");
    expect(await code(() => buildModelFromCheckpointAsync(file, { onProgress: 1 as never }))).toBe("ERR_INVALID_ARG_TYPE");
    expect(await code(() => buildModelFromCheckpointAsync(file, null as never))).toBe("ERR_INVALID_ARG_TYPE");
    expect(await code(() => buildModelFromCheckpointAsync(join(tmp, "missing.safetensors")))).toBe("ENOENT");
  });
});

describe("loadModelWeights into an existing model", () => {
  const file = join(tmp, "mlp.safetensors");
  const src = { "net.fc.weight": Tensor.randn([3, 4], { seed: 7 }), "net.fc.bias": Tensor.randn([3], { seed: 8, dtype: "bf16" }) };
  saveSafetensorsSync(file, src);

  it("reads into the parameters in place (same objects), converting only when allowed", async () => {
    const fc = new Linear(4, 3);
    const w = fc.weight;
    expect(await loadModelWeightsAsync(fc, file, { prefix: "net.fc." })).toEqual({ missingKeys: [], unexpectedKeys: [] });
    expect(fc.weight).toBe(w);
    expect(fc.weight.toArray()).toEqual(src["net.fc.weight"].toArray());
    expect(fc.bias!.toArray()).toEqual(src["net.fc.bias"].toArray());
    const strictDType = new Linear(4, 3);
    const before = strictDType.weight.toArray();
    await expect(loadModelWeightsAsync(strictDType, file, { prefix: "net.fc.", convert: false })).rejects.toThrow(/net\.fc\.bias.*BF16 in the file but f32 in the model \(convert: false\)/);
    expect(strictDType.weight.toArray()).toEqual(before); // checked before the first read
    expect(() => loadModelWeights(new Linear(5, 3), file, { prefix: "net.fc." })).toThrow(/shape \[3,4\] in the file but \[3,5\]/);
    expect(loadModelWeights(new Linear(4, 3, { bias: false }), file, { prefix: "net.fc.", strict: false })).toEqual({ missingKeys: [], unexpectedKeys: ["net.fc.bias"] });
    expect(await code(() => loadModelWeightsAsync({} as never, file))).toBe("ERR_INVALID_ARG_TYPE");
    expect(await code(() => loadModelWeightsAsync(fc, file, { quantize: "int4" as never }))).toBe("ERR_INVALID_ARG_TYPE");
  });
});

describe("parameters on the (emulated) cuda device", () => {
  it("are filled through a host copy of each tensor", () => {
    const file = join(tmp, "cuda.safetensors");
    saveSafetensorsSync(file, { weight: Tensor.fromArray([1, 2, 3, 4, 5, 6], [3, 2]), bias: Tensor.fromArray([7, 8, 9], [3], "bf16") });
    const r = runNode(
      `const { Linear, loadModelWeightsAsync } = await import(${JSON.stringify(distIndex)});
      const l = new Linear(2, 3).to("cuda");
      await loadModelWeightsAsync(l, ${JSON.stringify(file)});
      console.log(JSON.stringify({ device: l.weight.device, w: l.weight.toArray(), b: l.bias.toArray() }));`,
      { NODE_PEFT_CUDA: "emu" },
    );
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ device: "cuda", w: [1, 2, 3, 4, 5, 6], b: [7, 8, 9] });
  });
});

// Children measure their own RSS over a baseline taken after the library is loaded; the file is sparse
// (zeros read from holes), so creating it costs no disk writes.
const BIG_SCRIPT = (file: string, mode: string) => `
  import { openSync, writeSync, ftruncateSync, closeSync } from "node:fs";
  const lib = await import(${JSON.stringify(distIndex)});
  const L = 16, R = 4096, C = 8192;
  const header = {}; let off = 0;
  for (let i = 0; i < L; i++) { header["model.layers." + i + ".mlp.weight"] = { dtype: "BF16", shape: [R, C], data_offsets: [off, off + R * C * 2] }; off += R * C * 2; }
  let h = Buffer.from(JSON.stringify(header)); h = Buffer.concat([h, Buffer.alloc((8 - (h.length % 8)) % 8, 0x20)]);
  const fd = openSync(${JSON.stringify(file)}, "w"); const len = Buffer.alloc(8); len.writeBigUInt64LE(BigInt(h.length));
  writeSync(fd, len, 0, 8, 0); writeSync(fd, h, 0, h.length, 8); ftruncateSync(fd, 8 + h.length + off); closeSync(fd);
  const rss = () => process.memoryUsage().rss;
  const base = rss();
  let peak = 0;
  const onProgress = () => { peak = Math.max(peak, rss() - base); };
  const mode = ${JSON.stringify(mode)};
  if (mode === "abort") {
    const ac = new AbortController(); let n = 0;
    const e = await lib.buildModelFromCheckpointAsync(${JSON.stringify(file)}, { signal: ac.signal, onProgress: () => ++n === 3 && ac.abort() }).catch((e) => e);
    for (let k = 0; k < 20; k++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 5)); }
    console.log(JSON.stringify({ name: e.name, memory: lib.backend.memory() }));
  } else {
    const quantize = mode === "quantize" ? (m) => (m instanceof lib.Linear ? new lib.Sequential() : undefined) : undefined;
    const m = mode === "sync" ? lib.buildModelFromCheckpoint(${JSON.stringify(file)}, { onProgress }) : await lib.buildModelFromCheckpointAsync(${JSON.stringify(file)}, { onProgress, quantize });
    peak = Math.max(peak, rss() - base);
    console.log(JSON.stringify({ bytes: off, peak, params: [...m.parameters()].length }));
  }
`;

describe("memory bound (a ~1 GiB bf16 checkpoint, in a child process)", () => {
  for (const mode of ["async", "sync", "quantize"])
    it(`${mode}: RSS growth ${mode === "quantize" ? "is bounded by the allocator's cache, not the checkpoint, when every layer is replaced" : "is at most 1.15x the checkpoint's bytes"}`, () => {
      const file = join(tmp, `big-${mode}.safetensors`);
      try {
        const r = runNode(BIG_SCRIPT(file, mode));
        expect(r.status, r.stderr).toBe(0);
        const { bytes, peak, params } = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
        console.log(`${mode}: RSS growth ${(peak / 2 ** 20).toFixed(0)} MiB for a ${(bytes / 2 ** 20).toFixed(0)} MiB checkpoint (${(peak / bytes).toFixed(3)}x)`);
        if (mode === "quantize") {
          expect(params).toBe(0);
          // What stays is the allocator's cache of freed blocks (at most 512 MiB, kept resident for reuse) and a
          // few 64 MiB layers in flight, not the checkpoint.
          expect(peak).toBeLessThanOrEqual((512 + 4 * 64) * 2 ** 20);
        } else expect(peak).toBeLessThanOrEqual(1.15 * bytes);
      } finally {
        rmSync(file, { force: true });
      }
    });

  it("an abort part-way frees everything it had allocated", () => {
    const file = join(tmp, "big-abort.safetensors");
    try {
      const r = runNode(BIG_SCRIPT(file, "abort"), {}, ["--expose-gc"]);
      expect(r.status, r.stderr).toBe(0);
      const { name, memory } = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
      expect(name).toBe("AbortError");
      expect(memory).toEqual({ tensors: 0, storages: 0, bytes: 0, gcReportedBytes: 0 });
    } finally {
      rmSync(file, { force: true });
    }
  });
});
