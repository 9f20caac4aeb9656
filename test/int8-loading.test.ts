// Quantising while loading (quantize: "int8", transformers' load_in_8bit defaults: threshold 6.0, lm_head kept,
// plus skipModules), saving an int8 model with bitsandbytes' keys and building it back, `node-peft inspect` on
// int8 files, and the memory bound (a child process measures its RSS growth while quantising a ~1 GiB file).
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { Linear, Linear8bitLt, Module, PeftError, Tensor, buildModelFromCheckpoint, buildModelFromCheckpointAsync, loadModelWeights, saveSafetensorsSync } from "../lib/index.js";
import { int8Quantize } from "../lib/ops.js";
import { distIndex, runNode } from "./helpers/child.js";
import { expectError } from "./helpers/numeric.js";

const tmp = mkdtempSync(join(tmpdir(), "node-peft-int8-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function writeCheckpoint(path: string): Record<string, Tensor> {
  const t: Record<string, Tensor> = {
    "model.embed_tokens.weight": Tensor.randn([11, 6], { seed: 1 }),
    "model.norm.weight": Tensor.randn([6], { seed: 2 }),
    "lm_head.weight": Tensor.randn([11, 6], { seed: 3, dtype: "bf16" }),
  };
  for (let i = 0; i < 2; i++) {
    t[`model.layers.${i}.q_proj.weight`] = Tensor.randn([6, 6], { seed: 10 + i });
    t[`model.layers.${i}.q_proj.bias`] = Tensor.randn([6], { seed: 20 + i });
    t[`model.layers.${i}.up_proj.weight`] = Tensor.randn([9, 6], { seed: 30 + i, dtype: "f16" });
  }
  saveSafetensorsSync(path, t);
  return t;
}

const file = join(tmp, "model.safetensors");
const src = writeCheckpoint(file);
const kinds = (m: Module) => Object.fromEntries([...m.namedModules()].filter(([, x]) => x instanceof Linear || x instanceof Linear8bitLt).map(([p, x]) => [p, x.constructor.name]));

describe('buildModelFromCheckpoint({ quantize: "int8" })', () => {
  it("replaces each Linear as it loads; lm_head and skipModules stay; CB/SCB as int8Quantize of the file's weight", async () => {
    for (const build of [buildModelFromCheckpoint, buildModelFromCheckpointAsync]) {
      const m = await build(file, { quantize: "int8", skipModules: ["up_proj"] });
      expect(kinds(m)).toEqual({
        "model.layers.0.q_proj": "Linear8bitLt",
        "model.layers.0.up_proj": "Linear",
        "model.layers.1.q_proj": "Linear8bitLt",
        "model.layers.1.up_proj": "Linear",
        "lm_head": "Linear",
      });
      const q = m.getSubmodule("model.layers.1.q_proj", Linear8bitLt);
      expect(q.threshold).toBe(6);
      const [cb, scb] = int8Quantize(src["model.layers.1.q_proj.weight"]);
      expect(Array.from(q.weight.view() as Int8Array)).toEqual(Array.from(cb.view() as Int8Array));
      expect(Array.from(q.SCB.toFloat64Array())).toEqual(Array.from(scb.toFloat64Array()));
      expect(q.bias!.toArray()).toEqual(src["model.layers.1.q_proj.bias"].toArray());
      m.dispose();
    }
    const all = buildModelFromCheckpoint(file, { quantize: "int8", threshold: 0 });
    expect(kinds(all)["model.layers.0.up_proj"]).toBe("Linear8bitLt");
    expect(kinds(all)["lm_head"]).toBe("Linear");
    expect(all.getSubmodule("model.layers.0.up_proj", Linear8bitLt).threshold).toBe(0);
  });

  it("an int8 model saves bitsandbytes' keys, and such a file builds Linear8bitLt layers that compute the same", () => {
    const m = buildModelFromCheckpoint(file, { quantize: "int8" });
    const sd = m.stateDict();
    expect(Object.keys(sd).filter((k) => k.startsWith("model.layers.0.q_proj")).sort()).toEqual(
      ["model.layers.0.q_proj.SCB", "model.layers.0.q_proj.bias", "model.layers.0.q_proj.weight", "model.layers.0.q_proj.weight_format"],
    );
    expect(sd["model.layers.0.q_proj.weight"].dtype).toBe("i8");
    expect(sd["model.layers.0.q_proj.weight_format"].shape).toEqual([]);
    const out = join(tmp, "int8.safetensors");
    saveSafetensorsSync(out, sd);
    const back = buildModelFromCheckpoint(out);
    expect(kinds(back)).toEqual(kinds(m));
    const x = Tensor.randn([3, 6], { seed: 5 });
    for (const p of ["model.layers.0.q_proj", "model.layers.1.up_proj"])
      expect(back.getSubmodule(p, Linear8bitLt).forward(x).toArray()).toEqual(m.getSubmodule(p, Linear8bitLt).forward(x).toArray());
    // And into an existing tree of int8 layers.
    const tree = buildModelFromCheckpoint(out);
    for (const t of tree.parameters()) if (t.dtype === "i8") t.view().fill(0);
    loadModelWeights(tree, out);
    expect(tree.getSubmodule("model.layers.0.q_proj", Linear8bitLt).forward(x).toArray()).toEqual(m.getSubmodule("model.layers.0.q_proj", Linear8bitLt).forward(x).toArray());
  });

  it("bad options", () => {
    expectError(() => buildModelFromCheckpoint(file, { quantize: "int8", threshold: -1 }), RangeError, "ERR_OUT_OF_RANGE", /threshold/);
    expectError(() => buildModelFromCheckpoint(file, { quantize: "int4" as never }), TypeError, "ERR_INVALID_ARG_TYPE", /quantize must be "int8", "nf4", "fp4" or a function/);
    expectError(() => buildModelFromCheckpoint(file, { threshold: 6 }), PeftError, "ERR_CONFIG", /quantize: "int8" only/);
    expectError(() => buildModelFromCheckpoint(file, { quantize: "int8", skipModules: "lm_head" as never }), TypeError, "ERR_INVALID_ARG_TYPE", /skipModules/);
    const nan = join(tmp, "nan.safetensors");
    const w = Tensor.randn([4, 3], { seed: 1 });
    w.view()[7] = NaN;
    saveSafetensorsSync(nan, { "layer.weight": w });
    expectError(() => buildModelFromCheckpoint(nan, { quantize: "int8" }), RangeError, "ERR_OUT_OF_RANGE", /row 2\b/);
  });
});

describe("node-peft inspect on an int8 checkpoint", () => {
  it("shows int8 weights with their SCB scales", () => {
    const m = buildModelFromCheckpoint(file, { quantize: "int8" });
    const out = join(tmp, "inspect-int8.safetensors");
    saveSafetensorsSync(out, m.stateDict());
    const r = spawnSync(process.execPath, [join(distIndex, "..", "cli.js"), "inspect", out], { encoding: "utf8", timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    const line = r.stdout.split("\n").find((l) => l.startsWith("model.layers.0.q_proj.weight "))!;
    const scb = m.getSubmodule("model.layers.0.q_proj", Linear8bitLt).SCB.toFloat64Array();
    expect(line).toMatch(/I8\s+\[6, 6\]/);
    expect(line).toContain(`int8 rows, scales model.layers.0.q_proj.SCB (absmax ${Math.min(...scb).toPrecision(4)} .. ${Math.max(...scb).toPrecision(4)})`);
    const j = spawnSync(process.execPath, [join(distIndex, "..", "cli.js"), "inspect", "--json", out], { encoding: "utf8", timeout: 60_000 });
    const rows = JSON.parse(j.stdout).tensors as { name: string; scales?: { name: string } }[];
    expect(rows.find((t) => t.name === "model.layers.1.up_proj.weight")!.scales!.name).toBe("model.layers.1.up_proj.SCB");
  });
});

// The child quantises a sparse 2 GiB f32 checkpoint (16 layers of 4096 x 8192) while loading and reports its
// RSS growth over a baseline taken after the library is loaded, and the bytes of live storage at the end.
const BIG = (path: string) => `
  import { openSync, writeSync, ftruncateSync, closeSync } from "node:fs";
  const lib = await import(${JSON.stringify(distIndex)});
  const L = 16, R = 4096, C = 8192;
  const header = {}; let off = 0;
  for (let i = 0; i < L; i++) { header["model.layers." + i + ".mlp.weight"] = { dtype: "F32", shape: [R, C], data_offsets: [off, off + R * C * 4] }; off += R * C * 4; }
  let h = Buffer.from(JSON.stringify(header)); h = Buffer.concat([h, Buffer.alloc((8 - (h.length % 8)) % 8, 0x20)]);
  const fd = openSync(${JSON.stringify(path)}, "w"); const len = Buffer.alloc(8); len.writeBigUInt64LE(BigInt(h.length));
  writeSync(fd, len, 0, 8, 0); writeSync(fd, h, 0, h.length, 8); ftruncateSync(fd, 8 + h.length + off); closeSync(fd);
  const rss = () => process.memoryUsage().rss;
  const base = rss();
  let peak = 0;
  const m = lib.buildModelFromCheckpoint(${JSON.stringify(path)}, { quantize: "int8", onProgress: () => { peak = Math.max(peak, rss() - base); } });
  peak = Math.max(peak, rss() - base);
  const int8 = [...m.parameters()].filter((t) => t.dtype === "i8").reduce((a, t) => a + t.shape[0] * t.shape[1], 0);
  console.log(JSON.stringify({ bytes: off, int8, largest: R * C * 4, peak, live: lib.backend.memory().bytes }));
`;

describe("memory bound of quantise-while-loading (a 2 GiB f32 checkpoint, in a child process)", () => {
  it("RSS growth stays near the int8 model, well under the checkpoint; only CB and SCB stay allocated", () => {
    const path = join(tmp, "big.safetensors");
    try {
      const r = runNode(BIG(path));
      expect(r.status, r.stderr).toBe(0);
      const { bytes, int8, largest, peak, live } = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
      console.log(`int8 load: RSS growth ${(peak / 2 ** 20).toFixed(0)} MiB; int8 model ${(int8 / 2 ** 20).toFixed(0)} MiB, checkpoint ${(bytes / 2 ** 20).toFixed(0)} MiB`);
      expect(int8).toBe(bytes / 4);
      // Live at the end: CB (int8), SCB (one f32 per row) and the one-byte weight_format tags only.
      expect(live).toBe(int8 + 16 * 4096 * 4 + 16);
      // The int8 model, the layer being read and the one before it, and the host allocator's cache of freed
      // large blocks (native/core/host_alloc.cc keeps up to 512 MiB resident for reuse).
      expect(peak).toBeLessThanOrEqual(int8 + 512 * 2 ** 20 + 2 * largest);
      expect(peak).toBeLessThan(bytes * 0.7);
    } finally {
      rmSync(path, { force: true });
    }
  });
});
