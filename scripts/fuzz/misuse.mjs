#!/usr/bin/env node
// Misuse fuzzer for the public API (dist/index.js).
//
// Every export is found at run time: functions, class constructors, static methods, prototype methods,
// getters and setters (up the prototype chain), methods of namespace objects (backend) and arrays of
// functions (LORA_DISPATCHERS), plus the methods of any object a call returns (file handles, scopes, ...).
// Each is called with arguments drawn from a seeded generator: wrong types, disposed tensors, every dtype,
// odd shapes, tensors on the emulated "cuda" device, NaN / negative / fractional / huge numbers, hostile
// getters and proxies that dispose tensors of the same call or throw, and near misses of argument lists
// that worked before. Tensor views handed out by view()/bytes() get random bytes written into them (NaN,
// out-of-range indices), and every ~200 calls the garbage collector runs (finalizers of dropped handles).
//
// Pass: every call returns, or throws an Error with a string `code`. A signal (SIGSEGV, SIGABRT, ...), a
// hang, an error without a code ("x is not a function", "Maximum call stack size exceeded") or an unhandled
// rejection is a failure, reported with the call and the command that replays it.
//
//   node scripts/fuzz/misuse.mjs --seed 1 --calls 3000      # a few thousand calls
//   node scripts/fuzz/misuse.mjs --long                     # 100k calls
//   node scripts/fuzz/misuse.mjs --seed 1 --calls 3000 --only 3 --trace   # replay batch 3, printing each call
//
// Options: --seed N, --calls N, --long, --batch-size N (calls per child, default 400; 1000 above 20k calls), --jobs N (parallel
// children, default: CPU count, at most 4), --timeout S (seconds a child may go without a message, default 60), --only B (run batch B only),
// --until K (stop each child after step K), --trace (print every step to stderr), --json (summary as JSON
// on stdout, the report on stderr), --keep (keep the children's temp directories), --internals (also call
// members the declaration files mark protected, private or @internal), --tamper (also assign wrong-typed
// values to public fields: tensor.grad, module.weight, optimizer.lr, ...), --inject KIND@STEP (self-test:
// batch 0 crashes, hangs, throws an uncoded error or leaves a rejection unhandled at that step).
//
// Calls run in child processes (this script with --child), each in a fresh temp directory that is its cwd:
// every path the fuzzer passes is relative and inside it, and any absolute or ".." path is replaced.
import { mkdirSync, writeFileSync, readdirSync, readFileSync } from "node:fs";
import { cpus } from "node:os";
import { dirname, join, isAbsolute } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { DIST, ROOT, enterTempDir, evenShares, exitKind, jsonLines, leaveTempDir, logStderr, main, numberArgs, reportLog, runBatches, runChild, stderrTail, usageOf } from "./harness.mjs";
import { Rng, mixSeed } from "./rng.mjs";

const SELF = fileURLToPath(import.meta.url);
const FUZZER_URL = new URL(".", import.meta.url).href; // this script's folder: its frames are left out of stacks

// ---------------------------------------------------------------- command line

function parseOptions(argv) {
  const o = { seed: 1, calls: 3000, batchSize: 400, jobs: Math.max(1, Math.min(4, cpus().length)), timeout: 60, only: null, until: null, trace: false, json: false, keep: false, child: false, batch: 0, cuda: false, fd: null, inTmp: false, internals: false, inject: null, tamper: false };
  const num = numberArgs(argv, usage);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--seed") o.seed = num(++i) >>> 0;
    else if (a === "--calls") o.calls = Math.max(1, Math.floor(num(++i)));
    else if (a === "--long") o.calls = 100_000;
    else if (a === "--batch-size") o.batchSize = Math.max(1, Math.floor(num(++i)));
    else if (a === "--jobs") o.jobs = Math.max(1, Math.floor(num(++i)));
    else if (a === "--timeout") o.timeout = num(++i);
    else if (a === "--only") o.only = Math.floor(num(++i));
    else if (a === "--until") o.until = Math.floor(num(++i));
    else if (a === "--trace") o.trace = true;
    else if (a === "--json") o.json = true;
    else if (a === "--keep") o.keep = true;
    else if (a === "--child") o.child = true;
    else if (a === "--batch") o.batch = Math.floor(num(++i));
    else if (a === "--cuda") o.cuda = true;
    else if (a === "--fd") o.fd = Math.floor(num(++i));
    else if (a === "--in-tmp") o.inTmp = true;
    else if (a === "--internals") o.internals = true;
    else if (a === "--tamper") o.tamper = true;
    else if (a === "--inject") {
      // Self-test of the harness: batch 0 misbehaves at a step (crash, hang, uncoded, reject).
      const m = /^(crash|hang|uncoded|reject)@(\d+)$/.exec(argv[++i] ?? "");
      if (!m) usage("--inject needs crash|hang|uncoded|reject@STEP");
      o.inject = { kind: m[1], step: Number(m[2]) };
    }
    else if (a === "-h" || a === "--help") usage(null);
    else usage(`unknown option ${a}`);
  }
  return o;
}

const usage = usageOf("misuse fuzzer", "usage: node scripts/fuzz/misuse.mjs [--seed N] [--calls N | --long] [--batch-size N] [--jobs N] [--timeout S] [--only B] [--until K] [--trace] [--json] [--keep] [--internals] [--tamper]");

// ---------------------------------------------------------------- the child: calls and outcomes

const DTYPES = ["f32", "f16", "bf16", "i8", "u8", "i32", "i64"];
const FLOAT_DTYPES = ["f32", "f16", "bf16"];
const SMALL = [0, 1, 2, 3, 4, 4, 8];
// Never sizes the allocator could honour with gigabytes (2^31..2^45): those are not misuse, just big.
const SPECIAL = [-1, -0, 0.5, 1.5, -2.5, NaN, Infinity, -Infinity, 2 ** 50, 2 ** 53 - 1, 2 ** 53, 2 ** 53 + 2, 2 ** 64, 1e300, -1e300, Number.MIN_VALUE, Number.EPSILON, -(2 ** 31), 1e-8, 0.1, 0.9, 16, 100, 255, 256];
const STRINGS = [
  "", ".", "default", "other", "0", "2", "a", "b", "weight", "bias", "lora_A", "0.lora_A.default", "base_model.model.0.lora_A.weight",
  "f32", "bf16", "i64", "F32", "cuda", "cpu", "cuda:0", "relu", "gelu", "tanh", "none", "LORA", "IA3", "CAUSAL_LM", "all-linear", "q_proj",
  ".*", "(a|a)*b", "(a+)+$", "[", "__proto__", "constructor", "prototype", "toString", "hasOwnProperty", "\u0000", "a\u0000b", "\ud800", "é日本",
  "x".repeat(300), "y".repeat(5000), "avx512", "avx2", "scalar", "avx1024", "forward", "reverse", "random", "1", "-1", "NaN", "true",
  "seed.safetensors", "adapter", "adapter/", "sharded/model.safetensors.index.json", "out.safetensors", "outdir", "out/nested/dir",
  "missing.safetensors", "adapter_model.safetensors", "adapter_config.json", "notes.txt", "seed.safetensors/x",
];
const OPTION_KEYS = [
  "dtype", "device", "seed", "stream", "mean", "std", "lo", "hi", "touch", "writable", "bias", "weightInOut", "accumulate", "transA", "transB",
  "ignoreIndex", "labelSmoothing", "lr", "betas", "eps", "weightDecay", "r", "loraAlpha", "loraDropout", "targetModules", "excludeModules",
  "modulesToSave", "layersToTransform", "layersPattern", "useRslora", "initLoraWeights", "fanInFanOut", "rankPattern", "alphaPattern",
  "taskType", "inferenceMode", "baseModelNameOrPath", "adapterName", "modelType", "safeMerge", "adapterNames", "strict", "prefix",
  "isTrainable", "config", "inputGrad", "recurse", "dispose", "allowMissing", "approximate", "feedforwardModules", "initIa3Weights",
  "peft_type", "target_modules", "lora_alpha", "lora_dropout", "task_type", "fan_in_fan_out", "modules_to_save", "rank_pattern",
  "use_dora", "loftqConfig", "megatronConfig", "qaloraGroupSize", "__proto__", "constructor", "toJSON", "length",
  "dim", "dims", "axis", "keepdim", "min", "max", "retainGraph", "training", "index", "reduction", "alpha", "p",
];

