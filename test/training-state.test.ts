// Resuming a run: N steps in one go and K steps + saveTrainingState + loadTrainingState (into freshly built
// objects, with the random generator moved on) + N - K steps end with the same bits, with LoRA dropout
// drawing from the global generator, gradient accumulation, clipping and a warmup schedule on the way.
import { mkdtempSync, readdirSync, rmSync, writeFileSync, existsSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  AdamW, LoraConfig, Linear, Tensor, clipGradNorm, getCosineScheduleWithWarmup, getLinearScheduleWithWarmup, getPeftModel, getRngState,
  loadTrainingState, manualSeed, nllLoss, saveTrainingState, type Module,
} from "../lib/index.js";
import { MLP } from "./helpers/models.js";

const tmp = mkdtempSync(join(tmpdir(), "node-peft-resume-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const N = 8, K = 3, ACCUMULATE = 2;

function build(seed: number) {
  manualSeed(seed); // LoRA's A init draws from the global generator
  const model = getPeftModel(new MLP(8, 11), new LoraConfig({ targetModules: ["seq.0", "seq.2"], r: 2, loraDropout: 0.25 }));
  const trainable = [...model.parameters()].filter((p) => p.requiresGrad);
  const optimizer = new AdamW(trainable, { lr: 0.05, weightDecay: 0.1 });
  const scheduler = getLinearScheduleWithWarmup(optimizer, 2, N);
  return { model, trainable, optimizer, scheduler };
}

// One optimizer step over ACCUMULATE micro-batches; the data depends on the step only.
function trainStep(run: ReturnType<typeof build>, step: number): void {
  for (let micro = 0; micro < ACCUMULATE; micro++) {
    using x = Tensor.randn([4, 20], { seed: 1000 + step * ACCUMULATE + micro });
    using target = Tensor.fromArray([0, 1, 1, 0], [4], "i32");
    using y = run.model.forward(x);
    const { grad } = nllLoss(y, target);
    using scaled = grad; // the loss of each micro-batch counts 1/ACCUMULATE
    const g = Tensor.fromArray(Array.from(scaled.toFloat64Array(), (v) => v / ACCUMULATE), scaled.shape);
    run.model.backward(g, { inputGrad: false });
    g.dispose();
  }
  clipGradNorm(run.trainable, 0.5);
  run.optimizer.step();
  run.scheduler.step();
  run.optimizer.zeroGrad();
}

const bits = (m: Module) => Object.fromEntries([...m.namedParameters()].map(([k, t]) => [k, Buffer.from(t.toFloat32Array().buffer).toString("hex")]));

describe("saveTrainingState / loadTrainingState", () => {
  it("N steps = K steps + save + load + N - K steps, bit for bit", async () => {
    const straight = build(1);
    for (let s = 0; s < N; s++) trainStep(straight, s);

    const first = build(1);
    for (let s = 0; s < K; s++) trainStep(first, s);
    const dir = join(tmp, "checkpoint");
    const rngAtSave = getRngState();
    expect(rngAtSave.stream).toBeGreaterThan(K * ACCUMULATE * 2); // dropout drew from the global generator
    await saveTrainingState(dir, { model: first.model, optimizer: first.optimizer, scheduler: first.scheduler, step: K });
    expect(readdirSync(dir).sort()).toEqual(["README.md", "adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"]);

    const resumed = build(2); // other initial weights and another generator position: all must be restored
    manualSeed(99);
    Tensor.randn([3]).dispose();
    const { step } = await loadTrainingState(dir, { model: resumed.model, optimizer: resumed.optimizer, scheduler: resumed.scheduler });
    expect(step).toBe(K);
    expect(getRngState()).toEqual(rngAtSave);
    expect(resumed.optimizer.lr).toBe(first.optimizer.lr);
    expect(resumed.scheduler.lastEpoch).toBe(K);
    for (let s = step; s < N; s++) trainStep(resumed, s);

    expect(bits(resumed.model)).toEqual(bits(straight.model));
    expect(resumed.optimizer.lr).toBe(straight.optimizer.lr);
    const [a, b] = [resumed.optimizer.stateDict(), straight.optimizer.stateDict()];
    for (const k of Object.keys(b)) expect(a[k]!.toArray(), k).toEqual(b[k]!.toArray());
    // A run that skips the load diverges (the test can tell).
    const fresh = build(2);
    for (let s = K; s < N; s++) trainStep(fresh, s);
    expect(bits(fresh.model)).not.toEqual(bits(straight.model));
  });

  it("a plain module's parameters go to model.safetensors; a later save replaces the directory whole", async () => {
    const model = new Linear(3, 2, { seed: 4 });
    const optimizer = new AdamW(model.parameters());
    const scheduler = getCosineScheduleWithWarmup(optimizer, 1, 10);
    const dir = join(tmp, "plain");
    await saveTrainingState(dir, { model, optimizer, scheduler, step: 1 });
    writeFileSync(join(dir, "stray.txt"), "old");
    await saveTrainingState(dir, { model, optimizer, scheduler, step: 2 });
    expect(readdirSync(dir).sort()).toEqual(["model.safetensors", "optimizer.safetensors", "trainer_state.json"]);
    expect(readdirSync(tmp).filter((n) => n.endsWith(".tmp"))).toEqual([]);
    const other = new Linear(3, 2, { seed: 5 });
    const opt2 = new AdamW(other.parameters());
    expect((await loadTrainingState(dir, { model: other, optimizer: opt2, scheduler: getCosineScheduleWithWarmup(opt2, 1, 10) })).step).toBe(2);
    expect(other.weight.toArray()).toEqual(model.weight.toArray());
  });

  it("refuses what does not fit, before changing anything", async () => {
    const model = new Linear(3, 2, { seed: 4 });
    const optimizer = new AdamW(model.parameters(), { weightDecay: 0.5 });
    const dir = join(tmp, "refusals");
    await saveTrainingState(dir, { model, optimizer, scheduler: getLinearScheduleWithWarmup(optimizer, 1, 5), step: 1 });
    const code = (p: Promise<unknown>) => p.then(() => "resolved", (e: { code?: string; message: string }) => `${e.code}: ${e.message}`);
    const fresh = () => new Linear(3, 2, { seed: 6 });
    const m = fresh();
    const w = m.weight.toArray();
    // Another weight decay, other parameters, another schedule: ERR_CHECKPOINT naming the file and the field.
    expect(await code(loadTrainingState(dir, { model: m, optimizer: new AdamW(m.parameters()) }))).toMatch(/^ERR_CHECKPOINT: .*trainer_state\.json: .*weightDecay 0\.5, this one 0\.01/);
    expect(await code(loadTrainingState(dir, { model: m, optimizer: new AdamW([m.weight], { weightDecay: 0.5 }) }))).toMatch(/^ERR_CHECKPOINT: .*same parameters/);
    const o = new AdamW(m.parameters(), { weightDecay: 0.5 });
    expect(await code(loadTrainingState(dir, { model: m, optimizer: o, scheduler: getLinearScheduleWithWarmup(o, 2, 5) }))).toMatch(/^ERR_CHECKPOINT: .*schedule/);
    expect(m.weight.toArray()).toEqual(w);
    // Bad arguments and directories.
    expect(await code(saveTrainingState("", { model }))).toMatch(/^ERR_INVALID_ARG_TYPE/);
    expect(await code(saveTrainingState(dir, { model: {} as Module }))).toMatch(/^ERR_INVALID_ARG_TYPE: .*state\.model/);
    expect(await code(saveTrainingState(dir, null as never))).toMatch(/^ERR_INVALID_ARG_TYPE/);
    expect(await code(saveTrainingState(dir, { model, step: -1 }))).toMatch(/^ERR_CONFIG: .*state\.step/);
    expect(await code(saveTrainingState(dir, { model, optimizer: new AdamW(model.parameters()), scheduler: getLinearScheduleWithWarmup(optimizer, 1, 5) }))).toMatch(/^ERR_CONFIG: .*another optimizer/);
    expect(await code(saveTrainingState(tmp, { model }))).toMatch(/^ERR_CHECKPOINT: .*not a training state/);
    expect(existsSync(join(tmp, "trainer_state.json"))).toBe(false);
    expect(await code(loadTrainingState(join(tmp, "none"), { model }))).toMatch(/^ERR_CHECKPOINT: .*trainer_state\.json: cannot read/);
    const broken = join(tmp, "broken");
    await saveTrainingState(broken, { model, step: 0 });
    const state = JSON.parse(readFileSync(join(broken, "trainer_state.json"), "utf8"));
    writeFileSync(join(broken, "trainer_state.json"), JSON.stringify({ ...state, rng: { seed: -1, stream: 0 } }));
    expect(await code(loadTrainingState(broken, { model: fresh() }))).toMatch(/^ERR_CHECKPOINT: .*rng/);
    writeFileSync(join(broken, "trainer_state.json"), JSON.stringify({ ...state, format: 7 }));
    expect(await code(loadTrainingState(broken, { model: fresh() }))).toMatch(/^ERR_CHECKPOINT: .*format/);
    expect(await code(loadTrainingState(broken, { model: fresh(), optimizer: new AdamW(fresh().parameters()) }))).toMatch(/^ERR_CHECKPOINT/);
  });
});
