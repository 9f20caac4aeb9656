// Embedding: a lookup table (V, D) indexed by i32/i64 ids; backward scatters into the weight's gradient.
import { Tensor, type DType } from "../tensor.js";
import { embedding, embeddingBackward } from "../kernels.js";
import { describe, optionsArg, peftError, typeError } from "../errors.js";
import { Module, gradOf, type BackwardOptions } from "./module.js";
import { record, wantsGrad } from "../autograd/record.js";

export class Embedding extends Module {
  weight: Tensor;
  readonly numEmbeddings: number;
  readonly embeddingDim: number;
  /** PyTorch's padding_idx (made non-negative): that row starts at zero and never receives a gradient. */
  readonly paddingIdx: number | null;

  /** PyTorch's init: N(0, 1), the padding row zeroed. */
  constructor(numEmbeddings: number, embeddingDim: number, options: { paddingIdx?: number | null; dtype?: DType; seed?: number } = {}) {
    super();
    const opts = optionsArg(options, "Embedding");
    for (const [n, what] of [[numEmbeddings, "numEmbeddings"], [embeddingDim, "embeddingDim"]] as const) {
      if (typeof n !== "number") throw typeError(`Embedding: ${what} must be a number`);
      if (!Number.isSafeInteger(n) || n < 0) throw peftError("ERR_CONFIG", `Embedding: ${what} must be a non-negative integer, got ${n}`);
    }
    this.numEmbeddings = numEmbeddings;
    this.embeddingDim = embeddingDim;
    this.paddingIdx = paddingIndex(opts.paddingIdx, numEmbeddings, "Embedding");
    this.weight = this.registerParameter("weight", Tensor.randn([numEmbeddings, embeddingDim], { seed: opts.seed, dtype: opts.dtype ?? "f32" }));
    if (this.paddingIdx !== null) this.weight.view().fill(0 as never, this.paddingIdx * embeddingDim, (this.paddingIdx + 1) * embeddingDim);
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
    keepingRow(gradOf(this.weight), this.paddingIdx, (dW) => embeddingBackward(ids, dy, dW));
  }

  override clone(): Embedding {
    return new Embedding(this.numEmbeddings, this.embeddingDim, { paddingIdx: this.paddingIdx, dtype: this.weight.dtype }).copyParametersFrom(this);
  }

  override extraRepr(): string {
    return `${this.numEmbeddings}, ${this.embeddingDim}${this.paddingIdx === null ? "" : `, padding_idx=${this.paddingIdx}`}`;
  }
}

/** PyTorch's padding_idx check: an integer in [-num, num), negative ones counted from the end; null for none. */
export function paddingIndex(v: unknown, num: number, what: string): number | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== "number" || !Number.isSafeInteger(v)) throw typeError(`${what}: paddingIdx must be an integer or null, got ${describe(v)}`);
  if (v < -num || v >= num) throw peftError("ERR_CONFIG", `${what}: paddingIdx must be within num_embeddings (${num}), got ${v}`);
  return v < 0 ? v + num : v;
}

/** Runs `scatter` on a gradient whose row `row` (the padding row) must not change, as PyTorch's padding_idx. */
export function keepingRow(grad: Tensor, row: number | null, scatter: (g: Tensor) => void): void {
  if (row === null) return scatter(grad);
  const D = grad.shape[1];
  const v = grad.view();
  const kept = v.slice(row * D, (row + 1) * D);
  scatter(grad);
  v.set(kept as never, row * D);
}
