// Hostile configs and adapter directories: regexes that would backtrack for seconds, values nested
// thousands deep, keys that name Object.prototype members, ranks that disagree with the weights, and
// saves that fail half-way.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeEach, describe, expect, it, vi, type MockInstance } from "vitest";
import {
  buildModelFromCheckpoint, configToJSONString, getPeftModel, IA3Config, Linear, LoraConfig, LoraLayer, Module, PeftError,
  PeftModel, saveSafetensors, Tensor, type BackwardOptions,
} from "../lib/index.js";
import { findTargetModules, getPatternKey, matchModuleKey, wildcardMatch, type MatchOptions } from "../lib/matching.js";
import { MAX_REPETITION_CHAIN, pyRegex, screenRegex, UnsafeRegexError } from "../lib/pyregex.js";
import { MAX_CONFIG_DEPTH } from "../lib/tuners/config-checks.js";
import { KEY_CASES, MODEL_CASES, llama } from "./golden/matching-cases.js";
import { root } from "./helpers/child.js";
import { FIXTURE_DIR } from "./helpers/fixtures.js";
import { MLP } from "./helpers/models.js";

const tmp = mkdtempSync(join(tmpdir(), "node-peft-hardening-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

let warn: MockInstance<typeof process.emitWarning>;
beforeEach(() => {
  warn = vi.spyOn(process, "emitWarning").mockImplementation(() => {});
});
afterEach(() => {
  warn.mockRestore();
});

function thrown(f: () => unknown): Error & { code?: string } {
  try {
    f();
  } catch (e) {
    return e as Error & { code?: string };
  }
  throw new Error("expected an error");
}

async function rejected(p: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await p;
  } catch (e) {
    return e as Error & { code?: string };
  }
  throw new Error("expected a rejection");
}

// Real PEFT patterns people put in configs; they must keep working in every field that takes a regex.
const MUST_ACCEPT = [
  String.raw`^(?!.*vision).*q_proj`,
  String.raw`.*\.layers\.\d+\.(self_attn|mlp)\.\w+_proj`,
  String.raw`model.*q_proj$`,
  String.raw`.*(q_proj|v_proj)$`,
  String.raw`.*decoder.*(SelfAttention|EncDecAttention).*(q|k|v|o)$`,
  String.raw`.*\.(q|k|v|o)_proj`,
  // Python-only spellings pyregex.ts translates
  String.raw`(?P<root>model)\..*\.q_proj`,
  String.raw`(?i)MODEL\..*\.Q_PROJ`,
  String.raw`\Amodel\..*q_proj\Z`,
  String.raw`(?P<l>layers)\.(?P=l)?\d+`,
  // from test/matching.test.ts and test/config.test.ts
  String.raw`.*\.mlp\..*`, "mlp", String.raw`v_proj|k_proj`, "layers.0.self_attn.q_proj", String.raw`.*lm_head`, ".*q",
  String.raw`.*\.(k|down)`, "10", "9", "all-linear",
  // bounded and separated repetitions that are not ambiguous
  String.raw`(?:\d{1,3}\.){3}\d{1,3}`, String.raw`.*\.h\.(\.\d+)+`, String.raw`.*\.[^.]*\.(\d+)\.`,
];

const MUST_REFUSE = [String.raw`([a-z_.0-9]+)+X`, String.raw`(a+)+b`, String.raw`(a|a)*b`, String.raw`(.*)*x`, String.raw`(\w+\s?)+$`];

/** Every regex string of the golden matching tables, as matching compiles it. */
function goldenRegexes(): { pattern: string; mode: "full" | "match" }[] {
  const out: { pattern: string; mode: "full" | "match" }[] = [];
  for (const config of [...KEY_CASES.map((c) => c.config), ...MODEL_CASES.map((c) => c.config)]) {
    if (typeof config.targetModules === "string") out.push({ pattern: config.targetModules, mode: "full" });
    if (typeof config.excludeModules === "string") out.push({ pattern: config.excludeModules, mode: "full" });
    const lp = config.layersPattern;
    for (const p of typeof lp === "string" ? [lp] : lp ?? []) out.push({ pattern: String.raw`.*\.${p}\.(?<peftLayerIndex>\d+)\.`, mode: "match" });
    for (const m of config.modulesToSave ?? []) out.push({ pattern: String.raw`(^|.*\.)${m}($|\..*)`, mode: "match" });
  }
  out.push({ pattern: String.raw`.*\.[^.]*\.(?<peftLayerIndex>\d+)\.`, mode: "match" });
  return out;
}

describe("regexes from configs are screened for catastrophic backtracking", () => {
  it("accepts real PEFT patterns in every field that takes one", () => {
    for (const p of MUST_ACCEPT) {
      expect(screenRegex(p), p).toBeNull();
      expect(() => pyRegex(p, "full"), p).not.toThrow();
      if (p === "all-linear") continue;
      const c = new LoraConfig({ targetModules: p, excludeModules: p });
      expect(c.targetModules).toBe(p);
      expect(new IA3Config({ targetModules: p, feedforwardModules: p }).feedforwardModules).toBe(p);
      expect(LoraConfig.fromJSON({ target_modules: p, exclude_modules: p }).excludeModules).toBe(p);
      // Pattern keys are spliced into `(.*\.)?(key)$`, where Python (3.11+) refuses a global flag too.
      if (p.startsWith("(?i)")) continue;
      const k = LoraConfig.fromJSON({ rank_pattern: { [p]: 2 }, alpha_pattern: { [p]: 3 } });
      expect([k.rankPattern[p], k.alphaPattern[p]]).toEqual([2, 3]);
    }
  });

  it("accepts every regex of the golden matching tables", () => {
    const all = goldenRegexes();
    expect(all.length).toBeGreaterThan(10);
    for (const { pattern, mode } of all) expect(() => pyRegex(pattern, mode), pattern).not.toThrow();
  });

  it("keeps lookaheads and Python syntax working", () => {
    expect(matchModuleKey({ targetModules: MUST_ACCEPT[0] }, "model.layers.0.self_attn.q_proj").kind).toBe("matched");
    expect(matchModuleKey({ targetModules: MUST_ACCEPT[0] }, "vision_tower.layers.0.self_attn.q_proj").kind).toBe("unmatched");
    expect(matchModuleKey({ targetModules: MUST_ACCEPT[4] }, "decoder.block.0.layer.1.EncDecAttention.k").kind).toBe("matched");
    expect(matchModuleKey({ targetModules: MUST_ACCEPT[1] }, "model.layers.12.mlp.gate_proj").kind).toBe("matched");
    expect(matchModuleKey({ targetModules: MUST_ACCEPT[7] }, "model.layers.0.self_attn.q_proj").kind).toBe("matched");
    expect(getPatternKey([MUST_ACCEPT[4]!], "model.decoder.block.0.layer.0.SelfAttention.q")).toBe(MUST_ACCEPT[4]);
  });

  it("refuses patterns with nested or overlapping repetitions, naming the pattern and the field", () => {
    for (const p of MUST_REFUSE) {
      expect(screenRegex(p), p).toMatch(/exponential time/);
      const cases: [() => unknown, string][] = [
        [() => new LoraConfig({ targetModules: p }), "targetModules"],
        [() => new LoraConfig({ excludeModules: p }), "excludeModules"],
        [() => LoraConfig.fromJSON({ target_modules: p }), "target_modules"],
        [() => LoraConfig.fromJSON({ rank_pattern: { [p]: 4 } }), "rank_pattern key"],
        [() => LoraConfig.fromJSON({ alpha_pattern: { [p]: 4 } }), "alpha_pattern key"],
        [() => new LoraConfig({ targetModules: ["q"], layersToTransform: [0], layersPattern: p }), "layersPattern"],
        [() => new LoraConfig({ modulesToSave: [p] }), "modulesToSave[0]"],
        [() => new IA3Config({ feedforwardModules: p }), "feedforwardModules"],
      ];
      for (const [f, field] of cases) {
        const e = thrown(f);
        expect(e, `${p} in ${field}`).toBeInstanceOf(PeftError);
        expect(e.code).toBe("ERR_CONFIG");
        expect(e.message).toContain(field);
        expect(e.message).toContain(JSON.stringify(p).slice(1, -1));
        expect(e.message).toMatch(/refused: .*exponential time/);
      }
    }
  });

  it("refuses long chains of overlapping repetitions (polynomial time of high degree)", () => {
    const ok = ".*a".repeat(MAX_REPETITION_CHAIN) + "x";
    const tooLong = ".*a".repeat(MAX_REPETITION_CHAIN + 1) + "x";
    expect(screenRegex(ok)).toBeNull();
    expect(screenRegex(tooLong)).toMatch(new RegExp(`chains ${MAX_REPETITION_CHAIN + 1} unbounded repetitions`));
    expect(thrown(() => new LoraConfig({ targetModules: ".*.*.*.*.*.*.*.*x" })).code).toBe("ERR_CONFIG");
    // The same chain inside a lookahead counts too.
    expect(screenRegex(`(?=${".*a".repeat(MAX_REPETITION_CHAIN)}).*b`)).toMatch(/chains/);
    expect(screenRegex("(?=(a+)+b)")).toMatch(/exponential/);
  });

  it("refuses patterns that match one text in very many ways without nesting loops", () => {
    // 2^k ways for k overlapping alternatives in a row: "(a|a)" 24 times already takes seconds on 25 a's.
    // The second takes over a second on 25 characters, 16 s on 49.
    for (const p of ["(a|a)".repeat(30), "((a{1,3})a?(a{1,3}(aa)?a*)){1,3}a*"]) {
      expect(screenRegex(p), p).toMatch(/can be matched in about 2\^\d+ different ways/);
      expect(thrown(() => new LoraConfig({ targetModules: p })).code).toBe("ERR_CONFIG");
    }
    expect(screenRegex("(a|a)".repeat(4))).toBeNull();
  });

  it("checks a refused pattern before matching and never runs it", () => {
    const name = "model.layers.0.self_attn.q_proj_abcdefghij"; // 32+ characters: seconds per test if it ran
    const ran: string[] = [];
    const exec = RegExp.prototype.exec;
    const spy = vi.spyOn(RegExp.prototype, "exec").mockImplementation(function (this: RegExp, s: string) {
      ran.push(this.source);
      return exec.call(this, s);
    });
    const t0 = performance.now();
    try {
      for (const p of MUST_REFUSE) {
        const variant = `${p}|zz_${ran.length}`; // not cached: screened now
        expect(thrown(() => matchModuleKey({ targetModules: variant }, name)).code).toBe("ERR_CONFIG");
        expect(thrown(() => matchModuleKey({ targetModules: ["q_proj"], excludeModules: variant }, name)).code).toBe("ERR_CONFIG");
        expect(thrown(() => getPatternKey([variant], name)).code).toBe("ERR_CONFIG");
      }
      // A config changed after it was checked is caught by the matcher.
      const c = new LoraConfig({ targetModules: ["seq.0"] });
      c.targetModules = MUST_REFUSE[0]!;
      expect(thrown(() => getPeftModel(new MLP(8), c)).code).toBe("ERR_CONFIG");
      c.targetModules = ["seq.0"];
      c.rankPattern = { [MUST_REFUSE[1]!]: 2 };
      expect(thrown(() => getPeftModel(new MLP(8), c)).code).toBe("ERR_CONFIG");
    } finally {
      spy.mockRestore();
    }
    expect(performance.now() - t0).toBeLessThan(1000);
    for (const src of ran) for (const p of MUST_REFUSE) expect(src.includes(p.slice(0, 8)), src).toBe(false);
  });

  it("a refused pattern is an UnsafeRegexError (a PeftError ERR_CONFIG) from pyRegex itself", () => {
    const e = thrown(() => pyRegex("(a|a)*b", "full"));
    expect(e).toBeInstanceOf(UnsafeRegexError);
    expect(e).toBeInstanceOf(PeftError);
    expect(e.code).toBe("ERR_CONFIG");
    // and it stays refused (the verdict is cached, not forgotten)
    expect(thrown(() => pyRegex("(a|a)*b", "match"))).toBeInstanceOf(UnsafeRegexError);
  });

  it("matches globs with many stars without a RegExp (no backtracking blow-up)", () => {
    const glob = "*a".repeat(30) + "*x";
    expect(wildcardMatch(glob, "a".repeat(200))).toBe(false);
    expect(wildcardMatch(glob, "a".repeat(40) + "x")).toBe(true);
    expect(wildcardMatch("*.layers.0.*.linear_qkv", "decoder.layers.0.self_attention.linear_qkv")).toBe(true);
    expect(wildcardMatch("decoder.layers*", "decoderXlayers.0.linear_qkv")).toBe(false);
    expect(wildcardMatch("a*", "a\nb")).toBe(true);
  });

  it("a long target list that matches nothing still gives its candidates quickly", () => {
    const OPTS: MatchOptions = { isLinearLike: () => true, isSupported: () => true, typeName: () => "Linear" };
    const modules: [string, unknown][] = [["", {}], ...llama(1).map(([n]): [string, unknown] => [n, {}])];
    const targets = Array.from({ length: 200_000 }, (_, i) => `nope_${i}`);
    const e = thrown(() => findTargetModules({ namedModules: () => modules }, { targetModules: targets }, OPTS));
    expect(e.code).toBe("ERR_TARGET_NOT_FOUND");
  });
});

function deepValue(depth: number): unknown {
  let v: unknown = 1;
  for (let i = 0; i < depth; i++) v = { x: v };
  return v;
}

function deepJSON(depth: number): string {
  return '{"x":'.repeat(depth) + "1" + "}".repeat(depth);
}

describe("config nesting is bounded", () => {
  it("a config file with a value nested 3,000 deep is ERR_CONFIG naming the file and the key path", async () => {
    const dir = join(tmp, "deep-config");
    mkdirSync(dir, { recursive: true });
    const text = readFileSync(join(FIXTURE_DIR, "adapter", "adapter_config.json"), "utf8").trimEnd().slice(0, -1) + `, "weird": ${deepJSON(3000)}}`;
    writeFileSync(join(dir, "adapter_config.json"), text);
    // Each load starts only when the previous one was awaited: a second promise made up front could reject
    // before anything handles it (an unhandled rejection).
    for (const load of [() => LoraConfig.fromPretrained(dir), () => PeftModel.fromPretrained(new MLP(8), dir)]) {
      const e = await rejected(load());
      expect(e).toBeInstanceOf(PeftError);
      expect(e.code).toBe("ERR_CONFIG");
      expect(e.message).toContain(join(dir, "adapter_config.json"));
      expect(e.message).toContain("weird.x.x.x");
      expect(e.message).toContain(`nested more than ${MAX_CONFIG_DEPTH} levels`);
    }
  });

  it("values nested up to the limit load; deeper or cyclic ones passed in memory are refused", () => {
    expect(LoraConfig.fromJSON({ auto_mapping: deepValue(MAX_CONFIG_DEPTH - 1) as object }).autoMapping).toBeTruthy();
    expect(thrown(() => LoraConfig.fromJSON({ auto_mapping: deepValue(MAX_CONFIG_DEPTH + 1) as object })).code).toBe("ERR_CONFIG");
    expect(thrown(() => LoraConfig.fromJSON({ unknown_thing: [[[deepValue(5000)]]] })).message).toContain("unknown_thing[0][0][0].x");
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(thrown(() => new LoraConfig({ autoMapping: cyclic })).code).toBe("ERR_CONFIG");
  });

  it("toJSON refuses a field made too deep after loading instead of overflowing the stack", () => {
    const c = new LoraConfig({ targetModules: ["q"] });
    c.autoMapping = deepValue(10_000) as Record<string, unknown>;
    const e = thrown(() => configToJSONString(c));
    expect(e).toBeInstanceOf(PeftError);
    expect(e.code).toBe("ERR_CONFIG");
    expect(e.message).toContain("auto_mapping.x");
  });
});

describe("keys from files never reach Object.prototype", () => {
  it("rank_pattern / alpha_pattern keys named __proto__ or constructor are keys like any other", () => {
    const json = JSON.parse('{"r": 8, "rank_pattern": {"__proto__": 2, "constructor": 3}, "alpha_pattern": {"toString": 5, "__proto__": 7}}');
    const c = LoraConfig.fromJSON(json);
    expect(Object.getPrototypeOf(c.rankPattern)).toBe(Object.prototype);
    expect(Object.keys(c.rankPattern)).toEqual(["__proto__", "constructor"]);
    expect(c.rankFor("model.layer.__proto__")).toBe(2);
    expect(c.rankFor("model.layer.constructor")).toBe(3);
    expect(c.rankFor("model.layer.q_proj")).toBe(8);
    expect(c.alphaFor("a.toString")).toBe(5);
    expect(c.alphaFor("a.__proto__")).toBe(7);
    expect(c.alphaFor("a.valueOf")).toBe(8);
    const back = LoraConfig.fromJSON(JSON.parse(configToJSONString(c)));
    expect(back.rankFor("x.__proto__")).toBe(2);
    expect(JSON.parse(configToJSONString(back)).rank_pattern).toEqual(JSON.parse('{"__proto__": 2, "constructor": 3}'));
    // A plain config's patterns do not see Object.prototype's members.
    expect(new LoraConfig({ r: 4 }).rankFor("a.constructor")).toBe(4);
    expect(getPatternKey(Object.keys({}), "a.constructor")).toBeNull();
  });

  it("an unknown key named __proto__ is kept as data, not as a prototype", () => {
    const c = LoraConfig.fromJSON(JSON.parse('{"__proto__": {"polluted": true}, "constructor": 1}'));
    expect(Object.getPrototypeOf(c.extraKeys)).toBe(Object.prototype);
    expect((c.extraKeys as { polluted?: unknown }).polluted).toBeUndefined();
    expect(Object.keys(c.extraKeys).sort()).toEqual(["__proto__", "constructor"]);
    expect(configToJSONString(c)).toContain('"__proto__": {\n    "polluted": true\n  }');
  });

  it("savePretrained refuses adapter names that only exist on Object.prototype", async () => {
    const m = getPeftModel(new MLP(8), new LoraConfig({ targetModules: ["seq.0"], r: 2 }));
    for (const name of ["constructor", "toString", "__proto__"]) {
      const e = await rejected(m.savePretrained(join(tmp, "proto-names"), { adapterNames: [name] }));
      expect(e.code, name).toBe("ERR_CONFIG");
      expect(e.message).toContain("unknown adapter");
    }
    expect(existsSync(join(tmp, "proto-names"))).toBe(false);
  });
});

describe("savePretrained writes a directory all at once", () => {
  const listing = (dir: string) => readdirSync(dir, { recursive: true }).map(String).sort();

  it("a config that cannot be written leaves no file behind in a new directory", async () => {
    const m = getPeftModel(new MLP(8), new LoraConfig({ targetModules: ["seq.0"], r: 2 }));
    m.peftConfig.default!.autoMapping = deepValue(3000) as Record<string, unknown>;
    const dir = join(tmp, "fresh", "adapter");
    const e = await rejected(m.savePretrained(dir));
    expect(e).toBeInstanceOf(PeftError);
    expect(e.code).toBe("ERR_CONFIG");
    expect(existsSync(join(tmp, "fresh"))).toBe(false);
  });

  it("a failing second adapter leaves the first adapter's previous files untouched", async () => {
    const m = getPeftModel(new MLP(8), new LoraConfig({ targetModules: ["seq.0"], r: 2 }));
    m.addAdapter("second", new LoraConfig({ targetModules: ["seq.2"], r: 3 }));
    const dir = join(tmp, "existing");
    await m.savePretrained(dir);
    const before = new Map(listing(dir).filter((f) => f.includes(".")).map((f) => [f, readFileSync(join(dir, f))]));
    expect([...before.keys()]).toEqual([
      "README.md", "adapter_config.json", "adapter_model.safetensors",
      "second/README.md", "second/adapter_config.json", "second/adapter_model.safetensors",
    ]);
    // New weights for both adapters, but the second config can no longer be written.
    for (const p of m.parameters()) if (p.requiresGrad) p.copyFrom(Tensor.randn(p.shape, { seed: 5 }));
    m.peftConfig.second!.extraKeys["deep"] = deepValue(5000);
    const e = await rejected(m.savePretrained(dir));
    expect(e.code).toBe("ERR_CONFIG");
    expect(listing(dir).filter((f) => f.includes("."))).toEqual([...before.keys()]); // no temporary files left
    for (const [f, bytes] of before) expect(readFileSync(join(dir, f)).equals(bytes), f).toBe(true);
  });

  it("a successful save replaces every file and leaves no temporary file", async () => {
    const m = getPeftModel(new MLP(8), new LoraConfig({ targetModules: ["seq.0"], r: 2, baseModelNameOrPath: "org/model\nevil: yes" }));
    const dir = join(tmp, "replaced");
    await m.savePretrained(dir);
    await m.savePretrained(dir);
    expect(listing(dir)).toEqual(["README.md", "adapter_config.json", "adapter_model.safetensors"]);
    // The model card's front matter stays one key per line whatever the base model's name holds.
    expect(readFileSync(join(dir, "README.md"), "utf8")).toContain('base_model: "org/model\\nevil: yes"');
    expect((await PeftModel.fromPretrained(new MLP(8), dir)).targetedModuleNames).toEqual(["seq.0"]);
  });
});

/** A 64 -> 48 layer (plus a second one) under a container, as in the report that found the problem. */
class Wide extends Module {
  proj: Linear;
  other: Linear;
  constructor() {
    super();
    this.proj = this.registerModule("proj", new Linear(64, 48, { seed: 1 }));
    this.other = this.registerModule("other", new Linear(48, 64, { seed: 2 }));
  }
  override forward(x: Tensor): Tensor {
    return this.other.forward(this.proj.forward(x));
  }
  override backward(dy: Tensor, o?: BackwardOptions): Tensor | null {
    return this.proj.backward(this.other.backward(dy)!, o);
  }
}

async function savedWide(name: string, config: LoraConfig): Promise<string> {
  const dir = join(tmp, name);
  await getPeftModel(new Wide(), config).savePretrained(dir);
  return dir;
}

function rewriteConfig(dir: string, change: Record<string, unknown>): void {
  const path = join(dir, "adapter_config.json");
  writeFileSync(path, JSON.stringify({ ...JSON.parse(readFileSync(path, "utf8")), ...change }));
}

/** Runs `f` and reports the growth of this process's resident memory and its peak. */
async function memoryGrowth(f: () => Promise<void>): Promise<number> {
  const rss0 = process.memoryUsage().rss, peak0 = process.resourceUsage().maxRSS * 1024;
  await f();
  const rss1 = process.memoryUsage().rss, peak1 = process.resourceUsage().maxRSS * 1024;
  return Math.max(rss1 - rss0, peak1 - Math.max(peak0, rss0));
}

describe("adapter weights are checked against the config before any layer is allocated", () => {
  it("r = 2,000,000 in the config for rank-4 weights fails fast with ERR_CHECKPOINT", async () => {
    const dir = await savedWide("huge-r", new LoraConfig({ targetModules: ["proj"], r: 4 }));
    rewriteConfig(dir, { r: 2_000_000 });
    let e: Error & { code?: string } = new Error();
    const t0 = performance.now();
    const grew = await memoryGrowth(async () => {
      e = await rejected(PeftModel.fromPretrained(new Wide(), dir));
    });
    expect(performance.now() - t0).toBeLessThan(1000);
    expect(grew).toBeLessThan(200 * 2 ** 20); // layers of that rank would take 859 MB
    expect(e).toBeInstanceOf(PeftError);
    expect(e.code).toBe("ERR_CHECKPOINT");
    expect(e.message).toContain("base_model.model.proj.lora_A.weight");
    expect(e.message).toContain("[4, 64]");
    expect(e.message).toContain("r = 2000000");
  });

  it("loadAdapter checks rank_pattern ranks the same way and leaves the model as it was", async () => {
    const dir = await savedWide("huge-pattern", new LoraConfig({ targetModules: ["proj", "other"], r: 4, rankPattern: { other: 2 } }));
    rewriteConfig(dir, { rank_pattern: { other: 1_000_000 } });
    const m = getPeftModel(new Wide(), new LoraConfig({ targetModules: ["proj"], r: 2 }));
    const grew = await memoryGrowth(async () => {
      const e = await rejected(m.loadAdapter(dir, "second"));
      expect(e.code).toBe("ERR_CHECKPOINT");
      expect(e.message).toContain("base_model.model.other.lora_A.weight has shape [2, 48] (rank 2)");
      expect(e.message).toContain("r = 1000000");
    });
    expect(grew).toBeLessThan(200 * 2 ** 20);
    expect(Object.keys(m.peftConfig)).toEqual(["default"]);
  });

  it("a targeted module without weights in the file, or weights of the wrong width, is refused before allocation", async () => {
    const dir = await savedWide("missing", new LoraConfig({ targetModules: ["proj"], r: 4 }));
    rewriteConfig(dir, { target_modules: ["proj", "other"], rank_pattern: { other: 3_000_000 } });
    const e = await rejected(PeftModel.fromPretrained(new Wide(), dir));
    expect(e.code).toBe("ERR_CHECKPOINT");
    expect(e.message).toContain("base_model.model.other.lora_A.weight [3000000, 48]");

    const narrow = join(tmp, "narrow");
    mkdirSync(narrow, { recursive: true });
    writeFileSync(join(narrow, "adapter_config.json"), readFileSync(join(dir, "adapter_config.json")));
    rewriteConfig(narrow, { target_modules: ["proj"], rank_pattern: {}, r: 1_000_000 });
    await saveSafetensors(join(narrow, "adapter_model.safetensors"), {
      "base_model.model.proj.lora_A.weight": Tensor.zeros([1_000_000, 1]),
      "base_model.model.proj.lora_B.weight": Tensor.zeros([48, 1_000_000]),
    });
    const n = await rejected(PeftModel.fromPretrained(new Wide(), narrow));
    expect(n.code).toBe("ERR_CHECKPOINT");
    expect(n.message).toContain("base_model.model.proj.lora_A.weight has shape [1000000, 1] but proj needs [1000000, 64]");
  });

  it("valid adapters still load: saved here, the PEFT fixture, and the shared fixtures", async () => {
    const dir = await savedWide("valid", new LoraConfig({ targetModules: ["proj", "other"], r: 4, rankPattern: { other: 2 } }));
    const m = await PeftModel.fromPretrained(new Wide(), dir);
    expect((m.baseModel.model.getSubmodule("other") as LoraLayer).r.default).toBe(2);
    await m.loadAdapter(dir, "again");
    expect(Object.keys(m.peftConfig)).toEqual(["default", "again"]);

    const fixture = await PeftModel.fromPretrained(buildModelFromCheckpoint(join(FIXTURE_DIR, "base_model.safetensors")), join(FIXTURE_DIR, "adapter"));
    expect(fixture.targetedModuleNames.length).toBe(12);
    const shared = join(root, "..", "shared", "fixtures");
    if (existsSync(join(shared, "llama-tiny"))) {
      const llama = await PeftModel.fromPretrained(
        buildModelFromCheckpoint(join(shared, "llama-tiny", "model", "model.safetensors")),
        join(shared, "llama-tiny", "adapter"),
      );
      expect(llama.targetedModuleNames).toEqual([
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj",
      ]);
      const peft = await PeftModel.fromPretrained(
        buildModelFromCheckpoint(join(shared, "peft-lora-example", "base_model.safetensors")),
        join(shared, "peft-lora-example", "adapter"),
      );
      expect(peft.targetedModuleNames.length).toBe(12);
    }
  });
});
