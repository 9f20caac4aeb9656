// The body of a generation worker thread: rebuilds the model it is sent over the shared weight storage,
// decodes on this thread and posts each token back; an "abort" message stops it between tokens. It stays
// up for the next generation.
import { parentPort } from "node:worker_threads";
import { adoptModel, type SharedModel } from "./shared-model.js";
import { streamTokens, type GenerateOptions } from "./generate.js";

export interface WorkerStart {
  type: "start";
  desc: SharedModel;
  prompt: number[];
  // with the Philox (seed, stream) the calling thread took for the sampling draws
  options: Omit<GenerateOptions, "signal"> & { rng: { seed: number; stream: number } };
}

export type WorkerReply =
  | { type: "token"; id: number }
  | { type: "done"; result: { tokens: number[]; finishReason: "stop" | "length" } }
  | { type: "error"; error: { name: string; message: string; code?: string } };

const port = parentPort;
if (port) {
  // One generation at a time; the thread then waits for the next (the calling side keeps idle workers).
  let ac: AbortController | null = null;
  port.on("message", async (msg: WorkerStart | { type: "abort" }) => {
    if (msg.type === "abort") return ac?.abort();
    ac = new AbortController();
    let model: { dispose(): void } | null = null;
    try {
      const adopted = adoptModel(msg.desc);
      model = adopted.model;
      const it = streamTokens(adopted.model, msg.prompt, { ...msg.options, signal: ac.signal, offThread: false });
      for (;;) {
        const r = await it.next();
        if (r.done) {
          port.postMessage({ type: "done", result: r.value } satisfies WorkerReply);
          break;
        }
        port.postMessage({ type: "token", id: r.value } satisfies WorkerReply);
      }
    } catch (e) {
      const err = e as Error & { code?: string };
      port.postMessage({ type: "error", error: { name: err.name, message: err.message, code: err.code } } satisfies WorkerReply);
    } finally {
      // Only this thread's handles go: the storage stays with the model that shared it.
      model?.dispose();
      ac = null;
    }
  });
}
