// PEFT's custom-model MLP: seq = Linear(20, 2000), ReLU, Linear(2000, 2000), ReLU, Linear(2000, 2), LogSoftmax.
import { Module, Sequential, Linear, ReLU, LogSoftmax } from "../dist/index.js";

export class MLP extends Module {
  constructor(hidden = 2000) {
    super();
    this.seq = this.registerModule(
      "seq",
      new Sequential(new Linear(20, hidden), new ReLU(), new Linear(hidden, hidden), new ReLU(), new Linear(hidden, 2), new LogSoftmax()),
    );
  }
  forward(x) {
    return this.seq.forward(x);
  }
  backward(dy, opts) {
    return this.seq.backward(dy, opts);
  }
}
