// One interface over a single safetensors file and a sharded checkpoint (model.safetensors.index.json), so
// base-model loading and the CLI merge read either tensor by tensor.
import { openSafetensors, openSharded } from "./index.js";
import { checkPath } from "./file-io.js";
import type { Tensor } from "../tensor.js";

export interface CheckpointSource extends Disposable {
  readonly path: string;
  keys(): string[];
  info(name: string): { dtype: string; shape: number[] };
  get(name: string): Tensor;
  close(): void;
}

/** Opens `path`: a `.json` index of shards, or one safetensors file. */
export function openCheckpoint(path: string): CheckpointSource {
  checkPath(path, "openCheckpoint");
  if (path.endsWith(".json")) {
    const s = openSharded(path);
    return {
      path,
      keys: () => s.keys(),
      info: (n) => s.info(n),
      get: (n) => s.get(n),
      close: () => s.close(),
      [Symbol.dispose]: () => s.close(),
    };
  }
  return openSafetensors(path);
}
