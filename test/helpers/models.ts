// Small models shared by the tuner tests: PEFT's custom-model guide MLP and a model keeping its layers in fields.
import { Linear, LogSoftmax, Module, ReLU, Sequential, Tensor, type BackwardOptions } from "../../lib/index.js";

/** PEFT's custom-model MLP: seq = Linear(20, h), ReLU, Linear(h, h), ReLU, Linear(h, 2), LogSoftmax. */
export class MLP extends Module {
  seq: Sequential;
  constructor(hidden = 2000, seed = 0) {
    super();
    this.seq = this.registerModule(
      "seq",
      new Sequential(new Linear(20, hidden, { seed }), new ReLU(), new Linear(hidden, hidden, { seed: seed + 1 }), new ReLU(), new Linear(hidden, 2, { seed: seed + 2 }), new LogSoftmax()),
    );
  }
  override forward(x: Tensor): Tensor {
    return this.seq.forward(x);
  }
  override backward(dy: Tensor, opts?: BackwardOptions): Tensor | null {
    return this.seq.backward(dy, opts);
  }
}
