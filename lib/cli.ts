#!/usr/bin/env node
// The node-peft command: inspect checkpoints and adapter directories, merge a LoRA adapter into a base
// checkpoint. Every failure is one line on stderr, never a stack trace: exit code 1 (2 for a malformed
// command line). Files may hold hundreds of thousands of tensors, so nothing here spreads a list into a
// call's arguments.
import { parseArgs } from "node:util";
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import cliProgress from "cli-progress";
import { openCheckpoint } from "./io/checkpoint-source.js";
import { readAdapterConfig, WEIGHTS_NAME } from "./io/peft-checkpoint.js";
import { mergeCheckpoint } from "./io/merge-checkpoint.js";
import { openSafetensors } from "./io/index.js";
import { PeftError } from "./errors.js";

const HELP = `Usage: node-peft <command> [options]

Commands:
  inspect <file|dir>     Tensors (dtype, shape, size) and metadata of a .safetensors file, a sharded
                         model.safetensors.index.json, or a PEFT adapter directory (with its config).
  merge                  Merge a LoRA adapter into a base checkpoint, tensor by tensor:
      --base <file|index.json>   the base model (safetensors, or a sharded index)
      --adapter <dir>            a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)
      --out <file>               the merged safetensors file to write
      --dtype f32|f16|bf16       output dtype of floating tensors (default: as in the base)
      --force                    overwrite --out if it exists

Options:
  -h, --help             this help

Exit codes: 0 success, 1 an error in the files or options given, 2 a malformed command line.`;

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

function printTensors(path: string, out: (s: string) => void): void {
  using f = openCheckpoint(path);
  const rows = f.keys().map((k) => {
    const { dtype, shape } = f.info(k);
    const n = shape.reduce((a, b) => a * b, 1);
    return { k, dtype, shape: `[${shape.join(", ")}]`, bytes: n * (ITEM.get(dtype) ?? 1) };
  });
  let w = 4, ws = 5;
  for (const r of rows) {
    w = Math.max(w, r.k.length);
    ws = Math.max(ws, r.shape.length);
  }
  out(`${"name".padEnd(w)}  dtype  ${"shape".padEnd(ws)}  size`);
  for (const r of rows) out(`${r.k.padEnd(w)}  ${r.dtype.padEnd(5)}  ${r.shape.padEnd(ws)}  ${human(r.bytes)}`);
  const total = rows.reduce((a, r) => a + r.bytes, 0);
  out(`${rows.length} tensors, ${human(total)}`);
  if (!path.endsWith(".json")) {
    using s = openSafetensors(path);
    const meta = s.metadata();
    out(`metadata: ${Object.keys(meta).length ? Object.entries(meta).map(([k, v]) => `${k}=${v}`).join(", ") : "(none)"}`);
  }
}

async function inspect(target: string, out: (s: string) => void): Promise<void> {
  if (!existsSync(target)) throw new UsageError(`${target}: no such file or directory`);
  if (statSync(target).isDirectory()) {
    const config = await readAdapterConfig(target);
    const c = config.toJSON() as Record<string, unknown>;
    out(`adapter: ${target}`);
    out(`  peft_type       ${c.peft_type}`);
    for (const k of ["task_type", "r", "lora_alpha", "lora_dropout", "use_rslora", "bias", "fan_in_fan_out", "target_modules", "modules_to_save", "feedforward_modules", "base_model_name_or_path"])
      if (Object.hasOwn(c, k) && c[k] !== null && c[k] !== undefined) out(`  ${k.padEnd(15)} ${JSON.stringify(c[k])}`);
    const weights = join(target, WEIGHTS_NAME);
    if (!existsSync(weights)) throw new PeftError("ERR_CHECKPOINT", `${target}: no ${WEIGHTS_NAME}`);
    out("");
    printTensors(weights, out);
    return;
  }
  printTensors(target, out);
}

async function merge(values: Record<string, string | boolean | undefined>): Promise<void> {
  for (const k of ["base", "adapter", "out"]) if (typeof values[k] !== "string") throw new UsageError(`merge: --${k} is required`);
  const dtype = values.dtype as string | undefined;
  if (dtype !== undefined && !["f32", "f16", "bf16"].includes(dtype)) throw new UsageError(`merge: --dtype must be f32, f16 or bf16, got ${dtype}`);
  const bar = new cliProgress.SingleBar({ format: "merging [{bar}] {value}/{total} tensors | {name}", stream: process.stderr, hideCursor: true }, cliProgress.Presets.shades_classic);
  let started = false;
  try {
    const summary = await mergeCheckpoint({
      base: values.base as string,
      adapter: values.adapter as string,
      out: values.out as string,
      dtype: dtype as "f32" | "f16" | "bf16" | undefined,
      force: values.force === true,
      onProgress: (done, total, name) => {
        if (!started) bar.start(total, 0, { name }), (started = true);
        bar.update(done, { name });
      },
    });
    if (started) bar.stop();
    console.log(`wrote ${values.out}: ${summary.tensors} tensors, ${summary.merged.length} merged, ${summary.replaced.length} replaced from the adapter`);
  } catch (e) {
    if (started) bar.stop();
    throw e;
  }
}

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        help: { type: "boolean", short: "h" },
        base: { type: "string" },
        adapter: { type: "string" },
        out: { type: "string" },
        dtype: { type: "string" },
        force: { type: "boolean" },
      },
    });
  } catch (e) {
    console.error(`${errorLine(e)} (see \`node-peft --help\`)`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [cmd, ...rest] = positionals;
  if (values.help || !cmd) {
    (values.help ? console.log : console.error)(HELP);
    return values.help ? 0 : 2;
  }
  const stdout = new LineWriter();
  try {
    if (cmd === "inspect") {
      if (rest.length !== 1) throw new UsageError("inspect: expected one file or directory");
      try {
        await inspect(rest[0], (s) => stdout.line(s));
      } finally {
        stdout.flush();
      }
    } else if (cmd === "merge") {
      if (rest.length) throw new UsageError(`merge: unexpected argument ${rest[0]}`);
      await merge(values);
    } else {
      console.error(`node-peft: unknown command ${JSON.stringify(cmd)} (see \`node-peft --help\`)`);
      return 2;
    }
    return 0;
  } catch (e) {
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
