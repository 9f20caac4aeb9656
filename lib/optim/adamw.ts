// AdamW with PyTorch's semantics (decoupled weight decay, bias correction, f32 moments), stepping every
// parameter that has a gradient in one fused native call.
import { Tensor } from "../tensor.js";
import { adamwStep } from "../kernels.js";
import { arrayArg, describe, isArray, optionsArg, peftError, rangeError, typeError } from "../errors.js";
import { untrack } from "../autograd/scope.js";

export interface AdamWOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
}

interface ParamState {
  step: number;
  expAvg: Tensor | null;
  expAvgSq: Tensor | null;
}

const MAX_PARAMS = 10_000_000;

/** The parameters, read once: an array (its length bounded first) or any other iterable, up to MAX_PARAMS. */
function readParams(params: unknown): unknown[] {
  if (isArray(params)) return arrayArg(params, "AdamW", "params", MAX_PARAMS);
  if (params === null || typeof params !== "object" || ArrayBuffer.isView(params) || typeof (params as Iterable<unknown>)[Symbol.iterator] !== "function")
    throw typeError(`AdamW: params must be an iterable of tensors, got ${describe(params)}`);
  const out: unknown[] = [];
  for (const p of params as Iterable<unknown>) {
    if (out.length === MAX_PARAMS) throw rangeError(`AdamW: params yields more than ${MAX_PARAMS} entries`);
    out.push(p);
  }
  return out;
}

function checkHyper(v: unknown, what: string, lo: number, hi: number, hiOpen = false): number {
  if (typeof v !== "number") throw typeError(`AdamW: ${what} must be a number`);
  if (!(v >= lo && (hiOpen ? v < hi : v <= hi))) throw peftError("ERR_CONFIG", `AdamW: ${what} must be in [${lo}, ${hi}${hiOpen ? ")" : "]"}, got ${v}`);
  return v;
}

