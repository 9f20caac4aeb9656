#!/usr/bin/env node
// Mutation fuzzer for the safetensors readers (dist/index.js) and the CLI's `inspect`.
//
// Valid files are written with the library's own saveSafetensorsSync (every Tensor dtype, 0-dim and
// zero-size tensors, metadata) plus one built by hand with dtypes that only load as raw bytes (F64, BOOL,
// U16, F8_E4M3, ...). Each case takes one of them and mutates it with a seeded generator: the header's JSON
// structure (offsets and shape entries set to 0 / -1 / 2^53+1 / 2^64 / fractions / strings, unknown or
// lower-case dtypes, ranks past 16 with the same size, missing, extra and duplicate fields, duplicate or
// odd tensor names, non-string and non-object metadata, deep nesting, overlapping, swapped and shifted
// data ranges, gaps, thousands of entries), the header bytes (flips, inserts, deletes, invalid UTF-8, a
// BOM), the 8-byte length field, and the file (truncation at any point, trailing garbage, flipped data
// bytes, a header spliced onto another file's data).
//
// Every file goes to all three readers: loadSafetensorsSync, loadSafetensors, and openSafetensors with
// keys / metadata / info / get / getBytes of every tensor, then close (and a call after close). A sample of
// the files also goes to `node dist/cli.js inspect <file>`.
//
// Pass: each read succeeds or throws an Error with code ERR_SAFETENSORS; no signal, no hang; the three
// readers accept exactly the same files and return the same tensors (dtype, shape, bytes, and getBytes
// equal to the tensor's bytes); the CLI exits 0 or 1 (0 exactly when openSafetensors accepts the header),
// without a stack trace or an "unexpected error" on stderr. An unmutated file must be accepted.
//
//   node scripts/fuzz/safetensors.mjs --seed 1 --files 400
//   node scripts/fuzz/safetensors.mjs --long                        # 5000 files, half through the CLI
//   node scripts/fuzz/safetensors.mjs --seed 1 --files 400 --only 2 --case 17 --keep   # one case again
//
// Options: --seed N, --files N, --long, --batch-size N (files per child, default 100), --jobs N,
// --timeout S (seconds a child may go without a message, default 120), --cli-rate R (share of files given to the CLI, default 0.25; 0.5
// with --long), --only B (batch B only), --case I (only case I of each batch run), --keep (keep the temp
// directories), --json (summary as JSON on stdout, the report on stderr).
//
// Files are written into a fresh temp directory per child (its cwd), removed afterwards; the files behind
// failures are copied into a directory the report names.
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir, cpus } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { DIST, LOAD_FAILED, ROOT, enterTempDir, evenShares, exitKind, failedToLoad, jsonLines, leaveTempDir, logStderr, main, numberArgs, reportLog, runBatches, runChild, stderrTail, usageOf } from "./harness.mjs";
import { Rng, mixSeed } from "./rng.mjs";

const SELF = fileURLToPath(import.meta.url);
const CLI = join(ROOT, "dist", "cli.js");

// ---------------------------------------------------------------- command line

function parseOptions(argv) {
  const o = { seed: 1, files: 400, batchSize: 100, jobs: Math.max(1, Math.min(4, cpus().length)), timeout: 120, cliRate: null, only: null, case: null, keep: false, json: false, child: false, batch: 0, fd: null, long: false };
  const num = numberArgs(argv, usage);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--seed") o.seed = num(++i) >>> 0;
    else if (a === "--files") o.files = Math.max(1, Math.floor(num(++i)));
    else if (a === "--long") (o.files = 5000), (o.long = true);
    else if (a === "--batch-size") o.batchSize = Math.max(1, Math.floor(num(++i)));
    else if (a === "--jobs") o.jobs = Math.max(1, Math.floor(num(++i)));
    else if (a === "--timeout") o.timeout = num(++i);
    else if (a === "--cli-rate") o.cliRate = Math.min(1, Math.max(0, num(++i)));
    else if (a === "--only") o.only = Math.floor(num(++i));
    else if (a === "--case") o.case = Math.floor(num(++i));
    else if (a === "--keep") o.keep = true;
    else if (a === "--json") o.json = true;
    else if (a === "--child") o.child = true;
    else if (a === "--batch") o.batch = Math.floor(num(++i));
    else if (a === "--fd") o.fd = Math.floor(num(++i));
    else if (a === "-h" || a === "--help") usage(null);
    else usage(`unknown option ${a}`);
  }
  o.cliRate ??= o.long ? 0.5 : 0.25;
  return o;
}

const usage = usageOf("safetensors fuzzer", "usage: node scripts/fuzz/safetensors.mjs [--seed N] [--files N | --long] [--batch-size N] [--jobs N] [--timeout S] [--cli-rate R] [--only B] [--case I] [--keep] [--json]");

// ---------------------------------------------------------------- a header model that can say anything

