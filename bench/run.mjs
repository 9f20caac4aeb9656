// The bench runner: `npm run bench [-- --filter <text|/regex/> ...] [--reps N]`, after `npx tsc`.
// Every other bench/*.mjs that exports `cases` is a kernel family; each case is measured against its
// baselines in the same run: a warm-up, then at least `reps` interleaved repeats (ours and each baseline
// in turn, the order alternating), medians, and ratios of medians. Prints a table and writes
// bench/results/latest.json (one record per case) and bench/results/latest.md.
//
// A case: {
//   name, shape?, dtype?, isa?, kernel?,     // what the report shows
//   flops? | bytes?,                         // work per run: the rate column is GFLOP/s or GB/s
//   setup?(), teardown?(),                   // once, untimed
//   before?(),                               // before each timed run of ours (untimed), e.g. evict caches
//   run(),                                   // the measured work (may return a promise)
//   measure?(),                              // instead of run: returns a rate itself (the ceilings)
//   baseline?(),                             // the same work done another way, timed like run
//   baselines?: [{ name, run?, before?, rate? }],  // run: timed (ratio = its time / ours);
//                                            // rate(): a rate in the case's unit (ratio = ours / it)
//   maxReps?,                                // at most this many repeats (cases of whole seconds)
//   target?: { baseline, min, note?, applies? },  // met when the ratio against `baseline` is >= min
//                                            // (applies: false reports it as n/a on this machine)
// }
import { mkdirSync, readdirSync, readFileSync, writeFileSync, existsSync } from "node:fs";
import { cpus } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
if (!existsSync(join(here, "..", "dist", "index.js"))) {
  console.error("bench: dist/ is missing; run `npx tsc -p tsconfig.json` (and `npm run build` for the addon) first");
  process.exit(1);
}
const { backend } = await import("../dist/index.js");

function parseArgs(argv) {
  const o = { filters: [], reps: 7, list: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--filter" || a === "-f") o.filters.push(argv[++i] ?? "");
    else if (a.startsWith("--filter=")) o.filters.push(a.slice(9));
    else if (a === "--reps") o.reps = Math.max(5, Number(argv[++i]) || 5);
    else if (a === "--list") o.list = true;
    else if (a === "--help" || a === "-h") {
      console.log("usage: npm run bench -- [--filter <text|/regex/>]... [--reps N>=5] [--list]");
      process.exit(0);
    } else o.filters.push(a);
  }
  return o;
}

const matcher = (f) => (f.startsWith("/") && f.lastIndexOf("/") > 0 ? new RegExp(f.slice(1, f.lastIndexOf("/")), f.slice(f.lastIndexOf("/") + 1)) : null);
function selected(filters, family, c) {
  if (!filters.length) return true;
  const text = `${family} ${c.name}`;
  return filters.some((f) => (matcher(f) ? matcher(f).test(text) : text.toLowerCase().includes(f.toLowerCase())));
}

