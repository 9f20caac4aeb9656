import { describe, expect, it } from "vitest";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { backend } from "../lib/index.js";
import { distIndex, root, runNode } from "./helpers/child.js";

const probe = `import { backend, Tensor, linear } from ${JSON.stringify(distIndex)};
const y = linear(Tensor.fromArray([1, 2, 3], [1, 3]), Tensor.fromArray([1, 1, 1, 2, 0, 0], [2, 3]));
console.log(JSON.stringify({ build: backend.build, isa: backend.isa, features: backend.features, threads: backend.threads, y: y.toArray() }));`;

describe("backend", () => {
  it("reports the build, ISA path, features and threads", () => {
    expect(["cmake-js", "node-gyp"]).toContain(backend.build);
    expect(["avx512", "avx2", "scalar"]).toContain(backend.isa);
    expect(Array.isArray(backend.features)).toBe(true);
    expect(backend.threads).toBeGreaterThanOrEqual(1);
    expect(backend.cuda).toHaveProperty("available");
  });

  it("NODE_PEFT_ISA forces each path the CPU has; NODE_PEFT_NUM_THREADS sets the pool", () => {
    const have = ["scalar", ...(backend.features.includes("avx2") ? ["avx2"] : []), ...(backend.features.includes("avx512f") ? ["avx512"] : [])];
    for (const isa of have) {
      const r = runNode(probe, { NODE_PEFT_ISA: isa, NODE_PEFT_NUM_THREADS: "1" });
      expect(r.stderr).toBe("");
      const out = JSON.parse(r.stdout);
      expect(out.isa).toBe(isa);
      expect(out.threads).toBe(1);
      expect(out.y).toEqual([6, 2]);
    }
  });

  it("an unknown or unsupported NODE_PEFT_ISA is a RangeError at load, never SIGILL", () => {
    const r = runNode(`import(${JSON.stringify(distIndex)}).catch((e) => { console.log(e.name, e.code); });`, { NODE_PEFT_ISA: "avx1024" });
    expect(r.stdout.trim()).toBe("RangeError ERR_OUT_OF_RANGE");
    if (!backend.features.includes("avx512f")) {
      const r2 = runNode(`import(${JSON.stringify(distIndex)}).catch((e) => { console.log(e.name, e.message); });`, { NODE_PEFT_ISA: "avx512" });
      expect(r2.stdout).toMatch(/RangeError .*does not support avx512/);
    } else {
      console.log("this CPU has AVX-512: the unsupported-ISA case is covered by an unknown name only");
    }
    expect(() => backend.setIsa("neon" as never)).toThrow(RangeError);
  });

  it("NODE_PEFT_AMX=0 turns AMX off; NODE_PEFT_AMX=1 without AMX is a RangeError", () => {
    const off = runNode(probe, { NODE_PEFT_AMX: "0" });
    expect(JSON.parse(off.stdout).features).not.toContain("amx");
    if (!backend.features.includes("amx")) {
      const on = runNode(`import(${JSON.stringify(distIndex)}).catch((e) => { console.log(e.name); });`, { NODE_PEFT_AMX: "1" });
      expect(on.stdout.trim()).toBe("RangeError");
    } else {
      expect(JSON.parse(runNode(probe, { NODE_PEFT_AMX: "1" }).stdout).features).toContain("amx");
    }
  });

  it("loads the addon built by node-gyp", () => {
    const gypBuild = join(root, "build", "Release", "node_peft.node");
    if (!existsSync(gypBuild)) {
      if (process.env.NODE_PEFT_REQUIRE_GYP) throw new Error(`the node-gyp build is missing: ${gypBuild}`);
      console.log("skipped: the node-gyp build is absent (run `npm run build:gyp`)");
      return;
    }
    const r = runNode(probe, { NODE_PEFT_BUILD: "node-gyp" });
    expect(r.stderr).toBe("");
    const out = JSON.parse(r.stdout);
    expect(out.build).toBe("node-gyp");
    expect(out.y).toEqual([6, 2]);
  });
});
