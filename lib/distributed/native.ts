// Finds and loads node_peft_mpi, the optional MPI module, on first use only: importing the package never
// touches libmpi. It sits next to the main addon's source build (build-cmake/Release/); only a source
// build makes it (CMake builds it where it finds MPI), never the prebuilt binaries.
import { existsSync } from "node:fs";
import { constants } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { nativePath } from "../native.js";

/** What node_peft_mpi exports (native/distributed/addon.cc). */
export interface MpiModule {
  start(timeoutSeconds: number): { rank: number; size: number; threadLevel: string; library: string };
  setTimeout(seconds: number): void;
  /** Queues a collective on the comm thread; returns its ticket. The memory must stay untouched until it is waited for. */
  submit(kind: "allReduce" | "broadcast" | "barrier" | "allGather", bytes: Uint8Array | null, dtype: string, op: string, root: number): number;
  wait(ticket: number): CollectiveResult;
  waitAsync(ticket: number): Promise<CollectiveResult>;
  done(ticket: number): boolean;
  abort(code: number, why: string): void;
  finalize(): void;
  state(): { started: boolean; finalized: boolean; inFlight: number };
}

export interface CollectiveResult {
  /** From the start of the MPI call to its end, on the comm thread. */
  seconds: number;
  /** allGather: every rank's bytes, by rank. */
  parts?: Uint8Array[];
}

const FILE = "node_peft_mpi.node";
const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

function candidates(): string[] {
  const env = process.env.NODE_PEFT_MPI_MODULE;
  if (env) return [env];
  return [...new Set([join(dirname(nativePath), FILE), join(root, "build-cmake", "Release", FILE)])];
}

let loaded: { module: MpiModule | null; reason: string } | null = null;

/** The module, or null with the reason it is not there (not built, or libmpi missing at run time). */
export function mpiModule(): { module: MpiModule | null; reason: string } {
  if (loaded) return loaded;
  const tried: string[] = [];
  for (const path of candidates()) {
    if (!existsSync(path)) {
      tried.push(`${path} (not built)`);
      continue;
    }
    try {
      // RTLD_GLOBAL: Open MPI's plugins resolve their symbols against libmpi (see addon.cc).
      const m = { exports: {} as MpiModule };
      process.dlopen(m, path, constants.dlopen.RTLD_NOW | constants.dlopen.RTLD_GLOBAL);
      loaded = { module: m.exports, reason: "" };
      return loaded;
    } catch (e) {
      tried.push(`${path} (${String((e as Error).message).split("\n")[0]})`);
    }
  }
  loaded = {
    module: null,
    reason:
      `the MPI module does not load: ${tried.join("; ")}. It is built from source where CMake finds MPI ` +
      "(Debian/Ubuntu: `apt-get install libopenmpi-dev openmpi-bin`, then `npm rebuild node-peft --build-from-source`)",
  };
  return loaded;
}
