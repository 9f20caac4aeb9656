#!/usr/bin/env node
// The node-peft command: inspect checkpoints and adapter directories, merge a LoRA adapter into a base
// checkpoint. Every failure is one line on stderr, never a stack trace. Exit codes: 0 success, 1 a problem
// with the files or option values given, 2 a malformed command line (unknown command or option, a missing
// argument or required option, a value outside the allowed set). Files may hold hundreds of thousands of
// tensors, so nothing here spreads a list into a call's arguments.
import { createRequire } from "node:module";
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { Command, CommanderError, InvalidArgumentError } from "commander";
import cliProgress from "cli-progress";
import { PeftError } from "./errors.js";

/**
 * The library's readers and the merge (and with them the native addon) load when a command runs, so
 * `--version`, `--help` and usage errors answer at Node's start-up speed.
 */
async function loadIo() {
  const [source, peft, merging, io, quant4] = await Promise.all([
    import("./io/checkpoint-source.js"), import("./io/peft-checkpoint.js"), import("./io/merge-checkpoint.js"), import("./io/index.js"), import("./nn/quant-4bit.js"),
  ]);
  return { openCheckpoint: source.openCheckpoint, readAdapterConfig: peft.readAdapterConfig, WEIGHTS_NAME: peft.WEIGHTS_NAME,
           mergeCheckpoint: merging.mergeCheckpoint, openSafetensors: io.openSafetensors, unpackQuantState: quant4.unpackQuantState };
}
type Io = Awaited<ReturnType<typeof loadIo>>;

const { version } = createRequire(import.meta.url)("../package.json") as { version: string };

class UsageError extends Error {}

function human(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = bytes, u = 0;
  while (v >= 1024 && u < units.length - 1) (v /= 1024), u++;
  return `${u ? v.toFixed(1) : v} ${units[u]}`;
}

const ITEM = new Map<string, number>([
  ["F64", 8], ["F32", 4], ["F16", 2], ["BF16", 2], ["I64", 8], ["I32", 4], ["I16", 2], ["I8", 1],
  ["U64", 8], ["U32", 4], ["U16", 2], ["U8", 1], ["BOOL", 1],
]);

interface TensorRow {
  name: string;
  dtype: string;
  shape: number[];
  bytes: number;
  /** An LLM.int8 weight (I8 with a sibling SCB, as bitsandbytes saves it): its row scales' tensor and range. */
  scales?: { name: string; min: number; max: number };
  /**
   * A bitsandbytes 4-bit weight (U8 codes with a sibling `.quant_state.bitsandbytes__<type>`): what its quant
   * state says (the logical shape and dtype), or why that state cannot be read.
   */
  fourBit?: { quantState: string; quantType: string; shape: number[]; dtype: string; blocksize: number; doubleQuantised: boolean } | { quantState: string; malformed: string };
}

interface FileReport {
  path: string;
  tensors: TensorRow[];
  totalBytes: number;
  /** The safetensors header's __metadata__ (null for a sharded index). */
  metadata: Record<string, string> | null;
}

