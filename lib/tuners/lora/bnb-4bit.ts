// LoRA on bitsandbytes' Linear4bit (QLoRA; PEFT's tuners/lora/bnb.py Linear4bit): the frozen 4-bit base runs its
// own product (W unpacked into the GEMM's panels, in the base's compute dtype), the adapters run in f32 beside
// it and the sum is rounded once into x's dtype; one graph node per call with one backward (dx through the
// base's 4-bit dx). Merging is PEFT's, adapter by adapter: dequantise (dequantize_4bit), add s·B·A in f32,
// requantise with the layer's own quant type, block size and statistics mode; unmerge subtracts the same way
// (lossy: the requantisation rounds again), with PEFT's warnings.
import { Tensor } from "../../tensor.js";
import { sumRows } from "../../kernels.js";
import { describe, typeError } from "../../errors.js";
import { Linear4bit, gradOf } from "../../nn/index.js";
import { denseFanInFanOut, warnOnce } from "../tuner-layer.js";
import { applyLoraDeltas } from "./delta.js";
import { accumulateAdapterGrads, addAdapterOutputs } from "./side-adapters.js";
import { FusedLoraLayer, type FusedResult, type LoraLayerOptions, type MergeOptions, type NativeAdapter } from "./layer.js";

/** Collects what a call made for disposal; `f32` and `matrix` give views/copies without touching the originals. */
class Scratch implements Disposable {
  readonly made: Tensor[] = [];
  f32(t: Tensor): Tensor {
    return t.dtype === "f32" ? t : this.own(t.to("f32"));
  }
  matrix(t: Tensor): Tensor {
    return t.shape.length === 2 ? t : this.own(t.reshape([-1, t.shape[t.shape.length - 1]]));
  }
  own(t: Tensor): Tensor {
    this.made.push(t);
    return t;
  }
  [Symbol.dispose](): void {
    this.made.forEach((t) => t.dispose());
  }
}

/** y (f32) rounded into `dtype`, the f32 one disposed when a copy is made. */
function rounded(y: Tensor, dtype: Tensor["dtype"]): Tensor {
  if (y.dtype === dtype) return y;
  try {
    return y.to(dtype);
  } finally {
    y.dispose();
  }
}

export class LoraLinear4bit extends FusedLoraLayer {
  declare baseLayer: Linear4bit & { weight: Tensor; bias: Tensor | null };

  constructor(base: Linear4bit, opts: LoraLayerOptions) {
    if (!(base instanceof Linear4bit)) throw typeError(`LoraLinear4bit: the base layer must be a Linear4bit, got ${describe(base)}`);
    super(base);
    denseFanInFanOut(false, opts?.fanInFanOut);
    this.updateLayer(opts);
  }

  protected features(): [number, number] {
    return [this.baseLayer.inFeatures, this.baseLayer.outFeatures];
  }

  protected runForward(x: Tensor, adapters: NativeAdapter[]): FusedResult {
    using s = new Scratch();
    // The base's product as its own forward gives it (x's dtype), widened; adapters added in f32, y rounded once.
    const base = this.baseLayer.product(x);
    const y = base.dtype === "f32" ? base : s.own(base).to("f32");
    try {
      const saved = addAdapterOutputs((n) => this.loraWeights(n), s.matrix(s.f32(x)), s.matrix(y), adapters);
      return { y: rounded(y, x.dtype), saved };
    } catch (e) {
      y.dispose();
      throw e;
    }
  }

  protected runBackward(dy: Tensor, x: Tensor, saved: Tensor[], _weight: Tensor, adapters: NativeAdapter[], wantDx: boolean): Tensor | null {
    const base = this.baseLayer;
    if (base.bias?.requiresGrad) sumRows(dy, gradOf(base.bias), { accumulate: true });
    using s = new Scratch();
    // dx summed in f32 (the base's W rounded to its compute dtype for x), rounded to dy's dtype once.
    const dyf = s.f32(dy);
    const dx = wantDx ? base.gradInput4bit(dyf, base.computeFor(x)) : null;
    let xf: Tensor | null = null;
    try {
      accumulateAdapterGrads((n) => this.loraWeights(n), s.matrix(dyf), () => (xf ??= s.matrix(s.f32(x))), saved, adapters, dx ? s.matrix(dx) : null);
      return dx ? rounded(dx, dy.dtype) : null;
    } catch (e) {
      dx?.dispose();
      throw e;
    }
  }

  override merge(options: MergeOptions = {}): void {
    warnOnce("PEFT_4BIT_MERGE", "Merge lora module to 4-bit linear may get different generations due to rounding errors.");
    super.merge(options);
  }

  protected override unmergeWarning(): string | null {
    return "Unmerge lora module to 4-bit linear may get different generations due to rounding errors.";
  }

  /**
   * PEFT's 4-bit merge: per adapter, W = dequantize_4bit(base) ± s·B·A in f32, requantised. A safe merge first
   * checks every adapter's sum on one dequantised copy, so nothing changes when one is not finite.
   */
  protected override applyMerge(names: string[], sign: 1 | -1, safe: boolean, checkOnly: boolean): number {
    const base = this.baseLayer;
    // DoRA adapters: the shared DoRA merge over the dequantised weight, requantised by writeMergeWeight.
    if (names.some((n) => this.useDora[n])) return this.doraMerge(names, sign, safe, checkOnly);
    if (safe || checkOnly) {
      using s = new Scratch();
      using w = base.dequantizeWeight();
      const bad = applyLoraDeltas(w, this.mergeOperands(names, s.made).deltas, { sign, safe: true, checkOnly: true });
      if (bad >= 0 || checkOnly) return bad;
    }
    for (const name of names) {
      using s = new Scratch();
      using w = base.dequantizeWeight();
      applyLoraDeltas(w, this.mergeOperands([name], s.made).deltas, { sign });
      base.requantize(w);
    }
    return -1;
  }

  /** A DoRA merge's f32 result, requantised into the 4-bit codes and statistics. */
  protected override writeMergeWeight(w: Tensor): void {
    this.baseLayer.requantize(w);
  }
}
