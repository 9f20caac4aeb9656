// The restricted reader of torch.save files: fixtures written by torch.save (test/fixtures/torch-bin,
// made by make_fixtures.py there) load with torch's values; hand-made archives that would run code, and
// damaged ones, are refused with errors naming the file; PEFT adapters saved as adapter_model.bin load.
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { PeftModel, backend, describeTorchCheckpoint, loadTorchCheckpoint, type LoraLinear } from "../lib/index.js";
import { MLP } from "./helpers/models.js";
import { errorCode } from "./helpers/errors.js";

const DIR = fileURLToPath(new URL("./fixtures/torch-bin/", import.meta.url));
const expected: Record<string, { shape: number[]; values: number[] }> = JSON.parse(readFileSync(join(DIR, "expected.json"), "utf8"));
const tmp = mkdtempSync(join(tmpdir(), "node-peft-torch-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe("loadTorchCheckpoint on files torch.save wrote", () => {
  for (const [file, prefix] of [["tensors.bin", ""], ["module_state.bin", "module."], ["parameter.bin", "parameter."], ["adapter/adapter_model.bin", "adapter."]])
    it(`${file}: every tensor with torch's shape and values`, () => {
      const sd = loadTorchCheckpoint(join(DIR, file));
      const want = Object.keys(expected).filter((k) => k.startsWith(prefix) && (prefix !== "" || !k.includes(".")));
      expect(Object.keys(sd).map((k) => prefix + k).sort()).toEqual(want.sort());
      for (const [k, t] of Object.entries(sd)) {
        expect(t.shape, k).toEqual(expected[prefix + k]!.shape);
        expect(t.toArray(), k).toEqual(expected[prefix + k]!.values);
        t.dispose();
      }
    });

  it("dtypes map to tensor dtypes (bool as u8); views of one storage are separate tensors", () => {
    const sd = loadTorchCheckpoint(join(DIR, "tensors.bin"));
    expect(Object.fromEntries(Object.entries(sd).map(([k, t]) => [k, t.dtype]))).toMatchObject({
      f32: "f32", f16: "f16", bf16: "bf16", i64: "i64", i32: "i32", i8: "i8", u8: "u8", bool: "u8", transposed: "f32",
    });
    expect(sd.transposed!.shape).toEqual([6, 4]);
    expect(sd.shared_row!.sharesStorage(sd.shared_full!)).toBe(false);
    expect(describeTorchCheckpoint(join(DIR, "tensors.bin")).get("strided")).toEqual({ dtype: "f32", shape: [4, 3] });
    for (const t of Object.values(sd)) t.dispose();
  });
});

describe("what the reader refuses", () => {
  it("pickles that call os.system or builtins.eval: refused at the GLOBAL, nothing run", () => {
    for (const [file, name] of [["malicious_system.bin", "posix.system"], ["malicious_eval.bin", "builtins.eval"]]) {
      const before = backend.memory().tensors;
      const load = () => loadTorchCheckpoint(join(DIR, file));
      expect(errorCode(load)).toBe("ERR_CHECKPOINT");
      expect(load).toThrow(`${join(DIR, file)}: refused by the restricted unpickler: global "${name}" is not allowed`);
      expect(backend.memory().tensors).toBe(before);
    }
    expect(existsSync("/tmp/node-peft-pwned")).toBe(false);
  });

  it("compressed entries, the legacy format, and files that are no archive", () => {
    expect(() => loadTorchCheckpoint(join(DIR, "compressed.bin"))).toThrow(/compressed\.bin: .*compressed \(method 8\)/);
    expect(errorCode(() => loadTorchCheckpoint(join(DIR, "legacy.bin")))).toBe("ERR_UNSUPPORTED");
    const junk = join(tmp, "junk.bin");
    writeFileSync(junk, "hello");
    expect(errorCode(() => loadTorchCheckpoint(junk))).toBe("ERR_CHECKPOINT");
    writeFileSync(junk, Buffer.concat([Buffer.from("PK\x03\x04"), Buffer.alloc(100)]));
    expect(() => loadTorchCheckpoint(junk)).toThrow(/no end-of-central-directory/);
    expect(errorCode(() => loadTorchCheckpoint(3 as never))).toBe("ERR_INVALID_ARG_TYPE");
  });

  it("a damaged archive: a truncated file and a storage whose size disagrees with its tensor", () => {
    const bytes = readFileSync(join(DIR, "tensors.bin"));
    const cut = join(tmp, "cut.bin");
    writeFileSync(cut, bytes.subarray(0, bytes.length - 40));
    expect(errorCode(() => loadTorchCheckpoint(cut))).toBe("ERR_CHECKPOINT");
    // Flip the pickled numel of the first storage (LONG1/BININT right after the 'cpu' location string).
    const patched = Buffer.from(bytes);
    const at = patched.indexOf(Buffer.from("cpu"));
    patched[at + 4] ^= 0x01;
    const bad = join(tmp, "bad.bin");
    writeFileSync(bad, patched);
    expect(errorCode(() => loadTorchCheckpoint(bad))).toBe("ERR_CHECKPOINT");
  });

  it("every single-byte corruption of the pickle is an error or a load, never a crash", () => {
    const bytes = readFileSync(join(DIR, "parameter.bin"));
    const start = bytes.indexOf(Buffer.from("data.pkl")) + "data.pkl".length;
    const file = join(tmp, "fuzz.bin");
    for (let i = start; i < start + 200; i++) {
      for (const v of [0x00, 0xff, 0x52, 0x63]) {
        const b = Buffer.from(bytes);
        b[i] = v;
        writeFileSync(file, b);
        try {
          for (const t of Object.values(loadTorchCheckpoint(file))) t.dispose();
        } catch (e) {
          expect(typeof (e as { code?: unknown }).code, String(e)).toBe("string");
        }
      }
    }
  });
});

describe("PEFT adapters saved as adapter_model.bin", () => {
  it("PeftModel.fromPretrained loads them when there is no safetensors file", async () => {
    const m = await PeftModel.fromPretrained(new MLP(8), join(DIR, "adapter"));
    const layer = m.baseModel.model.getSubmodule("seq.0") as LoraLinear;
    const a = [...layer.namedParameters()].find(([k]) => k === "lora_A.default.weight")![1];
    expect(a.toArray()).toEqual(expected["adapter.base_model.model.seq.0.lora_A.weight"]!.values);
    // A config that does not fit the weights is refused from the pickle's shapes, before layers are built.
    const dir = join(tmp, "adapter-r3");
    mkdirSync(dir);
    copyFileSync(join(DIR, "adapter", "adapter_model.bin"), join(dir, "adapter_model.bin"));
    const config = JSON.parse(readFileSync(join(DIR, "adapter", "adapter_config.json"), "utf8"));
    writeFileSync(join(dir, "adapter_config.json"), JSON.stringify({ ...config, r: 3 }));
    await expect(PeftModel.fromPretrained(new MLP(8), dir)).rejects.toThrow(/adapter_model\.bin: .*rank 2.*r = 3/);
  });
});