/** A JSON token written as is (numbers JSON.stringify cannot write, broken escapes, deep nesting). */
class Raw {
  constructor(text) {
    this.text = text;
  }
}
/** An object as an ordered list of [key, value] pairs: duplicates and any order allowed. */
class Obj {
  constructor(pairs) {
    this.pairs = pairs;
  }
  get(k) {
    return this.pairs.find((p) => p[0] === k)?.[1];
  }
  set(k, v) {
    const p = this.pairs.find((q) => q[0] === k);
    if (p) p[1] = v;
    else this.pairs.push([k, v]);
  }
  delete(k) {
    this.pairs = this.pairs.filter((p) => p[0] !== k);
  }
  clone() {
    return new Obj(this.pairs.map(([k, v]) => [k, cloneValue(v)]));
  }
}
function cloneValue(v) {
  if (v instanceof Obj) return v.clone();
  if (Array.isArray(v)) return v.map(cloneValue);
  return v;
}
function ser(v) {
  if (v instanceof Raw) return v.text;
  if (v instanceof Obj) return `{${v.pairs.map(([k, x]) => `${k instanceof Raw ? k.text : JSON.stringify(k)}:${ser(x)}`).join(",")}}`;
  if (Array.isArray(v)) return `[${v.map(ser).join(",")}]`;
  if (v === undefined) return "null";
  return JSON.stringify(v);
}
const show = (v) => {
  const s = ser(v);
  return s.length > 60 ? `${s.slice(0, 40)}…(${s.length} chars)` : s;
};

function parseFile(buf) {
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  const entries = Object.keys(header).map((k) => {
    const v = header[k];
    if (k === "__metadata__") return [k, new Obj(Object.entries(v))];
    return [k, new Obj([["dtype", v.dtype], ["shape", v.shape], ["data_offsets", v.data_offsets]])];
  });
  return { entries, data: Buffer.from(buf.subarray(8 + n)) };
}

// ---------------------------------------------------------------- mutations

const DTYPE_NAMES = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"];
const BAD_DTYPES = ["F128", "f32", "", "I4", "U1", "F32 ", " F32", "F8", "Q4_0", "F32\u0000", "bf16", 123, null, true, ["F32"], new Obj([])];
const NAMES = ["", "__proto__", "constructor", "toString", "hasOwnProperty", "a\u0000b", "é日本\u{1F600}", new Raw('"\\ud800"'), new Raw('"\\udc00x"'), new Raw('"\\u0000"'), new Raw('"a\\/b"'), "x".repeat(10000), "__metadata__", "a.b.c", " ", "\u2028"];
const DEEP = [64, 127, 128, 129, 1000, 100_000];

function tensorEntries(m) {
  return m.entries.filter(([k, v]) => k !== "__metadata__" && v instanceof Obj && v.get("dtype") !== undefined);
}

function numberToken(rng, m, e) {
  const offs = e?.get("data_offsets");
  const ctx = [m.data.length, m.data.length + 1, m.data.length - 1];
  if (Array.isArray(offs)) for (const x of offs) if (typeof x === "number") ctx.push(x, x + 1, x - 1);
  return rng.pick([
    0, 1, -1, 2, 3, 4, 7, 8, 16, 255, 2 ** 31, 2 ** 32, 2 ** 53 - 1,
    new Raw("9007199254740992"), new Raw("9007199254740993"), new Raw("18446744073709551615"), new Raw("18446744073709551616"),
    new Raw("1e400"), new Raw("-0"), 1.5, new Raw("1e3"), new Raw("4.0"), new Raw("0x10"), new Raw("01"), new Raw("+4"), new Raw("1e-400"),
    "4", null, true, [], new Obj([]), ...ctx, ...ctx,
  ]);
}

function deepValue(rng) {
  const d = rng.pick(DEEP);
  return rng.chance(0.7) ? new Raw("[".repeat(d) + "]".repeat(d)) : new Raw('{"a":'.repeat(d) + "1" + "}".repeat(d));
}

