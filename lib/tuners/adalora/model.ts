// The AdaLoRA tuner model (PEFT's AdaLoraModel): SVD-form layers (SVDLinear, SVDConv2d) on the targeted Linear,
// Conv1D and Conv2d modules, one trainable adapter with its RankAllocator (updateAndAllocate after each optimizer step), the
// orthogonal regulariser, and the rank pattern: pruned ranks left out of saved files and cut from the layers
// before a saved adapter is loaded. Injection and adapter management are the shared tuner's (tuner.ts).
import { Module, Linear, Conv1D, Conv2d, Linear8bitLt } from "../../nn/index.js";
import { Tensor } from "../../tensor.js";
import { matmul } from "../../ops.js";
import { addInPlace } from "../../kernels.js";
import { optionsArg, peftError, shownValue, typeError } from "../../errors.js";
import type { MatchOptions } from "../../matching.js";
import { defaultTargetModules } from "../../mappings.js";
import { gradOf } from "../../nn/index.js";
import { BaseTuner, type TunerSpec } from "../tuner.js";
import type { BaseTunerLayer } from "../tuner-layer.js";
import { ModulesToSaveWrapper } from "../modules-to-save.js";
import { AdaLoraConfig, type AdaLoraRankPattern } from "./config.js";
import { AdaLoraLayer, SVDConv2d, SVDLinear, type AdaLoraLayerOptions } from "./layer.js";
import { RankAllocator, adaLoraLayers, maskFor, rankPatternKey } from "./rank-allocator.js";

const PREFIX = "base_model.model.";

export const ADALORA_MATCH_OPTIONS: MatchOptions = {
  isLinearLike: (m) => m instanceof Linear || m instanceof Conv1D || m instanceof Linear8bitLt || m instanceof SVDLinear,
  isSupported: (m) => m instanceof AdaLoraLayer || m instanceof Linear || m instanceof Conv1D || m instanceof Conv2d,
  typeName: (m) => (m as object)?.constructor?.name ?? typeof m,
  isTunerLayer: (m) => m instanceof AdaLoraLayer || m instanceof ModulesToSaveWrapper,
  supportedTypeNames: ["Linear", "Conv1D", "Conv2d"],
};

/** The orthogonal regulariser's value and what it did. */
export interface OrthRegResult {
  /** orth_reg_weight · mean over the adapter's A and B matrices of ‖P·Pᵀ − I‖_F (A) / ‖Pᵀ·P − I‖_F (B). */
  value: number;
  /** How many matrices were averaged. */
  matrices: number;
}

export class AdaLoraModel extends BaseTuner<AdaLoraConfig> {
  /** The adapter that trains (PEFT allows one), and its allocator; null while every adapter is inference-only. */
  trainableAdapterName: string | null = null;
  rankAllocator: RankAllocator | null = null;

  constructor(model: Module, config: AdaLoraConfig, adapterName: string, opts: { modelType?: string } = {}) {
    super(model, config, adapterName, opts);
    this.#startAllocator();
  }

  protected get spec(): TunerSpec<AdaLoraConfig> {
    return { peftType: "ADALORA", methodName: "AdaLoRA", configClass: AdaLoraConfig, layerClass: AdaLoraLayer };
  }

  protected prepareAdapterConfig(config: AdaLoraConfig, modelType: string | undefined): AdaLoraConfig {
    if (config.targetModules !== null) return config;
    return new AdaLoraConfig({ ...config, targetModules: defaultTargetModules("ADALORA", modelType) });
  }

  protected matchOptions(): MatchOptions {
    return ADALORA_MATCH_OPTIONS;
  }

  /** PEFT: one trainable adapter per model (the others inference-only), checked before anything changes. */
  override injectAdapter(config: AdaLoraConfig, adapterName: string, modelType?: string): void {
    const trainable = Object.values(this.peftConfig).filter((c) => !c.inferenceMode).length + (config instanceof AdaLoraConfig && !config.inferenceMode ? 1 : 0);
    if (trainable > 1)
      throw peftError(
        "ERR_CONFIG",
        "AdaLoraModel supports only 1 trainable adapter. When using multiple adapters, set inference_mode to True for all adapters except the one you want to train.",
      );
    super.injectAdapter(config, adapterName, modelType);
    // Set up after construction (class fields are not there yet while the base constructor injects).
    if (this.rankAllocator !== undefined) this.#startAllocator();
  }

  /** Deleting the trainable adapter drops its allocator (a trainable adapter added later gets a new one). */
  override deleteAdapter(name: string): void {
    super.deleteAdapter(name);
    if (name === this.trainableAdapterName) {
      this.rankAllocator?.resetIpt();
      this.rankAllocator = null;
      this.trainableAdapterName = null;
    }
  }

