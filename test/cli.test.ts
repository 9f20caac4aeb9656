import { afterAll, describe, expect, it, vi } from "vitest";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, copyFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Conv1D, Conv2d, Embedding, Linear, Linear4bit, LoraConfig, Module, Tensor, getPeftModel, loadSafetensors, saveSafetensors, type BackwardOptions } from "../lib/index.js";
import { root } from "./helpers/child.js";
import { expectClose } from "./helpers/nn-reference.js";
import { FIXTURE_DIR } from "./helpers/fixtures.js";

const FIXTURE = FIXTURE_DIR;
const tmp = mkdtempSync(join(tmpdir(), "node-peft-cli-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, [join(root, "dist", "cli.js"), ...args], { encoding: "utf8", timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

class Block extends Module {
  c_attn: Conv1D;
  fc: Linear;
  head: Linear;
  constructor() {
    super();
    this.c_attn = this.registerModule("c_attn", new Conv1D(36, 12, { seed: 1 }));
    this.fc = this.registerModule("fc", new Linear(36, 20, { seed: 2 }));
    this.head = this.registerModule("head", new Linear(20, 3, { seed: 3 }));
  }
  override forward(x: Tensor): Tensor {
    return this.head.forward(this.fc.forward(this.c_attn.forward(x)));
  }
  override backward(dy: Tensor, o?: BackwardOptions): Tensor | null {
    return this.c_attn.backward(this.fc.backward(this.head.backward(dy)!)!, o);
  }
}

describe("node-peft merge", () => {
  it("reproduces the fixture's torch merge", async () => {
    const out = join(tmp, "fixture-merged.safetensors");
    const r = cli("merge", "--base", join(FIXTURE, "base_model.safetensors"), "--adapter", join(FIXTURE, "adapter"), "--out", out);
    expect(r.stderr.includes("node-peft:")).toBe(false);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/21 tensors, 12 merged/);
    const got = await loadSafetensors(out), want = await loadSafetensors(join(FIXTURE, "expected_merged_model.safetensors"));
    expect(Object.keys(got)).toEqual(Object.keys(want));
    for (const k of Object.keys(want)) {
      const w = want[k].toFloat32Array();
      expectClose(got[k].toFloat32Array(), w, (i) => 1e-5 + 1e-5 * Math.abs(w[i]), k);
    }
  });

  it("honours rank/alpha patterns, rslora, fan_in_fan_out and modules_to_save (vs mergeAndUnload)", async () => {
    vi.spyOn(process, "emitWarning").mockImplementation(() => {});
    const base = new Block();
    const basePath = join(tmp, "block.safetensors");
    await saveSafetensors(basePath, base.stateDict());
    const config = new LoraConfig({
      targetModules: ["c_attn", "fc"], r: 4, loraAlpha: 8, useRslora: true, fanInFanOut: true,
      rankPattern: { fc: 2 }, alphaPattern: { fc: 5 }, modulesToSave: ["head"],
    });
    const m = getPeftModel(new Block(), config);
    for (const p of m.parameters()) if (p.requiresGrad) p.copyFrom(Tensor.randn(p.shape, { seed: p.numel + 1, std: 0.2 }));
    const adapterDir = join(tmp, "block-adapter");
    await m.savePretrained(adapterDir);
    const out = join(tmp, "block-merged.safetensors");
    const r = cli("merge", "--base", basePath, "--adapter", adapterDir, "--out", out);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/6 tensors, 2 merged, 2 replaced/);
    const merged = m.mergeAndUnload().stateDict();
    const got = await loadSafetensors(out);
    for (const [k, t] of Object.entries(merged)) {
      const w = t.toFloat32Array();
      expectClose(got[k].toFloat32Array(), w, (i) => 1e-6 + 1e-6 * Math.abs(w[i]), k);
    }
    const bf = join(tmp, "block-bf16.safetensors");
    expect(cli("merge", "--base", basePath, "--adapter", adapterDir, "--out", bf, "--dtype", "bf16").code).toBe(0);
    const b16 = await loadSafetensors(bf);
    expect(b16["fc.weight"].dtype).toBe("bf16");
    expectClose(b16["fc.weight"].toFloat32Array(), got["fc.weight"].toFloat32Array(), (i) => Math.abs(got["fc.weight"].toFloat32Array()[i]) * 2 ** -8 + 1e-30, "bf16");
  });

  it("merges LoRA on Conv2d (4-D weights) and on Embedding (lora_embedding_A/B) as mergeAndUnload does; inspect lists them", async () => {
    class Vision extends Module {
      conv = this.registerModule("conv", new Conv2d(3, 6, 3, { padding: 1, seed: 1 }));
      pw = this.registerModule("pw", new Conv2d(6, 4, 1, { seed: 2 }));
      emb = this.registerModule("emb", new Embedding(10, 6, { seed: 3 }));
      forward(x: Tensor): Tensor {
        return this.pw.forward(this.conv.forward(x));
      }
    }
    const basePath = join(tmp, "vision.safetensors");
    await saveSafetensors(basePath, new Vision().stateDict());
    const m = getPeftModel(new Vision(), new LoraConfig({ targetModules: ["conv", "pw", "emb"], r: 2, loraAlpha: 6 }));
    for (const p of m.parameters()) if (p.requiresGrad) p.copyFrom(Tensor.randn(p.shape, { seed: p.numel + 3, std: 0.3 }));
    const adapterDir = join(tmp, "vision-adapter");
    await m.savePretrained(adapterDir);
    const out = join(tmp, "vision-merged.safetensors");
    const r = cli("merge", "--base", basePath, "--adapter", adapterDir, "--out", out);
    expect(r.stderr).toBe("");
    expect(r.stdout).toMatch(/5 tensors, 3 merged/);
    const got = await loadSafetensors(out);
    for (const [k, t] of Object.entries(m.mergeAndUnload().stateDict())) {
      const w = t.toFloat32Array();
      expect(got[k].shape).toEqual(t.shape);
      expectClose(got[k].toFloat32Array(), w, (i) => 1e-6 + 1e-6 * Math.abs(w[i]), k);
    }
    const listed = cli("inspect", adapterDir);
    expect(listed.code).toBe(0);
    expect(listed.stdout).toMatch(/base_model\.model\.conv\.lora_A\.weight\s+F32\s+\[2, 3, 3, 3\]/);
    expect(listed.stdout).toMatch(/base_model\.model\.emb\.lora_embedding_B\s+F32\s+\[6, 2\]/);
  });

  it("computes W + (alpha/r)·B·A itself for the fixture", async () => {
    const base = await loadSafetensors(join(FIXTURE, "base_model.safetensors"));
    const ad = await loadSafetensors(join(FIXTURE, "adapter", "adapter_model.safetensors"));
    const out = join(tmp, "fixture-merged.safetensors");
    const got = await loadSafetensors(out);
    const k = "model.layers.2.self_attn.v_proj";
    const W = base[`${k}.weight`].toFloat64Array(), A = ad[`base_model.model.${k}.lora_A.weight`].toFloat64Array(), B = ad[`base_model.model.${k}.lora_B.weight`].toFloat64Array();
    const want = new Float64Array(24 * 24);
    for (let n = 0; n < 24; n++)
      for (let c = 0; c < 24; c++) {
        let s = 0;
        for (let j = 0; j < 8; j++) s += B[n * 8 + j] * A[j * 24 + c];
        want[n * 24 + c] = W[n * 24 + c] + 2 * s;
      }
    expectClose(got[`${k}.weight`].toFloat32Array(), want, (i) => 2 ** -22 * (Math.abs(want[i]) + 1), k);
  });

  it("refuses what it cannot do with exit code 1 and no stack trace", () => {
    const out = join(tmp, "exists.safetensors");
    writeFileSync(out, "old");
    const r = cli("merge", "--base", join(FIXTURE, "base_model.safetensors"), "--adapter", join(FIXTURE, "adapter"), "--out", out);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/exists; pass --force/);
    expect(readFileSync(out, "utf8")).toBe("old");
    const ia3 = join(tmp, "ia3");
    mkdirSync(ia3, { recursive: true });
    writeFileSync(join(ia3, "adapter_config.json"), JSON.stringify({ peft_type: "PREFIX_TUNING" }));
    const u = cli("merge", "--base", join(FIXTURE, "base_model.safetensors"), "--adapter", ia3, "--out", join(tmp, "o.safetensors"));
    expect(u.code).toBe(1);
    expect(u.stderr).toMatch(/PREFIX_TUNING/);
    expect(u.stderr).not.toMatch(/\n\s+at /);
    expect(cli("merge", "--base", "x").code).toBe(2); // a required option missing: a malformed command line
    expect(cli("merge", "--base", "a", "--adapter", "b", "--out", "c", "--dtype", "f64").stderr).toMatch(/--dtype must be f32, f16, bf16 or int8/);
    // an adapter whose targets are missing from the base
    const other = join(tmp, "other-adapter");
    mkdirSync(other, { recursive: true });
    copyFileSync(join(FIXTURE, "adapter", "adapter_config.json"), join(other, "adapter_config.json"));
    copyFileSync(join(FIXTURE, "adapter", "adapter_model.safetensors"), join(other, "adapter_model.safetensors"));
    const lone = join(tmp, "lone.safetensors");
    const m = cli("merge", "--base", join(tmp, "block.safetensors"), "--adapter", other, "--out", lone);
    expect(m.code).toBe(1);
    expect(m.stderr).toMatch(/have no base tensor/);
  });
});

