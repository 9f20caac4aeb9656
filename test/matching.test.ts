import { afterEach, beforeEach, describe, expect, it, vi, type MockInstance } from "vitest";
import { PeftError } from "../lib/errors.js";
import {
  checkTargetModuleExists,
  findTargetModules,
  getPatternKey,
  isFeedforwardModule,
  matchModuleKey,
  wildcardMatch,
  type MatchableModel,
  type MatchOptions,
} from "../lib/matching.js";
import { KEY_CASES, MODEL_CASES, llama, type Kind, type ModelCase } from "./golden/matching-cases.js";

interface FakeModule {
  kind: Kind;
}

const OPTS: MatchOptions = {
  isLinearLike: (m) => ["Linear", "Conv1D", "LoraLinear"].includes((m as FakeModule).kind),
  isSupported: (m) => ["Linear", "Conv1D", "Conv2d", "Embedding", "LoraLinear"].includes((m as FakeModule).kind),
  typeName: (m) => (m as FakeModule).kind,
  isTunerLayer: (m) => (m as FakeModule).kind === "LoraLinear",
};

function fakeModel(modules: [string, Kind][], outputEmbeddings?: string): MatchableModel {
  const entries: [string, FakeModule][] = [["", { kind: "Container" }], ...modules.map(([n, kind]): [string, FakeModule] => [n, { kind }])];
  const model: MatchableModel = { namedModules: () => entries };
  if (outputEmbeddings !== undefined) model.getOutputEmbeddings = () => entries.find(([n]) => n === outputEmbeddings)![1];
  return model;
}

let warn: MockInstance<typeof process.emitWarning>;
beforeEach(() => {
  warn = vi.spyOn(process, "emitWarning").mockImplementation(() => {});
});
afterEach(() => {
  warn.mockRestore();
});

function warningsWithCode(code: string): string[] {
  return warn.mock.calls.filter((c) => (c[1] as { code?: string } | undefined)?.code === code).map((c) => String(c[0]));
}

describe("checkTargetModuleExists (golden KEY_CASES)", () => {
  it.each(KEY_CASES.map((c) => [`${c.key || '""'} ${JSON.stringify(c.config)}${c.why ? ` (${c.why})` : ""}`, c] as const))(
    "%s",
    (_, c) => {
      expect(checkTargetModuleExists(c.config, c.key)).toBe(c.expected);
    },
  );
});

describe("findTargetModules (golden MODEL_CASES)", () => {
  it.each(MODEL_CASES.map((c) => [c.name, c] as const))("%s", (_, c: ModelCase) => {
    const model = fakeModel(c.modules, c.outputEmbeddings);
    const e = c.expect;
    if ("error" in e) {
      let err: unknown;
      try {
        findTargetModules(model, c.config, OPTS);
      } catch (x) {
        err = x;
      }
      expect(err).toBeInstanceOf(PeftError);
      expect((err as PeftError).code).toBe(e.error);
      if (typeof e.message === "string") expect((err as Error).message).toBe(e.message);
      else expect((err as Error).message).toMatch(e.message);
      return;
    }
    const r = findTargetModules(model, c.config, OPTS);
    expect(r.targeted).toEqual(e.targeted);
    if (e.unmatchedTargets) expect(r.unmatchedTargets).toEqual(e.unmatchedTargets);
    if (e.excluded) expect(r.excluded).toEqual(e.excluded);
    // The matcher and the per-key decision agree on every module (all-linear aside, which needs the model).
    if (!(typeof c.config.targetModules === "string" && c.config.targetModules.toLowerCase() === "all-linear")) {
      const byKey = c.modules.map(([n]) => n).filter((n) => checkTargetModuleExists(c.config, n));
      expect(byKey).toEqual(e.targeted);
    }
  });
});

describe("findTargetModules reporting", () => {
  it("warns once about all unmatched list entries", () => {
    const r = findTargetModules(fakeModel(llama(1)), { targetModules: ["q_proj", "nope", "zip"] }, OPTS);
    expect(r.unmatchedTargets).toEqual(["nope", "zip"]);
    const w = warningsWithCode("PEFT_UNMATCHED_TARGET_MODULES");
    expect(w).toHaveLength(1);
    expect(w[0]).toContain("{'nope', 'zip'}");
  });

  it("does not warn when every entry matched", () => {
    findTargetModules(fakeModel(llama(1)), { targetModules: ["q_proj", "v_proj"] }, OPTS);
    expect(warn).not.toHaveBeenCalled();
  });

  it("warns when excludeModules excluded nothing", () => {
    findTargetModules(fakeModel(llama(1)), { targetModules: ["q_proj"], excludeModules: ["nothing_here"] }, OPTS);
    expect(warningsWithCode("PEFT_UNUSED_EXCLUDE_MODULES")).toHaveLength(1);
  });

  it("lists supported types in the unsupported-module error when given", () => {
    const opts = { ...OPTS, supportedTypeNames: ["Linear", "Conv2d"] };
    expect(() => findTargetModules(fakeModel(llama(1)), { targetModules: ["model.norm"] }, opts)).toThrow(
      "Target module model.norm (LayerNorm) is not supported. Currently, only the following module types are supported: Linear, Conv2d.",
    );
  });

  it("turns a regex JS cannot compile into ERR_CONFIG naming the field", () => {
    expect(() => findTargetModules(fakeModel(llama(1)), { targetModules: "(unclosed" }, OPTS)).toThrow(
      expect.objectContaining({ code: "ERR_CONFIG", message: expect.stringContaining("targetModules") }),
    );
  });
});