// Structural mutations: each changes the model and says what it did.
const STRUCTURAL = [
  ["offset", 6, (rng, m) => {
    const [name, e] = rng.pick(tensorEntries(m)) ?? [];
    if (!e) return null;
    const offs = e.get("data_offsets");
    const j = rng.int(2);
    const v = numberToken(rng, m, e);
    if (Array.isArray(offs)) offs[j] = v;
    else e.set("data_offsets", [v, v]);
    return `${show(name)}.data_offsets[${j}]=${show(v)}`;
  }],
  ["offsets-field", 2, (rng, m) => {
    const [name, e] = rng.pick(tensorEntries(m)) ?? [];
    if (!e) return null;
    const v = rng.pick([[0], [0, 1, 2], "0,4", null, new Obj([]), [], [new Raw("0.0"), 4], [new Raw("0"), new Raw("4e0")], [[0], [4]]]);
    e.set("data_offsets", v);
    return `${show(name)}.data_offsets=${show(v)}`;
  }],
  ["shape", 6, (rng, m) => {
    const [name, e] = rng.pick(tensorEntries(m)) ?? [];
    if (!e) return null;
    let shape = e.get("shape");
    if (!Array.isArray(shape)) e.set("shape", (shape = []));
    const op = rng.int(5);
    if (op <= 1 && shape.length) {
      const k = rng.int(shape.length);
      shape[k] = numberToken(rng, m, e);
      return `${show(name)}.shape[${k}]=${show(shape[k])}`;
    }
    if (op === 2) {
      const v = rng.pick([0, 1, 2, 2 ** 32, new Raw("9007199254740993"), -1]);
      shape.splice(rng.int(shape.length + 1), 0, v);
      return `${show(name)}.shape insert ${show(v)}`;
    }
    if (op === 3 && shape.length) {
      shape.splice(rng.int(shape.length), 1);
      return `${show(name)}.shape drop a dimension`;
    }
    const v = rng.pick([[], [0], [new Raw("1e2")], "4", null, new Obj([]), [[2]], Array(17).fill(1), Array(1000).fill(1), [2 ** 26, 2 ** 26, 2 ** 26]]);
    e.set("shape", v);
    return `${show(name)}.shape=${show(v)}`;
  }],
  ["rank", 4, (rng, m) => {
    // Same element count, more dimensions: legal for the format, beyond what a Tensor holds (16).
    const [name, e] = rng.pick(tensorEntries(m).filter(([, x]) => Array.isArray(x.get("shape")))) ?? [];
    if (!e) return null;
    const k = rng.pick([8, 16, 17, 33, 100]);
    const shape = e.get("shape");
    while (shape.length < k) shape.splice(rng.int(shape.length + 1), 0, 1);
    return `${show(name)}.shape padded with ones to ${shape.length} dimensions`;
  }],
  ["dtype", 5, (rng, m) => {
    const [name, e] = rng.pick(tensorEntries(m)) ?? [];
    if (!e) return null;
    const v = rng.chance(0.5) ? rng.pick(DTYPE_NAMES) : rng.pick(BAD_DTYPES);
    e.set("dtype", cloneValue(v));
    return `${show(name)}.dtype=${show(v)}`;
  }],
  ["field", 4, (rng, m) => {
    const [name, e] = rng.pick(tensorEntries(m)) ?? [];
    if (!e) return null;
    const op = rng.int(4);
    const k = rng.pick(["dtype", "shape", "data_offsets"]);
    if (op === 0) {
      e.delete(k);
      return `${show(name)} without ${k}`;
    }
    if (op === 1) {
      const extra = rng.pick(["stride", "__proto__", "DTYPE", "", "data_offsets "]);
      e.pairs.push([extra, rng.pick([[1], 0, "x", null])]);
      return `${show(name)} extra field ${show(extra)}`;
    }
    if (op === 2) {
      const v = e.get(k);
      e.pairs.push([k, cloneValue(v)]);
      return `${show(name)} duplicate field ${k}`;
    }
    e.pairs.reverse();
    return `${show(name)} fields reversed`;
  }],
  ["names", 4, (rng, m) => {
    const all = tensorEntries(m);
    const pair = rng.pick(all);
    if (!pair) return null;
    if (rng.chance(0.4)) {
      m.entries.push([pair[0], pair[1].clone()]);
      return `duplicate tensor ${show(pair[0])}`;
    }
    const to = rng.pick(NAMES);
    pair[0] = to;
    return `rename a tensor to ${show(to)}`;
  }],
  ["metadata", 4, (rng, m) => {
    const at = m.entries.findIndex(([k]) => k === "__metadata__");
    const op = rng.int(5);
    if (op === 0) {
      const v = rng.pick(["pt", [], null, 1, new Obj([["a", new Obj([])]]), [new Obj([])]]);
      if (at >= 0) m.entries[at][1] = v;
      else m.entries.unshift(["__metadata__", v]);
      return `__metadata__=${show(v)}`;
    }
    if (op === 1) {
      const meta = at >= 0 && m.entries[at][1] instanceof Obj ? m.entries[at][1] : new Obj([]);
      if (at < 0) m.entries.push(["__metadata__", meta]);
      const v = rng.pick([1, null, true, [], new Obj([]), ["a"], 1.5, new Raw("1e400")]);
      meta.pairs.push([rng.pick(["format", "n", "", "__proto__"]), v]);
      return `__metadata__ value ${show(v)}`;
    }
    if (op === 2) {
      m.entries.push(["__metadata__", new Obj([["format", "pt"]])]);
      return "__metadata__ twice";
    }
    if (op === 3 && at >= 0) {
      m.entries.splice(at, 1);
      return "no __metadata__";
    }
    const meta = at >= 0 && m.entries[at][1] instanceof Obj ? m.entries[at][1] : null;
    if (!meta) return null;
    const v = rng.pick(["x".repeat(100_000), "\u0000", new Raw('"\\ud800"'), "é日本", new Raw('"\\u00"')]);
    meta.pairs.push(["big", v]);
    return `__metadata__ string ${show(v)}`;
  }],
  ["nest", 2, (rng, m) => {
    const v = deepValue(rng);
    const where = rng.int(3);
    if (where === 0) m.entries.push(["__metadata__", new Obj([["deep", v]])]);
    else if (where === 1) m.entries.push(["deep", v]);
    else {
      const [, e] = rng.pick(tensorEntries(m)) ?? [];
      if (!e) return null;
      e.set("shape", v);
    }
    return `nesting ${v.text.length / 2} deep (${["metadata", "entry", "shape"][where]})`;
  }],
  ["ranges", 6, (rng, m) => {
    const all = tensorEntries(m).filter(([, e]) => Array.isArray(e.get("data_offsets")));
    if (all.length === 0) return null;
    const [na, a] = rng.pick(all);
    const [nb, b] = rng.pick(all);
    const oa = a.get("data_offsets"), ob = b.get("data_offsets");
    const op = rng.int(5);
    if (op === 0) {
      b.set("data_offsets", oa.slice());
      return `${show(nb)} takes the range of ${show(na)}`;
    }
    if (op === 1) {
      a.set("data_offsets", ob);
      b.set("data_offsets", oa);
      return `swap ranges of ${show(na)} and ${show(nb)}`;
    }
    if (op === 2) {
      const d = rng.pick([-8, -4, -2, -1, 1, 2, 4, 8]);
      a.set("data_offsets", oa.map((x) => (typeof x === "number" ? x + d : x)));
      return `shift ${show(na)} by ${d}`;
    }
    if (op === 3) {
      const g = rng.pick([1, 2, 8, 64]);
      for (const [, e] of all) {
        const o = e.get("data_offsets");
        if (typeof o[0] === "number" && typeof oa[0] === "number" && o[0] >= oa[0] && e !== a) e.set("data_offsets", o.map((x) => x + g));
      }
      a.set("data_offsets", oa.map((x) => (typeof x === "number" ? x + g : x)));
      m.data = Buffer.concat([m.data, Buffer.alloc(g)]);
      return `gap of ${g} before ${show(na)}`;
    }
    a.set("data_offsets", [oa[0], oa[0]]);
    return `${show(na)} gets an empty range`;
  }],
  ["entry", 2, (rng, m) => {
    const pair = rng.pick(tensorEntries(m));
    if (!pair) return null;
    const v = rng.pick([[1], 1, "x", null, true, new Obj([]), new Obj([["dtype", "F32"]])]);
    pair[1] = v;
    return `${show(pair[0])}=${show(v)}`;
  }],
  ["many", 1, (rng, m) => {
    const n = rng.pick([100, 1000, 5000]);
    const end = m.data.length;
    for (let i = 0; i < n; i++) m.entries.push([`e${i}`, new Obj([["dtype", "U8"], ["shape", [0]], ["data_offsets", [end, end]]])]);
    return `${n} more empty tensors`;
  }],
  ["reorder", 1, (rng, m) => {
    for (let i = m.entries.length - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [m.entries[i], m.entries[j]] = [m.entries[j], m.entries[i]];
    }
    return "entries shuffled";
  }],
];