function readFile(io: Io, path: string): FileReport {
  const { openCheckpoint, openSafetensors } = io;
  using f = openCheckpoint(path);
  const tensors: TensorRow[] = [];
  let totalBytes = 0;
  for (const name of f.keys()) {
    const { dtype, shape } = f.info(name);
    const bytes = shape.reduce((a, b) => a * b, 1) * (ITEM.get(dtype) ?? 1);
    totalBytes += bytes;
    tensors.push({ name, dtype, shape: [...shape], bytes });
  }
  // bitsandbytes' int8 layers: `<path>.weight` I8 beside `<path>.SCB` (F32, one absmax per row).
  const names = new Set(f.keys());
  for (const t of tensors) {
    if (t.dtype !== "I8" || !t.name.endsWith(".weight") || t.shape.length !== 2) continue;
    const scb = t.name.slice(0, -"weight".length) + "SCB";
    if (!names.has(scb) || f.info(scb).dtype !== "F32") continue;
    const s = f.get(scb);
    try {
      let min = Infinity, max = -Infinity;
      for (const v of s.toFloat64Array()) (min = Math.min(min, v)), (max = Math.max(max, v));
      t.scales = { name: scb, min, max };
    } finally {
      s.dispose();
    }
  }
  // bitsandbytes' 4-bit layers: `<path>.weight` U8 beside `<path>.weight.quant_state.bitsandbytes__<nf4|fp4>` (JSON bytes).
  for (const t of tensors) {
    if (t.dtype !== "U8" || !t.name.endsWith(".weight")) continue;
    const type = ["nf4", "fp4"].find((q) => names.has(`${t.name}.quant_state.bitsandbytes__${q}`));
    if (type === undefined) continue;
    const quantState = `${t.name}.quant_state.bitsandbytes__${type}`;
    const s = f.get(quantState);
    try {
      const info = io.unpackQuantState(s, quantState);
      t.fourBit = info.quantType !== type
        ? { quantState, malformed: `${quantState}: holds quant_type ${info.quantType}, its key says ${type}` }
        : { quantState, quantType: info.quantType, shape: info.shape, dtype: info.dtype, blocksize: info.blocksize, doubleQuantised: info.nested !== null };
    } catch (e) {
      if (!(e instanceof PeftError)) throw e;
      t.fourBit = { quantState, malformed: e.message };
    } finally {
      s.dispose();
    }
  }
  let metadata: Record<string, string> | null = null;
  if (!path.endsWith(".json")) {
    using s = openSafetensors(path);
    metadata = s.metadata();
  }
  return { path, tensors, totalBytes, metadata };
}

/** A 4-bit weight as what it is: "nf4 (4096, 4096) from bf16, blocksize 64, double-quantised". */
function fourBitText(q: TensorRow["fourBit"]): string {
  if (!q) return "";
  if ("malformed" in q) return `  4-bit weight, malformed quant state: ${q.malformed}`;
  return `  ${q.quantType} (${q.shape.join(", ")}) from ${q.dtype}, blocksize ${q.blocksize}${q.doubleQuantised ? ", double-quantised" : ""}`;
}

function printFile(r: FileReport, out: (s: string) => void): void {
  let w = 4, ws = 5;
  const shapes = r.tensors.map((t) => `[${t.shape.join(", ")}]`);
  for (let i = 0; i < r.tensors.length; i++) {
    w = Math.max(w, r.tensors[i].name.length);
    ws = Math.max(ws, shapes[i].length);
  }
  out(`${"name".padEnd(w)}  dtype  ${"shape".padEnd(ws)}  size`);
  for (let i = 0; i < r.tensors.length; i++) {
    const t = r.tensors[i];
    const int8 = t.scales ? `  int8 rows, scales ${t.scales.name} (absmax ${t.scales.min.toPrecision(4)} .. ${t.scales.max.toPrecision(4)})` : "";
    out(`${t.name.padEnd(w)}  ${t.dtype.padEnd(5)}  ${shapes[i].padEnd(ws)}  ${human(t.bytes)}${int8}${fourBitText(t.fourBit)}`);
  }
  out(`${r.tensors.length} tensors, ${human(r.totalBytes)}`);
  if (r.metadata) {
    const entries = Object.entries(r.metadata);
    out(`metadata: ${entries.length ? entries.map(([k, v]) => `${k}=${v}`).join(", ") : "(none)"}`);
  }
}

const CONFIG_KEYS = ["task_type", "r", "init_r", "target_r", "total_step", "lora_alpha", "lora_dropout", "use_rslora", "bias", "fan_in_fan_out", "target_modules", "modules_to_save", "feedforward_modules", "base_model_name_or_path"];

