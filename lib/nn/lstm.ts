// LSTM (torch.nn.LSTM, batch_first): stacked, optionally bidirectional, dropout between layers, PyTorch's
// parameter names (weight_ih_l{k}[_reverse], weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k}; gates in the order
// input, forget, cell, output) and init (every tensor U(±1/√hidden)). Composed from differentiable F ops:
// the input projection of all time steps is one linear per layer and direction, then each time step is a
// few small graph nodes (recurrent linear, gate nonlinearities, cell update), so backward is autograd's.
// Meant for short sequences such as P-tuning's virtual tokens, not as a fast recurrent kernel.
import { Tensor, describe, type DType } from "../tensor.js";
import * as F from "../functional/index.js";
import { tidy } from "../autograd/tidy.js";
import { optionsArg, peftError, typeError } from "../errors.js";
import { Module } from "./module.js";

export interface LSTMOptions {
  /** Stacked layers (default 1). */
  numLayers?: number;
  /** Dropout on each layer's output but the last's, while training (default 0). */
  dropout?: number;
  bidirectional?: boolean;
  /** Biases b_ih and b_hh (default true). */
  bias?: boolean;
  dtype?: DType;
  seed?: number;
}

export interface LSTMOutput {
  /** [batch, seq, directions·hidden]: the last layer's h at every step (forward then reverse halves). */
  output: Tensor;
  /** [layers·directions, batch, hidden]: each layer and direction's final h. */
  hN: Tensor;
  /** [layers·directions, batch, hidden]: each layer and direction's final cell state. */
  cN: Tensor;
}

function count(v: unknown, name: string, min: number): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v)) throw typeError(`LSTM: ${name} must be an integer, got ${describe(v)}`);
  if (v < min) throw peftError("ERR_CONFIG", `LSTM: ${name} must be at least ${min}, got ${v}`);
  return v;
}

export class LSTM extends Module {
  readonly inputSize: number;
  readonly hiddenSize: number;
  readonly numLayers: number;
  readonly dropout: number;
  readonly bidirectional: boolean;
  readonly bias: boolean;

  constructor(inputSize: number, hiddenSize: number, options: LSTMOptions = {}) {
    super();
    const opts = optionsArg(options, "LSTM");
    this.inputSize = count(inputSize, "inputSize", 1);
    this.hiddenSize = count(hiddenSize, "hiddenSize", 1);
    this.numLayers = count(opts.numLayers ?? 1, "numLayers", 1);
    const p = opts.dropout ?? 0;
    if (typeof p !== "number" || !(p >= 0 && p <= 1)) throw peftError("ERR_CONFIG", `LSTM: dropout must be a number in [0, 1], got ${describe(p)}`);
    this.dropout = p;
    for (const k of ["bidirectional", "bias"] as const)
      if (opts[k] !== undefined && typeof opts[k] !== "boolean") throw typeError(`LSTM: ${k} must be a boolean, got ${describe(opts[k])}`);
    this.bidirectional = opts.bidirectional === true;
    this.bias = opts.bias !== false;
    const H = this.hiddenSize, bound = 1 / Math.sqrt(H), dtype = opts.dtype ?? "f32";
    let stream = 0;
    const init = (shape: number[]) => Tensor.rand(shape, { seed: opts.seed, stream: opts.seed === undefined ? undefined : stream++, lo: -bound, hi: bound, dtype });
    for (let l = 0; l < this.numLayers; l++) {
      const inF = l === 0 ? this.inputSize : H * this.directions;
      for (const sfx of this.#suffixes()) {
        this.registerParameter(`weight_ih_l${l}${sfx}`, init([4 * H, inF]));
        this.registerParameter(`weight_hh_l${l}${sfx}`, init([4 * H, H]));
        if (this.bias) {
          this.registerParameter(`bias_ih_l${l}${sfx}`, init([4 * H]));
          this.registerParameter(`bias_hh_l${l}${sfx}`, init([4 * H]));
        }
      }
    }
  }