// Changes a valid file may survive: the readers must still agree on it.
const SAME_SIZE = [["F16", "BF16", "I16", "U16"], ["F32", "I32", "U32"], ["I64", "F64", "U64", "C64"], ["U8", "I8", "BOOL", "F8_E4M3", "F8_E5M2", "F8_E8M0"]];
const GENTLE = [
  ["rank", (rng, m) => STRUCTURAL.find((x) => x[0] === "rank")[2](rng, m)],
  ["reorder", (rng, m) => STRUCTURAL.find((x) => x[0] === "reorder")[2](rng, m)],
  ["many", (rng, m) => STRUCTURAL.find((x) => x[0] === "many")[2](rng, m)],
  ["same-size dtype", (rng, m) => {
    const [name, e] = rng.pick(tensorEntries(m)) ?? [];
    if (!e) return null;
    const group = SAME_SIZE.find((g) => g.includes(e.get("dtype")));
    if (!group) return null;
    const to = rng.pick(group);
    e.set("dtype", to);
    return `${show(name)}.dtype=${show(to)}`;
  }],
  ["name", (rng, m) => {
    const pair = rng.pick(tensorEntries(m));
    if (!pair) return null;
    const to = rng.pick(["__proto__", "constructor", "toString", "é日本\u{1F600}", "a\u0000b", " ", "x".repeat(5000), "0", "__metadata__x"]);
    if (m.entries.some(([k]) => k === to)) return null;
    pair[0] = to;
    return `rename a tensor to ${show(to)}`;
  }],
  ["metadata", (rng, m) => {
    const at = m.entries.findIndex(([k]) => k === "__metadata__");
    const meta = at >= 0 ? m.entries[at][1] : new Obj([]);
    if (at < 0) m.entries.push(["__metadata__", meta]);
    const k = rng.pick(["__proto__", "constructor", "", "é", "x".repeat(1000)]);
    if (!(meta instanceof Obj) || meta.get(k) !== undefined) return null;
    meta.pairs.push([k, rng.pick(["", "v", "\u0000", "x".repeat(10000)])]);
    return `__metadata__ key ${show(k)}`;
  }],
];

const JSON_BYTES = Buffer.from('{}[]":,0123456789-+eE. \\ntfrlsuaF', "latin1");
function mutateHeaderBytes(rng, h) {
  const pos = rng.int(h.length + 1);
  switch (rng.int(8)) {
    case 0:
      if (!h.length) return [h, "no bytes to flip"];
      h = Buffer.from(h);
      h[Math.min(pos, h.length - 1)] ^= 1 << rng.int(8);
      return [h, `header byte ${pos} bit flipped`];
    case 1: {
      const b = rng.chance(0.7) ? JSON_BYTES[rng.int(JSON_BYTES.length)] : rng.int(256);
      return [Buffer.concat([h.subarray(0, pos), Buffer.from([b]), h.subarray(pos)]), `byte 0x${b.toString(16)} inserted at ${pos}`];
    }
    case 2: {
      const n = 1 + rng.int(4);
      return [Buffer.concat([h.subarray(0, pos), h.subarray(pos + n)]), `${n} header bytes deleted at ${pos}`];
    }
    case 3: {
      const seq = rng.pick([[0xff], [0xc0, 0x80], [0x80], [0xe6, 0x97], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0x00]]);
      return [Buffer.concat([h.subarray(0, pos), Buffer.from(seq), h.subarray(pos)]), `bytes ${seq.map((x) => x.toString(16))} inserted at ${pos}`];
    }
    case 4:
      return [Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), h]), "UTF-8 BOM before the header"];
    case 5: {
      const n = 1 + rng.int(16);
      const from = rng.int(Math.max(1, h.length - n));
      return [Buffer.concat([h.subarray(0, pos), h.subarray(from, from + n), h.subarray(pos)]), `header bytes [${from},${from + n}) repeated at ${pos}`];
    }
    case 6:
      return [Buffer.concat([h, Buffer.alloc(1 + rng.int(16), rng.pick([0x20, 0x00, 0x0a, 0x7d]))]), "header padded"];
    default:
      return [h.subarray(0, pos), `header cut at ${pos}`];
  }
}

