// PeftModel: the user's model wrapped with adapters (PEFT's PeftModel): one tuner model of the config's method
// (LoraModel, IA3Model) holds the adapters; this class adds scoped disabling, checkpoints and parameter counts.
import { generate, type GenerateOptions, type GenerateResult } from "./generation/generate.js";
import { generateText, type GenerateTextOptions } from "./generation/generate-text.js";
import type { ChatMessage } from "./tokenizer/tokenizer.js";
import { Tensor } from "./tensor.js";
import { describe, optionsArg, peftError, shownValue, typeError } from "./errors.js";
import { Module, Linear4bit, type BackwardOptions } from "./nn/index.js";
import { PeftConfigBase } from "./tuners/config.js";
import type { PeftConfig } from "./tuners/peft-config.js";
import { BaseTuner, mixedTypesError } from "./tuners/tuner.js";
import { adapterNameArg, type MergeOptions } from "./tuners/tuner-layer.js";
import { LoraModel } from "./tuners/lora/model.js";
import { IA3Model } from "./tuners/ia3/model.js";
import { PromptLearningModel } from "./tuners/prompt-learning/model.js";
import { AdaLoraModel } from "./tuners/adalora/model.js";
import type { WeightedAdapterOptions } from "./tuners/lora/weighted-adapter.js";
import * as checkpoint from "./io/peft-checkpoint.js";

export interface GetPeftModelOptions {
  adapterName?: string;
  /** The model's type (e.g. "llama"), for the default target modules when the config has none. */
  modelType?: string;
}

type TunerClass = new (model: Module, config: PeftConfig, adapterName: string, opts: { modelType?: string }) => BaseTuner;

// PEFT's PEFT_TYPE_TO_TUNER_MAPPING for the methods implemented here.
const TUNERS: Record<string, TunerClass> = {
  LORA: LoraModel as TunerClass, IA3: IA3Model as TunerClass, ADALORA: AdaLoraModel as TunerClass,
  PROMPT_TUNING: PromptLearningModel as TunerClass, P_TUNING: PromptLearningModel as TunerClass, PREFIX_TUNING: PromptLearningModel as TunerClass,
};

function tunerFor(config: unknown, what: string): TunerClass {
  if (!(config instanceof PeftConfigBase)) throw typeError(`${what}: expected a LoraConfig or IA3Config, got ${describe(config)}`);
  const tuner = Object.hasOwn(TUNERS, config.peftType) ? TUNERS[config.peftType] : undefined;
  if (!tuner) throw peftError("ERR_UNSUPPORTED", `${what}: peft_type ${shownValue(config.peftType)} has no tuner here (${Object.keys(TUNERS).join(", ")})`);
  return tuner;
}

export class PeftModel extends Module {
  readonly baseModel: BaseTuner;
  #disableDepth = 0;

  constructor(model: Module, config: PeftConfig, opts: GetPeftModelOptions = {}) {
    super();
    if (!(model instanceof Module)) throw typeError(`getPeftModel: model must be a Module`);
    const o = optionsArg(opts, "getPeftModel");
    const name = adapterNameArg(o.adapterName ?? "default", "getPeftModel");
    if (o.modelType !== undefined && typeof o.modelType !== "string") throw typeError(`getPeftModel: modelType must be a string, got ${shownValue(o.modelType)}`);
    const Tuner = tunerFor(config, "getPeftModel");
    this.baseModel = this.registerModule("base_model", new Tuner(model, config, name, { modelType: o.modelType }));
  }

  /** The method of this model's adapters ("LORA", "IA3"): one model holds adapters of one method. */
  get peftType(): string {
    return this.baseModel.peftType;
  }

  get peftConfig(): Record<string, PeftConfig> {
    return this.baseModel.peftConfig as Record<string, PeftConfig>;
  }

  get activeAdapter(): string {
    return this.baseModel.activeAdapters[0];
  }

  get activeAdapters(): string[] {
    return this.baseModel.activeAdapters;
  }

  get targetedModuleNames(): string[] {
    return [...this.baseModel.targetedModuleNames];
  }

  get unmatchedTargets(): string[] {
    return [...this.baseModel.unmatchedTargets];
  }

  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  override forward(...args: any[]): any {
    // Prompt learning changes the inputs, not the model: its tuner runs the forward.
    const tuner = this.baseModel;
    return tuner instanceof PromptLearningModel ? tuner.forward(args[0], args[1]) : tuner.model.forward(...args);
  }

  /** Positions the active prompt-learning adapter puts before the input (0 for other methods, or disabled). */
  get numVirtualTokens(): number {
    const tuner = this.baseModel;
    return tuner instanceof PromptLearningModel ? tuner.numVirtualTokens : 0;
  }

  /** Decodes up to maxNewTokens after `prompt` (token ids of one sequence): see generate(). */
  generate(prompt: number[] | Tensor, options?: GenerateOptions): Promise<GenerateResult> {
    return generate(this, prompt, options);
  }

  /** The continuation of a text or chat prompt as text, with the model directory's tokenizer. */
  generateText(prompt: string | readonly ChatMessage[], options?: GenerateTextOptions): Promise<string> {
    return generateText(this, prompt, options);
  }

  override backward(dy: Tensor, opts?: BackwardOptions): Tensor | null {
    if (this.baseModel instanceof PromptLearningModel) return this.baseModel.backward(dy, opts);
    return this.baseModel.model.backward(dy, opts);
  }

