// The checkpoint merge (mergeCheckpoint / `node-peft merge`) with int8: a base stored in bitsandbytes'
// layout (weight i8 + SCB + weight_format) is merged as PEFT's Linear8bitLt merge (bit-equal to the layer's
// merge), and `--dtype int8` writes an f32 base's linear weights quantised, the head kept.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { Linear, Linear8bitLt, LoraConfig, LoraLinear8bitLt, Module, Tensor, getPeftModel, loadSafetensorsSync, mergeCheckpoint, saveSafetensorsSync } from "../lib/index.js";
import { int8Quantize } from "../lib/ops.js";
import { main } from "../lib/cli.js";

const dir = mkdtempSync(join(tmpdir(), "lora-int8-merge-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

class Net extends Module {
  proj: Module;
  lm_head: Linear;
  constructor(proj: Module, head: Linear) {
    super();
    this.proj = this.registerModule("proj", proj);
    this.lm_head = this.registerModule("lm_head", head);
  }
  forward(x: Tensor): Tensor {
    return this.lm_head.forward((this.proj as Linear).forward(x));
  }
}

const arr = (t: Tensor) => Array.from(t.toFloat64Array());

async function adapterFor(net: Net, name: string): Promise<string> {
  const peft = getPeftModel(net, new LoraConfig({ r: 4, loraAlpha: 8, targetModules: ["proj"], initLoraWeights: false }));
  const out = join(dir, name);
  await peft.savePretrained(out);
  return out;
}

describe("merge into an int8 checkpoint", () => {
  it("an int8 base stays int8: CB/SCB as the layer's own merge writes them, bit for bit", async () => {
    const lin = new Linear(33, 17, { seed: 1 });
    const net = new Net(Linear8bitLt.fromLinear(lin), new Linear(17, 5, { seed: 2 }));
    const base = join(dir, "int8-base.safetensors");
    saveSafetensorsSync(base, net.stateDict());
    const adapter = await adapterFor(net, "a8");
    const out = join(dir, "int8-merged.safetensors");
    const summary = await mergeCheckpoint({ base, adapter, out });
    expect(summary.merged).toEqual(["proj.weight"]);
    const got = loadSafetensorsSync(out);
    expect(Object.keys(got).sort()).toEqual(["lm_head.bias", "lm_head.weight", "proj.SCB", "proj.bias", "proj.weight", "proj.weight_format"]);
    expect(got["proj.weight"].dtype).toBe("i8");
    const layer = (net.proj as LoraLinear8bitLt);
    layer.merge();
    expect(arr(got["proj.weight"])).toEqual(arr(layer.baseLayer.weight));
    expect(arr(got["proj.SCB"])).toEqual(arr(layer.baseLayer.SCB));
    expect(arr(got["proj.weight_format"])).toEqual([0]);
    // It loads as bitsandbytes' state dict.
    const q = Linear8bitLt.fromStateDict({ weight: got["proj.weight"], SCB: got["proj.SCB"], bias: got["proj.bias"], weight_format: got["proj.weight_format"] });
    expect(q.outFeatures).toBe(17);
  });

  it("--dtype int8 quantises an f32 base's merged linear weights; the head stays f32", async () => {
    const net = new Net(new Linear(33, 17, { seed: 3 }), new Linear(17, 5, { seed: 4 }));
    const base = join(dir, "f32-base.safetensors");
    saveSafetensorsSync(base, net.stateDict());
    const adapter = await adapterFor(net, "af");
    const out = join(dir, "f32-to-int8.safetensors");
    expect(await main(["merge", "--base", base, "--adapter", adapter, "--out", out, "--dtype", "int8"])).toBe(0);
    const got = loadSafetensorsSync(out);
    expect(Object.keys(got).sort()).toEqual(["lm_head.bias", "lm_head.weight", "proj.SCB", "proj.bias", "proj.weight", "proj.weight_format"]);
    expect(got["lm_head.weight"].dtype).toBe("f32");
    expect(got["proj.bias"].dtype).toBe("f32");
    // W + s·B·A merged in f32 (as the f32 merge writes it), then int8Quantize
    const f32out = join(dir, "f32-merged.safetensors");
    await mergeCheckpoint({ base, adapter, out: f32out });
    const [cb, scb] = int8Quantize(loadSafetensorsSync(f32out)["proj.weight"]);
    expect(arr(got["proj.weight"])).toEqual(arr(cb));
    expect(arr(got["proj.SCB"])).toEqual(arr(scb));
  });

  it("bad input: an unknown --dtype", async () => {
    await expect(mergeCheckpoint({ base: "x", adapter: "y", out: "z", dtype: "int4" as never })).rejects.toThrow(/"f32", "f16", "bf16" or "int8"/);
  });
});