/** One case: a seed's bytes, mutated. Returns the file bytes and what was done. */
function makeCase(rng, seeds) {
  const names = Object.keys(seeds);
  const seedName = rng.pick(names);
  const notes = [`seed ${seedName}`];
  if (rng.chance(0.04)) return { bytes: seeds[seedName], notes, pristine: seedName === "raw" ? "header" : "all" };
  const m = parseFile(seeds[seedName]);
  if (rng.chance(0.05)) {
    const other = parseFile(seeds[rng.pick(names)]);
    m.data = other.data;
    notes.push("data of another seed");
  }
  if (rng.chance(0.15)) {
    // Gentle: one or two changes a reader may accept; nothing else.
    for (let i = 1 + rng.int(2); i > 0; i--) {
      const [what, fn] = rng.pick(GENTLE);
      const note = fn(rng, m);
      notes.push(note ?? `(${what}: nothing to change)`);
    }
    if (rng.chance(0.3)) {
      for (let i = 1 + rng.int(4); i > 0; i--) m.data[rng.int(Math.max(1, m.data.length))] ^= 0xff;
      notes.push("data bytes flipped");
    }
    const header = Buffer.from(`{${m.entries.map(([key, v]) => `${key instanceof Raw ? key.text : JSON.stringify(key)}:${ser(v)}`).join(",")}}`, "utf8");
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(BigInt(header.length));
    return { bytes: Buffer.concat([prefix, header, m.data]), notes, pristine: null };
  }
  const k = rng.chance(0.75) ? 1 + rng.int(3) : 0;
  const total = STRUCTURAL.reduce((a, s) => a + s[1], 0);
  for (let i = 0; i < k; i++) {
    let r = rng.next() * total;
    const s = STRUCTURAL.find((x) => (r -= x[1]) < 0) ?? STRUCTURAL[0];
    const note = s[2](rng, m);
    if (note) notes.push(note);
  }
  let header = Buffer.from(`{${m.entries.map(([key, v]) => `${key instanceof Raw ? key.text : JSON.stringify(key)}:${ser(v)}`).join(",")}}`, "utf8");
  if (k === 0 || rng.chance(0.3)) {
    const n = 1 + (rng.chance(0.2) ? rng.int(3) : 0);
    for (let i = 0; i < n; i++) {
      const [h, note] = mutateHeaderBytes(rng, header);
      header = h;
      notes.push(note);
    }
  }
  let length = BigInt(header.length);
  if (rng.chance(0.12)) {
    const size = 8 + header.length + m.data.length;
    length = rng.pick([0n, 1n, 7n, length - 1n, length + 1n, BigInt(size - 8), BigInt(size - 7), 2n ** 32n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n, 100_000_001n, BigInt(rng.int(size))]);
    if (length < 0n) length = 0n;
    notes.push(`length field ${length}`);
  }
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(length);
  let bytes = Buffer.concat([prefix, header, m.data]);
  if (rng.chance(0.25)) {
    const op = rng.int(5);
    if (op === 0) {
      const at = rng.int(bytes.length);
      bytes = bytes.subarray(0, at);
      notes.push(`file cut at ${at}`);
    } else if (op === 1) {
      const g = Buffer.from(Array.from({ length: 1 + rng.int(64) }, () => rng.int(256)));
      bytes = Buffer.concat([bytes, g]);
      notes.push(`${g.length} trailing bytes`);
    } else if (op === 2 && m.data.length) {
      bytes = Buffer.from(bytes);
      const n = 1 + rng.int(8);
      for (let i = 0; i < n; i++) bytes[bytes.length - 1 - rng.int(m.data.length)] = rng.int(256);
      notes.push(`${n} data bytes changed`);
    } else if (op === 3) {
      bytes = Buffer.concat([Buffer.from([rng.int(256)]), bytes]);
      notes.push("one byte before the length field");
    } else {
      bytes = Buffer.alloc(rng.int(9));
      notes.push(`${bytes.length}-byte file`);
    }
  }
  return { bytes, notes, pristine: null };
}

// ---------------------------------------------------------------- the child: seeds, cases, readers

