// Small models for the IA3 model tests: a GPT-2-like stack (Conv1D attention and MLP, a Linear head) whose
// layer paths match transformers' names, so the IA3 defaults for "gpt2" apply.
import { Conv1D, Conv2d, Linear, Module, ModuleDict, Tensor, type BackwardOptions } from "../../lib/index.js";
import { values } from "./nn-reference.js";

/** x (…, 8) → attn.c_attn (8 → 24) → mlp.c_fc (24 → 16) → mlp.c_proj (16 → 8) → head (8 → 3). */
export class Gpt2Like extends Module {
  static readonly ORDER = ["attn.c_attn", "mlp.c_fc", "mlp.c_proj", "head"];
  constructor(seed = 0) {
    super();
    this.registerModule("attn", new ModuleDict({ c_attn: new Conv1D(24, 8, { seed }) }));
    this.registerModule("mlp", new ModuleDict({ c_fc: new Conv1D(16, 24, { seed: seed + 1 }), c_proj: new Conv1D(8, 16, { seed: seed + 2 }) }));
    this.registerModule("head", new Linear(8, 3, { seed: seed + 3 }));
    // Non-zero biases, so scaling them shows.
    for (const [name, p] of this.namedParameters()) if (name.endsWith("bias")) p.copyFrom(Tensor.fromArray(values(p.numel, seed + name.length), p.shape));
  }
  // Layers are looked up on every call, so adapter layers put in their place are the ones that run.
  override forward(x: Tensor): Tensor {
    for (const p of Gpt2Like.ORDER) x = this.getSubmodule(p).forward(x);
    return x;
  }
  override backward(dy: Tensor, opts?: BackwardOptions): Tensor | null {
    let g: Tensor | null = dy;
    for (const p of [...Gpt2Like.ORDER].reverse()) g = this.getSubmodule(p).backward(g!, p === "attn.c_attn" ? opts : undefined);
    return g;
  }
}

/** Layers of every kind IA3 adapts, for merging (no forward chain); gpt_ff is square, so the saved fan_in_fan_out decides its axis. */
export class Mixed extends Module {
  constructor() {
    super();
    this.registerModule("lin", new Linear(6, 5, { seed: 1 }));
    this.registerModule("lin_ff", new Linear(6, 4, { seed: 2 }));
    this.registerModule("gpt", new Conv1D(7, 4, { seed: 3 }));
    this.registerModule("gpt_ff", new Conv1D(5, 5, { seed: 4 }));
    this.registerModule("conv", new Conv2d(3, 4, 3, { seed: 5 }));
    this.registerModule("conv_ff", new Conv2d(3, 2, 1, { seed: 6 }));
    this.registerModule("keep", new Linear(2, 2, { seed: 7 }));
  }
  forward(x: Tensor): Tensor {
    return x;
  }
}