async function timeIt(fn) {
  const t0 = process.hrtime.bigint();
  const r = fn();
  if (r && typeof r.then === "function") await r;
  return Number(process.hrtime.bigint() - t0) / 1e6;
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

// Ours and each baseline as measurable items; `value` is a time (ms) or a rate.
function itemsOf(c) {
  const items = [{ name: "ours", kind: c.measure ? "rate" : "time", go: c.measure ?? c.run, before: c.before }];
  if (c.baseline) items.push({ name: "baseline", kind: "time", go: c.baseline, before: c.before });
  for (const b of c.baselines ?? []) items.push({ name: b.name, kind: b.rate ? "rate" : "time", go: b.rate ?? b.run, before: b.before });
  return items;
}

async function measureCase(c, reps) {
  const items = itemsOf(c);
  const values = items.map(() => []);
  const sample = async (it) => {
    if (it.before) await it.before();
    if (it.kind === "rate") return await it.go();
    return timeIt(it.go);
  };
  // Warm-up: every item once (packs weights, faults pages in, wakes the pool), ours until 100 ms passed.
  let warm = 0, first = 0;
  for (const it of items) await sample(it);
  while (warm < 100 && items[0].kind === "time") {
    first = await sample(items[0]);
    warm += first;
    if (first > 100) break;
  }
  // Short runs get more repeats so each median covers some time.
  // A case of whole seconds (a model's training step) may cap its repeats (maxReps) to keep the run short.
  const n = Math.min(c.maxReps ?? Infinity, items[0].kind === "time" ? Math.min(41, Math.max(reps, Math.ceil(200 / Math.max(first, 0.01)))) | 1 : reps);
  for (let r = 0; r < n; r++) {
    const order = items.map((_, i) => i);
    if (r % 2) order.reverse();
    for (const i of order) values[i].push(await sample(items[i]));
  }
  return { items, values, repeats: n };
}

function recordOf(family, c, m) {
  const unit = c.flops ? "GFLOP/s" : c.bytes ? "GB/s" : c.unit ?? "";
  const work = c.flops ?? c.bytes;
  const med = m.values.map(median);
  const ours = m.items[0].kind === "rate" ? { ms: null, rate: med[0] } : { ms: med[0], rate: work ? work / med[0] / 1e6 : null };
  const baselines = m.items.slice(1).map((it, j) => {
    const v = med[j + 1];
    const ratio = it.kind === "rate" ? (ours.rate != null ? ours.rate / v : null) : v / ours.ms;
    return it.kind === "rate" ? { name: it.name, unit, rate: v, ratio } : { name: it.name, ms: v, rate: work ? work / v / 1e6 : null, ratio };
  });
  const rec = {
    family, name: c.name, shape: c.shape ?? null, dtype: c.dtype ?? null, isa: c.isa ?? backend.isa, kernel: c.kernel ?? null,
    threads: backend.threads, repeats: m.repeats, ms: ours.ms, unit, rate: ours.rate, baselines,
  };
  if (unit === "GFLOP/s") rec.gflops = ours.rate;
  if (unit === "GB/s") rec.gbs = ours.rate;
  if (c.target) {
    const b = baselines.find((x) => x.name === c.target.baseline);
    const met = c.target.applies === false || !b ? null : b.ratio >= c.target.min;
    rec.target = { baseline: c.target.baseline, min: c.target.min, ratio: b?.ratio ?? null, met, note: c.target.note ?? null };
  }
  return rec;
}

const fmt = (v, d = 1) => (v == null || Number.isNaN(v) ? "" : Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(d));
function rows(records) {
  return records.map((r) => [
    r.name,
    Array.isArray(r.shape) ? r.shape.join("x") : r.shape ?? "",
    r.dtype ?? "",
    r.kernel ?? r.isa,
    fmt(r.ms, 2),
    r.rate != null ? `${fmt(r.rate)} ${r.unit}` : "",
    r.baselines.map((b) => `${b.name}: ${b.rate != null ? fmt(b.rate) : fmt(b.ms, 2) + " ms"} → ${fmt(b.ratio, 2)}x`).join("; "),
    r.target ? `${r.target.met == null ? "n/a" : r.target.met ? "met" : "MISSED"} (≥${+r.target.min.toPrecision(3)}x ${r.target.baseline}${r.target.note ? "; " + r.target.note : ""})` : "",
  ]);
}
const HEAD = ["case", "shape", "dtype", "kernel", "ms", "rate", "baselines (median → ratio)", "target"];

function table(records) {
  const all = [HEAD, ...rows(records)];
  const w = HEAD.map((_, i) => Math.min(60, Math.max(...all.map((r) => r[i].length))));
  return all.map((r) => r.map((x, i) => (i === 6 ? x : x.padEnd(w[i]))).join("  ")).join("\n");
}

function machine() {
  let model = cpus()[0]?.model ?? "unknown";
  try {
    model = /model name\s*:\s*(.*)/.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? model;
  } catch {}
  return { cpu: model, logicalCpus: cpus().length, threads: backend.threads, isa: backend.isa, features: backend.features, caches: backend.caches, node: process.version };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const files = readdirSync(here).filter((f) => f.endsWith(".mjs") && f !== "run.mjs").sort();
  const families = [];
  for (const f of files) {
    const mod = await import(pathToFileURL(join(here, f)).href);
    if (Array.isArray(mod.cases)) families.push({ family: f.replace(/\.mjs$/, ""), cases: mod.cases });
  }
  const todo = families.flatMap(({ family, cases }) => cases.filter((c) => selected(opts.filters, family, c)).map((c) => ({ family, c })));
  if (opts.list || !todo.length) {
    for (const { family, c } of todo.length ? todo : families.flatMap(({ family, cases }) => cases.map((c) => ({ family, c })))) console.log(`${family}: ${c.name}`);
    if (!todo.length) console.error("bench: no case matches the filter");
    return;
  }
  const m = machine();
  console.log(`${m.cpu}; ${m.threads} threads, ${m.isa} (${m.features.join(" ")}); L1d ${m.caches.l1d >> 10} KiB, L2 ${m.caches.l2 >> 10} KiB, L3 ${m.caches.l3 >> 20} MiB`);
  const records = [];
  for (const { family, c } of todo) {
    try {
      if (c.setup) await c.setup();
      const rec = recordOf(family, c, await measureCase(c, opts.reps));
      records.push(rec);
      console.log(table([rec]).split("\n")[1]);
    } catch (e) {
      console.error(`${family}: ${c.name}: ${e?.stack ?? e}`);
    } finally {
      if (c.teardown) await c.teardown();
    }
  }
  const out = join(here, "results");
  mkdirSync(out, { recursive: true });
  const report = { date: new Date().toISOString(), machine: m, filters: opts.filters, cases: records };
  writeFileSync(join(out, "latest.json"), JSON.stringify(report, null, 2) + "\n");
  const md = [
    `# Bench ${report.date}`,
    "",
    `${m.cpu}, ${m.threads} threads, path ${m.isa}; features ${m.features.join(", ")}; L1d ${m.caches.l1d >> 10} KiB, L2 ${m.caches.l2 >> 10} KiB, L3 ${m.caches.l3 >> 20} MiB; Node ${m.node}.`,
    "Medians of interleaved repeats; a ratio is ours against the baseline measured in the same run (above 1: ours is faster / closer to the ceiling).",
    "",
    `| ${HEAD.join(" | ")} |`,
    `| ${HEAD.map(() => "---").join(" | ")} |`,
    ...rows(records).map((r) => `| ${r.map((x) => x.replace(/\|/g, "\\|")).join(" | ")} |`),
    "",
  ].join("\n");
  writeFileSync(join(out, "latest.md"), md);
  console.log(`\n${table(records)}\n\nwrote ${join("bench", "results", "latest.json")} and latest.md`);
}

await main();
