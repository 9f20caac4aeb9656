// LoRA on Embedding (PEFT's lora.Embedding): lora_embedding_A (r, num) and lora_embedding_B (dim, r) as plain
// parameters; y = base(ids) + s·Aᵀ[ids]·Bᵀ. PEFT applies no dropout here, and the base's padding_idx keeps
// its column of A from any gradient. Backward touches only the looked-up columns of A.
import { Tensor } from "../../tensor.js";
import { native } from "../../native.js";
import { matmul } from "../../ops.js";
import { addInPlace, embedding, embeddingBackward, scaleInPlace, sumRows } from "../../kernels.js";
import { ew } from "../../functional/raw.js";
import { describe, peftError, typeError } from "../../errors.js";
import { Embedding, ParameterDict, gradOf, type BackwardOptions } from "../../nn/index.js";
import { keepingRow } from "../../nn/embedding.js";
import { record, wantsGrad } from "../../autograd/record.js";
import { LoraLayer, type LoraLayerOptions } from "./layer.js";
import type { LoraDelta } from "./delta.js";

export class LoraEmbedding extends LoraLayer {
  declare baseLayer: Embedding;
  readonly loraEmbeddingA: ParameterDict;
  readonly loraEmbeddingB: ParameterDict;
  #forwardAdapters: string[] = [];

  constructor(base: Embedding, opts: LoraLayerOptions) {
    if (!(base instanceof Embedding)) throw typeError(`LoraEmbedding: the base layer must be an Embedding, got ${describe(base)}`);
    super(base);
    this.loraEmbeddingA = this.registerModule("lora_embedding_A", new ParameterDict());
    this.loraEmbeddingB = this.registerModule("lora_embedding_B", new ParameterDict());
    this.updateLayer(opts);
  }

  override get adapterNames(): string[] {
    return this.loraEmbeddingA?.keys() ?? [];
  }

  protected features(): [number, number] {
    return [this.baseLayer.numEmbeddings, this.baseLayer.embeddingDim];
  }

  /** PEFT: A zeros and B ~ N(0, 1) (for "gaussian" too); init false leaves both N(0, 1). */
  protected override createAdapterWeights(name: string, r: number, init: boolean | "gaussian"): void {
    const [num, dim] = this.features();
    this.loraEmbeddingA.set(name, init === false ? Tensor.randn([r, num]) : Tensor.zeros([r, num]));
    this.loraEmbeddingB.set(name, Tensor.randn([dim, r]));
  }

  protected override removeAdapterWeights(name: string): void {
    this.loraEmbeddingA.delete(name);
    this.loraEmbeddingB.delete(name);
  }

  protected override loraWeights(name: string): { A: Tensor; B: Tensor } {
    return { A: this.loraEmbeddingA.get(name), B: this.loraEmbeddingB.get(name) };
  }

  override adapterStateEntries(name: string): [string, Tensor][] {
    const { A, B } = this.loraWeights(name);
    return this.withMagnitude(name, [["lora_embedding_A", A], ["lora_embedding_B", B]]);
  }

  /** PEFT's DoraEmbeddingVariant: the norm per embedding dimension, y = c ⊙ (y + s·u) (no dropout here). */
  protected override doraRefusal(): string | null {
    return null;
  }

  /** W (num, dim) += s·(B·A)ᵀ: W is the (K, N) layout of the product B (dim, r)·A (r, num). */
  protected override mergeOperands(names: string[]): { weight: Tensor; deltas: LoraDelta[]; weightInOut: boolean } {
    return { weight: this.baseLayer.weight, deltas: names.map((n) => ({ ...this.loraWeights(n), scale: this.scaling[n] })), weightInOut: true };
  }