async function inspect(target: string, json: boolean, out: (s: string) => void): Promise<void> {
  if (!existsSync(target)) throw new UsageError(`${target}: no such file or directory`);
  const io = await loadIo();
  if (!statSync(target).isDirectory()) {
    const r = readFile(io, target);
    if (json) out(JSON.stringify(r));
    else printFile(r, out);
    return;
  }
  const config = (await io.readAdapterConfig(target)).toJSON() as Record<string, unknown>;
  const weights = join(target, io.WEIGHTS_NAME);
  if (!existsSync(weights)) throw new PeftError("ERR_CHECKPOINT", `${target}: no ${io.WEIGHTS_NAME}`);
  const r = readFile(io, weights);
  if (json) {
    out(JSON.stringify({ adapter: target, config, weights: r }));
    return;
  }
  out(`adapter: ${target}`);
  out(`  peft_type       ${config.peft_type}`);
  for (const k of CONFIG_KEYS)
    if (Object.hasOwn(config, k) && config[k] !== null && config[k] !== undefined) out(`  ${k.padEnd(15)} ${JSON.stringify(config[k])}`);
  out("");
  printFile(r, out);
}

interface MergeFlags {
  base: string;
  adapter: string;
  out: string;
  dtype?: "f32" | "f16" | "bf16" | "int8";
  force?: boolean;
}

async function merge(o: MergeFlags): Promise<void> {
  const { mergeCheckpoint } = await loadIo();
  // A bar on stderr when it is a terminal (cli-progress writes nothing otherwise): stdout keeps the summary.
  const bar = new cliProgress.SingleBar({ format: "merging [{bar}] {value}/{total} tensors | {name}", stream: process.stderr, hideCursor: true }, cliProgress.Presets.shades_classic);
  let started = false;
  try {
    const summary = await mergeCheckpoint({
      base: o.base,
      adapter: o.adapter,
      out: o.out,
      dtype: o.dtype,
      force: o.force === true,
      onProgress: (done, total, name) => {
        if (!started) bar.start(total, 0, { name }), (started = true);
        bar.update(done, { name });
      },
    });
    if (started) bar.stop();
    console.log(`wrote ${o.out}: ${summary.tensors} tensors, ${summary.merged.length} merged, ${summary.replaced.length} replaced from the adapter`);
    if (summary.config) console.log(`config: ${summary.config} (the base's config.json with the int8 quantization_config)`);
  } catch (e) {
    if (started) bar.stop();
    throw e;
  }
}

function dtypeArg(v: string): "f32" | "f16" | "bf16" | "int8" {
  if (v !== "f32" && v !== "f16" && v !== "bf16" && v !== "int8") throw new InvalidArgumentError(`--dtype must be f32, f16, bf16 or int8, got ${v}`);
  return v;
}

const EXIT_CODES = "Exit codes: 0 success, 1 a problem with the files or option values, 2 a malformed command line.";

function program(stdout: LineWriter): Command {
  const p = new Command("node-peft")
    .description("Inspect safetensors checkpoints and PEFT adapters; merge a LoRA adapter into a base checkpoint.")
    .usage("<command> [options]")
    .version(version, "-V, --version", "print the version")
    .helpOption("-h, --help", "show help (also: node-peft <command> --help)")
    .addHelpText("after", `\n${EXIT_CODES}`)
    .exitOverride()
    .configureOutput({
      writeOut: (s) => process.stdout.write(s),
      writeErr: (s) => process.stderr.write(s),
      // One line: commander's message without its "error: " prefix.
      outputError: (s, write) => write(`node-peft: ${s.replace(/^error: /, "").trim()} (see \`node-peft --help\`)\n`),
    });
  p.command("inspect")
    .description("tensors (dtype, shape, size) and metadata of a .safetensors file, a sharded model.safetensors.index.json, or a PEFT adapter directory (with its config)")
    .argument("<path>", "a .safetensors file, a model.safetensors.index.json, or an adapter directory")
    .option("--json", "one JSON object on stdout instead of the table")
    .addHelpText("after", `\n${EXIT_CODES}`)
    .action(async (path: string, o: { json?: boolean }) => {
      try {
        await inspect(path, o.json === true, (s) => stdout.line(s));
      } finally {
        stdout.flush();
      }
    });
  p.command("merge")
    .description("merge a LoRA adapter into a base checkpoint, tensor by tensor (memory bounded by the largest tensor); a progress bar on stderr")
    .requiredOption("--base <file>", "the base model: a .safetensors file or a model.safetensors.index.json")
    .requiredOption("--adapter <dir>", "a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)")
    .requiredOption("--out <file>", "the merged .safetensors file to write")
    .option("--dtype <dtype>", "output dtype of floating tensors: f32, f16, bf16, or int8 (linear weights quantised in bitsandbytes' layout: weight i8 + SCB + weight_format; the head, embeddings and norms kept) (default: as in the base; an int8 base stays int8)", dtypeArg)
    .option("--force", "overwrite --out if it exists (and the config.json an int8 output writes beside it, from the base's directory)")
    .addHelpText("after", `\n${EXIT_CODES}`)
    .action((o: MergeFlags) => merge(o));
  return p;
}