async function child(opts) {
  const tmp = opts.fd ? null : enterTempDir("node-peft-st-fuzz-");
  const emit = jsonLines(opts.fd ?? 1);
  const lib = await import(pathToFileURL(DIST).href);
  const { Tensor } = lib;
  const escaped = [];
  process.on("unhandledRejection", (e) => escaped.push(`unhandledRejection: ${e?.name}: ${e?.message}`));

  // ---- seeds: written by the library, and one by hand with dtypes a Tensor cannot hold
  const seeds = {};
  {
    const ints = (n, lo, hi) => Array.from({ length: n }, (_, i) => lo + ((i * 7919) % (hi - lo + 1)));
    lib.saveSafetensorsSync("seed-all.safetensors", {
      "w.f32": Tensor.randn([2, 3], { seed: 1 }),
      "w.f16": Tensor.randn([4], { seed: 2, dtype: "f16" }),
      "w.bf16": Tensor.randn([2, 2], { seed: 3, dtype: "bf16" }),
      "w.i8": Tensor.fromArray(ints(3, -128, 127), [3], "i8"),
      "w.u8": Tensor.fromArray(ints(5, 0, 255), [5], "u8"),
      "w.i32": Tensor.fromArray(ints(4, -1000, 1000), [2, 2], "i32"),
      "w.i64": Tensor.fromArray([-(2 ** 40), 0, 2 ** 40], [3], "i64"),
      scalar: Tensor.fromArray([3.5], [], "f32"),
      empty: Tensor.zeros([0]),
      "empty.i64": Tensor.zeros([2, 0], { dtype: "i64" }),
    }, { format: "pt", note: "é日本", empty: "" });
    lib.saveSafetensorsSync("seed-one.safetensors", { weight: Tensor.randn([4, 4], { seed: 4 }) });
    lib.saveSafetensorsSync("seed-none.safetensors", {}, { only: "metadata" });
    const many = {};
    for (let i = 0; i < 12; i++) many[`layers.${i}.weight`] = Tensor.randn([i % 3 + 1, 2], { seed: 10 + i, dtype: ["f32", "f16", "bf16"][i % 3] });
    lib.saveSafetensorsSync("seed-many.safetensors", many);
    for (const f of ["seed-all", "seed-one", "seed-none", "seed-many"]) seeds[f.slice(5)] = readFileSync(`${f}.safetensors`);
    // Raw-only dtypes: readable with getBytes, refused by get() and the whole-file loads.
    const raw = [["d.f64", "F64", [2], 16], ["d.bool", "BOOL", [3], 3], ["d.u16", "U16", [2], 4], ["d.f8", "F8_E4M3", [4], 4], ["d.f4", "F4", [4], 2], ["ok", "F32", [1], 4]];
    let at = 0;
    const parts = raw.map(([n, dt, shape, len]) => {
      const s = `${JSON.stringify(n)}:{"dtype":"${dt}","shape":[${shape}],"data_offsets":[${at},${at + len}]}`;
      at += len;
      return s;
    });
    const header = Buffer.from(`{"__metadata__":{"format":"pt"},${parts.join(",")}}`);
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(BigInt(header.length));
    seeds.raw = Buffer.concat([prefix, header, Buffer.from(Array.from({ length: at }, (_, i) => (i * 37) & 0xff))]);
  }

  // ---- the readers
  const ASYNC_TIMEOUT_MS = 15_000;
  const errorOf = (e) => {
    if (e instanceof Error && typeof e.code === "string") return { code: e.code, message: e.message.slice(0, 300) };
    return {
      uncoded: true,
      name: e instanceof Error ? e.name : typeof e,
      message: (e instanceof Error ? e.message : String(e)).slice(0, 300),
      stack: e instanceof Error && typeof e.stack === "string" ? e.stack.split("\n").filter((l) => /^\s+at /.test(l) && !l.includes(import.meta.url)).slice(0, 3).map((l) => l.trim().replaceAll(pathToFileURL(ROOT).href + "/", "")) : [],
    };
  };
  const summary = (rec) => {
    const out = new Map();
    const entries = rec instanceof Map ? [...rec] : Object.keys(rec).map((k) => [k, rec[k]]);
    for (const [k, t] of entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) {
      out.set(k, { dtype: t.dtype, shape: [...t.shape], bytes: Buffer.from(t.bytes()) });
      t.dispose();
    }
    return out;
  };
  async function settle(p) {
    let timer;
    p.then(() => {}, () => {});
    try {
      return await Promise.race([p, new Promise((_, rej) => (timer = setTimeout(() => rej(Object.assign(new Error("did not settle"), { fuzzHang: true })), ASYNC_TIMEOUT_MS)))]);
    } finally {
      clearTimeout(timer);
    }
  }

  async function readAll(path) {
    const r = {};
    try {
      r.sync = { ok: summary(lib.loadSafetensorsSync(path)) };
    } catch (e) {
      r.sync = { err: errorOf(e) };
    }
    try {
      r.async = { ok: summary(await settle(lib.loadSafetensors(path))) };
    } catch (e) {
      r.async = e?.fuzzHang ? { hang: true } : { err: errorOf(e) };
    }
    // Lazy: the header alone decides open(); a tensor's get() may still refuse a raw-only dtype.
    let f = null;
    try {
      f = lib.openSafetensors(path);
      r.opened = true;
      const keys = f.keys();
      f.metadata();
      const got = new Map(); // a tensor may be called "__proto__"
      let firstErr = null;
      r.lazyBytes = [];
      for (const k of keys) {
        const info = f.info(k);
        const raw = f.getBytes(k);
        try {
          const t = f.get(k);
          got.set(k, t);
          if (t.dtype.toUpperCase() !== info.dtype || String(t.shape) !== String(info.shape) || Buffer.compare(Buffer.from(t.bytes()), raw) !== 0)
            r.lazyBytes.push(`${JSON.stringify(k)}: get() and info()/getBytes() disagree (${t.dtype} [${t.shape}] vs ${info.dtype} [${info.shape}])`);
        } catch (e) {
          firstErr ??= errorOf(e);
        }
      }
      if (firstErr) {
        for (const t of got.values()) t.dispose();
        r.lazy = { err: firstErr };
      } else r.lazy = { ok: summary(got) };
    } catch (e) {
      r.lazy = { err: errorOf(e) };
    } finally {
      if (f) {
        try {
          f.close();
          try {
            f.keys();
            r.afterClose = "keys() after close() did not throw";
          } catch (e) {
            const x = errorOf(e);
            if (x.uncoded) r.afterClose = `keys() after close() threw without a code: ${x.name}: ${x.message}`;
          }
        } catch (e) {
          r.closeErr = errorOf(e);
        }
      }
    }
    return r;
  }

  function cliCheck(path) {
    const c = spawnSync(process.execPath, [CLI, "inspect", path], { encoding: "utf8", timeout: 60_000, maxBuffer: 64 << 20 });
    const problems = [];
    if (c.error?.code === "ETIMEDOUT" || c.signal === "SIGTERM") problems.push("cli: no exit within 60 s");
    else if (c.signal) problems.push(`cli: killed by ${c.signal}`);
    else if (c.status !== 0 && c.status !== 1) problems.push(`cli: exit code ${c.status}`);
    const stackLines = (c.stderr ?? "").split("\n").filter((l) => l.startsWith("    at "));
    if (failedToLoad(c.stderr ?? "")) problems.push(`cli: ${LOAD_FAILED}`);
    else if (stackLines.length) problems.push(`cli: stack trace on stderr: ${(c.stderr ?? "").split("\n").slice(0, 3).join(" | ").slice(0, 300)}`);
    if (/unexpected error/.test(c.stderr ?? "")) problems.push(`cli: ${(c.stderr ?? "").trim().slice(0, 300)}`);
    return { status: c.status, signal: c.signal, problems, stderr: (c.stderr ?? "").trim().slice(0, 200), loadFailed: failedToLoad(c.stderr ?? "") };
  }

  const sameTensors = (a, b) => {
    if (a.size !== b.size) return `${a.size} vs ${b.size} tensors`;
    for (const [k, x] of a) {
      const y = b.get(k);
      if (!y) return `tensor ${JSON.stringify(k)} missing`;
      if (x.dtype !== y.dtype || String(x.shape) !== String(y.shape)) return `${JSON.stringify(k)}: ${x.dtype} [${x.shape}] vs ${y.dtype} [${y.shape}]`;
      if (Buffer.compare(x.bytes, y.bytes) !== 0) return `${JSON.stringify(k)}: different bytes`;
    }
    return null;
  };

  // ---- the cases
  const rng = new Rng(mixSeed(opts.seed, opts.batch));
  const stats = { files: 0, accepted: 0, rejected: 0, cli: 0, codes: {} };
  for (let i = 0; i < opts.files; i++) {
    const { bytes, notes, pristine } = makeCase(rng, seeds);
    const viaCli = rng.chance(opts.cliRate);
    if (opts.case !== null && i !== opts.case) continue;
    const path = `case-${i}.safetensors`;
    writeFileSync(path, bytes);
    emit({ t: "s", i, path, notes, size: bytes.length });
    stats.files++;
    const r = await readAll(path);
    const problems = [];
    for (const which of ["sync", "async", "lazy"]) {
      const x = r[which];
      if (x.hang) problems.push(`${which}: no settlement within ${ASYNC_TIMEOUT_MS} ms`);
      else if (x.err?.uncoded) problems.push(`${which}: uncoded ${x.err.name}: ${x.err.message}${x.err.stack.length ? ` (${x.err.stack[0]})` : ""}`);
      else if (x.err && x.err.code !== "ERR_SAFETENSORS") problems.push(`${which}: code ${x.err.code}, not ERR_SAFETENSORS: ${x.err.message}`);
      if (x.err?.code) stats.codes[x.err.code] = (stats.codes[x.err.code] ?? 0) + 1;
    }
    const accepted = ["sync", "async", "lazy"].filter((w) => r[w].ok);
    if (accepted.length && accepted.length < 3)
      problems.push(`readers disagree: ${["sync", "async", "lazy"].map((w) => `${w} ${r[w].ok ? "accepts" : `refuses (${r[w].err?.message ?? "hang"})`}`).join("; ")}`);
    if (accepted.length === 3) {
      stats.accepted++;
      for (const [a, b] of [["sync", "async"], ["sync", "lazy"]]) {
        const d = sameTensors(r[a].ok, r[b].ok);
        if (d) problems.push(`${a} and ${b} read different tensors: ${d}`);
      }
    } else stats.rejected++;
    for (const l of r.lazyBytes ?? []) problems.push(`lazy: ${l}`);
    if (r.afterClose) problems.push(`lazy: ${r.afterClose}`);
    if (r.closeErr) problems.push(`lazy: close() threw ${r.closeErr.name ?? r.closeErr.code}: ${r.closeErr.message}`);
    if (pristine === "all" && accepted.length < 3) problems.push("an unmutated file was refused");
    if (pristine === "header" && !r.opened) problems.push(`the unmutated raw-dtype file was refused by openSafetensors: ${r.lazy.err?.message}`);
    let cli = null;
    if (viaCli) {
      stats.cli++;
      cli = cliCheck(path);
      problems.push(...cli.problems);
      if (cli.status === 0 && !r.opened) problems.push(`cli: exit 0 but openSafetensors refuses the header (${r.lazy.err?.message})`);
      if (cli.status === 1 && r.opened && !cli.loadFailed) problems.push(`cli: exit 1 but openSafetensors accepts the header: ${cli.stderr}`);
    }
    while (escaped.length) problems.push(escaped.shift());
    emit({ t: "e", i, accepted: accepted.length === 3, problems, cli: cli ? cli.status : undefined });
    await new Promise((res) => setImmediate(res));
  }
  emit({ t: "done", ...stats });
  leaveTempDir(tmp, opts.keep);
  process.exit(0);
}

