import { afterAll, describe, expect, it } from "vitest";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Linear, LoraConfig, Module, PeftError, ReLU, Sequential, getPeftModel } from "../lib/index.js";

const tmp = mkdtempSync(join(tmpdir(), "node-peft-save-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

class Net extends Module {
  fc = this.registerModule("fc", new Linear(4, 3, { seed: 1 }));
  act = this.registerModule("act", new ReLU());
}

describe("savePretrained's file-system failures", () => {
  it("are PeftError ERR_CHECKPOINT naming the path", async () => {
    const model = getPeftModel(new Net(), new LoraConfig({ targetModules: ["fc"], r: 2 }));
    const file = join(tmp, "a-file");
    writeFileSync(file, "x");
    for (const dir of [file, join(file, "below")]) {
      const err = await model.savePretrained(dir).then(() => null, (e: unknown) => e);
      expect(err).toBeInstanceOf(PeftError);
      expect((err as PeftError).code).toBe("ERR_CHECKPOINT");
      expect((err as PeftError).message).toContain(JSON.stringify(dir)); // the path that failed
      expect((err as PeftError).message).toMatch(/^savePretrained: cannot write /);
    }
  });
});

describe("getSubmodule and mergeAndUnload", () => {
  it("getSubmodule checks the class it is given", () => {
    const net = new Net();
    const fc = net.getSubmodule("fc", Linear);
    expect(fc.inFeatures).toBe(4);
    expect(net.getSubmodule<Linear>("fc")).toBe(fc);
    expect(() => net.getSubmodule("act", Linear)).toThrow(/is a ReLU, not a Linear/);
    expect(() => net.getSubmodule("fc", 42 as never)).toThrow(TypeError);
    expect(new Sequential(new Linear(2, 2)).getSubmodule("0", Linear)).toBeInstanceOf(Linear);
  });

  it("mergeAndUnload and unload return the model they were given", () => {
    const net = new Net();
    const merged = getPeftModel(net, new LoraConfig({ targetModules: ["fc"] })).mergeAndUnload<Net>();
    expect(merged).toBe(net);
    expect(merged.fc).toBeInstanceOf(Linear);
    const other = new Net();
    expect(getPeftModel(other, new LoraConfig({ targetModules: ["fc"] })).unload<Net>().fc).toBeInstanceOf(Linear);
  });
});
