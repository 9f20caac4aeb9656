// DoRA checkpoints with PEFT's layout: use_dora in adapter_config.json, `lora_magnitude_vector` (adapter name
// and PEFT's ".weight" dropped) beside lora_A/lora_B in adapter_model.safetensors; `lora_magnitude_vector.<adapter>.weight`
// in the module tree. A directory written as PEFT saves one loads and reproduces; save/load round trips.
import { afterAll, describe, expect, it, vi } from "vitest";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Conv2d, Linear, LoraConfig, PeftModel, Sequential, Tensor, getPeftModel, noGrad, openSafetensors, saveSafetensors } from "../lib/index.js";
import { FIXTURE_DIR } from "./helpers/fixtures.js";
import { expectClose, values } from "./helpers/nn-reference.js";
import { errorCode } from "./helpers/errors.js";
import { refDoraForward, type RefAdapter } from "./dora-reference.js";

const tmp = mkdtempSync(join(tmpdir(), "dora-ckpt-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const model = () => new Sequential(new Linear(6, 8, { seed: 1 }), new Linear(8, 5, { seed: 2 }));

/** adapter_config.json as PEFT 0.19.1 writes it for this adapter (the fixture's keys, DoRA on). */
function peftConfig(): Record<string, unknown> {
  const c = JSON.parse(readFileSync(join(FIXTURE_DIR, "adapter", "adapter_config.json"), "utf8"));
  return { ...c, use_dora: true, r: 2, lora_alpha: 4, lora_dropout: 0.0, target_modules: ["0", "1"], task_type: null };
}

/** The tensors PEFT saves for a DoRA adapter on layers "0" (6 → 8) and "1" (8 → 5). */
function peftTensors(): Record<string, { A: Float64Array; B: Float64Array; m: Float64Array; K: number; N: number }> {
  const out: Record<string, { A: Float64Array; B: Float64Array; m: Float64Array; K: number; N: number }> = {};
  for (const [path, K, N, seed] of [["0", 6, 8, 3], ["1", 8, 5, 5]] as const)
    out[path] = { A: values(2 * K, seed), B: values(N * 2, seed + 1), m: values(N, seed + 2).map((v) => 1 + 0.5 * v), K, N };
  return out;
}

async function writePeftDir(dir: string): Promise<void> {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "adapter_config.json"), JSON.stringify(peftConfig(), null, 2));
  const t: Record<string, Tensor> = {};
  for (const [path, p] of Object.entries(peftTensors())) {
    t[`base_model.model.${path}.lora_A.weight`] = Tensor.fromArray(p.A, [2, p.K]);
    t[`base_model.model.${path}.lora_B.weight`] = Tensor.fromArray(p.B, [p.N, 2]);
    t[`base_model.model.${path}.lora_magnitude_vector`] = Tensor.fromArray(p.m, [p.N]);
  }
  await saveSafetensors(join(dir, "adapter_model.safetensors"), t, { format: "pt" });
  Object.values(t).forEach((x) => x.dispose());
}

/** The float64 output of the two DoRA layers (weights rounded to f32 as stored). */
function reference(x: Float64Array, M: number): Float64Array {
  const base = model();
  const p = peftTensors();
  let h = x;
  for (const path of ["0", "1"]) {
    const lin = base.getSubmodule(path) as Linear;
    const f = (v: Float64Array) => Float64Array.from(Float32Array.from(v));
    const ad: RefAdapter = { A: f(p[path].A), B: f(p[path].B), r: 2, s: 2, m: f(p[path].m) };
    h = refDoraForward(h, M, p[path].K, lin.weight.toFloat64Array(), p[path].N, lin.bias!.toFloat64Array(), [ad]);
  }
  base.dispose();
  return h;
}

