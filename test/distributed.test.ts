// The distributed API without a launcher (a world of one, where every collective is the identity), the
// optional MPI module's packaging (never linked by the main addon, loaded lazily, `available` false with
// the reason), shard(), DistributedDataParallel in one process, and the backward observers it uses.
// Runs with and without Open MPI installed; test/distributed-mpi.test.ts runs real multi-process jobs.
import { describe, expect, it } from "vitest";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { distIndex, root, runNode } from "./helpers/child.js";
import { DistributedDataParallel, F, Linear, LoraConfig, ReLU, Sequential, Tensor, distributed, getPeftModel, manualSeed, tidy } from "../lib/index.js";
import { observeBackward } from "../lib/autograd/index.js";

const mainBuilds = [
  join(root, "build-cmake", "Release", "node_peft.node"),
  join(root, "build", "Release", "node_peft.node"),
  join(root, "prebuilds", "linux-x64", "node-peft.node"),
].filter(existsSync);

function tool(cmd: string, args: string[]): string | null {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  return r.status === 0 ? r.stdout : null;
}

describe("the MPI module is optional", () => {
  it("the main addon (every build here) neither links libmpi nor refers to an MPI symbol", () => {
    expect(mainBuilds.length).toBeGreaterThan(0);
    for (const file of mainBuilds) {
      const needed = tool("readelf", ["-d", file]) ?? tool("ldd", [file]);
      if (needed === null) continue;
      expect(needed, file).not.toMatch(/libmpi/);
      const symbols = tool("nm", ["-D", "--undefined-only", file]);
      if (symbols !== null) expect(symbols, file).not.toMatch(/\bP?MPI_|\bompi_/);
    }
  });

  it("importing the package does not load it; reading `available` does (where it is built)", () => {
    const r = runNode(
      `import { readFileSync } from "node:fs";
       const { distributed } = await import(${JSON.stringify(distIndex)});
       const before = /libmpi/.test(readFileSync("/proc/self/maps", "utf8"));
       const available = distributed.available;
       const after = /libmpi/.test(readFileSync("/proc/self/maps", "utf8"));
       console.log(JSON.stringify({ before, available, after }));`,
    );
    expect(r.status, r.stderr).toBe(0);
    const o = JSON.parse(r.stdout.trim().split("\n").pop()!);
    expect(o.before).toBe(false);
    expect(o.after).toBe(o.available);
  });

  it("absent: `available` is false with the reason, and init() under a launcher says why it cannot start", () => {
    const r = runNode(
      `const { distributed } = await import(${JSON.stringify(distIndex)});
       const out = { available: distributed.available, reason: distributed.unavailableReason };
       try { distributed.init(); } catch (e) { out.code = e.code; out.message = e.message; }
       console.log(JSON.stringify(out));`,
      { NODE_PEFT_MPI_MODULE: "/nonexistent/node_peft_mpi.node", OMPI_COMM_WORLD_SIZE: "2", OMPI_COMM_WORLD_RANK: "0" },
    );
    expect(r.status, r.stderr).toBe(0);
    const o = JSON.parse(r.stdout.trim().split("\n").pop()!);
    expect(o.available).toBe(false);
    expect(o.reason).toMatch(/\/nonexistent\/node_peft_mpi\.node \(not built\).*libopenmpi-dev/);
    expect(o.code).toBe("ERR_DISTRIBUTED");
    expect(o.message).toMatch(/distributed\.init: started by an MPI launcher \(OMPI_COMM_WORLD_SIZE=2\) but the MPI module does not load/);
  });
});