export class AdamW {
  readonly params: Tensor[];
  lr: number;
  readonly betas: [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  #state: ParamState[];

  /** Defaults as torch.optim.AdamW: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 1e-2. */
  constructor(params: Iterable<Tensor>, options: AdamWOptions = {}) {
    this.params = readParams(params) as Tensor[];
    const opts = optionsArg(options, "AdamW");
    const seen = new Set<Tensor>();
    this.params.forEach((p, i) => {
      if (!(p instanceof Tensor)) throw typeError(`AdamW: params[${i}] is not a Tensor`);
      if (seen.has(p)) throw peftError("ERR_CONFIG", `AdamW: params[${i}] appears twice`);
      seen.add(p);
    });
    this.lr = checkHyper(opts.lr ?? 1e-3, "lr", 0, Infinity);
    const betas = opts.betas === undefined ? [0.9, 0.999] : arrayArg(opts.betas, "AdamW", "betas", 2);
    if (betas.length !== 2) throw typeError(`AdamW: betas must be a pair of numbers, got ${betas.length} entries`);
    const [b1, b2] = betas;
    this.betas = [checkHyper(b1, "betas[0]", 0, 1, true), checkHyper(b2, "betas[1]", 0, 1, true)];
    this.eps = checkHyper(opts.eps ?? 1e-8, "eps", 0, Infinity);
    this.weightDecay = checkHyper(opts.weightDecay ?? 1e-2, "weightDecay", 0, Infinity);
    this.#state = this.params.map(() => ({ step: 0, expAvg: null, expAvgSq: null }));
  }

  /** One update of every parameter whose grad is set; parameters without a grad keep their state. */
  step(): void {
    // Parameters step together when their step counts agree (the usual case: one native call).
    const groups = new Map<number, number[]>();
    this.params.forEach((p, i) => {
      if (!p.grad) return;
      const st = this.#state[i];
      // Optimizer state outlives any tidy() scope the step runs in.
      st.expAvg ??= untrack(Tensor.zeros(p.shape, { dtype: "f32", device: p.device }));
      st.expAvgSq ??= untrack(Tensor.zeros(p.shape, { dtype: "f32", device: p.device }));
      st.step += 1;
      const g = groups.get(st.step) ?? [];
      g.push(i);
      groups.set(st.step, g);
    });
    for (const [step, idx] of groups) {
      adamwStep(
        idx.map((i) => this.params[i]),
        idx.map((i) => this.params[i].grad),
        idx.map((i) => this.#state[i].expAvg as Tensor),
        idx.map((i) => this.#state[i].expAvgSq as Tensor),
        { step, lr: this.lr, beta1: this.betas[0], beta2: this.betas[1], eps: this.eps, weightDecay: this.weightDecay },
      );
    }
  }

  /** Drops every gradient (torch's zero_grad(set_to_none=True)). */
  zeroGrad(): void {
    for (const p of this.params) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  /** `state.<i>.exp_avg`, `state.<i>.exp_avg_sq`, `state.<i>.step` (i = parameter index), sharing storage. */
  stateDict(): Record<string, Tensor> {
    const out: Record<string, Tensor> = {};
    this.#state.forEach((st, i) => {
      if (!st.expAvg || !st.expAvgSq) return;
      out[`state.${i}.exp_avg`] = st.expAvg.reshape(st.expAvg.shape);
      out[`state.${i}.exp_avg_sq`] = st.expAvgSq.reshape(st.expAvgSq.shape);
      out[`state.${i}.step`] = Tensor.fromArray([st.step], [], "f32");
    });
    out["param_groups.0.lr"] = Tensor.fromArray([this.lr], [], "f32");
    return out;
  }

  /** Restores moments and step counts (copied), checking every entry before changing anything. */
  loadStateDict(sd: Record<string, Tensor>): void {
    if (sd === null || typeof sd !== "object") throw typeError("AdamW.loadStateDict: expected a record of tensors");
    const next: ParamState[] = this.params.map((p, i) => {
      const m = sd[`state.${i}.exp_avg`], v = sd[`state.${i}.exp_avg_sq`], s = sd[`state.${i}.step`];
      if (!m && !v && !s) return { step: 0, expAvg: null, expAvgSq: null };
      for (const [t, name] of [[m, "exp_avg"], [v, "exp_avg_sq"]] as const) {
        if (!(t instanceof Tensor)) throw peftError("ERR_CHECKPOINT", `AdamW.loadStateDict: state.${i}.${name} is missing`);
        if (t.shape.join() !== p.shape.join())
          throw peftError("ERR_SHAPE", `AdamW.loadStateDict: state.${i}.${name} has shape [${t.shape}] but parameter ${i} has [${p.shape}]`);
      }
      if (!(s instanceof Tensor) || s.numel !== 1) throw peftError("ERR_CHECKPOINT", `AdamW.loadStateDict: state.${i}.step must be a scalar tensor`);
      const step = s.toArray()[0];
      if (!Number.isSafeInteger(step) || step < 0) throw peftError("ERR_CHECKPOINT", `AdamW.loadStateDict: state.${i}.step must be a non-negative integer, got ${step}`);
      if (m.disposed || v.disposed) throw peftError("ERR_DISPOSED", `AdamW.loadStateDict: state.${i} holds a disposed tensor`);
      return { step, expAvg: m, expAvgSq: v };
    });
    // Copies are made only once every entry has passed.
    const copied = next.map((st) => ({
      step: st.step,
      expAvg: st.expAvg ? untrack(st.expAvg.to("f32")) : null,
      expAvgSq: st.expAvgSq ? untrack(st.expAvgSq.to("f32")) : null,
    }));
    for (const st of this.#state) {
      st.expAvg?.dispose();
      st.expAvgSq?.dispose();
    }
    this.#state = copied;
    const lr = sd["param_groups.0.lr"];
    if (lr instanceof Tensor) this.lr = lr.toArray()[0];
  }
}