describe("DoRA checkpoints in PEFT's layout", () => {
  it("LoraConfig reads and writes use_dora; a non-boolean is a TypeError", () => {
    const c = LoraConfig.fromJSON(peftConfig());
    expect(c.useDora).toBe(true);
    expect(c.toJSON().use_dora).toBe(true);
    expect(new LoraConfig().toJSON().use_dora).toBe(false);
    expect(() => new LoraConfig({ useDora: "yes" as never })).toThrow(TypeError);
  });

  it("a directory written as PEFT saves a DoRA adapter loads and reproduces the float64 output", async () => {
    vi.spyOn(process, "emitWarning").mockImplementation(() => {});
    const dir = join(tmp, "peft-written");
    await writePeftDir(dir);
    const m = await PeftModel.fromPretrained(model(), dir);
    const xv = values(3 * 6, 7);
    using x = Tensor.fromArray(xv, [3, 6]);
    using y = noGrad(() => m.forward(x));
    const want = reference(xv, 3);
    expectClose(y.toFloat64Array(), want, (i) => 1e-5 * (1 + Math.abs(want[i])), "y");
    // In the module tree the magnitude sits under PEFT's in-memory name, frozen for inference.
    const sd = m.stateDict();
    expect(Object.keys(sd).filter((k) => k.includes("magnitude"))).toEqual([
      "base_model.model.0.lora_magnitude_vector.default.weight",
      "base_model.model.1.lora_magnitude_vector.default.weight",
    ]);
    expect(sd["base_model.model.0.lora_magnitude_vector.default.weight"].requiresGrad).toBe(false);
    m.dispose();
  });

  it("savePretrained writes PEFT's keys; a fresh model reloads to the same outputs; trainable counts include m", async () => {
    vi.spyOn(process, "emitWarning").mockImplementation(() => {});
    const m = getPeftModel(model(), new LoraConfig({ r: 2, loraAlpha: 4, targetModules: ["0", "1"], useDora: true, initLoraWeights: false }));
    // The 5 + 8 magnitude entries are trainable with A and B.
    expect(m.getNbTrainableParameters()[0]).toBe(2 * 6 + 8 * 2 + 8 + 2 * 8 + 5 * 2 + 5);
    const dir = join(tmp, "round-trip");
    await m.savePretrained(dir);
    expect(JSON.parse(readFileSync(join(dir, "adapter_config.json"), "utf8")).use_dora).toBe(true);
    {
      using f = openSafetensors(join(dir, "adapter_model.safetensors"));
      expect(f.keys()).toEqual([
        "base_model.model.0.lora_A.weight", "base_model.model.0.lora_B.weight", "base_model.model.0.lora_magnitude_vector",
        "base_model.model.1.lora_A.weight", "base_model.model.1.lora_B.weight", "base_model.model.1.lora_magnitude_vector",
      ]);
      expect(f.info("base_model.model.0.lora_magnitude_vector").shape).toEqual([8]);
    }
    m.eval();
    using x = Tensor.fromArray(values(4 * 6, 11), [4, 6]);
    using y = noGrad(() => m.forward(x));
    const back = await PeftModel.fromPretrained(model(), dir);
    using y2 = noGrad(() => back.forward(x));
    expect(Array.from(y2.toFloat32Array())).toEqual(Array.from(y.toFloat32Array()));
    m.dispose();
    back.dispose();
  });

  it("Conv2d: the magnitude is saved (1, out, 1, 1), as PEFT's", async () => {
    vi.spyOn(process, "emitWarning").mockImplementation(() => {});
    const m = getPeftModel(new Sequential(new Conv2d(3, 4, 3, { seed: 1 })), new LoraConfig({ r: 2, targetModules: ["0"], useDora: true }));
    const dir = join(tmp, "conv");
    await m.savePretrained(dir);
    using f = openSafetensors(join(dir, "adapter_model.safetensors"));
    expect(f.info("base_model.model.0.lora_magnitude_vector").shape).toEqual([1, 4, 1, 1]);
    m.dispose();
  });

  it("a DoRA file without lora_magnitude_vector is ERR_CHECKPOINT naming the missing key", async () => {
    vi.spyOn(process, "emitWarning").mockImplementation(() => {});
    const dir = join(tmp, "no-magnitude");
    await writePeftDir(dir);
    const t: Record<string, Tensor> = {};
    for (const [path, p] of Object.entries(peftTensors())) {
      t[`base_model.model.${path}.lora_A.weight`] = Tensor.fromArray(p.A, [2, p.K]);
      t[`base_model.model.${path}.lora_B.weight`] = Tensor.fromArray(p.B, [p.N, 2]);
    }
    await saveSafetensors(join(dir, "adapter_model.safetensors"), t, { format: "pt" });
    Object.values(t).forEach((x) => x.dispose());
    const err = await PeftModel.fromPretrained(model(), dir).catch((e: unknown) => e);
    expect((err as { code?: string }).code).toBe("ERR_CHECKPOINT");
    expect(String(err)).toContain("base_model.model.0.lora_magnitude_vector");
    expect(errorCode(() => { throw err; })).toBe("ERR_CHECKPOINT");
  });
});