describe("node-peft inspect", () => {
  it("lists tensors, metadata and the adapter config", () => {
    const f = cli("inspect", join(FIXTURE, "base_model.safetensors"));
    expect(f.code).toBe(0);
    expect(f.stdout).toMatch(/model\.layers\.0\.mlp\.down_proj\.weight\s+F32\s+\[24, 40\]\s+3\.8 KiB/);
    expect(f.stdout).toMatch(/21 tensors/);
    expect(f.stdout).toMatch(/metadata: format=pt/);
    const d = cli("inspect", join(FIXTURE, "adapter"));
    expect(d.code).toBe(0);
    expect(d.stdout).toMatch(/peft_type\s+LORA/);
    expect(d.stdout).toMatch(/target_modules\s+\["q_proj","k_proj","v_proj","o_proj"\]/);
  });

  it("reports a broken file with the reader's error and exit code 1", () => {
    const bad = join(tmp, "broken.safetensors");
    writeFileSync(bad, Buffer.from([1, 2, 3, 4, 5, 6, 7]));
    const r = cli("inspect", bad);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/broken\.safetensors/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(cli("inspect", join(tmp, "missing")).code).toBe(1);
    expect(cli("inspect").code).toBe(2);
  });

  it("--version, per-command help and the documented exit codes, each mistake on one line", () => {
    const { version } = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
    for (const flag of ["--version", "-V"]) expect(cli(flag)).toEqual({ code: 0, stdout: `${version}\n`, stderr: "" });
    for (const args of [["inspect", "--help"], ["help", "inspect"]]) {
      const h = cli(...args);
      expect(h.code).toBe(0);
      expect(h.stdout).toMatch(/^Usage: node-peft inspect \[options\] <path>/);
      expect(h.stdout).toMatch(/--json/);
    }
    const m = cli("merge", "--help");
    expect(m.stdout).toMatch(/^Usage: node-peft merge/);
    expect(m.stdout).toMatch(/--base <file>[\s\S]*--adapter <dir>[\s\S]*--out <file>[\s\S]*--dtype[\s\S]*--force/);
    expect(m.stdout).toMatch(/Exit codes: 0 success, 1 .*, 2 a malformed command line/);
    const usage: string[][] = [[], ["frobnicate"], ["inspect"], ["inspect", "a", "b"], ["inspect", "--what", "x"], ["merge", "--base", "x"],
      ["merge", "--base", "a", "--adapter", "b", "--out", "c", "--dtype", "f64"], ["merge", "--base"]];
    for (const args of usage) {
      const r = cli(...args);
      expect(r.code, args.join(" ")).toBe(2);
      expect(r.stderr).toMatch(/^(node-peft|Usage)/);
      expect(r.stderr).not.toMatch(/\n\s+at /);
      if (args.length) expect(r.stderr.trim().split("\n"), args.join(" ")).toHaveLength(1);
    }
    expect(cli("merge", "--base", "a", "--adapter", "b", "--out", "c", "--dtype", "f64").stderr).toMatch(/see `node-peft merge --help`/);
  });

  it("inspect --json: one JSON object with every tensor, the metadata and an adapter's config", () => {
    const f = cli("inspect", "--json", join(FIXTURE, "base_model.safetensors"));
    expect(f.code).toBe(0);
    const file = JSON.parse(f.stdout);
    expect(file.tensors).toHaveLength(21);
    expect(file.tensors.find((t: { name: string }) => t.name === "model.layers.0.mlp.down_proj.weight")).toEqual({
      name: "model.layers.0.mlp.down_proj.weight", dtype: "F32", shape: [24, 40], bytes: 3840,
    });
    expect(file.metadata).toEqual({ format: "pt" });
    expect(file.totalBytes).toBe(file.tensors.reduce((a: number, t: { bytes: number }) => a + t.bytes, 0));
    const d = JSON.parse(cli("inspect", join(FIXTURE, "adapter"), "--json").stdout);
    expect(d.config.peft_type).toBe("LORA");
    expect(d.config.target_modules).toEqual(["q_proj", "k_proj", "v_proj", "o_proj"]);
    expect(d.weights.tensors.length).toBeGreaterThan(0);
  });

  it("shows a bitsandbytes 4-bit weight as its quant state describes it; a malformed quant state as such", async () => {
    // 17 x 33 = 561 values: 281 bytes of codes, stored [281, 1] as bitsandbytes packs them.
    const nf4 = Linear4bit.fromLinear(new Linear(33, 17, { seed: 5, dtype: "bf16" }), { quantType: "nf4", compressStatistics: true });
    const fp4 = Linear4bit.fromLinear(new Linear(33, 17, { seed: 6 }), { quantType: "fp4", compressStatistics: false, blocksize: 128 });
    const tensors: Record<string, Tensor> = {};
    for (const [p, l] of [["a", nf4], ["b", fp4]] as const) for (const [k, t] of Object.entries(l.stateDict())) tensors[`${p}.${k}`] = t;
    const bytes = (s: string) => Tensor.fromArray(new TextEncoder().encode(s), [s.length], "u8");
    Object.assign(tensors, {
      "c.weight": tensors["b.weight"], "c.weight.quant_state.bitsandbytes__nf4": bytes("{quant_type: nf4"),
      "d.weight": tensors["b.weight"], "d.weight.quant_state.bitsandbytes__nf4": tensors["b.weight.quant_state.bitsandbytes__fp4"],
    });
    const file = join(tmp, "four-bit.safetensors");
    await saveSafetensors(file, tensors);
    const r = cli("inspect", file);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const row = (name: string) => r.stdout.split("\n").find((l) => l.startsWith(name + " ")) ?? "";
    expect(row("a.weight")).toMatch(/U8\s+\[281, 1\]\s+281 B\s+nf4 \(17, 33\) from bf16, blocksize 64, double-quantised$/);
    expect(row("b.weight")).toMatch(/ fp4 \(17, 33\) from f32, blocksize 128$/);
    expect(row("c.weight")).toMatch(/ 4-bit weight, malformed quant state: c\.weight\.quant_state\.bitsandbytes__nf4: the quant_state tensor is not JSON/);
    expect(row("d.weight")).toMatch(/ 4-bit weight, malformed quant state: .*holds quant_type fp4, its key says nf4$/);
    const j = JSON.parse(cli("inspect", "--json", file).stdout);
    const at = (name: string) => j.tensors.find((t: { name: string }) => t.name === name).fourBit;
    expect(at("a.weight")).toEqual({ quantState: "a.weight.quant_state.bitsandbytes__nf4", quantType: "nf4", shape: [17, 33], dtype: "bf16", blocksize: 64, doubleQuantised: true });
    expect(at("c.weight").malformed).toMatch(/not JSON/);
    expect(at("a.weight.absmax")).toBeUndefined();
    nf4.dispose();
    fp4.dispose();
  });

  it("mergeCheckpoint is the same merge from code", async () => {
    const { mergeCheckpoint } = await import("../lib/index.js");
    const out = join(tmp, "from-code.safetensors");
    const seen: number[] = [];
    const summary = await mergeCheckpoint({
      base: join(FIXTURE, "base_model.safetensors"), adapter: join(FIXTURE, "adapter"), out, onProgress: (done) => seen.push(done),
    });
    expect(summary.tensors).toBe(21);
    expect(summary.merged).toHaveLength(12);
    expect(seen.at(-1)).toBe(21);
    const got = await loadSafetensors(out), want = await loadSafetensors(join(FIXTURE, "expected_merged_model.safetensors"));
    for (const k of Object.keys(want)) {
      const w = want[k].toFloat32Array();
      expectClose(got[k].toFloat32Array(), w, (i) => 1e-5 + 1e-5 * Math.abs(w[i]), k);
    }
  });

  it("--help, unknown commands and unknown flags", () => {
    const h = cli("--help");
    expect(h.code).toBe(0);
    expect(h.stdout).toMatch(/Usage: node-peft <command>/);
    expect(cli().code).toBe(2);
    expect(cli("frobnicate").code).toBe(2);
    expect(cli("inspect", "--what").code).toBe(2);
  });
});
