// LoRA on bitsandbytes' Linear8bitLt (PEFT's tuners/lora/bnb.py, Linear8bitLt): the frozen int8 base runs
// its own int8 kernel, the adapters run in f32 beside it (T = drop(x)·Aᵀ, y += s·T·Bᵀ) and the sum is
// written in x's dtype; one graph node per call with one backward (dx through the int8 base's dx kernel).
// Merging dequantises CB·SCB/127 into f32, adds s·B·A and requantises with the layer's own quantiser, as
// PEFT does; unmerge is PEFT's lossy requantisation unless the merge kept the original CB/SCB
// (`exactUnmerge`), in which case unmerge restores them bit for bit.
import { Tensor } from "../../tensor.js";
import { int8LinearGradInput, int8Linear, int8Quantize, linear, linearGradWeight } from "../../ops.js";
import { dropout, scaleInPlace, sumRows } from "../../kernels.js";
import { describe, optionsArg, peftError, typeError } from "../../errors.js";
import { Linear8bitLt, gradOf } from "../../nn/index.js";
import { denseFanInFanOut, warnOnce } from "../tuner-layer.js";
import { applyLoraDeltas } from "./delta.js";
import { untrack } from "../../autograd/scope.js";
import { int8Dequantize } from "./int8-dequantize.js";
import { denseDoraOps } from "./dora-ops.js";
import { accumulateAdapterGrads } from "./side-adapters.js";
import type { DoraOps } from "./dora.js";
import { FusedLoraLayer, type FusedResult, type LoraLayerOptions, type MergeOptions, type NativeAdapter } from "./layer.js";

export { int8Dequantize };

/** A 2-D (rows, last) view of t (t itself when already 2-D), collected in `keep` for disposal. */
function rows(t: Tensor, keep: Tensor[]): Tensor {
  if (t.shape.length === 2) return t;
  const v = t.reshape([-1, t.shape[t.shape.length - 1]]);
  keep.push(v);
  return v;
}

/** t in f32 (t itself when it already is), collected in `keep` when converted. */
function asF32(t: Tensor, keep: Tensor[]): Tensor {
  if (t.dtype === "f32") return t;
  const c = t.to("f32");
  keep.push(c);
  return c;
}

/**
 * The transpose of a 2-D f32 tensor (for the adapters' small factors and T, never activations of size M·K), on
 * t's device: a device tensor goes through the host (there is no strided copy on the cuda device; these are r
 * rows, and Bᵀ is made once per version of B).
 */
function transposed(t: Tensor): Tensor {
  if (t.device !== "cpu") {
    using host = t.to("cpu");
    using tt = transposed(host);
    return tt.to(t.device);
  }
  const [r, c] = t.shape;
  const v = t.view() as Float32Array;
  const out = new Float32Array(r * c);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[j * r + i] = v[i * c + j];
  return Tensor.fromArray(out, [c, r], "f32");
}

/** t converted to `dtype` (t itself when it already is one; the f32 original is disposed). */
function inDtype(t: Tensor, dtype: Tensor["dtype"]): Tensor {
  if (t.dtype === dtype) return t;
  const c = t.to(dtype);
  t.dispose();
  return c;
}

export class LoraLinear8bitLt extends FusedLoraLayer {
  declare baseLayer: Linear8bitLt & { weight: Tensor; bias: Tensor | null };
  // The CB/SCB before the first merge, kept while merged when that merge asked for exactUnmerge.
  #original: { cb: Tensor; scb: Tensor } | null = null;
  #exactRequested = false;
  // Bᵀ (r, out) of each adapter, remade when B is replaced or changes (its version moves on every write).
  readonly #bt = new Map<string, { B: Tensor; version: number; t: Tensor }>();

  constructor(base: Linear8bitLt, opts: LoraLayerOptions) {
    if (!(base instanceof Linear8bitLt)) throw typeError(`LoraLinear8bitLt: the base layer must be a Linear8bitLt, got ${describe(base)}`);
    super(base);
    denseFanInFanOut(false, opts?.fanInFanOut);
    this.updateLayer(opts);
  }