  get directions(): number {
    return this.bidirectional ? 2 : 1;
  }

  #suffixes(): string[] {
    return this.bidirectional ? ["", "_reverse"] : [""];
  }

  #param(name: string): Tensor {
    const t = [...this.namedParameters("", { recurse: false })].find(([n]) => n === name)?.[1];
    if (!t) throw peftError("ERR_STATE", `${this.describe()}: parameter ${name} is missing`);
    return t;
  }

  /** x [batch, seq, inputSize] (batch_first); the initial h and c are zeros, as torch's default. */
  forward(x: Tensor): LSTMOutput {
    const op = "LSTM.forward";
    if (!(x instanceof Tensor)) throw typeError(`${op}: x must be a Tensor, got ${describe(x)}`);
    if (x.shape.length !== 3 || x.shape[2] !== this.inputSize)
      throw peftError("ERR_SHAPE", `${op}: x must be [batch, seq, ${this.inputSize}], got [${x.shape.join(", ")}]`);
    if (x.dtype !== "f32" && x.dtype !== "bf16" && x.dtype !== "f16") throw peftError("ERR_DTYPE", `${op}: x must be a float tensor, got ${x.dtype}`);
    const [B, T] = x.shape;
    const H = this.hiddenSize;
    return tidy(() => {
      let input = x;
      const hs: Tensor[] = [], cs: Tensor[] = [];
      for (let l = 0; l < this.numLayers; l++) {
        const outs = this.#suffixes().map((sfx, d) => {
          const w = (n: string) => this.#param(`${n}_l${l}${sfx}`);
          const bias = this.bias ? F.add(w("bias_ih"), w("bias_hh")) : null;
          // Every step's input contribution at once: [B, T, 4H].
          const xw = F.linear(input, w("weight_ih"), bias);
          const whh = w("weight_hh");
          let h = Tensor.zeros([B, H], { dtype: x.dtype });
          let c = Tensor.zeros([B, H], { dtype: x.dtype });
          const steps: Tensor[] = new Array(T);
          for (let s = 0; s < T; s++) {
            const t = d === 1 ? T - 1 - s : s;
            const gates = F.add(F.narrow(xw, 1, t, 1).reshape([B, 4 * H]), F.linear(h, whh));
            const gate = (k: number) => F.narrow(gates, 1, k * H, H);
            const i = F.sigmoid(gate(0)), f = F.sigmoid(gate(1)), g = F.tanh(gate(2)), o = F.sigmoid(gate(3));
            c = F.add(F.mul(f, c), F.mul(i, g));
            h = F.mul(o, F.tanh(c));
            steps[t] = h;
          }
          hs.push(h);
          cs.push(c);
          return T === 0 ? Tensor.zeros([B, 0, H], { dtype: x.dtype }) : F.stack(steps, 1);
        });
        input = outs.length === 1 ? outs[0] : F.cat(outs, 2);
        if (l + 1 < this.numLayers && this.dropout > 0 && this.training) input = F.dropout(input, this.dropout, { training: true });
      }
      return { output: input, hN: F.stack(hs, 0), cN: F.stack(cs, 0) };
    });
  }

  override clone(): LSTM {
    const first = this.#param("weight_ih_l0");
    return new LSTM(this.inputSize, this.hiddenSize, {
      numLayers: this.numLayers, dropout: this.dropout, bidirectional: this.bidirectional, bias: this.bias, dtype: first.dtype,
    }).copyParametersFrom(this);
  }

  override extraRepr(): string {
    return `${this.inputSize}, ${this.hiddenSize}, num_layers=${this.numLayers}, batch_first=True` +
      (this.dropout ? `, dropout=${this.dropout}` : "") + (this.bidirectional ? ", bidirectional=True" : "") + (this.bias ? "" : ", bias=False");
  }
}