describe("shard", () => {
  const items = Array.from({ length: 7 }, (_, i) => i);
  it("arrays: strided, padded from the start to equal parts, or cut with dropLast", () => {
    expect(distributed.shard(items, { rank: 0, worldSize: 3 })).toEqual([0, 3, 6]);
    expect(distributed.shard(items, { rank: 1, worldSize: 3 })).toEqual([1, 4, 0]);
    expect(distributed.shard(items, { rank: 2, worldSize: 3 })).toEqual([2, 5, 1]);
    expect(distributed.shard(items, { rank: 2, worldSize: 3, dropLast: true })).toEqual([2, 5]);
    expect(distributed.shard([], { rank: 1, worldSize: 2 })).toEqual([]);
    expect(distributed.shard(items)).toEqual(items);
  });

  it("iterables and async iterables: lazily, whole rounds only", async () => {
    function* gen() {
      yield* items;
    }
    expect([...distributed.shard(gen(), { rank: 1, worldSize: 3 })]).toEqual([1, 4]);
    async function* agen() {
      yield* items;
    }
    const got: number[] = [];
    for await (const x of distributed.shard(agen(), { rank: 0, worldSize: 2 })) got.push(x);
    expect(got).toEqual([0, 2, 4]);
  });

  it("bad arguments are named", () => {
    expect(() => distributed.shard(42 as never)).toThrow(/distributed\.shard: the data set must be an array or an \(async\) iterable, got number/);
    expect(() => distributed.shard(items, { rank: 3, worldSize: 3 })).toThrow(/rank must be an integer in \[0, 3\), got 3/);
    expect(() => distributed.shard(items, { worldSize: 0 })).toThrow(/worldSize must be an integer >= 1, got 0/);
  });
});

function lora(seed = 0) {
  manualSeed(seed);
  const base = new Sequential(new Linear(6, 8, { seed: 1 }), new ReLU(), new Linear(8, 3, { seed: 2 }));
  return getPeftModel(base, new LoraConfig({ r: 2, targetModules: ["0", "2"], initLoraWeights: "gaussian" }));
}

function gradsAfterStep(model: ReturnType<typeof lora>): Float32Array[] {
  const x = Tensor.fromArray(Array.from({ length: 30 }, (_, i) => Math.sin(i)), [5, 6]);
  const y = Tensor.fromArray(Array.from({ length: 15 }, (_, i) => Math.cos(i)), [5, 3]);
  model.train();
  const loss = F.mseLoss(model.forward(x), y);
  loss.backward();
  return [...model.parameters()].filter((p) => p.requiresGrad).map((p) => p.grad!.toFloat32Array());
}

