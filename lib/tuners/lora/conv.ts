// LoRA on Conv2d (PEFT's lora.Conv2d): A = Conv2d(in, r, the base's kernel, stride and padding, no bias),
// B = 1x1 Conv2d(r, out, the base's groups). With groups = 1 the base convolution and A read the same
// unfolded tiles and B rides on the output tile (one native call each way); with groups > 1 the adapters
// run as separate convolutions after the base (PEFT refuses to merge those layers too).
import { Tensor } from "../../tensor.js";
import { native, type NativeTensor } from "../../native.js";
import { conv2d, conv2dBackward, geometryArray, type Conv2dGeometry } from "../../ops.js";
import { addInPlace, dropout, scaleInPlace } from "../../kernels.js";
import { describe, peftError, typeError } from "../../errors.js";
import { Conv2d, gradOf } from "../../nn/index.js";
import { ew, reduceRaw } from "../../functional/raw.js";
import { baseWeightF32 } from "./dora-weight.js";
import type { DoraOps } from "./dora.js";
import { FusedLoraLayer, initAdapter, warnOnce, type FusedResult, type LoraLayerOptions, type NativeAdapter } from "./layer.js";

export class LoraConv2d extends FusedLoraLayer {
  declare baseLayer: Conv2d;

  constructor(base: Conv2d, opts: LoraLayerOptions) {
    if (!(base instanceof Conv2d)) throw typeError(`LoraConv2d: the base layer must be a Conv2d, got ${describe(base)}`);
    // PEFT builds A without the base's dilation: with a dilated kernel its output would not match the base's.
    if (base.dilation.some((d) => d > 1) && base.kernelSize.some((k) => k > 1))
      throw peftError("ERR_UNSUPPORTED", `LoRA on a Conv2d with dilation ${base.dilation.join("x")} and a ${base.kernelSize.join("x")} kernel is not supported: PEFT's lora_A has no dilation, so its output would not match the base layer's`);
    super(base);
    if (base.groups > 1) warnOnce("PEFT_CONV_GROUPS", "LoRA adapter added to ConvNd layer with groups > 1. Merging is not supported.");
    this.updateLayer(opts);
  }

  protected features(): [number, number] {
    return [this.baseLayer.inChannels, this.baseLayer.outChannels];
  }

  protected override checkRank(r: number, _what: string): void {
    const g = this.baseLayer.groups;
    if (r % g)
      throw peftError(
        "ERR_CONFIG",
        `Targeting a Conv2d with groups=${g} and rank ${r}. Currently, support is limited to conv layers where the rank is divisible by groups. Either choose a different rank or do not target this specific layer.`,
      );
  }

  protected override createAdapterWeights(name: string, r: number, init: boolean | "gaussian"): void {
    const b = this.baseLayer;
    const A = new Conv2d(b.inChannels, r, b.kernelSize, { stride: b.stride, padding: b.padding, bias: false });
    const B = new Conv2d(r, b.outChannels, 1, { groups: b.groups, bias: false });
    initAdapter(A.weight, B.weight, r, init);
    this.loraA.set(name, A);
    this.loraB.set(name, B);
  }

  // ---- DoRA (PEFT's DoraConv2dLayer): the norm over each output channel's (in, kh, kw), a (1, out, 1, 1) magnitude ----

  protected override doraRefusal(): string | null {
    // PEFT's norm for grouped convolutions multiplies B.view(-1, r) by A.view(r, -1), which is not the
    // grouped product its forward applies; refused here rather than reproduced.
    return this.baseLayer.groups > 1 ? `DoRA on a Conv2d with groups=${this.baseLayer.groups} is not supported (its weight norm would not describe the grouped adapter)` : null;
  }

  protected override magnitudeShape(): number[] {
    return [1, this.baseLayer.outChannels, 1, 1];
  }

  protected override doraWorking(t: Tensor, keep: Tensor[]): Tensor {
    if (t.dtype === "f32") return t;
    const c = t.to("f32");
    keep.push(c);
    return c;
  }

  protected override doraOutput(q: Tensor, x: Tensor): Tensor {
    const bias = this.baseLayer.bias;
    if (!bias) return q.to(x.dtype);
    using b = bias.reshape([bias.shape[0], 1, 1]);
    return ew("add", [q, b], x.dtype);
  }

  protected override doraBiasGrad(dy: Tensor): void {
    const b = this.baseLayer.bias;
    if (!b?.requiresGrad) return;
    using s = reduceRaw("sum", dy, [0, 2, 3], false, "f32").values;
    addInPlace(gradOf(b), s);
  }