// What the declaration files say about each class: members that are protected, private or @internal (not
// called unless --internals), public fields a caller may assign, and the member names of interfaces (what
// objects of classes the package does not export offer, e.g. the handle openSafetensors returns).
function readDeclarations(dir) {
  const hidden = new Map();
  const fields = new Map();
  const names = new Set();
  const add = (m, k, v) => (m.get(k) ?? m.set(k, new Set()).get(k)).add(v);
  const walk = (d) => {
    let entries;
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (e.isDirectory()) walk(join(d, e.name));
      else if (e.name.endsWith(".d.ts")) scan(readFileSync(join(d, e.name), "utf8"));
    }
  };
  const scan = (text) => {
    let owner = null, isClass = false, depth = 0, internal = false;
    for (const line of text.split("\n")) {
      if (owner === null) {
        const m = /^\s*(?:export\s+)?(?:declare\s+)?(?:abstract\s+)?(class|interface)\s+([A-Za-z_$][\w$]*)/.exec(line);
        if (m) (owner = m[2]), (isClass = m[1] === "class"), (depth = 0), (internal = false);
      } else if (depth === 1) {
        const trimmed = line.trim();
        if (/@internal\b/.test(trimmed)) internal = true;
        if (!trimmed.startsWith("*") && !trimmed.startsWith("/*")) {
          const m = /^\s*((?:(?:public|protected|private|static|abstract|readonly|override|declare|get|set|async)\s+)*)([A-Za-z_$][\w$]*|\[[^\]]+\])\s*[?!]?\s*([(:<=;])/.exec(line);
          if (m && m[2] !== "constructor") {
            const mods = m[1];
            const name = (/\bstatic\b/.test(mods) ? "static " : "") + m[2];
            if (/\b(protected|private)\b/.test(mods) || internal) add(hidden, owner, name);
            else {
              if (!isClass) names.add(m[2]);
              const isField = ":=;".includes(m[3]) && !/\b(get|set|readonly|static)\b/.test(mods);
              if (isClass && isField && !m[2].startsWith("[")) add(fields, owner, m[2]);
            }
          }
          internal = false;
        }
      }
      if (owner !== null) {
        for (const ch of line.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, "")) {
          if (ch === "{") depth++;
          else if (ch === "}") depth--;
        }
        if (depth <= 0 && line.includes("}")) owner = null;
      }
    }
  };
  walk(dir);
  return { hidden, fields, names };
}

class HostileError extends Error {
  constructor(what) {
    super(`fuzz: hostile ${what} threw`);
    this.name = "HostileError";
    this.code = "FUZZ_HOSTILE";
  }
}

