// Parameter-free layers: activations, LogSoftmax, Dropout.
import { Tensor } from "../tensor.js";
import { activation, activationBackward, dropout, logSoftmax, logSoftmaxBackward, type Activation } from "../kernels.js";
import { optionsArg, peftError, shownValue, typeError } from "../errors.js";
import { takeRng } from "../random.js";
import { Module, type BackwardOptions } from "./module.js";
import { record, wantsGrad } from "../autograd/record.js";

/** An elementwise activation: saves its input, backward from it. */
abstract class ActivationModule extends Module {
  protected abstract readonly kind: Activation;

  forward(x: Tensor): Tensor {
    this.input(x);
    if (this.training) this.save(x);
    else this.releaseSaved();
    const y = activation(this.kind, x);
    if (!wantsGrad(x)) return y;
    const kind = this.kind;
    return record(`${this.constructor.name}Backward`, [x], y, ([g], [xs]) => [g ? activationBackward(kind, xs, g) : null], [x]);
  }

  override backward(dy: Tensor, options: BackwardOptions = {}): Tensor | null {
    const opts = this.gradInput(dy, options);
    const [x] = this.saved();
    const dx = opts.inputGrad === false ? null : activationBackward(this.kind, x, dy);
    this.releaseSaved();
    return dx;
  }
}

export class ReLU extends ActivationModule {
  protected readonly kind = "relu";
  override clone(): ReLU {
    return new ReLU();
  }
}

export class SiLU extends ActivationModule {
  protected readonly kind = "silu";
  override clone(): SiLU {
    return new SiLU();
  }
}

export class GELU extends ActivationModule {
  protected readonly kind: Activation;
  /** approximate: "none" (the exact erf form, PyTorch's default) or "tanh". */
  constructor(options: { approximate?: "none" | "tanh" } = {}) {
    super();
    const opts = optionsArg(options, "GELU");
    if (opts.approximate !== undefined && opts.approximate !== "none" && opts.approximate !== "tanh")
      throw peftError("ERR_CONFIG", `GELU: approximate must be "none" or "tanh", got ${shownValue(opts.approximate)}`);
    this.kind = opts.approximate === "tanh" ? "gelu_tanh" : "gelu";
  }
  override clone(): GELU {
    return new GELU({ approximate: this.kind === "gelu_tanh" ? "tanh" : "none" });
  }

  override extraRepr(): string {
    return `approximate='${this.kind === "gelu_tanh" ? "tanh" : "none"}'`;
  }
}

/** log-softmax over the last dimension; backward from its output. */
export class LogSoftmax extends Module {
  forward(x: Tensor): Tensor {
    this.input(x);
    const y = logSoftmax(x);
    if (this.training) this.save(y);
    else this.releaseSaved();
    if (!wantsGrad(x)) return y;
    return record("LogSoftmaxBackward", [x], y, ([g], [ys]) => [g ? logSoftmaxBackward(ys, g) : null], [y]);
  }

  override backward(dy: Tensor, options: BackwardOptions = {}): Tensor | null {
    const opts = this.gradInput(dy, options);
    const [y] = this.saved();
    const dx = opts.inputGrad === false ? null : logSoftmaxBackward(y, dy);
    this.releaseSaved();
    return dx;
  }

  override clone(): LogSoftmax {
    return new LogSoftmax();
  }

  override extraRepr(): string {
    return "dim=-1";
  }
}

/**
 * Inverted dropout with counter-based masks: forward draws a fresh Philox stream and remembers only
 * (seed, stream); backward regenerates the same mask instead of storing it.
 */
export class Dropout extends Module {
  readonly p: number;
  #rng: { seed: number; stream: number } | null = null;

  constructor(p = 0.5) {
    super();
    if (typeof p !== "number") throw typeError("Dropout: p must be a number");
    if (!(p >= 0 && p < 1)) throw peftError("ERR_CONFIG", `Dropout: p must be in [0, 1), got ${p}`);
    this.p = p;
  }

  forward(x: Tensor): Tensor {
    this.input(x);
    if (!this.training || this.p === 0) {
      this.#rng = null;
      if (this.training) this.save();
      else this.releaseSaved();
      // The identity: a new handle on x's storage, the gradient passed straight through.
      const y = x.detach();
      return wantsGrad(x) ? record("DropoutBackward", [x], y, ([g]) => [g]) : y;
    }
    this.save();
    const rng = (this.#rng = takeRng(undefined, "Dropout"));
    const p = this.p;
    const y = dropout(x, p, rng.seed, rng.stream);
    return wantsGrad(x) ? record("DropoutBackward", [x], y, ([g]) => [g ? dropout(g, p, rng.seed, rng.stream) : null]) : y;
  }

  override backward(dy: Tensor, options: BackwardOptions = {}): Tensor | null {
    const opts = this.gradInput(dy, options);
    this.saved();
    this.releaseSaved();
    const rng = this.#rng;
    this.#rng = null;
    if (opts.inputGrad === false) return null;
    if (this.p === 0 || !rng) return dy.detach();
    return dropout(dy, this.p, rng.seed, rng.stream);
  }

  override clone(): Dropout {
    return new Dropout(this.p);
  }

  override extraRepr(): string {
    return `p=${this.p}`;
  }
}