// ---------------------------------------------------------------- the parent

function replayCommand(o, b, i) {
  const parts = ["node scripts/fuzz/safetensors.mjs", `--seed ${o.seed}`, `--files ${o.files}`];
  if (o.batchSize !== 100) parts.push(`--batch-size ${o.batchSize}`);
  if (o.cliRate !== (o.long ? 0.5 : 0.25)) parts.push(`--cli-rate ${o.cliRate}`);
  parts.push(`--only ${b}`);
  if (i !== null && i !== undefined) parts.push(`--case ${i}`);
  return parts.join(" ");
}

function runBatch(o, batch, keepFailing) {
  const args = [SELF, "--child", "--fd", "3", "--seed", String(o.seed), "--batch", String(batch.b), "--files", String(batch.files), "--cli-rate", String(o.cliRate)];
  if (o.case !== null) args.push("--case", String(o.case));
  const res = { batch, cases: [], open: null, done: null, failing: [] };
  const onMessage = (m, dir) => {
    if (m.t === "s") res.open = m;
    else if (m.t === "e") {
      const s = res.open;
      res.open = null;
      if (m.problems.length) {
        const saved = keepFailing(dir, s.path, batch.b, m.i);
        res.failing.push({ batch: batch.b, i: m.i, notes: s.notes, size: s.size, problems: m.problems, file: saved, replay: replayCommand(o, batch.b, m.i) });
      }
      res.cases.push(m);
    } else if (m.t === "done") res.done = m;
  };
  const onClose = (dir) => {
    if (res.open) res.crashFile = keepFailing(dir, res.open.path, batch.b, res.open.i);
  };
  return runChild({ args, res, prefix: "node-peft-st-fuzz-", timeout: o.timeout, keep: o.keep, onMessage, onClose });
}