  protected features(): [number, number] {
    return [this.baseLayer.inFeatures, this.baseLayer.outFeatures];
  }

  #transposedB(name: string, B: Tensor): Tensor {
    const c = this.#bt.get(name);
    if (c && c.B === B && c.version === B.version) return c.t;
    c?.t.dispose();
    // Kept by the layer across calls, so out of any tidy() scope it was made in.
    const t = untrack(transposed(B));
    this.#bt.set(name, { B, version: B.version, t });
    return t;
  }

  protected override removeAdapter(name: string): void {
    this.#bt.get(name)?.t.dispose();
    this.#bt.delete(name);
    super.removeAdapter(name);
  }

  /** DoRA over the int8 base: its result and dx come from the int8 kernels; xd·Wᵀ (dropout) from the dequantised W, as PEFT. */
  protected override doraOps(): DoraOps & Disposable {
    const base = this.baseLayer;
    return denseDoraOps(base, {
      baseOut: (x) => int8Linear(x, base.weight, base.SCB, null, base.threshold),
      baseGrad: (dz, _x, wantDx) => (wantDx ? int8LinearGradInput(dz, base.weight, base.SCB) : null),
    });
  }

  /** Whether the merged state keeps the original CB/SCB, so unmerge restores them exactly. */
  get keepsOriginal(): boolean {
    return this.#original !== null;
  }

  protected runForward(x: Tensor, adapters: NativeAdapter[]): FusedResult {
    const base = this.baseLayer;
    const keep: Tensor[] = [];
    const saved: Tensor[] = [];
    let y: Tensor | null = null;
    try {
      // The base runs on x in f32 (exact for bf16/f16 x: bitsandbytes quantises its f16 cast either way), so
      // base and adapters are summed in f32 and y is rounded to x's dtype once.
      const xf = asF32(x, keep);
      const x2 = rows(xf, keep);
      // U = s·drop(x)·Aᵀ (M, r) per adapter: what backward needs for dB. Without dropout on the CPU, the first
      // adapter's U is computed by the int8 kernel as it quantises x (x read once for both).
      const first = adapters[0];
      const fuseDown = first !== undefined && first.p === 0 && x2.device === "cpu" && this.loraWeights(first.name).A.dtype === "f32";
      adapters.forEach((a, i) => {
        const { A } = this.loraWeights(a.name);
        if (i === 0 && fuseDown) return void saved.push(Tensor.zeros([x2.shape[0], A.shape[0]]));
        using xd = a.p > 0 ? dropout(x2, a.p, a.seed, a.stream) : null;
        const U = linear(xd ?? x2, A);
        saved.push(U);
        scaleInPlace(U, a.scale);
      });
      // The first adapter's U·Bᵀ is added in the int8 kernel's epilogue (no pass over y of its own); any
      // further adapter's runs as an accumulating GEMM over the r rows of Uᵀ and Bᵀ.
      const down = fuseDown ? { down: this.loraWeights(first.name).A, scale: first.scale } : {};
      const rank = first ? { u: saved[0], bt: this.#transposedB(first.name, this.loraWeights(first.name).B), ...down } : undefined;
      y = int8Linear(xf, base.weight, base.SCB, base.bias, base.threshold, rank);
      const y2 = rows(y, keep);
      adapters.slice(1).forEach((a, i) => {
        using Ut = transposed(saved[i + 1]);
        linearGradWeight(Ut, this.#transposedB(a.name, this.loraWeights(a.name).B), y2, { accumulate: true });
      });
      return { y: inDtype(y, x.dtype), saved };
    } catch (e) {
      y?.dispose();
      saved.forEach((t) => t.dispose());
      throw e;
    } finally {
      keep.forEach((t) => t.dispose());
    }
  }

  protected runBackward(dy: Tensor, x: Tensor, saved: Tensor[], weight: Tensor, adapters: NativeAdapter[], wantDx: boolean): Tensor | null {
    const base = this.baseLayer;
    if (base.bias?.requiresGrad) sumRows(dy, gradOf(base.bias), { accumulate: true });
    const keep: Tensor[] = [];
    let dx: Tensor | null = null;
    try {
      // As forward: dx summed in f32, rounded to dy's dtype once.
      const dyf = asF32(dy, keep);
      dx = wantDx ? int8LinearGradInput(dyf, weight, base.SCB) : null;
      const dy2 = rows(dyf, keep);
      const dx2 = dx ? rows(dx, keep) : null;
      // dB, dA and the adapters' share of dx, with G = s·dy·B and the same dropout mask as forward's.
      let xf: Tensor | null = null;
      accumulateAdapterGrads((n) => this.loraWeights(n), dy2, () => (xf ??= asF32(rows(x, keep), keep)), saved, adapters, dx2);
      return dx ? inDtype(dx, dy.dtype) : null;
    } catch (e) {
      dx?.dispose();
      throw e;
    } finally {
      keep.forEach((t) => t.dispose());
    }
  }

  /** As every layer's merge; `exactUnmerge: true` keeps the original CB/SCB until unmerge restores them. */
  override merge(options: MergeOptions = {}): void {
    const opts = optionsArg(options, "merge");
    if (opts.exactUnmerge !== undefined && typeof opts.exactUnmerge !== "boolean")
      throw typeError(`${this.describe()}.merge: exactUnmerge must be a boolean, got ${describe(opts.exactUnmerge)}`);
    if (opts.exactUnmerge && this.merged && !this.#original)
      throw peftError("ERR_STATE", `${this.describe()}.merge: exactUnmerge asked for, but adapters ${this.mergedAdapters.join(", ")} are already merged without it: the original CB/SCB are gone; unmerge first`);
    this.#exactRequested = opts.exactUnmerge === true;
    warnOnce("PEFT_INT8_MERGE", "Merge lora module to 8-bit linear may get different generations due to rounding errors.");
    try {
      super.merge(opts);
    } finally {
      this.#exactRequested = false;
    }
  }

  protected override unmergeWarning(): string | null {
    // PEFT's warning; exactUnmerge restores the kept CB/SCB instead of requantising.
    return this.#original ? null : "Unmerge lora module to 8-bit linear may get different generations due to rounding errors.";
  }

  /** PEFT's 8-bit merge: dequantise, W ± Σ s·B·A in f32, requantise CB/SCB in place (or restore the kept ones). */
  protected override applyMerge(names: string[], sign: 1 | -1, safe: boolean, checkOnly: boolean): number {
    const base = this.baseLayer;
    if (sign < 0 && this.#original) {
      base.weight.copyFrom(this.#original.cb);
      base.SCB.copyFrom(this.#original.scb);
      this.#dropOriginal();
      return -1;
    }
    // DoRA adapters: the shared DoRA merge over the dequantised weight (readMergeWeight), requantised below.
    if (names.some((n) => this.useDora[n])) return this.doraMerge(names, sign, safe, checkOnly);
    const keep: Tensor[] = [];
    try {
      const { deltas } = this.mergeOperands(names, keep);
      using w = int8Dequantize(base.weight, base.SCB);
      const bad = applyLoraDeltas(w, deltas, { sign, safe, checkOnly });
      if (bad >= 0 || checkOnly) return bad;
      this.writeMergeWeight(w);
      return -1;
    } finally {
      keep.forEach((t) => t.dispose());
    }
  }

  /** Requantises a merged f32 weight into CB/SCB (keeping the originals first when the merge asked for exactUnmerge). */
  protected override writeMergeWeight(w: Tensor): void {
    const base = this.baseLayer;
    const [cb, scb] = int8Quantize(w);
    using _cb = cb, _scb = scb;
    // Only a merge sets #exactRequested (an unmerge with kept originals restores them before getting here).
    if (this.#exactRequested && !this.#original) this.#original = { cb: untrack(base.weight.to("i8")), scb: untrack(base.SCB.to("f32")) }; // copies
    base.weight.copyFrom(cb);
    base.SCB.copyFrom(scb);
  }

  #dropOriginal(): void {
    this.#original?.cb.dispose();
    this.#original?.scb.dispose();
    this.#original = null;
  }

  override dispose(): void {
    this.#dropOriginal();
    for (const c of this.#bt.values()) c.t.dispose();
    this.#bt.clear();
    super.dispose();
  }
}