  #startAllocator(): void {
    if (this.trainableAdapterName !== null) return;
    const name = Object.keys(this.peftConfig).find((n) => !this.peftConfig[n].inferenceMode);
    if (name === undefined) return;
    this.trainableAdapterName = name;
    this.rankAllocator = new RankAllocator(this.model, this.peftConfig[name], name);
  }

  protected createAdapterLayer(config: AdaLoraConfig, adapterName: string, target: Module, key: string): BaseTunerLayer | null {
    const opts: AdaLoraLayerOptions = {
      adapterName,
      r: config.initR,
      loraAlpha: config.loraAlpha,
      loraDropout: config.loraDropout,
      initLoraWeights: config.initLoraWeights,
      fanInFanOut: config.fanInFanOut,
    };
    if (target instanceof AdaLoraLayer) {
      target.updateLayer(opts);
      return null;
    }
    if (target instanceof Conv2d) return new SVDConv2d(target, opts);
    if (!(target instanceof Linear) && !(target instanceof Conv1D))
      throw peftError("ERR_UNSUPPORTED", `Target module ${key} (${target.constructor.name}) is not supported. Currently, only Linear, Conv1D and Conv2d are supported.`);
    const layer = new SVDLinear(target, opts);
    // PEFT sets the config's flag to the layer's layout (fan_in_fan_out follows the weight).
    config.fanInFanOut = layer.fanInFanOut;
    return layer;
  }

  // PEFT's LoraModel rule, which AdaLoRA inherits: adapter weights train, and biases per `bias`.
  protected override markOnlyAdaptersTrainable(config: AdaLoraConfig): void {
    super.markOnlyAdaptersTrainable(config);
    if (config.bias === "all") {
      for (const [name, p] of this.model.namedParameters()) if (name.endsWith("bias")) p.requiresGrad = true;
    } else if (config.bias === "lora_only") {
      for (const l of this.tunerLayers()) for (const [name, p] of l.baseLayer.namedParameters()) if (name === "bias") p.requiresGrad = true;
    }
  }

  /** The AdaLoRA layers, in model order. */
  *adaLoraLayers(): Iterable<AdaLoraLayer> {
    for (const l of this.tunerLayers()) yield l as AdaLoraLayer;
  }

  #trainable(op: string): { name: string; config: AdaLoraConfig; allocator: RankAllocator } {
    const name = this.trainableAdapterName;
    if (name === null || !this.rankAllocator || !Object.hasOwn(this.peftConfig, name))
      throw peftError("ERR_STATE", `${op}: this model has no trainable AdaLoRA adapter (every adapter is in inference mode)`);
    return { name, config: this.peftConfig[name], allocator: this.rankAllocator };
  }

  /**
   * PEFT's update_and_allocate: call after each optimizer step (after backward, before zeroGrad) with the step
   * number. Before total_step − tfinal it updates the importance scores and, at allocation steps, masks E to the
   * budget (the rank pattern goes to the config); at total_step − tfinal it makes the final allocation to the
   * target budget; after it, it keeps the final pattern's entries at zero.
   */
  updateAndAllocate(globalStep: number): { budget: number; rankPattern: AdaLoraRankPattern | null } | null {
    const { config, allocator } = this.#trainable("updateAndAllocate");
    if (typeof globalStep !== "number" || !Number.isSafeInteger(globalStep) || globalStep < 0)
      throw typeError(`updateAndAllocate: the step must be an integer >= 0, got ${shownValue(globalStep)}`);
    const end = config.totalStep! - config.tfinal;
    if (globalStep < end) {
      const res = allocator.updateAndAllocate(globalStep);
      if (res.rankPattern) config.rankPattern = res.rankPattern;
      return res;
    }
    if (globalStep === end) {
      const res = allocator.updateAndAllocate(globalStep, true);
      config.rankPattern = res.rankPattern;
      allocator.resetIpt();
      return res;
    }
    if (!config.rankPattern) throw peftError("ERR_STATE", `updateAndAllocate(${globalStep}): past total_step − tfinal (${end}) but no rank pattern was allocated; call it at step ${end} first`);
    allocator.maskUsingRankPattern(config.rankPattern);
    return { budget: allocator.targetBgt, rankPattern: config.rankPattern };
  }

  /**
   * The orthogonal regulariser PEFT's AdaLoraModel.forward adds to the loss: orth_reg_weight · (Σ over the trainable
   * adapter's lora_A and lora_B of ‖A·Aᵀ − I‖_F and ‖Bᵀ·B − I‖_F) / (number of matrices). Returns its value and,
   * unless `grad` is false, accumulates its gradient into A.grad and B.grad (d‖C‖_F/dA = 2·C·A/‖C‖_F,
   * d‖C‖_F/dB = 2·B·C/‖C‖_F; 0 where the norm is 0, as PyTorch's norm backward gives).
   */
  orthogonalRegularization(options: { grad?: boolean } = {}): OrthRegResult {
    const { name, config } = this.#trainable("orthogonalRegularization");
    const wantGrad = optionsArg(options, "orthogonalRegularization").grad !== false;
    const w = config.orthRegWeight;
    if (w < 0) throw peftError("ERR_CONFIG", "orth_reg_weight should be greater than or equal to 0. ");
    const mats: { P: Tensor; isA: boolean }[] = [];
    for (const [, layer] of adaLoraLayers(this.model, name)) {
      const { A, B } = layer.svdFactors(name);
      mats.push({ P: A, isA: true }, { P: B, isA: false });
    }
    if (!mats.length) return { value: 0, matrices: 0 };
    let sum = 0;
    const grads: { P: Tensor; C: Tensor; norm: number; isA: boolean }[] = [];
    for (const { P, isA } of mats) {
      // A (r, in): C = A·Aᵀ − I; B (out, r): C = Bᵀ·B − I; both r × r.
      const C = isA ? matmul(P, P, { transB: true }) : matmul(P, P, { transA: true });
      const c = C.toFloat32Array();
      const r = C.shape[0];
      let sq = 0;
      for (let i = 0; i < r; i++) c[i * r + i] -= 1;
      for (const v of c) sq += v * v;
      const norm = Math.sqrt(sq);
      sum += norm;
      if (wantGrad && P.requiresGrad && norm > 0) {
        using cm = Tensor.fromArray(c, C.shape);
        C.copyFrom(cm);
        grads.push({ P, C, norm, isA });
      } else C.dispose();
    }
    const n = mats.length;
    for (const { P, C, norm, isA } of grads) {
      using g = isA ? matmul(C, P) : matmul(P, C);
      addInPlace(gradOf(P), g, (w * 2) / (norm * n));
      C.dispose();
    }
    return { value: (w * sum) / n, matrices: n };
  }

  /**
   * Cuts each layer of `adapterName` to the ranks its rank-pattern mask keeps (PEFT's
   * resize_modules_by_rank_pattern); a layer already at the kept rank is left as it is.
   */
  resizeModulesByRankPattern(rankPattern: AdaLoraRankPattern, adapterName: string): void {
    for (const [path, layer] of adaLoraLayers(this.model, adapterName)) {
      const keep = maskFor(rankPattern, path, adapterName);
      if (!keep) continue;
      const kept = keep.filter(Boolean).length;
      const r = layer.r[adapterName];
      if (r === kept && keep.length !== r) continue;
      if (r !== keep.length)
        throw peftError("ERR_CHECKPOINT", `${rankPatternKey(path)}: the rank pattern has ${keep.length} entries (${kept} kept) but the layer has rank ${r}`);
      if (kept !== r) layer.pruneRanks(adapterName, keep);
    }
  }

  /** Saved adapters hold only the ranks the rank pattern keeps (PEFT's resize_state_dict_by_rank_pattern). */
  override adapterStateDict(adapterName: string, sd: Record<string, Tensor>): Record<string, Tensor> {
    const pattern = this.peftConfig[adapterName]?.rankPattern;
    if (!pattern) return sd;
    for (const [path] of adaLoraLayers(this.model, adapterName)) {
      const keep = maskFor(pattern, path, adapterName);
      if (!keep) continue;
      const idx = keep.flatMap((k, i) => (k ? [i] : []));
      for (const which of ["lora_A", "lora_E", "lora_B"] as const) {
        const key = `${PREFIX}${path}.${which}`;
        const t = sd[key];
        if (!t) continue;
        const [rows, cols] = t.shape;
        const rankAxis = which === "lora_B" ? cols : rows;
        if (rankAxis === idx.length) continue;
        if (rankAxis !== keep.length) throw peftError("ERR_STATE", `${key}: rank ${rankAxis} does not fit the rank pattern's ${keep.length} entries`);
        const v = t.toFloat32Array();
        const out =
          which === "lora_B"
            ? Float32Array.from({ length: rows * idx.length }, (_, i) => v[Math.floor(i / idx.length) * cols + idx[i % idx.length]])
            : Float32Array.from({ length: idx.length * cols }, (_, i) => v[idx[Math.floor(i / cols)] * cols + (i % cols)]);
        sd[key] = Tensor.fromArray(out, which === "lora_B" ? [rows, idx.length] : [idx.length, cols], t.dtype);
        t.dispose();
      }
    }
    return sd;
  }

  /** Before a saved adapter is loaded, its layers are cut to the ranks the config's rank pattern keeps. */
  override prepareAdapterForLoad(adapterName: string): void {
    const pattern = this.peftConfig[adapterName]?.rankPattern;
    if (pattern) this.resizeModulesByRankPattern(pattern, adapterName);
  }

  /** Not supported for AdaLoRA (as in PEFT): combine LoRA adapters instead. */
  addWeightedAdapter(): never {
    throw typeError("AdaLoraModel does not support add_weighted_adapter method.");
  }
}