async function parent(o) {
  let batches = evenShares(o.files, Math.max(1, Math.ceil(o.files / o.batchSize))).map((files, b) => ({ b, files }));
  if (o.only !== null) batches = batches.filter((x) => x.b === o.only);
  const log = reportLog(o.json);
  let failDir = null;
  const keepFailing = (dir, file, b, i) => {
    try {
      failDir ??= mkdtempSync(join(tmpdir(), `node-peft-st-failures-${o.seed}-`));
      const to = join(failDir, `batch${b}-case${i}.safetensors`);
      copyFileSync(join(dir, file), to);
      return to;
    } catch {
      return null;
    }
  };
  const t0 = Date.now();
  const results = await runBatches(batches, o.jobs, (batch) => runBatch(o, batch, keepFailing), { log, every: batches.length > 10 && !o.json ? 5 : 0 });
  const stats = { files: 0, accepted: 0, rejected: 0, cli: 0, codes: {} };
  const failures = [];
  const crashes = [];
  for (const r of results) {
    if (r.done) {
      for (const k of ["files", "accepted", "rejected", "cli"]) stats[k] += r.done[k];
      for (const [c, x] of Object.entries(r.done.codes)) stats.codes[c] = (stats.codes[c] ?? 0) + x;
    }
    failures.push(...r.failing);
    if (r.signal || r.code !== 0 || !r.done) {
      crashes.push({
        batch: r.batch.b,
        kind: exitKind(r),
        case: r.open?.i ?? null,
        notes: r.open?.notes ?? [],
        file: r.crashFile ?? null,
        stderr: stderrTail(r.stderr),
        replay: replayCommand(o, r.batch.b, r.open?.i),
      });
    }
  }
  const seconds = (Date.now() - t0) / 1000;
  log(`safetensors fuzzer: seed ${o.seed}, ${stats.files} files in ${results.length} children, ${stats.cli} through the CLI, ${seconds.toFixed(1)} s`);
  log(`  ${stats.accepted} accepted by all readers, ${stats.rejected} refused; codes: ${Object.entries(stats.codes).map(([c, x]) => `${c} ${x}`).join(", ") || "none"}`);
  for (const c of crashes) {
    log(`\nCRASH in batch ${c.batch}: ${c.kind}`);
    log(`  during case ${c.case}: ${c.notes.join("; ")}`);
    if (c.file) log(`  file: ${c.file}`);
    log(`  replay: ${c.replay}`);
    logStderr(log, c.stderr);
  }
  if (failures.length) log(`\nFAILURES (${failures.length} files):`);
  for (const f of failures.slice(0, 60)) {
    log(`\n  batch ${f.batch} case ${f.i} (${f.size} bytes): ${f.notes.join("; ")}`);
    for (const p of f.problems) log(`    ${p}`);
    if (f.file) log(`    file: ${f.file}`);
    log(`    replay: ${f.replay}`);
  }
  if (failures.length > 60) log(`\n  ... ${failures.length - 60} more`);
  const ok = crashes.length === 0 && failures.length === 0;
  log(ok ? "\nPASS" : `\nFAIL: ${crashes.length} crashed/hung children, ${failures.length} failing files${failDir ? `; files in ${failDir}` : ""}`);
  if (o.json) process.stdout.write(JSON.stringify({ seed: o.seed, seconds, ...stats, children: results.length, crashes, failures }) + "\n");
  process.exitCode = ok ? 0 : 1;
}

await main(parseOptions(process.argv.slice(2)), child, parent);
