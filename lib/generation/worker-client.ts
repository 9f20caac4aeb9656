// The calling side of generation on a worker thread: shares the model's parameters (shared-model.ts), hands
// the job to an idle worker (or a new one), relays its tokens as an async iterator and forwards an abort.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { peftError } from "../errors.js";
import { abortError } from "../io/model-loader.js";
import type { LlamaForCausalLM } from "../models/llama.js";
import { releaseShared, shareModel } from "./shared-model.js";
import type { WorkerReply, WorkerStart } from "./worker.js";
import type { CausalLMLike, GenerateResult } from "./generate.js";

/** Workers that finished a generation, waiting for the next one. */
const idleWorkers: Worker[] = [];
const MAX_IDLE_WORKERS = 2;

/** The compiled worker body (dist/ when these are the TypeScript sources, as under the test runner). */
function workerScript(): URL {
  const here = import.meta.url;
  const url = here.endsWith(".ts") ? new URL("../../dist/generation/worker.js", here) : new URL("./worker.js", here);
  if (!existsSync(url))
    throw peftError("ERR_STATE", `generate: the worker body ${fileURLToPath(url)} is missing (build it with \`npx tsc -p tsconfig.json\`, or pass offThread: false)`);
  return url;
}

/** The tokens a worker thread decodes over this model's shared weights, relayed as they come. */
export async function* workerTokens(model: CausalLMLike, lm: LlamaForCausalLM, prompt: number[], options: WorkerStart["options"], signal: AbortSignal | undefined): AsyncGenerator<number, GenerateResult, undefined> {
  const op = "generate";
  const desc = shareModel(model as never, lm);
  const queue: WorkerReply[] = [];
  let wake: (() => void) | null = null;
  const push = (m: WorkerReply) => {
    queue.push(m);
    wake?.();
  };
  let worker: Worker;
  try {
    worker = idleWorkers.pop() ?? new Worker(workerScript());
  } catch (e) {
    releaseShared(desc);
    throw e;
  }
  worker.ref();
  const onError = (e: Error) => push({ type: "error", error: { name: e.name, message: e.message } });
  const onExit = () => push({ type: "error", error: { name: "Error", message: "the generation worker exited" } });
  worker.on("message", push);
  worker.on("error", onError);
  worker.on("exit", onExit);
  const onAbort = () => worker.postMessage({ type: "abort" });
  signal?.addEventListener("abort", onAbort, { once: true });
  let finished = false;
  try {
    worker.postMessage({ type: "start", desc, prompt, options } satisfies WorkerStart);
    for (;;) {
      while (queue.length === 0) await new Promise<void>((r) => (wake = r));
      const m = queue.shift()!;
      // Tokens the worker decoded before it saw the abort are dropped.
      if (signal?.aborted) throw abortError(signal, op);
      if (m.type === "token") yield m.id;
      else if (m.type === "done") {
        finished = true;
        return m.result;
      } else if (m.error.name === "AbortError" && signal) throw abortError(signal, op);
      else throw m.error.code?.startsWith("ERR_") ? peftError(m.error.code as never, m.error.message) : new Error(`${op}: ${m.error.message}`);
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
    worker.off("message", push);
    worker.off("error", onError);
    worker.off("exit", onExit);
    if (finished && idleWorkers.length < MAX_IDLE_WORKERS) {
      // Done and idle: kept for the next generation (loading the library on a new thread takes ~0.3 s),
      // without keeping the process alive.
      worker.unref();
      idleWorkers.push(worker);
    } else {
      // Stopped early (abort, error, a consumer that left the loop): it may still be decoding.
      await worker.terminate();
    }
    // The worker's handles were dropped (done) or its thread is gone: the ids can go.
    releaseShared(desc);
  }
}