export async function main(argv: string[]): Promise<number> {
  const stdout = new LineWriter();
  const p = program(stdout);
  for (const c of p.commands)
    c.exitOverride().configureOutput({
      ...p.configureOutput(),
      outputError: (s, write) => write(`node-peft ${c.name()}: ${s.replace(/^error: /, "").trim()} (see \`node-peft ${c.name()} --help\`)\n`),
    });
  if (argv.length === 0) {
    process.stderr.write(p.helpInformation());
    return 2;
  }
  try {
    await p.parseAsync(argv, { from: "user" });
    return 0;
  } catch (e) {
    // commander has printed its own message (help and --version exit 0, every usage mistake 2).
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    console.error(errorLine(e));
    return 1;
  }
}

/** Lines to stdout in batches (one write per thousand lines rather than one per line). */
class LineWriter {
  #lines: string[] = [];
  line(s: string): void {
    this.#lines.push(s);
    if (this.#lines.length >= 1000) this.flush();
  }
  flush(): void {
    if (this.#lines.length === 0) return;
    const text = this.#lines.join("\n") + "\n";
    this.#lines = [];
    process.stdout.write(text);
  }
}

/**
 * One line for any error: the message of the errors this command expects (usage, PeftError, ERR_* codes,
 * file-system errors); anything else is an unexpected error, shown with its type and code, still without
 * a stack trace.
 */
export function errorLine(e: unknown): string {
  const err = e instanceof Error ? e : null;
  const code = (e as { code?: unknown } | null)?.code;
  const message = (err ? String(err.message) : printable(e)).replace(/\s*[\r\n]+\s*/g, " ").trim() || "(no message)";
  const expected =
    e instanceof UsageError || e instanceof PeftError || (typeof code === "string" && code.startsWith("ERR_")) ||
    typeof (e as NodeJS.ErrnoException | null)?.syscall === "string";
  if (expected) return `node-peft: ${message}`;
  const kind = err ? err.name || "Error" : typeof e;
  return `node-peft: unexpected error: ${kind}: ${message}${code !== undefined ? ` (code ${String(code)})` : ""}`;
}

function printable(v: unknown): string {
  try {
    return String(v);
  } catch {
    return Object.prototype.toString.call(v);
  }
}

// Run when executed as the command (not when imported by tests).
const invoked = process.argv[1] && /(^|[/\\])(cli\.(js|ts)|node-peft)$/.test(process.argv[1]);
if (invoked) {
  const fail = (e: unknown) => {
    console.error(errorLine(e));
    process.exit(1);
  };
  process.on("uncaughtException", fail);
  process.on("unhandledRejection", fail);
  // `node-peft inspect big.safetensors | head` closes stdout early: that is not an error.
  process.stdout.on("error", (e: NodeJS.ErrnoException) => (e.code === "EPIPE" ? process.exit(0) : fail(e)));
  main(process.argv.slice(2)).then((code) => (process.exitCode = code), fail);
}