  forward(ids: Tensor): Tensor {
    if (!(ids instanceof Tensor)) throw typeError("LoraEmbedding.forward: ids must be a Tensor");
    const base = this.baseLayer;
    const adapters = this.adaptersToRun();
    if (!adapters.length) {
      this.releaseSaved();
      this.#forwardAdapters = [];
      return base.forward(ids);
    }
    base.releaseSaved();
    if (adapters.some((n) => this.useDora[n])) this.requireDoraOnCpu(ids, base.weight);
    let y = embedding(ids, base.weight);
    // Per DoRA adapter the sum it rescaled and its norm (for the magnitude's gradient and dy's rescale).
    const dora: Tensor[] = [];
    try {
      using flat = ids.reshape([-1]);
      for (const n of adapters) {
        const { A, B } = this.loraWeights(n);
        using at = new Tensor(native.indexSelect(Tensor.handle(A), 1, Tensor.handle(flat))); // (r, M)
        using u = matmul(at, B, { transA: true, transB: true }); // (M, dim)
        using u2 = u.reshape(y.shape);
        addInPlace(y, u2, this.scaling[n]);
        const m = this.doraMagnitude(n);
        if (!m) continue;
        // PEFT: result = m/‖W + s·(B·A)ᵀ‖ ⊙ (result + s·u), the norm per embedding dimension, detached.
        const norm = this.doraNorm(n);
        using c = ew("div", [m, norm], "f32");
        dora.push(y, norm);
        y = ew("mul", [y, c], y.dtype);
      }
    } catch (e) {
      y.dispose();
      dora.forEach((t) => t.dispose());
      throw e;
    }
    if (this.training) {
      this.save(ids, ...dora);
      this.#forwardAdapters = adapters;
    } else {
      this.releaseSaved();
      this.#forwardAdapters = [];
    }
    const params = adapters.flatMap((n) => this.adapterParameters(n));
    const k = dora.length;
    if (wantsGrad(base.weight, ...params))
      record("LoraEmbeddingBackward", [], y, ([g], saved) => (g && this.#gradients(g, saved[0], adapters, saved.slice(saved.length - k)), []), [ids, base.weight, ...params, ...dora], { force: true });
    dora.forEach((t) => t.dispose());
    return y;
  }

  /** Accumulates the gradients of A, B (and a trainable base weight); integer ids have none (returns null). */
  override backward(dy: Tensor, options: BackwardOptions = {}): null {
    this.gradInput(dy, options);
    if (!this.#forwardAdapters.length) return this.baseLayer.backward(dy, options);
    if (this.merged) throw peftError("ERR_STATE", `${this.describe()}.backward: adapters are merged; unmerge them before training`);
    const [ids, ...dora] = this.saved();
    this.#gradients(dy, ids, this.#forwardAdapters, dora);
    this.releaseSaved();
    this.#forwardAdapters = [];
    return null;
  }

  /** `dora`: per DoRA adapter (in order) the sum it rescaled and its norm, as forward kept them. */
  #gradients(dy: Tensor, ids: Tensor, adapters: string[], dora: Tensor[]): void {
    const base = this.baseLayer;
    const pad = base.paddingIdx;
    using flat = ids.reshape([-1]);
    using dy32 = dy.dtype === "f32" ? null : dy.to("f32");
    // dq: the gradient of the running result, walked back through the adapters (a DoRA adapter scaled it by c).
    let dq = (dy32 ?? dy).reshape([flat.shape[0], -1]); // (M, dim)
    let k = dora.length;
    try {
      for (let i = adapters.length - 1; i >= 0; i--) {
        const n = adapters[i];
        const { A, B } = this.loraWeights(n);
        const s = this.scaling[n];
        const m = this.doraMagnitude(n);
        if (m) {
          const [pre, norm] = [dora[k - 2], dora[k - 1]];
          k -= 2;
          if (m.requiresGrad) {
            // dm += Σ_rows dq ⊙ pre / ‖…‖
            using pre2 = pre.reshape(dq.shape);
            using prod = ew("mul", [dq, pre2], "f32");
            using sum = Tensor.zeros([dq.shape[1]]);
            sumRows(prod, sum, { accumulate: false });
            using dm = ew("div", [sum, norm], "f32");
            addInPlace(gradOf(m), dm);
          }
          using c = ew("div", [m, norm], "f32");
          const next = ew("mul", [dq, c], "f32");
          dq.dispose();
          dq = next;
        }
        if (B.requiresGrad) {
          // dB += s·dqᵀ·Aᵀ[ids]
          using at = new Tensor(native.indexSelect(Tensor.handle(A), 1, Tensor.handle(flat)));
          using dB = matmul(dq, at, { transA: true, transB: true });
          addInPlace(gradOf(B), dB, s);
        }
        if (A.requiresGrad) {
          // dA[:, ids[m]] += s·(dq·B)[m] for every looked-up id; the padding column keeps what it had.
          using g = matmul(B, dq, { transA: true, transB: true }); // (r, M)
          scaleInPlace(g, s);
          keepingColumn(gradOf(A), pad, (dA) => native.indexAdd(Tensor.handle(dA), 1, Tensor.handle(flat), Tensor.handle(g)));
        }
      }
      if (base.weight.requiresGrad) {
        using dq3 = dq.reshape(dy.shape);
        keepingRow(gradOf(base.weight), pad, (g) => embeddingBackward(ids, dq3, g));
      }
    } finally {
      dq.dispose();
    }
  }
}

/** Runs `scatter` on an (r, num) gradient whose column `col` must not change (PyTorch's padding_idx on Aᵀ). */
function keepingColumn(grad: Tensor, col: number | null, scatter: (g: Tensor) => void): void {
  if (col === null) return scatter(grad);
  const [r, num] = grad.shape;
  const v = grad.view();
  const kept = Array.from({ length: r }, (_, j) => v[j * num + col]);
  scatter(grad);
  kept.forEach((x, j) => (v[j * num + col] = x as never));
}
