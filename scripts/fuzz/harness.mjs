// What the fuzzers share around their own cases: the command line's plumbing, the parent that runs seeded
// batches in child processes (each in a fresh temp directory, reporting JSON lines on fd 3, killed after a
// timeout), the child's side of that channel, and the pieces of the report.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const DIST = join(ROOT, "dist", "index.js");

// ---------------------------------------------------------------- command line

/** A usage(msg) that prints msg (if any) and the usage line, then exits: 2 after a message, else 0. */
export function usageOf(name, line) {
  return (msg) => {
    if (msg) process.stderr.write(`${name}: ${msg}\n`);
    process.stderr.write(`${line}\n`);
    process.exit(msg ? 2 : 0);
  };
}

/** num(i): argv[i] as a finite number, or usage() naming the option argv[i - 1]. */
export function numberArgs(argv, usage) {
  return (i) => {
    const v = Number(argv[i]);
    if (argv[i] === undefined || !Number.isFinite(v)) usage(`${argv[i - 1]} needs a number`);
    return v;
  };
}

/** Runs child(opts) in a child process (--child), else parent(opts); a closed pipe (`| head`) is no error. */
export async function main(opts, child, parent) {
  for (const stream of [process.stdout, process.stderr]) stream.on("error", (e) => {
    if (e.code !== "EPIPE") throw e;
  });
  if (opts.child) await child(opts);
  else await parent(opts);
}

// ---------------------------------------------------------------- the child

/** A child started by hand (not by the parent) makes and enters a temp directory of its own. */
export function enterTempDir(prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  process.chdir(dir);
  return dir;
}

/** Leaves and removes that directory (nothing for null); with keep, says where it stays instead. */
export function leaveTempDir(dir, keep = false) {
  if (!dir) return;
  if (keep) {
    process.stderr.write(`files kept in ${dir}\n`);
    return;
  }
  process.chdir(tmpdir());
  rmSync(dir, { recursive: true, force: true });
}

/** emit(obj): one JSON line to fd, written in full and synchronously (so it is out before a crash). */
export function jsonLines(fd) {
  return (obj) => {
    const line = JSON.stringify(obj) + "\n";
    for (let off = 0; off < line.length; ) {
      try {
        off += writeSync(fd, line.slice(off));
      } catch (e) {
        if (e.code !== "EAGAIN") throw e;
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
      }
    }
  };
}

// ---------------------------------------------------------------- the parent

/** `total` split into `parts` counts that differ by at most one, the larger first. */
export function evenShares(total, parts) {
  return Array.from({ length: parts }, (_, b) => Math.floor(total / parts) + (b < total % parts ? 1 : 0));
}

/**
 * Runs `node ...args` with its cwd in a fresh temp directory (prefix), passing each JSON line it writes to
 * fd 3 to onMessage(m, dir). Resolves with res, given code, signal, timedOut (killed after `timeout` seconds
 * without a message: a hang is a call that makes no progress, so a slow but moving child on a loaded machine is not one),
 * the tails of stdout and stderr (stderr goes to this process's with inheritStderr) and, with keep, dir
 * (else the directory is removed once onClose(dir) has run).
 */
export function runChild({ args, res, prefix, timeout, keep = false, env = process.env, inheritStderr = false, onMessage, onClose = () => {} }) {
  return new Promise((done) => {
    const dir = mkdtempSync(join(tmpdir(), prefix));
    const cp = spawn(process.execPath, args, { cwd: dir, env, stdio: ["ignore", "pipe", inheritStderr ? "inherit" : "pipe", "pipe"] });
    Object.assign(res, { stderr: "", stdout: "", timedOut: false });
    let buf = "";
    let timer;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        res.timedOut = true;
        cp.kill("SIGKILL");
      }, timeout * 1000);
    };
    arm();
    cp.stdio[3].setEncoding("utf8");
    cp.stdio[3].on("data", (d) => {
      arm();
      buf += d;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let m;
        try {
          m = JSON.parse(line);
        } catch {
          continue;
        }
        onMessage(m, dir);
      }
    });
    cp.stdout.setEncoding("utf8");
    cp.stdout.on("data", (d) => {
      res.stdout = (res.stdout + d).slice(-4000);
    });
    if (cp.stderr) {
      cp.stderr.setEncoding("utf8");
      cp.stderr.on("data", (d) => {
        res.stderr = (res.stderr + d).slice(-6000);
      });
    }
    cp.on("close", (code, signal) => {
      clearTimeout(timer);
      res.code = code;
      res.signal = signal;
      onClose(dir);
      if (!keep) rmSync(dir, { recursive: true, force: true });
      else res.dir = dir;
      done(res);
    });
  });
}

/**
 * Runs run(batch) for every batch, `jobs` at a time, and returns the results in batch order (by .batch.b).
 * With every > 0, logs progress after each `every` batches.
 */
export async function runBatches(batches, jobs, run, { log, every = 0 } = {}) {
  const t0 = Date.now();
  const results = [];
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(jobs, batches.length) }, async () => {
    while (next < batches.length) {
      results.push(await run(batches[next++]));
      if (every > 0 && results.length % every === 0) log(`  ${results.length}/${batches.length} batches, ${Math.round((Date.now() - t0) / 1000)} s`);
    }
  }));
  return results.sort((a, b) => a.batch.b - b.batch.b);
}

// The package failing to load (dist/ or the addon rebuilt while the fuzzer runs) is no finding of it.
const LOAD_FAILURE = /ERR_MODULE_NOT_FOUND|does not provide an export named|process\.dlopen|Cannot find module|ERR_DLOPEN_FAILED/;
export const LOAD_FAILED = "the package failed to load (dist/ or the addon changed during the run?)";

/** Whether a process's stderr says the package failed to load. */
export function failedToLoad(stderr) {
  return LOAD_FAILURE.test(stderr);
}

/** Why a child ended before its "done" line; `early` names an exit with code 0 (else "exit code 0"). */
export function exitKind(r, early = null) {
  if (r.timedOut) return "hang (child killed after timeout)";
  if (r.signal) return `signal ${r.signal}`;
  if (failedToLoad(r.stderr)) return LOAD_FAILED;
  if (r.code === 0 && early) return early;
  return `exit code ${r.code}`;
}

// ---------------------------------------------------------------- the report

/** log(line): to stdout, or to stderr when stdout carries the JSON summary. */
export function reportLog(json) {
  return (s) => process[json ? "stderr" : "stdout"].write(s + "\n");
}

/** The last lines of a child's stderr, as a crash report keeps them. */
export function stderrTail(stderr) {
  return stderr.split("\n").slice(-15).join("\n");
}

/** Logs a crash's stderr tail, indented, if it has any. */
export function logStderr(log, stderr) {
  if (stderr.trim()) log(`  stderr:\n${stderr.split("\n").map((l) => `    ${l}`).join("\n")}`);
}