  /** Adds an adapter (inactive until setAdapter); its config must be of this model's method (PEFT's rule). */
  addAdapter(name: string, config: PeftConfig): void {
    adapterNameArg(name, "addAdapter");
    tunerFor(config, "addAdapter");
    if (config.peftType !== this.peftType) throw mixedTypesError(this.peftType, config.peftType);
    const active = this.activeAdapters;
    this.baseModel.injectAdapter(config, name);
    // Layers the new adapter created must follow the model's active adapters, not activate the new one (PEFT).
    this.setAdapter(active);
  }

  /**
   * Adds `adapterName` combining `adapters` with `weights` (PEFT's add_weighted_adapter); it stays inactive
   * (and frozen) until setAdapter. IA3 combines linearly and takes no options.
   */
  addWeightedAdapter(adapters: string[], weights: number[], adapterName: string, opts?: WeightedAdapterOptions): void {
    const active = this.activeAdapters;
    const tuner = this.baseModel;
    if (tuner instanceof LoraModel) tuner.addWeightedAdapter(adapters, weights, adapterName, opts);
    else if (tuner instanceof IA3Model) {
      if (opts !== undefined) throw peftError("ERR_UNSUPPORTED", "addWeightedAdapter: IA3 adapters combine linearly; there are no options");
      tuner.addWeightedAdapter(adapters, weights, adapterName);
    } else throw peftError("ERR_UNSUPPORTED", `addWeightedAdapter is not supported for ${this.peftType} adapters`);
    this.setAdapter(active);
  }

  /** Activates adapters (trainable) everywhere; modulesToSave take one adapter only. */
  setAdapter(names: string | string[]): void {
    this.baseModel.setAdapter(names);
  }

  /** Removes an adapter everywhere, disposing its weights; another adapter becomes active if needed. */
  deleteAdapter(name: string): void {
    this.baseModel.deleteAdapter(name);
  }

  /** Runs the base model without adapters until the returned scope is disposed (`using _ = m.disableAdapter()`). */
  disableAdapter(): Disposable {
    if (this.#disableDepth++ === 0) this.baseModel.enableAdapterLayers(false);
    let open = true;
    return {
      [Symbol.dispose]: () => {
        if (!open) return;
        open = false;
        if (--this.#disableDepth === 0) this.baseModel.enableAdapterLayers(true);
      },
    };
  }

  /** With safeMerge every layer is checked before any is merged: a broken adapter leaves the model as it was. */
  mergeAdapter(options: MergeOptions = {}): void {
    this.baseModel.mergeAdapter(options);
  }

  unmergeAdapter(): void {
    this.baseModel.unmergeAdapter();
  }

  /**
   * Merges the adapters into the base weights and returns the plain model (adapter layers removed): the
   * model given to getPeftModel, so `T` is its class (`mergeAndUnload<MyNet>()`).
   */
  mergeAndUnload<T extends Module = Module>(opts: MergeOptions = {}): T {
    return this.baseModel.unloadAndOptionallyMerge(true, optionsArg(opts, "mergeAndUnload")) as T;
  }

  /** Returns the plain model with the original base weights (adapter layers removed, nothing merged). */
  unload<T extends Module = Module>(): T {
    return this.baseModel.unloadAndOptionallyMerge(false) as T;
  }

  /** Saves adapters (default: all) as PEFT does: adapter_config.json + adapter_model.safetensors per adapter. */
  savePretrained(dir: string, opts: { adapterNames?: string[] } = {}): Promise<void> {
    return checkpoint.savePretrained(this, dir, opts);
  }

  /** Wraps `model` with the adapter saved in `dir` (frozen and in eval mode unless isTrainable). */
  static fromPretrained(
    model: Module,
    dir: string,
    opts: { adapterName?: string; isTrainable?: boolean; config?: PeftConfig; modelType?: string } = {},
  ): Promise<PeftModel> {
    return checkpoint.fromPretrained(model, dir, opts, (m, config, o) => new PeftModel(m, config, o));
  }

  /** Adds the adapter saved in `dir` as `adapterName` (inactive until setAdapter). */
  loadAdapter(dir: string, adapterName: string, opts: { isTrainable?: boolean } = {}): Promise<void> {
    return checkpoint.loadAdapter(this, dir, adapterName, opts);
  }

  /**
   * [trainable, all] parameter counts as PEFT's get_nb_trainable_parameters gives them: torch's parameters only
   * (a quantized layer's scales and quant state are not parameters there), and a 4-bit weight (Params4bit)
   * counted as twice its packed bytes, so a QLoRA model's total is its unquantised parameter count.
   */
  getNbTrainableParameters(): [number, number] {
    let trainable = 0, all = 0;
    for (const [, p, owner] of this.namedStateTensors()) {
      if (owner.isBuffer(p)) continue;
      const n = owner instanceof Linear4bit && p === owner.weight ? 2 * p.numel : p.numel;
      all += n;
      if (p.requiresGrad) trainable += n;
    }
    return [trainable, all];
  }

  /** Prints and returns PEFT's line: `trainable params: … || all params: … || trainable%: …`. */
  printTrainableParameters(): string {
    const [t, a] = this.getNbTrainableParameters();
    const fmt = (n: number) => n.toLocaleString("en-US");
    const line = `trainable params: ${fmt(t)} || all params: ${fmt(a)} || trainable%: ${(a ? (100 * t) / a : 0).toFixed(4)}`;
    console.log(line);
    return line;
  }
}

export function getPeftModel(model: Module, config: PeftConfig, opts: GetPeftModelOptions = {}): PeftModel {
  return new PeftModel(model, config, opts);
}
