// Saving and resuming a training run, so that K steps + save + load + (N - K) steps give the same bits as
// N steps. A state directory holds the weights being trained (a PeftModel's adapters in PEFT's own layout,
// or any other model's parameters in model.safetensors), the optimizer's moments in optimizer.safetensors,
// and trainer_state.json: the step, the optimizer's hyperparameters and per-parameter step counts, the
// schedule's position and the global random generator's position (dropout masks come from it).
// The directory is written under a temporary name and renamed into place, so it is never half-written.
import { mkdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { describe, optionsArg, peftError, typeError } from "../errors.js";
import { Module } from "../nn/module.js";
import { AdamW } from "../optim/adamw.js";
import { LRScheduler, type SchedulerState } from "../optim/schedule.js";
import { PeftModel } from "../peft-model.js";
import { getRngState, setRngState, type RngState } from "../random.js";
import { Tensor } from "../tensor.js";
import { setPeftModelStateDict } from "../tuners/state-dict.js";
import { loadSafetensors, saveSafetensors } from "./index.js";
import { WEIGHTS_NAME, savePretrained } from "./peft-checkpoint.js";
import { tempPath } from "./safetensors-write.js";

export const TRAINER_STATE_NAME = "trainer_state.json";
const OPTIMIZER_NAME = "optimizer.safetensors";
const MODEL_NAME = "model.safetensors";
const FORMAT = 1;

export interface TrainingState {
  model: Module;
  optimizer?: AdamW;
  scheduler?: LRScheduler;
  /** The number of optimizer steps taken so far (yours to count; returned by loadTrainingState). */
  step?: number;
}

interface TrainerStateFile {
  format: number;
  step: number;
  rng: RngState;
  optimizer: null | { lr: number; betas: [number, number]; eps: number; weightDecay: number; shapes: number[][] };
  scheduler: SchedulerState | null;
}

function stateArg(state: unknown, op: string): TrainingState {
  const s = optionsArg(state as TrainingState, op, "state");
  if (!(s.model instanceof Module)) throw typeError(`${op}: state.model must be a Module, got ${describe(s.model)}`);
  if (s.optimizer !== undefined && !(s.optimizer instanceof AdamW)) throw typeError(`${op}: state.optimizer must be an AdamW, got ${describe(s.optimizer)}`);
  if (s.scheduler !== undefined && !(s.scheduler instanceof LRScheduler)) throw typeError(`${op}: state.scheduler must be an LRScheduler, got ${describe(s.scheduler)}`);
  if (s.scheduler && s.optimizer && s.scheduler.optimizer !== s.optimizer) throw peftError("ERR_CONFIG", `${op}: state.scheduler steps another optimizer than state.optimizer`);
  return s as TrainingState;
}

function dirArg(dir: unknown, op: string): string {
  if (typeof dir !== "string" || dir === "") throw typeError(`${op}: dir must be a non-empty string, got ${describe(dir)}`);
  return dir;
}

// The AdamW state with step counts as i64 (exact; its own stateDict writes them as f32).
function optimizerTensors(opt: AdamW): Record<string, Tensor> {
  const sd = opt.stateDict();
  for (const k of Object.keys(sd)) {
    if (!k.endsWith(".step") && k !== "param_groups.0.lr") continue;
    const v = sd[k]!.toArray()[0]!;
    sd[k]!.dispose();
    if (k.endsWith(".step")) sd[k] = Tensor.fromArray([v], [], "i64");
    else delete sd[k]; // the lr is kept exactly in trainer_state.json
  }
  return sd;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}

/**
 * Writes a resumable training state to `dir` (created, or replaced when it already holds one). Save at a
 * step boundary: after optimizer.step() and scheduler.step(), with gradients consumed.
 */
export async function saveTrainingState(dir: string, state: TrainingState): Promise<void> {
  const op = "saveTrainingState";
  dirArg(dir, op);
  const { model, optimizer, scheduler, step = 0 } = stateArg(state, op);
  if (!Number.isSafeInteger(step) || step < 0) throw peftError("ERR_CONFIG", `${op}: state.step must be a non-negative integer, got ${String(step)}`);
  if (await exists(dir)) {
    if (!(await exists(join(dir, TRAINER_STATE_NAME))))
      throw peftError("ERR_CHECKPOINT", `${op}: ${dir} exists and is not a training state (no ${TRAINER_STATE_NAME}); it is left alone`);
  }
  const file: TrainerStateFile = {
    format: FORMAT,
    step,
    rng: getRngState(),
    optimizer: optimizer
      ? { lr: optimizer.lr, betas: [...optimizer.betas], eps: optimizer.eps, weightDecay: optimizer.weightDecay, shapes: optimizer.params.map((p) => [...p.shape]) }
      : null,
    scheduler: scheduler ? scheduler.stateDict() : null,
  };
  await mkdir(dirname(dir), { recursive: true });
  const tmp = tempPath(dir);
  await mkdir(tmp);
  try {
    if (model instanceof PeftModel) await savePretrained(model, tmp);
    else {
      const sd = model.stateDict();
      await saveSafetensors(join(tmp, MODEL_NAME), sd, { format: "pt" }).finally(() => Object.values(sd).forEach((t) => t.dispose()));
    }
    if (optimizer) {
      const sd = optimizerTensors(optimizer);
      await saveSafetensors(join(tmp, OPTIMIZER_NAME), sd, { format: "pt" }).finally(() => Object.values(sd).forEach((t) => t.dispose()));
    }
    await writeFile(join(tmp, TRAINER_STATE_NAME), JSON.stringify(file, null, 2) + "\n", { flag: "wx" });
    // Replacing an older state: it steps aside first, so `dir` is at every moment either complete or absent.
    if (await exists(dir)) {
      const old = tempPath(dir);
      await rename(dir, old);
      await rename(tmp, dir);
      await rm(old, { recursive: true, force: true });
    } else await rename(tmp, dir);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
}

function bad(path: string, msg: string) {
  return peftError("ERR_CHECKPOINT", `${path}: ${msg}`);
}

async function readStateFile(dir: string): Promise<TrainerStateFile> {
  const path = join(dir, TRAINER_STATE_NAME);
  let v: unknown;
  try {
    v = JSON.parse(await readFile(path, "utf8"));
  } catch (e) {
    throw bad(path, `cannot read the training state (${(e as Error).message})`);
  }
  const s = v as TrainerStateFile;
  if (s === null || typeof s !== "object" || s.format !== FORMAT) throw bad(path, `not a training state of format ${FORMAT}`);
  if (!Number.isSafeInteger(s.step) || s.step < 0) throw bad(path, "step must be a non-negative integer");
  if (s.rng === null || typeof s.rng !== "object") throw bad(path, "rng is missing");
  return s;
}

/** Checks a saved optimizer against the one being restored; every hyperparameter must agree. */
function checkOptimizer(path: string, saved: TrainerStateFile["optimizer"], opt: AdamW): void {
  if (!saved) throw bad(path, "holds no optimizer state, but an optimizer was given");
  const shapes = opt.params.map((p) => p.shape.join("x")).join(", ");
  if (!Array.isArray(saved.shapes) || saved.shapes.map((s) => s.join("x")).join(", ") !== shapes)
    throw bad(path, `the saved optimizer has ${saved.shapes?.length ?? 0} parameters of other shapes than this one's ${opt.params.length}; build it over the same parameters, in the same order`);
  for (const [k, mine] of [["betas", opt.betas.join()], ["eps", String(opt.eps)], ["weightDecay", String(opt.weightDecay)]] as const) {
    const theirs = k === "betas" ? saved.betas?.join() : String(saved[k]);
    if (theirs !== mine) throw bad(path, `the saved optimizer has ${k} ${theirs}, this one ${mine}`);
  }
  if (typeof saved.lr !== "number" || !Number.isFinite(saved.lr) || saved.lr < 0) throw bad(path, "the saved optimizer's lr is not a number >= 0");
}

async function loadModel(dir: string, model: Module): Promise<void> {
  if (!(model instanceof PeftModel)) {
    const sd = await loadSafetensors(join(dir, MODEL_NAME));
    try {
      model.loadStateDict(sd);
    } finally {
      for (const t of Object.values(sd)) t.dispose();
    }
    return;
  }
  for (const name of Object.keys(model.peftConfig)) {
    const file = join(name === "default" ? dir : join(dir, name), WEIGHTS_NAME);
    if (!(await exists(file))) throw bad(dir, `has no weights for adapter ${JSON.stringify(name)} (${file})`);
    const sd = await loadSafetensors(file);
    try {
      setPeftModelStateDict(model, sd, { adapterName: name });
    } finally {
      for (const t of Object.values(sd)) t.dispose();
    }
  }
}

/**
 * Restores a state saved by saveTrainingState into objects built as the original run built them (same
 * model structure and adapters, an optimizer over the same parameters, the same schedule) and returns the
 * saved step. The global random generator is restored too.
 */
export async function loadTrainingState(dir: string, state: TrainingState): Promise<{ step: number }> {
  const op = "loadTrainingState";
  dirArg(dir, op);
  const { model, optimizer, scheduler } = stateArg(state, op);
  const saved = await readStateFile(dir);
  const path = join(dir, TRAINER_STATE_NAME);
  // Everything that can be checked without changing anything is checked first.
  if (optimizer) checkOptimizer(path, saved.optimizer, optimizer);
  if (scheduler && !saved.scheduler) throw bad(path, "holds no scheduler state, but a scheduler was given");
  if (scheduler && JSON.stringify(scheduler.stateDict().schedule) !== JSON.stringify(saved.scheduler!.schedule))
    throw bad(path, `the saved schedule is ${JSON.stringify(saved.scheduler!.schedule)}, this scheduler's ${JSON.stringify(scheduler.stateDict().schedule)}`);
  const rng = { seed: saved.rng.seed, stream: saved.rng.stream };
  if (![rng.seed, rng.stream].every((n) => Number.isSafeInteger(n) && n >= 0)) throw bad(path, "rng seed and stream must be non-negative integers");
  let optState: Record<string, Tensor> | null = null;
  if (optimizer) optState = await loadSafetensors(join(dir, OPTIMIZER_NAME)).catch((e: Error) => { throw bad(dir, `cannot read ${OPTIMIZER_NAME} (${e.message})`); });
  try {
    await loadModel(dir, model);
    if (optimizer && optState) {
      optimizer.loadStateDict(optState);
      optimizer.lr = saved.optimizer!.lr;
    }
    if (scheduler) scheduler.loadStateDict(saved.scheduler!);
    setRngState(rng);
  } finally {
    for (const t of Object.values(optState ?? {})) t.dispose();
  }
  return { step: saved.step };
}

