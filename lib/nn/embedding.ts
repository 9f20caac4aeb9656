// Embedding: a lookup table (V, D) indexed by i32/i64 ids; backward scatters into the weight's gradient.
import { Tensor, type DType } from "../tensor.js";
import { embedding, embeddingBackward } from "../kernels.js";
import { optionsArg, peftError, typeError } from "../errors.js";
import { Module, gradOf, type BackwardOptions } from "./module.js";
import { record, wantsGrad } from "../autograd/record.js";

export class Embedding extends Module {
  weight: Tensor;
  readonly numEmbeddings: number;
  readonly embeddingDim: number;

  /** PyTorch's init: N(0, 1). */
  constructor(numEmbeddings: number, embeddingDim: number, options: { dtype?: DType; seed?: number } = {}) {
    super();
    const opts = optionsArg(options, "Embedding");
    for (const [n, what] of [[numEmbeddings, "numEmbeddings"], [embeddingDim, "embeddingDim"]] as const) {
      if (typeof n !== "number") throw typeError(`Embedding: ${what} must be a number`);
      if (!Number.isSafeInteger(n) || n < 0) throw peftError("ERR_CONFIG", `Embedding: ${what} must be a non-negative integer, got ${n}`);
    }
    this.numEmbeddings = numEmbeddings;
    this.embeddingDim = embeddingDim;
    this.weight = this.registerParameter("weight", Tensor.randn([numEmbeddings, embeddingDim], { seed: opts.seed, dtype: opts.dtype ?? "f32" }));
  }

  forward(ids: Tensor): Tensor {
    this.input(ids, "ids");
    const y = embedding(ids, this.weight);
    if (!this.training) this.releaseSaved();
    else if (this.weight.requiresGrad) this.save(ids);
    else this.save();
    if (!wantsGrad(this.weight)) return y;
    return record("EmbeddingBackward", [], y, ([g], [savedIds]) => (this.gradients(g, savedIds), []), [ids], { force: true });
  }

  /** Accumulates the weight gradient; there is no gradient for integer ids (returns null). */
  override backward(dy: Tensor, opts: BackwardOptions = {}): null {
    this.gradInput(dy, opts);
    const [ids] = this.saved();
    this.gradients(dy, ids);
    this.releaseSaved();
    return null;
  }

  protected gradients(dy: Tensor | null, ids: Tensor | undefined): void {
    if (!dy || !this.weight.requiresGrad) return;
    if (!ids) throw peftError("ERR_STATE", `${this.describe()}.backward: the weight was frozen during forward; run forward again after unfreezing it`);
    embeddingBackward(ids, dy, gradOf(this.weight));
  }

  override clone(): Embedding {
    return new Embedding(this.numEmbeddings, this.embeddingDim, { dtype: this.weight.dtype }).copyParametersFrom(this);
  }

  override extraRepr(): string {
    return `${this.numEmbeddings}, ${this.embeddingDim}`;
  }
}
