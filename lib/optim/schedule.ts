// Learning-rate schedules with torch's LambdaLR semantics and transformers' schedule formulas: the scheduler
// keeps the optimizer's starting lr as its base and, on every step(), sets lr = base * lambda(step). Like
// LambdaLR, constructing one already applies lambda(0) (so a warmup starts from lr 0), and the training loop
// calls scheduler.step() after optimizer.step().
import { describe, optionsArg, peftError, typeError } from "../errors.js";
import { AdamW } from "./adamw.js";

/** What a scheduler saves: plain JSON values (torch's names), restored by loadStateDict. */
export interface SchedulerState {
  last_epoch: number;
  base_lrs: number[];
  _last_lr: number[];
  /** Which schedule and its parameters, for a message when a resumed run builds another one. */
  schedule: Record<string, number | string>;
}

function checkCount(v: unknown, what: string): number {
  if (typeof v !== "number") throw typeError(`${what} must be a number, got ${describe(v)}`);
  if (!Number.isSafeInteger(v) || v < 0) throw peftError("ERR_CONFIG", `${what} must be a non-negative integer, got ${v}`);
  return v;
}

export class LRScheduler {
  readonly optimizer: AdamW;
  /** The lr the schedule scales (the optimizer's lr when the scheduler was made). */
  baseLr: number;
  /** Steps taken; 0 right after construction (torch's last_epoch). */
  lastEpoch: number;
  #lastLr: number;
  readonly #lambda: (step: number) => number;
  readonly #schedule: Record<string, number | string>;

  constructor(optimizer: AdamW, lrLambda: (step: number) => number, schedule: Record<string, number | string> = { name: "lambda" }) {
    if (!(optimizer instanceof AdamW)) throw typeError(`LRScheduler: optimizer must be an AdamW, got ${describe(optimizer)}`);
    if (typeof lrLambda !== "function") throw typeError(`LRScheduler: lrLambda must be a function, got ${describe(lrLambda)}`);
    this.optimizer = optimizer;
    this.#lambda = lrLambda;
    this.#schedule = { ...schedule };
    this.baseLr = optimizer.lr;
    this.lastEpoch = -1;
    this.#lastLr = optimizer.lr;
    this.step();
  }

  /** Advances one step and sets the optimizer's lr for the next optimizer.step(). */
  step(): void {
    this.lastEpoch += 1;
    const factor = this.#lambda(this.lastEpoch);
    if (typeof factor !== "number" || Number.isNaN(factor))
      throw peftError("ERR_CONFIG", `LRScheduler: the schedule gave ${describe(factor)} (${String(factor)}) at step ${this.lastEpoch}, not a number`);
    this.#lastLr = this.optimizer.lr = this.baseLr * factor;
  }

  /** The lr the last step() set, as torch returns it (one entry per parameter group; AdamW has one). */
  getLastLr(): number[] {
    return [this.#lastLr];
  }

  stateDict(): SchedulerState {
    return { last_epoch: this.lastEpoch, base_lrs: [this.baseLr], _last_lr: [this.#lastLr], schedule: { ...this.#schedule } };
  }

  /** Restores the step count and base lr (the optimizer's own lr comes back with the optimizer). */
  loadStateDict(state: SchedulerState): void {
    const s = optionsArg(state, "LRScheduler.loadStateDict", "state");
    const last = checkCount(s.last_epoch, "LRScheduler.loadStateDict: last_epoch");
    const num = (v: unknown, what: string): number => {
      const x = Array.isArray(v) && v.length === 1 ? v[0] : undefined;
      if (typeof x !== "number" || !Number.isFinite(x)) throw peftError("ERR_CHECKPOINT", `LRScheduler.loadStateDict: ${what} must be a list of one finite number`);
      return x;
    };
    const base = num(s.base_lrs, "base_lrs"), lastLr = num(s._last_lr, "_last_lr");
    // A resumed run that builds another schedule would silently train on a different one.
    const mine = JSON.stringify(this.#schedule), theirs = JSON.stringify(s.schedule ?? this.#schedule);
    if (mine !== theirs) throw peftError("ERR_CHECKPOINT", `LRScheduler.loadStateDict: the state is of schedule ${theirs}, this scheduler is ${mine}`);
    this.lastEpoch = last;
    this.baseLr = base;
    this.#lastLr = lastLr;
  }
}

function scheduleArgs(op: string, optimizer: unknown, warmup: unknown, total?: unknown): [number, number] {
  if (!(optimizer instanceof AdamW)) throw typeError(`${op}: optimizer must be an AdamW, got ${describe(optimizer)}`);
  return [checkCount(warmup, `${op}: numWarmupSteps`), total === undefined ? 0 : checkCount(total, `${op}: numTrainingSteps`)];
}

const warmupFactor = (step: number, warmup: number) => step / Math.max(1, warmup);

/** transformers' get_linear_schedule_with_warmup: 0 → 1 over the warmup, then linearly to 0 at total. */
export function getLinearScheduleWithWarmup(optimizer: AdamW, numWarmupSteps: number, numTrainingSteps: number): LRScheduler {
  const [w, n] = scheduleArgs("getLinearScheduleWithWarmup", optimizer, numWarmupSteps, numTrainingSteps);
  return new LRScheduler(
    optimizer,
    (step) => (step < w ? warmupFactor(step, w) : Math.max(0, (n - step) / Math.max(1, n - w))),
    { name: "linear", numWarmupSteps: w, numTrainingSteps: n },
  );
}

/**
 * transformers' get_cosine_schedule_with_warmup: after the warmup, 0.5 (1 + cos(π · 2 numCycles · progress))
 * (numCycles 0.5: one half-cosine from 1 down to 0).
 */
export function getCosineScheduleWithWarmup(optimizer: AdamW, numWarmupSteps: number, numTrainingSteps: number, options: { numCycles?: number } = {}): LRScheduler {
  const op = "getCosineScheduleWithWarmup";
  const [w, n] = scheduleArgs(op, optimizer, numWarmupSteps, numTrainingSteps);
  const cycles = optionsArg(options, op).numCycles ?? 0.5;
  if (typeof cycles !== "number") throw typeError(`${op}: numCycles must be a number, got ${describe(cycles)}`);
  if (!Number.isFinite(cycles) || cycles < 0) throw peftError("ERR_CONFIG", `${op}: numCycles must be a finite number >= 0, got ${cycles}`);
  return new LRScheduler(
    optimizer,
    (step) => {
      if (step < w) return warmupFactor(step, w);
      const progress = (step - w) / Math.max(1, n - w);
      return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * cycles * 2 * progress)));
    },
    { name: "cosine", numWarmupSteps: w, numTrainingSteps: n, numCycles: cycles },
  );
}

/** transformers' get_constant_schedule_with_warmup: 0 → 1 over the warmup, then 1. */
export function getConstantScheduleWithWarmup(optimizer: AdamW, numWarmupSteps: number): LRScheduler {
  const [w] = scheduleArgs("getConstantScheduleWithWarmup", optimizer, numWarmupSteps);
  return new LRScheduler(optimizer, (step) => (step < w ? warmupFactor(step, w) : 1), { name: "constant", numWarmupSteps: w });
}