async function child(opts) {
  const tmp = opts.inTmp ? null : enterTempDir("node-peft-fuzz-");
  const CWD = process.cwd();
  const emit = jsonLines(opts.fd ?? 1);
  const trace = (s) => opts.trace && process.stderr.write(s + "\n");

  const lib = await import(pathToFileURL(DIST).href);
  const { Tensor } = lib;
  const rng = new Rng(mixSeed(opts.seed, opts.batch));
  const cudaOk = (() => {
    try {
      return lib.backend?.cuda?.available === true;
    } catch {
      return false;
    }
  })();

  // ---- pools: tensors, objects (class instances, handles), records (state dicts), views (typed arrays)
  const tensors = [];
  const objects = [];
  const records = [];
  const views = [];
  const mine = new WeakSet(); // values the fuzzer made (never harvested, never described by reading them)
  const descOf = new WeakMap();
  const tampered = new WeakMap();
  let nextId = 0;
  const MAX_TENSORS = 160, MAX_OBJECTS = 90, MAX_RECORDS = 20, MAX_VIEWS = 20;
  const push = (pool, v, max) => {
    pool.push(v);
    if (pool.length > max) pool.splice(0, pool.length - max);
  };

  const fmt = (v) => {
    if (v === undefined) return "undefined";
    if (v === null) return "null";
    switch (typeof v) {
      case "number":
        return Object.is(v, -0) ? "-0" : String(v);
      case "string":
        return v.length > 40 ? `${JSON.stringify(v.slice(0, 12))}+${v.length - 12}chars` : JSON.stringify(v);
      case "bigint":
        return `${v}n`;
      case "symbol":
        return v.toString();
      case "boolean":
        return String(v);
      default: {
        const d = descOf.get(v) ?? (Array.isArray(v) ? "[array]" : typeof v === "function" ? "fn" : "{object}");
        const t = tampered.get(v);
        return t ? `${d}{tampered ${t.join(",")}}` : d;
      }
    }
  };

  function addTensor(t, how) {
    if (!(t instanceof Tensor) || mine.has(t) || descOf.has(t)) return;
    let d;
    try {
      d = `t${nextId++}:${t.dtype}[${t.shape.join(",")}]${t.device === "cuda" ? "@cuda" : ""}${how ? `(${how})` : ""}`;
    } catch {
      d = `t${nextId++}`;
    }
    descOf.set(t, d);
    push(tensors, t, MAX_TENSORS);
  }
  function addObject(o) {
    if (o === null || typeof o !== "object" || mine.has(o) || descOf.has(o) || o instanceof Tensor || o instanceof Promise) return;
    if (o instanceof Error && !isExported(o)) return; // a PeftError made on purpose is an instance to call
    if (ArrayBuffer.isView(o) || o instanceof ArrayBuffer) return;
    const name = o.constructor?.name || "Object";
    descOf.set(o, `${name}#${nextId++}`);
    push(objects, o, MAX_OBJECTS);
  }

  // Takes the tensors, objects, records and views out of a result (without running getters).
  function harvest(v, depth = 0) {
    if (v === null || (typeof v !== "object" && typeof v !== "function") || mine.has(v) || depth > 2) return;
    if (v instanceof Tensor) return addTensor(v);
    if (ArrayBuffer.isView(v) && !(v instanceof DataView)) {
      if (!descOf.has(v)) descOf.set(v, `view${nextId++}:${v.constructor.name}(${v.length})`);
      return push(views, v, MAX_VIEWS);
    }
    if (typeof v === "function" || v instanceof Promise || (v instanceof Error && !isExported(v))) return;
    if (v instanceof Map) {
      for (const x of v.values()) harvest(x, depth + 1);
      return;
    }
    const proto = Object.getPrototypeOf(v);
    if (Array.isArray(v)) {
      for (let i = 0; i < Math.min(v.length, 64); i++) {
        const d = Object.getOwnPropertyDescriptor(v, i);
        if (d && "value" in d) harvest(d.value, depth + 1);
      }
      return;
    }
    if (typeof v.next === "function" && typeof v[Symbol.iterator] === "function") return; // consumed already
    if (proto !== Object.prototype && proto !== null) return addObject(v); // not its internals
    const descs = Object.getOwnPropertyDescriptors(v);
    const values = Object.values(descs).filter((d) => "value" in d).map((d) => d.value);
    if (values.length && values.every((x) => x instanceof Tensor)) {
      if (!descOf.has(v)) descOf.set(v, `record${nextId++}(${Object.keys(v).length} tensors)`);
      push(records, v, MAX_RECORDS);
    } else if (Reflect.ownKeys(descs).some((k) => typeof descs[k].value === "function")) addObject(v);
    for (const x of values.slice(0, 64)) harvest(x, depth + 1);
  }

  // ---- fresh tensors (made by the fuzzer itself; a failure here falls back to zeros)
  const SHAPES = [[2, 4], [2, 4], [3, 4], [4], [4, 4], [4, 3], [2, 3], [2, 8], [8, 4], [2, 2, 4], [1, 4], [3], [], [0], [0, 4], [2, 0], [5, 4], [4, 8], [3, 8], [6]];
  function freshTensor(ctx, { dtype = rng.weighted([[5, "f32"], [1, "f16"], [1, "bf16"], [1, "i8"], [1, "u8"], [1, "i32"], [2, "i64"]]), shape = rng.pick(SHAPES), device } = {}) {
    device ??= cudaOk && rng.chance(0.35) ? "cuda" : "cpu";
    const n = shape.reduce((a, b) => a * b, 1);
    const seed = rng.int(1000);
    const ints = Array.from({ length: n }, () => (rng.chance(0.1) ? rng.pick([-1, 127, 1000, -100]) : rng.int(10)));
    let t;
    try {
      if (FLOAT_DTYPES.includes(dtype)) t = Tensor.randn(shape, { dtype, seed, device });
      else {
        const vals = dtype === "u8" ? ints.map((x) => ((x % 256) + 256) % 256) : dtype === "i8" ? ints.map((x) => Math.max(-128, Math.min(127, x))) : ints;
        t = Tensor.fromArray(vals, shape, dtype);
        if (device === "cuda") t = t.to("cuda");
      }
    } catch {
      t = Tensor.zeros(shape);
    }
    addTensor(t, "fresh");
    ctx?.tensors.push(t);
    return t;
  }

  // ---- argument generation; each value gets its description when it is made
  function label(v, d) {
    if (v !== null && (typeof v === "object" || typeof v === "function")) {
      mine.add(v);
      descOf.set(v, d);
    }
    return v;
  }

  function poolTensor(ctx) {
    if (!tensors.length || rng.chance(0.05)) return freshTensor(ctx);
    const t = rng.pick(tensors);
    ctx.tensors.push(t);
    return t;
  }
  function poolObject(ctx, cls) {
    const list = cls ? objects.filter((o) => o instanceof cls) : objects;
    if (!list.length) return undefined;
    const o = rng.pick(list);
    ctx.objects.push(o);
    return o;
  }

  function genNumber() {
    return rng.weighted([[5, () => rng.pick(SMALL)], [4, () => rng.pick(SPECIAL)], [1, () => Math.round(rng.next() * 2000) / 100 - 5]])();
  }

  // Shape-like arrays of numbers; the product of the valid entries stays small (no real big allocation).
  function genNumberArray() {
    const n = rng.weighted([[2, 0], [6, 1], [8, 2], [4, 3], [2, 4], [1, 5], [1, 17]]);
    const a = [];
    let prod = 1;
    for (let i = 0; i < n; i++) {
      let x = rng.chance(0.8) ? rng.pick(SMALL) : genNumber();
      if (Number.isSafeInteger(x) && x > 0 && x <= 2 ** 45 && prod * x > 2 ** 20) x = 1;
      if (Number.isSafeInteger(x) && x > 0 && x <= 2 ** 45) prod *= x;
      a.push(x);
    }
    return label(a, `[${a.map(fmt).join(",")}]`);
  }

  function genString() {
    return rng.pick(STRINGS);
  }

  function plausible(key, ctx, depth) {
    switch (key) {
      case "dtype":
        return rng.pick(DTYPES);
      case "device":
        return rng.pick(["cpu", "cuda"]);
      case "seed": case "stream":
        return rng.int(50);
      case "r": case "loraAlpha": case "lora_alpha":
        return rng.pick([1, 2, 4, 8]);
      case "loraDropout": case "lora_dropout": case "labelSmoothing":
        return rng.pick([0, 0.1, 0.5]);
      case "lr":
        return 1e-3;
      case "betas":
        return label([0.9, 0.999], "[0.9,0.999]");
      case "targetModules": case "target_modules": case "feedforwardModules": case "excludeModules": case "modulesToSave": case "modules_to_save":
        return rng.pick([label(["0"], '["0"]'), label(["0", "2"], '["0","2"]'), "all-linear", ".*", "0", label([], "[]")]);
      case "adapterName":
        return rng.pick(["default", "other"]);
      case "adapterNames":
        return label(["default"], '["default"]');
      case "peft_type":
        return rng.pick(["LORA", "IA3"]);
      case "taskType": case "task_type":
        return rng.pick(["CAUSAL_LM", "SEQ_CLS", null]);
      case "approximate":
        return rng.pick(["none", "tanh"]);
      case "config":
        return (lib.LoraConfig && poolObject(ctx, lib.LoraConfig)) ?? null;
      case "initLoraWeights":
        return rng.pick([true, false, "gaussian"]);
      case "rankPattern": case "alphaPattern": case "rank_pattern":
        return label({ "0": 2 }, '{"0":2}');
      case "ignoreIndex":
        return rng.pick([-100, 0, 1]);
      case "dim": case "axis":
        return rng.pick([0, 1, -1, 2, 5, -3]);
      case "dims":
        return label([0, -1], "[0,-1]");
      case "min": case "max": case "alpha": case "p":
        return rng.pick([0, 0.5, 1, -1]);
      default:
        return rng.chance(0.5) ? rng.chance(0.5) : genArg(ctx, depth + 1);
    }
  }

  function disposeFrom(ctx, r) {
    const all = [...ctx.tensors, ...ctx.objects.filter((o) => typeof o.dispose === "function")];
    if (!all.length) return;
    try {
      all[r.int(all.length)].dispose();
    } catch {
      /* the getter's own side effect; not a call under test */
    }
  }

  const BEHAVIORS = ["dispose", "dispose", "throw", "flip", "count", "plain"];
  function accessor(ctx, what, vals, behavior, r) {
    let n = 0;
    return function get() {
      n++;
      switch (behavior) {
        case "dispose":
          disposeFrom(ctx, r);
          return vals[0];
        case "throw":
          throw new HostileError(what);
        case "flip":
          return vals[n % 2];
        case "count":
          return n;
        default:
          return vals[0];
      }
    };
  }

  function hostileObject(ctx, depth) {
    const o = {};
    const parts = [];
    const r = rng.fork();
    const nk = 1 + rng.int(3);
    for (let i = 0; i < nk; i++) {
      const key = rng.pick(OPTION_KEYS);
      const behavior = rng.pick(BEHAVIORS);
      const vals = [plausible(key, ctx, depth), genArg(ctx, depth + 1)];
      Object.defineProperty(o, key, { get: accessor(ctx, `getter ${key}`, vals, behavior, r), enumerable: true, configurable: true });
      parts.push(`${key}:${behavior}(${fmt(vals[0])}|${fmt(vals[1])})`);
    }
    return label(o, `{getters ${parts.join(", ")}}`);
  }

  function hostileArray(ctx) {
    const r = rng.fork();
    const tensorsInside = rng.chance(0.4);
    const n = 1 + rng.int(3);
    const a = new Array(n);
    const parts = [];
    for (let i = 0; i < n; i++) {
      const behavior = rng.pick(BEHAVIORS);
      const vals = tensorsInside ? [poolTensor(ctx), poolTensor(ctx)] : [rng.pick([1, 2, 3, 4]), genNumber()];
      Object.defineProperty(a, i, { get: accessor(ctx, `array[${i}] getter`, vals, behavior, r), enumerable: true, configurable: true });
      parts.push(`${behavior}(${fmt(vals[0])}|${fmt(vals[1])})`);
    }
    return label(a, `[getters ${parts.join(", ")}]`);
  }

  function hostileProxy(ctx, depth) {
    const r = rng.fork();
    const kind = rng.pick(["tensor", "tensor", "array", "object", "record"]);
    let target;
    if (kind === "tensor") target = poolTensor(ctx);
    else if (kind === "array") target = rng.chance(0.5) ? genNumberArray() : [poolTensor(ctx), poolTensor(ctx)];
    else if (kind === "record") target = genRecord(ctx);
    else target = genOptions(ctx, depth + 1);
    const behavior = rng.pick(["dispose", "dispose", "throw", "lie", "swap"]);
    const nth = 1 + rng.int(4);
    const other = poolTensor(ctx);
    const lieValue = genArg(ctx, depth + 1);
    let n = 0;
    const before = () => {
      n++;
      if (behavior === "dispose" && n === nth) disposeFrom(ctx, r);
      if (behavior === "throw" && n === nth) throw new HostileError(`proxy trap #${nth}`);
    };
    const handler = {
      get(t, key, recv) {
        before();
        if (behavior === "lie" && n % 2 === 0 && key !== "constructor" && key !== Symbol.iterator && key !== "then") {
          const d = Reflect.getOwnPropertyDescriptor(t, key);
          if (!d || d.configurable || d.writable) return key === "length" ? rng.pick([2 ** 32 - 1, -1, NaN, 1e300, 3]) : lieValue;
        }
        if (behavior === "swap" && typeof key === "symbol" && n % 2 === 0 && other instanceof Tensor) return Reflect.get(other, key);
        return Reflect.get(t, key, t);
      },
      has(t, key) {
        before();
        return Reflect.has(t, key);
      },
      ownKeys(t) {
        before();
        return Reflect.ownKeys(t);
      },
      getOwnPropertyDescriptor(t, key) {
        before();
        return Reflect.getOwnPropertyDescriptor(t, key);
      },
      getPrototypeOf(t) {
        before();
        return Reflect.getPrototypeOf(t);
      },
    };
    return label(new Proxy(target, handler), `Proxy(${fmt(target)}, ${behavior}@${nth})`);
  }

  function genOptions(ctx, depth) {
    const o = rng.chance(0.1) ? Object.create(null) : {};
    const parts = [];
    const nk = rng.int(4);
    for (let i = 0; i < nk; i++) {
      const key = rng.pick(OPTION_KEYS);
      const v = rng.chance(0.6) ? plausible(key, ctx, depth) : genArg(ctx, depth + 1);
      Object.defineProperty(o, key, { value: v, enumerable: true, writable: true, configurable: true });
      parts.push(`${JSON.stringify(key)}:${fmt(v)}`);
    }
    return label(o, `{${parts.join(", ")}}`);
  }

  // A state-dict-like record: one harvested from a call, copied with one entry changed, or made up.
  function genRecord(ctx) {
    const base = records.length && rng.chance(0.7) ? rng.pick(records) : null;
    const o = {};
    const parts = [];
    if (base) {
      const keys = Object.keys(base);
      for (const k of keys) Object.defineProperty(o, k, { value: base[k], enumerable: true, writable: true, configurable: true });
      parts.push(`copy of ${fmt(base)}`);
      const op = rng.int(4);
      if (op === 0 && keys.length) {
        const k = rng.pick(keys);
        delete o[k];
        parts.push(`without ${JSON.stringify(k)}`);
      } else if (op === 1 && keys.length) {
        const k = rng.pick(keys);
        Object.defineProperty(o, k, { value: rng.chance(0.7) ? poolTensor(ctx) : genArg(ctx, 2), enumerable: true, writable: true, configurable: true });
        parts.push(`${JSON.stringify(k)}=${fmt(o[k])}`);
      } else if (op === 2) {
        const k = rng.pick(["extra", "__proto__", "constructor", "a.b", ""]);
        Object.defineProperty(o, k, { value: poolTensor(ctx), enumerable: true, writable: true, configurable: true });
        parts.push(`+${JSON.stringify(k)}`);
      }
      for (const k of Object.keys(o)) if (o[k] instanceof Tensor) ctx.tensors.push(o[k]);
    } else {
      const nk = rng.int(4);
      for (let i = 0; i < nk; i++) {
        const k = rng.pick(["a", "b", "weight", "0.weight", "base_model.model.0.lora_A.weight", "__proto__", "x.y"]);
        Object.defineProperty(o, k, { value: poolTensor(ctx), enumerable: true, writable: true, configurable: true });
        parts.push(`${JSON.stringify(k)}:${fmt(o[k])}`);
      }
    }
    return label(o, `{record ${parts.join(", ")}}`);
  }

  function genTypedArray() {
    const n = rng.int(13);
    const kind = rng.pick(["Float32Array", "Float64Array", "Uint16Array", "Int8Array", "Uint8Array", "Int32Array", "BigInt64Array", "DataView", "Buffer", "detached", "resizable", "shared"]);
    let v;
    switch (kind) {
      case "Buffer":
        v = Buffer.alloc(n, 7);
        break;
      case "DataView":
        v = new DataView(new ArrayBuffer(n));
        break;
      case "detached": {
        v = new Float32Array(n + 1);
        structuredClone(v.buffer, { transfer: [v.buffer] });
        break;
      }
      case "resizable": {
        const b = new ArrayBuffer(4 * n, { maxByteLength: 4 * n + 64 });
        v = new Float32Array(b);
        b.resize(rng.int(4 * n + 64));
        break;
      }
      case "shared":
        v = new Float32Array(new SharedArrayBuffer(4 * n));
        break;
      case "BigInt64Array":
        v = new BigInt64Array(n).fill(3n);
        break;
      default:
        v = new globalThis[kind](n).fill(kind === "Float32Array" || kind === "Float64Array" ? 0.5 : 1);
    }
    return label(v, `${kind}(${n})`);
  }

  const FUNCS = [
    () => label(() => {}, "() => {}"),
    () => label(function () { throw new HostileError("callback"); }, "fn throwing"),
    () => label(class {}, "class {}"),
    () => label(async () => {}, "async () => {}"),
    () => rng.pick(Object.values(lib).filter((x) => typeof x === "function")),
  ];

  function genArg(ctx, depth = 0) {
    const deep = depth >= 2;
    const kind = rng.weighted([
      [30, "tensor"], [6, "fresh"], [4, "disposed"], [12, "object"], [10, "number"], [8, "string"], [4, "boolean"], [3, "undefined"],
      [3, "null"], [deep ? 0 : 7, "array"], [deep ? 0 : 6, "options"], [2, "function"], [1, "symbol"], [1, "bigint"],
      [deep ? 0 : 5, "hostile"], [deep ? 0 : 3, "record"], [2, "typed"], [deep ? 0 : 1, "map"],
    ]);
    switch (kind) {
      case "tensor":
        return poolTensor(ctx);
      case "fresh":
        return freshTensor(ctx);
      case "disposed": {
        const t = freshTensor(ctx);
        t.dispose();
        descOf.set(t, descOf.get(t) + "(disposed)");
        return t;
      }
      case "object":
        return poolObject(ctx) ?? poolTensor(ctx);
      case "number":
        return genNumber();
      case "string":
        return genString();
      case "boolean":
        return rng.chance(0.5);
      case "undefined":
        return undefined;
      case "null":
        return null;
      case "array": {
        const sub = rng.weighted([[5, "numbers"], [3, "tensors"], [2, "strings"], [2, "mixed"], [1, "nested"], [1, "holes"], [1, "sparse"]]);
        if (sub === "numbers") return genNumberArray();
        if (sub === "tensors") {
          const a = Array.from({ length: 1 + rng.int(4) }, () => poolTensor(ctx));
          return label(a, `[${a.map(fmt).join(",")}]`);
        }
        if (sub === "strings") {
          const a = Array.from({ length: rng.int(3) }, genString);
          return label(a, `[${a.map(fmt).join(",")}]`);
        }
        if (sub === "mixed") {
          const a = Array.from({ length: rng.int(4) }, () => genArg(ctx, depth + 1));
          return label(a, `[${a.map(fmt).join(",")}]`);
        }
        if (sub === "nested") return label([genNumberArray(), genNumberArray()], "[[..],[..]]");
        if (sub === "holes") return label([1, , 3], "[1,<hole>,3]"); // eslint-disable-line no-sparse-arrays
        const a = [];
        a.length = rng.pick([2 ** 32 - 1, 17, 1000]);
        return label(a, `[<sparse length ${a.length}>]`);
      }
      case "options":
        return genOptions(ctx, depth);
      case "function":
        return rng.pick(FUNCS)();
      case "symbol":
        return rng.pick([Symbol("fuzz"), Symbol.iterator, Symbol.dispose]);
      case "bigint":
        return rng.pick([0n, 4n, -1n, 2n ** 64n]);
      case "hostile":
        return rng.pick([hostileObject, hostileObject, hostileArray, hostileProxy, hostileProxy, hostileMisc])(ctx, depth);
      case "record":
        return genRecord(ctx);
      case "typed":
        return genTypedArray();
      case "map": {
        const m = new Map(Array.from({ length: 1 + rng.int(3) }, () => [rng.pick(["a", "b", "w", "", "__proto__"]), poolTensor(ctx)]));
        return label(m, `Map(${[...m].map(([k, v]) => `${JSON.stringify(k)}=>${fmt(v)}`).join(",")})`);
      }
    }
    return undefined;
  }

  // Objects whose conversions throw or lie: toString/valueOf/Symbol.toPrimitive/toJSON, a `then` method.
  function hostileMisc(ctx) {
    const kind = rng.pick(["toPrimitive", "toString", "toJSON", "thenable", "nullProto", "protoKey"]);
    if (kind === "toPrimitive") return label({ [Symbol.toPrimitive]() { throw new HostileError("toPrimitive"); } }, "{[Symbol.toPrimitive] throws}");
    if (kind === "toString") return label({ toString: () => "default", valueOf: () => 4 }, "{toString:'default', valueOf:4}");
    if (kind === "toJSON") return label({ toJSON() { throw new HostileError("toJSON"); } }, "{toJSON throws}");
    if (kind === "thenable") return label({ then(res) { res(poolTensor(ctx)); } }, "{then resolves a tensor}");
    if (kind === "nullProto") {
      const o = Object.create(null);
      o.r = 2;
      o.targetModules = ["0"];
      return label(o, "Object.create(null){r:2,targetModules:[0]}");
    }
    return label(JSON.parse('{"__proto__":{"r":2,"polluted":true},"r":4}'), '{"__proto__"(own):{..},"r":4}');
  }

  // ---- what to call
  const isClass = (f) => typeof f === "function" && /^class[\s{]/.test(Function.prototype.toString.call(f));
  const decl = readDeclarations(dirname(DIST));
  const isHidden = (owner, key) => !opts.internals && typeof key === "string" && decl.hidden.get(owner)?.has(key) === true;
  const hiddenCount = { n: 0 };
  const keyName = (k) => (typeof k === "symbol" ? `[${k.description}]` : String(k));
  const targets = [];
  const exportedClasses = [];
  for (const name of Object.keys(lib).sort()) {
    const v = lib[name];
    if (typeof v === "function" && isClass(v)) {
      exportedClasses.push(v);
      targets.push({ name: `new ${name}`, kind: "new", cls: v, arity: v.length });
      const seenStatic = new Set();
      for (let c = v; c && c !== Function.prototype; c = Object.getPrototypeOf(c)) {
        for (const key of Reflect.ownKeys(c)) {
          if (["length", "name", "prototype", "caller", "arguments"].includes(key) || seenStatic.has(key)) continue;
          seenStatic.add(key);
          if (isHidden(c.name, `static ${String(key)}`) || (c === Error || c === Object.getPrototypeOf(Error))) {
            hiddenCount.n++;
            continue;
          }
          const d = Object.getOwnPropertyDescriptor(c, key);
          if (typeof d.value === "function") targets.push({ name: `${name}.${keyName(key)}`, kind: "static", cls: v, fn: d.value, arity: d.value.length });
          else if (d.get) targets.push({ name: `get ${name}.${keyName(key)}`, kind: "static-get", cls: v, fn: d.get, arity: 0 });
        }
      }
      const seen = new Set();
      for (let p = v.prototype; p && p !== Object.prototype; p = Object.getPrototypeOf(p)) {
        for (const key of Reflect.ownKeys(p)) {
          if (key === "constructor" || seen.has(key)) continue;
          seen.add(key);
          if (isHidden(p.constructor?.name, key)) {
            hiddenCount.n++;
            continue;
          }
          const d = Object.getOwnPropertyDescriptor(p, key);
          if (typeof d.value === "function") targets.push({ name: `${name}#${keyName(key)}`, kind: "method", cls: v, fn: d.value, arity: d.value.length });
          if (d.get) targets.push({ name: `get ${name}#${keyName(key)}`, kind: "getter", cls: v, fn: d.get, arity: 0 });
          if (d.set) targets.push({ name: `set ${name}#${keyName(key)}`, kind: "setter", cls: v, fn: d.set, arity: 1 });
        }
      }
    } else if (typeof v === "function") {
      targets.push({ name: `${name}()`, kind: "fn", fn: v, arity: v.length });
    } else if (v !== null && typeof v === "object") {
      for (const key of Reflect.ownKeys(v)) {
        if (Array.isArray(v) && key === "length") continue;
        const d = Object.getOwnPropertyDescriptor(v, key);
        const label = Array.isArray(v) ? `${name}[${keyName(key)}]` : `${name}.${keyName(key)}`;
        if (typeof d.value === "function") targets.push({ name: `${label}()`, kind: "fn", fn: d.value, self: v, arity: d.value.length, global: name === "backend" });
        else if (d.get) targets.push({ name: `get ${label}`, kind: "fn", fn: d.get, self: v, arity: 0 });
      }
    }
  }
  const isExported = (o) => exportedClasses.some((c) => Object.getPrototypeOf(o) === c.prototype);

  // ---- instances with plausible arguments (the same recipes refill the pools during the run)
  const seqModel = (dtype = "f32") => new lib.Sequential(new lib.Linear(4, 8, { dtype, seed: rng.int(100) }), new lib.ReLU(), new lib.Linear(8, 3, { dtype }), new lib.LogSoftmax());
  const loraConfig = () => new lib.LoraConfig({ r: rng.pick([1, 2, 4]), loraAlpha: rng.pick([2, 4, 8]), loraDropout: rng.pick([0, 0.1]), targetModules: rng.pick([["0", "2"], ["0"], "all-linear"]), initLoraWeights: rng.pick([true, false, "gaussian"]) });
  const ia3Config = () => new lib.IA3Config({ targetModules: rng.pick([["0", "2"], ["0"]]), feedforwardModules: rng.pick([["0"], []]), initIa3Weights: rng.chance(0.7) });
  const adaLoraConfig = () => new lib.AdaLoraConfig({ initR: rng.pick([0, 1, 3]), targetR: rng.pick([1, 2]), totalStep: 10, tinit: rng.pick([0, 2]), targetModules: rng.pick([["0", "2"], ["0"]]) });
  const promptConfig = () => {
    const n = rng.pick([1, 3]);
    return rng.pick([
      () => new lib.PromptTuningConfig({ numVirtualTokens: n, taskType: "CAUSAL_LM" }),
      () => new lib.PromptEncoderConfig({ numVirtualTokens: n, taskType: "CAUSAL_LM", encoderHiddenSize: 4, encoderReparameterizationType: rng.pick(["MLP", "LSTM"]) }),
      () => new lib.PrefixTuningConfig({ numVirtualTokens: n, taskType: "CAUSAL_LM", prefixProjection: rng.chance(0.5), encoderHiddenSize: 4 }),
    ])();
  };
  const llamaCfg = () => lib.llamaConfig({ vocabSize: 16, hiddenSize: 8, intermediateSize: 12, numHiddenLayers: 1, numAttentionHeads: 2, numKeyValueHeads: rng.pick([1, 2]), tieWordEmbeddings: rng.chance(0.3) });
  const layerOpts = () => ({ dtype: rng.pick(["f32", "bf16"]) });
  const RECIPES = {
    Tensor: () => freshTensor(null),
    RMSNorm: () => new lib.RMSNorm(rng.pick([4, 8]), { eps: 1e-6, dtype: rng.pick(FLOAT_DTYPES) }),
    LlamaForCausalLM: () => new lib.LlamaForCausalLM(llamaCfg(), layerOpts()),
    LlamaModel: () => new lib.LlamaModel(llamaCfg(), layerOpts()),
    LlamaDecoderLayer: () => new lib.LlamaDecoderLayer(llamaCfg(), layerOpts()),
    LlamaAttention: () => new lib.LlamaAttention(llamaCfg(), layerOpts()),
    LlamaMLP: () => new lib.LlamaMLP(llamaCfg(), layerOpts()),
    KVCache: () => new lib.KVCache(llamaCfg(), { batch: 1, maxLength: rng.pick([1, 8]), dtype: rng.pick(["f32", "bf16"]) }),
    LoraLinear4bit: () => new lib.LoraLinear4bit(lib.Linear4bit.fromLinear(new lib.Linear(4, 3), { quantType: rng.pick(["nf4", "fp4"]), blocksize: rng.pick([32, 64]) }), { r: 2, loraAlpha: 4, loraDropout: rng.pick([0, 0.1]) }),
    LoraLinear8bitLt: () => new lib.LoraLinear8bitLt(lib.Linear8bitLt.fromLinear(new lib.Linear(4, 3), { threshold: rng.pick([0, 6]) }), { r: 2, loraAlpha: 4, loraDropout: rng.pick([0, 0.1]) }),
    Tokenizer: () => lib.Tokenizer.fromPretrained(join(ROOT, "test", "fixtures", "llama-tiny", "model")),
    Linear: () => new lib.Linear(rng.pick([4, 8, 3]), rng.pick([3, 4, 2]), { bias: rng.chance(0.7), dtype: rng.pick(FLOAT_DTYPES), seed: rng.int(100) }),
    Conv1D: () => new lib.Conv1D(rng.pick([3, 4]), 4, { seed: rng.int(100) }),
    Embedding: () => new lib.Embedding(10, 4, { seed: rng.int(100), paddingIdx: rng.pick([null, 0, -1]) }),
    Conv2d: () => new lib.Conv2d(rng.pick([2, 4]), rng.pick([2, 4]), rng.pick([1, 3]), { padding: rng.pick([0, 1]), stride: rng.pick([1, 2]), groups: rng.pick([1, 2]), seed: rng.int(100) }),
    LoraConv2d: () => new lib.LoraConv2d(new lib.Conv2d(4, 4, rng.pick([1, 3]), { padding: 1, groups: rng.pick([1, 2]) }), { r: 2, loraAlpha: 4, loraDropout: rng.pick([0, 0.1]) }),
    LoraEmbedding: () => new lib.LoraEmbedding(new lib.Embedding(10, 4), { r: 2, loraAlpha: 4 }),
    LRScheduler: () => new lib.LRScheduler(new lib.AdamW(new lib.Linear(4, 3).parameters(), { lr: 1e-3 }), (step) => 1 / (1 + step)),
    Sequential: () => seqModel(rng.weighted([[4, "f32"], [1, "bf16"], [1, "f16"]])),
    ModuleList: () => new lib.ModuleList([new lib.Linear(4, 3), new lib.GELU()]),
    ModuleDict: () => new lib.ModuleDict({ a: new lib.Linear(4, 3), b: new lib.SiLU() }),
    ReLU: () => new lib.ReLU(),
    GELU: () => new lib.GELU({ approximate: rng.pick(["none", "tanh"]) }),
    SiLU: () => new lib.SiLU(),
    LogSoftmax: () => new lib.LogSoftmax(),
    Dropout: () => new lib.Dropout(rng.pick([0, 0.1, 0.5])),
    CheckpointModule: () => new lib.CheckpointModule("x"),
    LoraConfig: loraConfig,
    IA3Config: () => new lib.IA3Config({ targetModules: ["0"], feedforwardModules: ["0"] }),
    PeftModel: () => {
      const m = lib.getPeftModel(seqModel(), loraConfig());
      if (rng.chance(0.3)) m.addAdapter("other", loraConfig());
      return m;
    },
    LoraModel: () => new lib.LoraModel(seqModel(), loraConfig(), "default"),
    // A world of one (no launcher here); after a fuzzed distributed.finalize() this throws ERR_STATE.
    DistributedDataParallel: () => {
      lib.distributed.init();
      return new lib.DistributedDataParallel(lib.getPeftModel(seqModel(), loraConfig()), { bucketCapMB: rng.pick([1e-4, 1]) });
    },
    LoraLinear: () => new lib.LoraLinear(new lib.Linear(4, 3), { r: 2, loraAlpha: 4, loraDropout: rng.pick([0, 0.1]) }),
    IA3Model: () => new lib.IA3Model(seqModel(), ia3Config(), "default"),
    IA3Layer: () => new lib.IA3Layer(rng.pick([new lib.Linear(4, 3), new lib.Conv1D(3, 4), new lib.Conv2d(2, 3, 1)]), { isFeedforward: rng.chance(0.5), initIa3Weights: rng.chance(0.7) }),
    PromptLearningModel: () => new lib.PromptLearningModel(new lib.LlamaForCausalLM(llamaCfg(), layerOpts()), promptConfig(), "default"),
    PromptEmbedding: () => new lib.PromptEmbedding(new lib.PromptTuningConfig({ numVirtualTokens: rng.pick([1, 3]), tokenDim: 8, promptTuningInit: rng.pick(["RANDOM", "SAMPLE_VOCAB"]) }), new lib.Embedding(16, 8)),
    PromptEncoder: () => new lib.PromptEncoder(new lib.PromptEncoderConfig({ numVirtualTokens: rng.pick([1, 3]), tokenDim: 8, encoderHiddenSize: 4, encoderReparameterizationType: rng.pick(["MLP", "LSTM"]) })),
    PrefixEncoder: () => new lib.PrefixEncoder(new lib.PrefixTuningConfig({ numVirtualTokens: rng.pick([1, 3]), tokenDim: 8, numLayers: 1, encoderHiddenSize: 4, prefixProjection: rng.chance(0.5) })),
    AdaLoraConfig: adaLoraConfig,
    AdaLoraModel: () => new lib.AdaLoraModel(seqModel(), adaLoraConfig(), "default"),
    SVDLinear: () => new lib.SVDLinear(rng.pick([new lib.Linear(4, 3), new lib.Conv1D(3, 4)]), { r: rng.pick([0, 2]), loraAlpha: 4, loraDropout: rng.pick([0, 0.1]) }),
    SVDConv2d: () => new lib.SVDConv2d(new lib.Conv2d(2, 3, rng.pick([1, 3]), { padding: 1 }), { r: 2, loraAlpha: 4 }),
    RankAllocator: () => {
      const m = RECIPES.AdaLoraModel();
      return new lib.RankAllocator(m.model, m.peftConfig.default, "default");
    },
    // Abstract bases (constructing one directly is a TypeError): one of their concrete subclasses.
    AdaLoraLayer: () => (rng.chance(0.5) ? RECIPES.SVDLinear() : RECIPES.SVDConv2d()),
    Module: () => seqModel(),
    LoraLayer: () => (rng.chance(0.5) ? RECIPES.LoraLinear() : rng.chance(0.5) ? RECIPES.LoraConv2d() : RECIPES.LoraEmbedding()),
    FusedLoraLayer: () => (rng.chance(0.5) ? RECIPES.LoraLinear() : RECIPES.LoraConv2d()),
    BaseTunerLayer: () => (rng.chance(0.5) ? RECIPES.LoraLinear() : RECIPES.IA3Layer()),
    BaseTuner: () => (rng.chance(0.5) ? new lib.LoraModel(seqModel(), loraConfig(), "default") : new lib.IA3Model(seqModel(), ia3Config(), "default")),
    ModulesToSaveWrapper: () => new lib.ModulesToSaveWrapper(new lib.Linear(4, 3), "default"),
    AdamW: () => {
      const mods = objects.filter((o) => o instanceof lib.Module);
      const m = mods.length && rng.chance(0.7) ? rng.pick(mods) : new lib.Linear(4, 3);
      return new lib.AdamW(m.parameters(), { lr: 1e-3 });
    },
    PeftError: () => new lib.PeftError("ERR_SHAPE", "made by the fuzzer"),
    SafetensorsFile: () => lib.openSafetensors("seed.safetensors"),
    CheckpointSource: () => lib.openCheckpoint(rng.pick(["seed.safetensors", "sharded/model.safetensors.index.json"])),
    ShardedSafetensors: () => lib.openSharded("sharded/model.safetensors.index.json"),
  };
  // Recipes for classes the package exports, and for the handles its functions return.
  const HANDLES = { SafetensorsFile: "openSafetensors", CheckpointSource: "openCheckpoint", ShardedSafetensors: "openSharded", AdamW: "Module" };
  const recipeNames = Object.keys(RECIPES).filter((k) => (HANDLES[k] ? typeof lib[HANDLES[k]] === "function" : isClass(lib[k])));
  // Exported classes without a recipe: the first of a few generic argument lists that constructs.
  for (const c of exportedClasses) {
    if (RECIPES[c.name]) continue;
    RECIPES[c.name] = () => {
      for (const args of [[], [4, 3], [seqModel()], [{}], [seqModel(), loraConfig(), "default"], [new lib.Linear(4, 3), { r: 2 }], [new lib.Linear(4, 3), "default"]]) {
        try {
          return new c(...args);
        } catch {
          /* try the next */
        }
      }
      throw new Error(`no recipe constructs ${c.name}`);
    };
    recipeNames.push(c.name);
  }

  // ---- restoring process-wide state after backend.* calls
  const base = { threads: lib.backend.threads, isa: lib.backend.isa, amx: lib.backend.features.includes("amx") };
  {
    const isas = ["scalar", ...(lib.backend.features.includes("avx2") ? ["avx2"] : []), ...(lib.backend.features.includes("avx512f") ? ["avx512"] : [])];
    base.isa = rng.pick(isas);
    base.threads = rng.pick([1, 2, 3]);
  }
  function restoreGlobals() {
    lib.backend.setNumThreads(base.threads);
    lib.backend.setIsa(base.isa);
    if (base.amx || lib.backend.features.includes("amx")) lib.backend.setAmx(base.amx);
    if (cudaOk) lib.backend.setCudaEmulationOrder("forward");
  }

  // ---- paths: never absolute, never "..": anything else stays inside the cwd (the temp dir)
  function safePath(s) {
    return typeof s === "string" && (isAbsolute(s) || s.split(/[\\/]/).includes("..") || s.startsWith("~")) ? "sanitized.path" : s;
  }
  function sanitize(args) {
    const walk = (v, depth) => {
      if (typeof v === "string") return safePath(v);
      if (v === null || typeof v !== "object" || depth > 2 || (mine.has(v) && descOf.get(v)?.startsWith("Proxy("))) return v;
      if (Array.isArray(v) || Object.getPrototypeOf(v) === Object.prototype || Object.getPrototypeOf(v) === null) {
        for (const k of Reflect.ownKeys(v)) {
          const d = Object.getOwnPropertyDescriptor(v, k);
          if (d && "value" in d && d.writable && typeof d.value === "string" && safePath(d.value) !== d.value) v[k] = safePath(d.value);
          else if (d && "value" in d) walk(d.value, depth + 1);
        }
      }
      return v;
    };
    return args.map((a) => walk(a, 0));
  }

  // ---- outcomes
  let step = 0;
  const stats = { calls: 0 };
  const classify = (e) => {
    if (e instanceof Error && typeof e.code === "string") return { o: e instanceof HostileError ? "h" : "c", code: e.code };
    const name = e instanceof Error ? e.name : typeof e;
    const message = e instanceof Error ? e.message : String(e);
    const stack = e instanceof Error && typeof e.stack === "string" ? e.stack.split("\n").filter((l) => /^\s+at /.test(l) && !l.includes(FUZZER_URL)).slice(0, 3).map((l) => l.trim().replaceAll(pathToFileURL(ROOT).href + "/", "")) : [];
    return { o: "f", name, message: message.slice(0, 400), stack };
  };
  const ASYNC_TIMEOUT_MS = 15_000;
  async function settle(p) {
    let timer;
    const timeout = new Promise((_, rej) => {
      timer = setTimeout(() => rej(Object.assign(new Error("fuzz: promise did not settle"), { fuzzHang: true })), ASYNC_TIMEOUT_MS);
    });
    p.then(() => {}, () => {}); // a late rejection after a timeout is not an unhandled one
    try {
      return await Promise.race([p, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
  // Iterators and generators run their bodies only when consumed.
  function consume(r) {
    if (r === null || typeof r !== "object" || mine.has(r) || Array.isArray(r) || ArrayBuffer.isView(r) || r instanceof Map || r instanceof Set) return;
    if (typeof r[Symbol.iterator] !== "function" || typeof r.next !== "function") return;
    let n = 0;
    for (const x of r) {
      harvest(x);
      if (++n > 5000) break;
    }
  }

  const stackTraceLimit = Error.stackTraceLimit;
  async function run(desc, fn, { target, args, global } = {}) {
    const i = step++;
    // Node's own error constructors set the limit to 0 for a moment; a getter throwing inside one (while
    // it describes a hostile argument) leaves it there, and later errors would come without a stack.
    Error.stackTraceLimit = stackTraceLimit;
    emit({ t: "s", i, c: desc, k: target ?? desc });
    trace(`#${i} ${desc}`);
    let outcome;
    try {
      let r = fn();
      if (r !== null && (typeof r === "object" || typeof r === "function") && !mine.has(r) && typeof r.then === "function") r = await settle(r);
      consume(r);
      harvest(r);
      outcome = { o: "ok" };
      if (args && target) {
        const list = good.get(target) ?? [];
        if (list.length < 4) list.push(args);
        else list[rng.int(4)] = args;
        good.set(target, list);
      }
    } catch (e) {
      outcome = e?.fuzzHang ? { o: "hang", message: `no settlement within ${ASYNC_TIMEOUT_MS} ms` } : classify(e);
      // A class passed where a callback goes throws when called: that is the caller's function failing,
      // passed through like any error a callback throws.
      if (outcome.o === "f" && /^Class constructor \S+ cannot be invoked without 'new'$/.test(outcome.message) && args?.some((a) => isClass(a)))
        outcome = { o: "h", code: "CALLBACK_THREW" };
    }
    if (global) {
      try {
        restoreGlobals();
      } catch (e) {
        outcome = { o: "f", name: "RestoreFailed", message: `restoring backend settings failed: ${e?.message}`, stack: [] };
      }
    }
    emit({ t: "e", i, ...outcome });
    // Back to the event loop: unhandled rejections, finalizers and late callbacks surface here, next to
    // the call that caused them.
    await new Promise((r) => setImmediate(r));
    trace(`   -> ${outcome.o}${outcome.code ? ` ${outcome.code}` : ""}${outcome.message ? ` ${outcome.name}: ${outcome.message}` : ""}`);
    return outcome;
  }

  // Any of these is a failure, coded or not: the library let an error escape its promise or callback.
  const escaped = (kind) => (e) => {
    const c = classify(e);
    emit({ t: "u", i: step - 1, kind, o: "f", name: c.name ?? e?.name, message: c.message ?? `${e?.message} (code ${c.code})`, stack: c.stack ?? [] });
  };
  process.on("unhandledRejection", escaped("unhandledRejection"));
  process.on("uncaughtException", escaped("uncaughtException"));

  const good = new Map(); // target -> argument lists that worked

  // ---- setup: files to read, then a few instances of everything
  await run("setup: seed.safetensors, sharded/, adapter/", async () => {
    lib.saveSafetensorsSync("seed.safetensors", { a: Tensor.randn([2, 3], { seed: 1 }), b: Tensor.fromArray([1, 2, 3, 4], [4], "i64"), c: Tensor.zeros([0, 4], { dtype: "bf16" }) }, { format: "pt" });
    mkdirSync("sharded", { recursive: true });
    lib.saveSafetensorsSync("sharded/model-00001-of-00002.safetensors", { "0.weight": Tensor.randn([8, 4], { seed: 2 }), "0.bias": Tensor.zeros([8]) });
    lib.saveSafetensorsSync("sharded/model-00002-of-00002.safetensors", { "2.weight": Tensor.randn([3, 8], { seed: 3 }), "2.bias": Tensor.zeros([3]) });
    writeFileSync("sharded/model.safetensors.index.json", JSON.stringify({ metadata: { total_size: 204 }, weight_map: { "0.weight": "model-00001-of-00002.safetensors", "0.bias": "model-00001-of-00002.safetensors", "2.weight": "model-00002-of-00002.safetensors", "2.bias": "model-00002-of-00002.safetensors" } }));
    writeFileSync("notes.txt", "not a checkpoint");
    const m = lib.getPeftModel(seqModel(), new lib.LoraConfig({ r: 2, targetModules: ["0", "2"] }));
    await m.savePretrained("adapter");
    m.dispose();
  });
  await run(`setup: backend isa=${base.isa} threads=${base.threads}`, () => restoreGlobals());
  for (let k = 0; k < 12; k++) await run("setup: fresh tensor", () => freshTensor(null));
  for (const name of recipeNames) await run(`setup: make ${name}`, () => RECIPES[name](), { target: `make ${name}` });

  // ---- the calls
  const weights = targets.map((t) => [1, t]);
  const special = [
    [targets.length * 0.08, { kind: "make" }],
    [targets.length * 0.06, { kind: "any-method" }],
    [opts.tamper ? targets.length * 0.03 : 0, { kind: "set-field" }],
    [targets.length * 0.02, { kind: "scribble" }],
    [targets.length * 0.005, { kind: "gc" }],
  ];
  const choices = [...weights, ...special];

  const argsFor = (t, ctx) => {
    const list = good.get(t.name);
    if (list && rng.chance(0.5)) {
      const args = rng.pick(list).slice();
      for (const a of args) {
        if (mine.has(a)) continue; // a proxy's traps must not run here
        if (a instanceof Tensor) ctx.tensors.push(a);
        else if (a && typeof a === "object" && !mine.has(a)) ctx.objects.push(a);
      }
      const op = rng.int(5);
      if (op <= 1 && args.length) args[rng.int(args.length)] = genArg(ctx);
      else if (op === 2) args.push(genArg(ctx));
      else if (op === 3 && args.length) args.pop();
      return args;
    }
    const n = rng.chance(0.15) ? rng.int(5) : Math.max(0, (t.arity ?? 1) + rng.int(3) - 1);
    return Array.from({ length: n }, () => genArg(ctx));
  };

  const callsWanted = opts.calls;
  while (stats.calls < callsWanted) {
    if (opts.until !== null && step > opts.until) break;
    if (opts.inject && opts.batch === 0 && step >= opts.inject.step) {
      const kind = opts.inject.kind;
      opts.inject = null;
      await run(`inject ${kind}`, () => {
        if (kind === "crash") process.kill(process.pid, "SIGSEGV");
        if (kind === "hang") for (;;);
        if (kind === "reject") Promise.reject(new TypeError("injected"));
        if (kind === "uncoded") return null.injected;
      });
      continue;
    }
    const t = rng.weighted(choices);
    const ctx = { tensors: [], objects: [] };
    stats.calls++;
    try {
      emit({ t: "p", i: step, k: t.name ?? t.kind });
      switch (t.kind) {
        case "make": {
          const name = rng.pick(recipeNames);
          await run(`make ${name}`, () => RECIPES[name](), { target: `make ${name}` });
          break;
        }
        case "gc":
          await run("gc()", () => globalThis.gc?.());
          break;
        case "scribble": {
          if (!views.length) {
            await run("scribble (no views yet)", () => {});
            break;
          }
          const v = rng.pick(views);
          const bytes = Array.from({ length: 1 + rng.int(8) }, () => rng.int(256));
          const at = rng.int(Math.max(1, v.byteLength));
          await run(`scribble ${fmt(v)} @${at} [${bytes}]`, () => {
            const u8 = new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
            for (let k = 0; k < bytes.length && at + k < u8.length; k++) u8[at + k] = bytes[k];
          });
          break;
        }
        case "set-field": {
          const pool = rng.chance(0.4) ? tensors : objects;
          if (!pool.length) break;
          const o = rng.pick(pool);
          const declared = new Set();
          for (let c = o.constructor; typeof c === "function" && c !== Function.prototype; c = Object.getPrototypeOf(c))
            for (const f of decl.fields.get(c.name) ?? []) declared.add(f);
          const fields = Object.keys(o).filter((k) => {
            const d = Object.getOwnPropertyDescriptor(o, k);
            return d && "value" in d && d.writable && (opts.internals || declared.has(k));
          });
          if (!fields.length) {
            await run(`set-field on ${fmt(o)} (no fields)`, () => {});
            break;
          }
          const key = rng.pick(fields);
          const v = rng.chance(0.5) ? plausible(key, ctx, 0) : genArg(ctx);
          const desc = `${fmt(o)}.${key} = ${fmt(v)}`;
          await run(desc, () => {
            o[key] = v;
          }, { target: `set ${o.constructor?.name}.${key}` });
          tampered.set(o, [...(tampered.get(o) ?? []), key]);
          break;
        }
        case "any-method": {
          // Methods of whatever the calls returned: handles of non-exported classes, scopes, iterators.
          const pool = objects.filter((o) => !isExported(o));
          const o = pool.length ? rng.pick(pool) : rng.pick(objects);
          if (!o) break;
          const methods = [];
          const seen = new Set();
          for (let p = o; p && p !== Object.prototype; p = Object.getPrototypeOf(p)) {
            for (const key of Reflect.ownKeys(p)) {
              if (key === "constructor" || seen.has(key)) continue;
              seen.add(key);
              const d = Object.getOwnPropertyDescriptor(p, key);
              if (typeof d.value !== "function") continue;
              if (opts.internals || typeof key === "symbol" || decl.names.has(key)) methods.push([key, d.value]);
            }
          }
          if (!methods.length) break;
          const [key, fn] = rng.pick(methods);
          ctx.objects.push(o);
          const args = sanitize(Array.from({ length: Math.max(0, fn.length + rng.int(3) - 1) }, () => genArg(ctx)));
          const tn = `${o.constructor?.name ?? "Object"}#${keyName(key)}`;
          await run(`${fmt(o)}.${keyName(key)}(${args.map(fmt).join(", ")})`, () => Reflect.apply(fn, o, args), { target: tn });
          break;
        }
        case "new": {
          const args = sanitize(argsFor(t, ctx));
          await run(`${t.name}(${args.map(fmt).join(", ")})`, () => Reflect.construct(t.cls, args), { target: t.name, args });
          break;
        }
        case "static": case "static-get": {
          const args = t.kind === "static" ? sanitize(argsFor(t, ctx)) : [];
          await run(`${t.name}(${args.map(fmt).join(", ")})`, () => Reflect.apply(t.fn, t.cls, args), { target: t.name, args });
          break;
        }
        case "fn": {
          const args = sanitize(argsFor(t, ctx));
          await run(`${t.name.replace(/\(\)$/, "")}(${args.map(fmt).join(", ")})`, () => Reflect.apply(t.fn, t.self, args), { target: t.name, args, global: t.global });
          break;
        }
        case "method": case "getter": case "setter": {
          let self;
          if (t.cls === Tensor) self = rng.chance(0.9) ? poolTensor(ctx) : freshTensor(ctx);
          else {
            self = poolObject(ctx, t.cls);
            if (self === undefined) {
              const name = recipeNames.find((n) => RECIPES[n] && lib[n] === t.cls);
              if (!name) break;
              await run(`make ${name}`, () => RECIPES[name](), { target: `make ${name}` });
              self = poolObject(ctx, t.cls);
              if (self === undefined) break;
            }
          }
          const args = t.kind === "getter" ? [] : t.kind === "setter" ? sanitize([genArg(ctx)]) : sanitize(argsFor(t, ctx));
          const desc = t.kind === "getter" ? `${fmt(self)}.${t.name.replace(/^get \w+#/, "")}` : t.kind === "setter" ? `${fmt(self)}.${t.name.replace(/^set \w+#/, "")} = ${fmt(args[0])}` : `${fmt(self)}.${t.name.replace(/^\w+#/, "")}(${args.map(fmt).join(", ")})`;
          await run(desc, () => Reflect.apply(t.fn, self, args), { target: t.name, args: t.kind === "method" ? args : undefined });
          break;
        }
      }
    } catch (e) {
      // The fuzzer's own code failed (not a call under test): report it and go on.
      emit({ t: "x", i: step, k: t.name ?? t.kind, name: e?.name, message: String(e?.message ?? e).slice(0, 400), stack: String(e?.stack ?? "").split("\n").slice(1, 4).map((l) => l.trim()) });
    }
  }
  for (let k = 0; k < 3; k++) await new Promise((r) => setTimeout(r, 1));
  emit({ t: "done", steps: step, calls: stats.calls, targets: targets.map((t) => t.name), hidden: hiddenCount.n });
  leaveTempDir(tmp);
  process.exit(0);
}

// ---------------------------------------------------------------- the parent: batches, children, report

function batchesOf(o) {
  return evenShares(o.calls, Math.max(2, Math.ceil(o.calls / o.batchSize))).map((calls, b) => ({ b, calls, cuda: b % 3 === 1 }));
}

function replayCommand(o, batch, extra = "") {
  const parts = ["node scripts/fuzz/misuse.mjs", `--seed ${o.seed}`, `--calls ${o.calls}`];
  if (o.batchSize !== 400 && !(o.calls > 20_000 && o.batchSize === 1000)) parts.push(`--batch-size ${o.batchSize}`);
  if (o.internals) parts.push("--internals");
  if (o.tamper) parts.push("--tamper");
  parts.push(`--only ${batch.b}`, "--trace");
  if (extra) parts.push(extra);
  return parts.join(" ");
}

function runBatch(o, batch) {
  const env = { ...process.env };
  if (batch.cuda) env.NODE_PEFT_CUDA = "emu";
  const args = ["--expose-gc", SELF, "--child", "--in-tmp", "--fd", "3", "--seed", String(o.seed), "--batch", String(batch.b), "--calls", String(batch.calls)];
  if (o.until !== null) args.push("--until", String(o.until));
  if (o.internals) args.push("--internals");
  if (o.tamper) args.push("--tamper");
  if (o.inject && batch.b === 0) args.push("--inject", `${o.inject.kind}@${o.inject.step}`);
  if (o.trace) args.push("--trace");
  const res = { batch, started: new Map(), outcomes: [], done: null, calls: [] };
  const onMessage = (m) => {
    if (m.t === "p") res.preparing = m;
    else if (m.t === "s") {
      res.started.set(m.i, m);
      res.calls.push(m);
      if (res.calls.length > 40) res.calls.shift();
      res.preparing = null;
    } else if (m.t === "e") {
      const s = res.started.get(m.i);
      res.started.delete(m.i);
      if (s) s.o = m.o;
      res.outcomes.push({ ...m, c: s?.c, k: s?.k });
    } else if (m.t === "u") res.outcomes.push({ ...m, c: `(${m.kind} after step #${m.i})`, k: m.kind });
    else if (m.t === "x") res.outcomes.push({ ...m, o: "f", kind: "fuzzer error (a bug in this script, not in the library)", c: `(fuzzer code while preparing step #${m.i}, target ${m.k})` });
    else if (m.t === "done") res.done = m;
  };
  return runChild({ args, res, prefix: "node-peft-fuzz-", timeout: o.timeout, keep: o.keep, env, inheritStderr: o.trace, onMessage });
}

function normalize(msg) {
  return String(msg).replace(/"[^"]*"/g, '"…"').replace(/-?\d+(\.\d+)?(e[+-]?\d+)?/gi, "N").slice(0, 200);
}

async function parent(o) {
  if (o.calls > 20_000 && o.batchSize === 400) o.batchSize = 1000;
  let batches = batchesOf(o);
  if (o.only !== null) batches = batches.filter((b) => b.b === o.only);
  const t0 = Date.now();
  const log = reportLog(o.json);
  const results = await runBatches(batches, o.jobs, (batch) => runBatch(o, batch), { log, every: batches.length > 20 && !o.json ? 10 : 0 });

  const counts = { ok: 0, coded: 0, hostile: 0, failed: 0, hang: 0 };
  const codes = {};
  const coverage = new Map();
  const failures = [];
  const crashes = [];
  let allTargets = new Set();
  for (const r of results) {
    if (r.done) for (const n of r.done.targets) allTargets.add(n);
    for (const x of r.outcomes) {
      const k = x.k ?? "?";
      const c = coverage.get(k) ?? { n: 0, ok: 0 };
      c.n++;
      if (x.o === "ok") c.ok++;
      coverage.set(k, c);
      if (x.o === "ok") counts.ok++;
      else if (x.o === "c") (counts.coded++, (codes[x.code] = (codes[x.code] ?? 0) + 1));
      else if (x.o === "h") counts.hostile++;
      else {
        if (x.o === "hang") counts.hang++;
        else counts.failed++;
        failures.push({ batch: r.batch.b, cuda: r.batch.cuda, step: x.i, target: k, call: x.c, kind: x.kind ?? (x.o === "hang" ? "hang" : "uncoded error"), error: x.o === "hang" ? x.message : `${x.name}: ${x.message}`, stack: x.stack ?? [], replay: replayCommand(o, r.batch, `--until ${x.i}`) });
      }
    }
    const abnormal = r.signal || r.code !== 0 || !r.done;
    if (abnormal) {
      const open = [...r.started.values()].pop();
      crashes.push({
        batch: r.batch.b,
        cuda: r.batch.cuda,
        kind: exitKind(r, "exited (code 0) before finishing its calls"),
        call: open ? open.c : r.preparing ? `(preparing the arguments of step #${r.preparing.i}, target ${r.preparing.k})` : "(between calls)",
        step: open?.i ?? r.preparing?.i ?? null,
        lastCalls: r.calls.slice(-25).map((c) => `#${c.i} ${c.c}${c.o ? `  -> ${c.o}` : "  -> (no outcome)"}`),
        stderr: stderrTail(r.stderr),
        replay: replayCommand(o, r.batch),
      });
    }
  }
  const calls = results.reduce((a, r) => a + (r.done?.calls ?? r.outcomes.length), 0);
  const never = [...allTargets].filter((n) => !coverage.has(n)).sort();
  const okNever = [...coverage].filter(([, c]) => c.ok === 0).map(([n]) => n).sort();
  const seconds = (Date.now() - t0) / 1000;

  // Group failing calls by error and the place that threw it: one entry per bug, with the targets that hit
  // it and the shortest call as the example.
  const groups = new Map();
  for (const f of failures) {
    const where = f.stack[0] ? (/\(([^()]+)\)$/.exec(f.stack[0])?.[1] ?? f.stack[0].replace(/^at /, "")) : f.target;
    const key = `${f.kind} | ${normalize(f.error)} | ${where}`;
    const g = groups.get(key);
    if (!g) groups.set(key, { ...f, count: 1, targets: [f.target] });
    else {
      g.count++;
      if (!g.targets.includes(f.target)) g.targets.push(f.target);
      if (f.call.length < g.call.length) Object.assign(g, { call: f.call, batch: f.batch, step: f.step, cuda: f.cuda, replay: f.replay });
    }
  }

  log(`misuse fuzzer: seed ${o.seed}, ${calls} calls in ${results.length} children (${results.filter((r) => r.batch.cuda).length} with NODE_PEFT_CUDA=emu), ${seconds.toFixed(1)} s`);
  log(`  outcomes: ${counts.ok} ok, ${counts.coded} coded errors, ${counts.hostile} errors of the fuzzer's own getters, traps or callbacks passed through, ${counts.failed} uncoded errors, ${counts.hang} hangs; ${crashes.length} crashed/hung children`);
  log(`  codes: ${Object.entries(codes).sort((a, b) => b[1] - a[1]).map(([c, n]) => `${c} ${n}`).join(", ")}`);
  log(`  targets: ${allTargets.size} enumerated, ${[...allTargets].filter((n) => coverage.has(n)).length} called, ${okNever.length} never succeeded${never.length ? `; never called: ${never.length > 30 ? `${never.slice(0, 30).join(", ")}, ... (${never.length})` : never.join(", ")}` : ""}`);
  for (const c of crashes) {
    log(`\nCRASH in batch ${c.batch}${c.cuda ? " (NODE_PEFT_CUDA=emu)" : ""}: ${c.kind}`);
    log(`  during step #${c.step}: ${c.call}`);
    log(`  replay: ${c.cuda ? "NODE_PEFT_CUDA=emu " : ""}${c.replay}`);
    log("  last calls:");
    for (const l of c.lastCalls) log(`    ${l}`);
    logStderr(log, c.stderr);
  }
  if (groups.size) log(`\nFAILURES (${failures.length} calls, ${groups.size} kinds):`);
  for (const g of groups.values()) {
    log(`\n  ${g.error}${g.kind === "uncoded error" ? "" : `  (${g.kind})`}`);
    if (g.stack.length) log(`    ${g.stack.join("\n    ")}`);
    log(`    ${g.count} call(s); ${g.targets.length > 8 ? `${g.targets.slice(0, 8).join(", ")}, ... (${g.targets.length} targets)` : g.targets.join(", ")}`);
    log(`    e.g. (batch ${g.batch}, step #${g.step}${g.cuda ? ", NODE_PEFT_CUDA=emu" : ""}): ${g.call.length > 600 ? g.call.slice(0, 600) + "…" : g.call}`);
    log(`    replay: ${g.replay}`);
  }
  const ok = crashes.length === 0 && failures.length === 0;
  log(ok ? "\nPASS" : `\nFAIL: ${crashes.length} crashed/hung children, ${failures.length} failing calls`);
  if (o.json) {
    process.stdout.write(JSON.stringify({ seed: o.seed, calls, children: results.length, seconds, counts, codes, targets: allTargets.size, neverCalled: never, neverSucceeded: okNever, crashes, failures: [...groups.values()] }) + "\n");
  }
  process.exitCode = ok ? 0 : 1;
}

await main(parseOptions(process.argv.slice(2)), child, parent);