describe("a world of one (no launcher)", () => {
  it("calls before init() are ERR_STATE", () => {
    expect(() => distributed.barrier()).toThrow(expect.objectContaining({ code: "ERR_STATE", message: expect.stringMatching(/call distributed\.init\(\) first/) }));
    expect(() => new DistributedDataParallel(lora())).toThrow(/DistributedDataParallel: call distributed\.init\(\) first/);
  });

  it("init() makes rank 0 of 1, and the collectives leave every dtype's bits as they are", async () => {
    distributed.init();
    expect([distributed.rank, distributed.worldSize, distributed.launched, distributed.initialized]).toEqual([0, 1, false, true]);
    for (const dtype of ["f32", "bf16", "f16"] as const) {
      for (const op of ["sum", "mean", "max"] as const) {
        const t = Tensor.fromArray([1.1, -2.5, 3e-3, 7], [4], dtype);
        const before = Array.from(t.view());
        distributed.allReduce(t, { op });
        await distributed.allReduceAsync(t, { op });
        expect(Array.from(t.view())).toEqual(before);
      }
    }
    const b = Tensor.fromArray([5, 6], [2], "i32");
    distributed.broadcast(b);
    await distributed.broadcastAsync(b, 0);
    expect(Array.from(b.view())).toEqual([5, 6]);
    distributed.barrier();
    await distributed.barrierAsync();
    expect(distributed.allGatherBytes(new Uint8Array([1, 2])).map((p) => Array.from(p))).toEqual([[1, 2]]);
  });

  it("bad inputs are named errors", () => {
    expect(() => distributed.allReduce({} as never)).toThrow(expect.objectContaining({ code: "ERR_INVALID_ARG_TYPE", message: expect.stringMatching(/allReduce: the tensor must be a Tensor, got Object/) }));
    expect(() => distributed.allReduce(Tensor.zeros([2], { dtype: "i64" }))).toThrow(expect.objectContaining({ code: "ERR_DTYPE" }));
    expect(() => distributed.allReduce(Tensor.zeros([2]), { op: "avg" as never })).toThrow(/op must be "sum", "mean" or "max", got "avg"/);
    expect(() => distributed.broadcast(Tensor.zeros([2]), 1)).toThrow(expect.objectContaining({ code: "ERR_OUT_OF_RANGE", message: expect.stringMatching(/root 1 is not a rank of this world of 1/) }));
    expect(() => distributed.broadcast(Tensor.zeros([2]), 0.5)).toThrow(/root must be an integer rank, got 0\.5/);
    expect(() => distributed.init({ timeoutSeconds: -1 })).toThrow(/timeoutSeconds must be a number of seconds >= 0, got -1/);
    expect(() => new DistributedDataParallel({} as never)).toThrow(/DistributedDataParallel: the model must be a Module/);
    expect(() => new DistributedDataParallel(lora(), { bucketCapMB: 0 })).toThrow(/bucketCapMB must be a number > 0, got 0/);
  });

  it("DistributedDataParallel: gradients as without it, buckets by size, noSync, savePretrained", async () => {
    const plain = gradsAfterStep(lora());
    const model = lora();
    const ddp = new DistributedDataParallel(model, { bucketCapMB: 1e-6 });
    expect(ddp.parameters.map(([n]) => n)).toEqual([...model.namedParameters()].filter(([, p]) => p.requiresGrad).map(([n]) => n));
    expect(ddp.bucketCount).toBe(4);
    // The first backward inside tidy(): the buckets' buffers made then are not the scope's to dispose.
    expect(tidy(() => gradsAfterStep(model))).toEqual(plain);
    expect(ddp.stats.syncs).toBe(1);
    expect(ddp.stats.allReduces).toBe(4);
    expect(ddp.stats.overlapped).toBeGreaterThan(0);
    {
      using _ = ddp.noSync();
      model.zeroGrad();
      gradsAfterStep(model);
    }
    expect(ddp.stats.syncs).toBe(1);
    for (let i = 0; i < 2; i++) {
      model.zeroGrad();
      expect(tidy(() => gradsAfterStep(model))).toEqual(plain);
    }
    expect(ddp.stats.syncs).toBe(3);
    // Another model's backward exchanges nothing.
    gradsAfterStep(lora(1));
    expect(ddp.stats.syncs).toBe(3);
    const dir = mkdtempSync(join(tmpdir(), "peft-ddp1-"));
    try {
      await ddp.savePretrained(dir);
      expect(existsSync(join(dir, "adapter_model.safetensors"))).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    ddp.dispose();
    gradsAfterStep(model);
    expect(ddp.stats.syncs).toBe(3);
    using whole = new DistributedDataParallel(model, { bucketCapMB: 1 });
    expect(whole.bucketCount).toBe(1);
  });
});

describe("backward observers", () => {
  it("see every node of the pass, each once after it ran, then the end", () => {
    const seen: string[] = [];
    let all = 0;
    const off = observeBackward({ begin: (nodes) => (all = nodes.size), nodeDone: (n) => seen.push(n.name), end: (e) => seen.push(`end:${e === undefined}`) });
    try {
      const w = Tensor.fromArray([1, 2, 3, 4], [2, 2]);
      w.requiresGrad = true;
      const x = Tensor.fromArray([1, -1], [1, 2]);
      F.sum(F.linear(x, w)).backward();
    } finally {
      off();
    }
    expect(seen.length).toBe(all + 1);
    expect(seen.at(-1)).toBe("end:true");
  });
});