describe("matchModuleKey", () => {
  it("reports every entry that matched a key", () => {
    const cfg = { targetModules: ["q_proj", "self_attn.q_proj", "*.q_proj", "v_proj"] };
    expect(matchModuleKey(cfg, "model.layers.0.self_attn.q_proj")).toEqual({
      kind: "matched",
      entries: ["q_proj", "self_attn.q_proj", "*.q_proj"],
    });
  });

  it("tells excluded from unmatched", () => {
    expect(matchModuleKey({ targetModules: ["a"], excludeModules: ["a"] }, "x.a").kind).toBe("excluded");
    expect(matchModuleKey({ targetModules: ["a"] }, "x.b").kind).toBe("unmatched");
    expect(matchModuleKey({ targetModules: null }, "x.b").kind).toBe("unmatched");
  });
});

describe("helpers", () => {
  it("wildcardMatch follows Megatron-Bridge's examples", () => {
    expect(wildcardMatch("*.layers.0.*.linear_qkv", "decoder.layers.0.self_attention.linear_qkv")).toBe(true);
    expect(wildcardMatch("*.layers.0.*.linear_qkv", "decoder.layers.1.self_attention.linear_qkv")).toBe(false);
    expect(wildcardMatch("a+b*", "a+bc")).toBe(true);
    expect(wildcardMatch("a+b*", "aab")).toBe(false);
  });

  it("isFeedforwardModule: regex is full-match, list entries are plain suffixes (as PEFT)", () => {
    expect(isFeedforwardModule({ feedforwardModules: ["down_proj"] }, "model.layers.0.mlp.down_proj")).toBe(true);
    expect(isFeedforwardModule({ feedforwardModules: ["proj"] }, "model.layers.0.mlp.down_proj")).toBe(true);
    expect(isFeedforwardModule({ feedforwardModules: ["up_proj"] }, "model.layers.0.mlp.down_proj")).toBe(false);
    expect(isFeedforwardModule({ feedforwardModules: String.raw`.*\.mlp\..*` }, "model.layers.0.mlp.down_proj")).toBe(true);
    expect(isFeedforwardModule({ feedforwardModules: "mlp" }, "model.layers.0.mlp.down_proj")).toBe(false);
    expect(isFeedforwardModule({ feedforwardModules: ["*.0.mlp.*"] }, "model.layers.0.mlp.down_proj")).toBe(true);
    expect(isFeedforwardModule({ feedforwardModules: null }, "model.layers.0.mlp.down_proj")).toBe(false);
  });

  it("getPatternKey: first key matching the end of the path at a dot", () => {
    const keys = ["layers.0.self_attn.q_proj", "q_proj", String.raw`v_proj|k_proj`];
    expect(getPatternKey(keys, "model.layers.0.self_attn.q_proj")).toBe("layers.0.self_attn.q_proj");
    expect(getPatternKey(keys, "model.layers.1.self_attn.q_proj")).toBe("q_proj");
    expect(getPatternKey(keys, "model.layers.1.self_attn.k_proj")).toBe(String.raw`v_proj|k_proj`);
    expect(getPatternKey(keys, "model.layers.1.self_attn.qq_proj")).toBeNull();
    expect(getPatternKey(keys, "model.layers.1.self_attn.o_proj")).toBeNull();
  });
});

describe("with config classes", () => {
  it("LoraConfig and IA3Config plug in directly", async () => {
    const { LoraConfig } = await import("../lib/tuners/lora/config.js");
    const { IA3Config } = await import("../lib/tuners/ia3/config.js");
    const model = fakeModel(llama(2));
    const lora = new LoraConfig({ targetModules: ["q_proj"], layersToTransform: [1] });
    expect(findTargetModules(model, lora, OPTS).targeted).toEqual(["model.layers.1.self_attn.q_proj"]);
    expect(checkTargetModuleExists(lora, "model.layers.0.self_attn.q_proj")).toBe(false);
    const ia3 = new IA3Config({ targetModules: ["k_proj", "down_proj"], feedforwardModules: ["down_proj"] });
    const r = findTargetModules(model, ia3, OPTS);
    expect(r.targeted.filter((k) => isFeedforwardModule(ia3, k))).toEqual(["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]);
  });

  it("candidates never come from adapter internals", () => {
    const model = fakeModel([["blk", "Container"], ["blk.q_proj", "LoraLinear"], ["blk.q_proj.base_layer", "Linear"]]);
    expect(() => findTargetModules(model, { targetModules: ["base"] }, OPTS)).toThrow(/Candidate modules: q_proj\.$/);
  });
});