  protected override doraOps(): DoraOps & Disposable {
    const base = this.baseLayer, geom = base.geometry, aGeom = this.#aGeometry, bGeom = this.#bGeometry;
    const bw = baseWeightF32(base);
    const through = (x: Tensor) => conv2d(x, bw.weight, null, geom);
    return {
      reduceDims: () => [0, 2, 3],
      baseOut: through,
      weightOut: through,
      baseGrad: (dz, x, wantDx) => {
        const dW = base.weight.requiresGrad ? gradOf(base.weight) : null;
        return conv2dBackward(dz, dW ? x : x.shape, bw.weight, geom, { wantDx, dW });
      },
      loraA: (x, A) => conv2d(x, A, null, aGeom),
      loraB: (T, B) => conv2d(T, B, null, bGeom),
      loraGrad: (du, xd, T, A, B, dA, dB, wantDx) => {
        // u = B(T), T = A(xd): dB from (du, T), dT = Bᵀ(du), then dA from (dT, xd) and dxd = Aᵀ(dT).
        if (!dA && !wantDx) {
          if (dB) conv2dBackward(du, T, B, bGeom, { wantDx: false, dW: dB });
          return null;
        }
        using dT = conv2dBackward(du, dB ? T : T.shape, B, bGeom, { dW: dB })!;
        return conv2dBackward(dT, dA ? xd : xd.shape, A, aGeom, { wantDx, dW: dA });
      },
      [Symbol.dispose]() {
        if (bw.owned) bw.weight.dispose();
      },
    };
  }

  protected override mergeRefusal(): string | null {
    return this.baseLayer.groups > 1 ? "Merging is not supported for _ConvNd layers with groups > 1!" : null;
  }

  /** A's geometry: the base's stride and padding, no dilation. */
  get #aGeometry(): Conv2dGeometry {
    return { stride: this.baseLayer.stride, padding: this.baseLayer.padding, dilation: [1, 1], groups: 1 };
  }

  get #bGeometry(): Conv2dGeometry {
    return { stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: this.baseLayer.groups };
  }

  protected runForward(x: Tensor, adapters: NativeAdapter[]): FusedResult {
    const base = this.baseLayer;
    if (base.groups === 1) {
      const [yh, Th] = native.loraConv2dForward(
        Tensor.handle(x),
        Tensor.handle(base.weight),
        base.bias ? Tensor.handle(base.bias) : null,
        geometryArray(base.geometry),
        adapters,
      ) as [NativeTensor, NativeTensor];
      return { y: new Tensor(yh), saved: [new Tensor(Th)] };
    }
    // groups > 1: y = base(x) + Σ s·B(A(drop(x))), keeping each T = A(drop(x)) for backward.
    const y = conv2d(x, base.weight, base.bias, base.geometry);
    const saved = this.adapterWeights(adapters).map(({ A, B, a }) => {
      using xd = a.p > 0 ? dropout(x, a.p, a.seed, a.stream) : null;
      const T = conv2d(xd ?? x, A, null, this.#aGeometry);
      using u = conv2d(T, B, null, this.#bGeometry);
      addInPlace(y, u, a.scale);
      return T;
    });
    return { y, saved };
  }

  protected runBackward(dy: Tensor, x: Tensor, saved: Tensor[], weight: Tensor, adapters: NativeAdapter[], wantDx: boolean): Tensor | null {
    const base = this.baseLayer;
    const dW = base.weight.requiresGrad ? gradOf(base.weight) : null;
    const db = base.bias?.requiresGrad ? gradOf(base.bias) : null;
    if (base.groups === 1) {
      const dx = native.loraConv2dBackward(
        Tensor.handle(dy),
        Tensor.handle(x),
        Tensor.handle(weight),
        geometryArray(base.geometry),
        adapters,
        Tensor.handle(saved[0]),
        wantDx,
        dW ? Tensor.handle(dW) : null,
        db ? Tensor.handle(db) : null,
      ) as NativeTensor | null;
      return dx ? new Tensor(dx) : null;
    }
    const dx = conv2dBackward(dy, dW ? x : x.shape, weight, base.geometry, { wantDx, dW, db });
    this.adapterWeights(adapters).forEach(({ A, B, a, dA, dB }, i) => {
      const T = saved[i];
      // u = B(T), y += s·u: dB += s·(dy ⋆ T), dT = s·Bᵀ(dy), dA += dT ⋆ drop(x), dx += drop'(Aᵀ(dT)).
      const dBs = dB ? Tensor.zeros(dB.shape) : null;
      using dT = conv2dBackward(dy, T, B, this.#bGeometry, { dW: dBs })!;
      if (dB && dBs) addInPlace(dB, dBs, a.scale), dBs.dispose();
      scaleInPlace(dT, a.scale);
      using xd = dA && a.p > 0 ? dropout(x, a.p, a.seed, a.stream) : null;
      using dxd = conv2dBackward(dT, dA ? (xd ?? x) : x.shape, A, this.#aGeometry, { wantDx, dW: dA });
      if (dx && dxd) {
        using back = a.p > 0 ? dropout(dxd, a.p, a.seed, a.stream) : null;
        addInPlace(dx, back ?? dxd);
      }
    });
    return dx;
  }

  /** The adapters' own 4-D weights and gradients beside their descriptors (the unfused path's convolutions take them). */
  private adapterWeights(adapters: NativeAdapter[]) {
    return adapters.map((a) => {
      const { A, B } = this.loraWeights(a.name);
      return { A, B, a, dA: a.dA ? gradOf(A) : null, dB: a.dB ? gradOf(B) : null };
    });
  }
}
