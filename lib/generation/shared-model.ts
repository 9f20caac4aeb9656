// A causal LM described for another worker thread of this process: its config, its adapters' configs and
// per-layer state (active, merged, disabled), and every parameter as a shared tensor id (native.shareTensor:
// the other thread wraps the same storage, nothing is copied). The receiving side rebuilds the same module
// tree empty and puts the shared tensors in place of its parameters.
import { native } from "../native.js";
import { Tensor, handleOf, type DType } from "../tensor.js";
import { peftError } from "../errors.js";
import { skipInit } from "../init-mode.js";
import type { Module } from "../nn/module.js";
import { Linear8bitLt } from "../nn/linear8bit.js";
import { Linear4bit, type ComputeDtype4bit } from "../nn/linear4bit.js";
import { packQuantState } from "../nn/quant-4bit.js";
import { LlamaForCausalLM } from "../models/llama.js";
import { llamaConfigToJSON, parseLlamaConfig } from "../models/llama-config.js";
import { BaseTunerLayer } from "../tuners/tuner-layer.js";
import { configFromJSON as peftConfigFromJSON } from "../tuners/peft-config.js";
import { getPeftModel, PeftModel } from "../peft-model.js";
import { PromptLearningModel } from "../tuners/prompt-learning/model.js";
import type { GenerationDefaults } from "./generation-config.js";

interface LayerState {
  path: string;
  active: string[];
  merged: string[];
  disabled: boolean;
}

export interface SharedModel {
  config: Record<string, unknown>;
  dtype: DType;
  nameOrPath: string | null;
  generationDefaults: GenerationDefaults | null;
  /** Adapter name -> adapter_config.json content, in the order they were added (null: no PeftModel). */
  adapters: [string, Record<string, unknown>][] | null;
  layers: LayerState[];
  /** A prompt-learning model's active adapter and whether it is disabled (it has no adapter layers to carry this). */
  prompt?: { active: string; disabled: boolean } | null;
  /** The int8 projections (paths in the bare model), rebuilt as empty Linear8bitLt before the tensors are adopted. */
  int8: { path: string; inFeatures: number; outFeatures: number; bias: boolean; threshold: number }[];
  /** The 4-bit projections: their quant state's bytes, rebuilt as empty Linear4bit of that state likewise. */
  fourBit?: { path: string; state: number[]; bias: boolean; computeDtype: ComputeDtype4bit | undefined }[];
  /** Parameter name (as model.namedParameters gives it) -> shared tensor id. */
  params: [string, number][];
}

/** Shares `model`'s parameters; the ids stay valid until releaseShared(desc). */
export function shareModel(model: Module, lm: LlamaForCausalLM): SharedModel {
  const peft = model instanceof PeftModel ? model : null;
  const layers: LayerState[] = [];
  for (const [path, m] of model.namedModules()) {
    if (!(m instanceof BaseTunerLayer)) continue;
    // A disabled layer with merged adapters unmerges before its next forward (PEFT): done here, on the
    // owning thread, so the other thread never writes the shared weights.
    if (m.disabled && m.merged) m.unmerge();
    layers.push({ path, active: m.activeAdapters, merged: [...m.mergedAdapters], disabled: m.disabled });
  }
  // A LoRA layer holds its int8 base as `base_layer`; the bare model has the Linear8bitLt at the target's path.
  const int8 = [...lm.namedModules()]
    .filter(([, m]) => m instanceof Linear8bitLt)
    .map(([path, m]) => {
      const q = m as Linear8bitLt;
      return { path: path.replace(/\.base_layer$/, ""), inFeatures: q.inFeatures, outFeatures: q.outFeatures, bias: q.bias !== null, threshold: q.threshold };
    });
  const fourBit = [...lm.namedModules()]
    .filter(([, m]) => m instanceof Linear4bit)
    .map(([path, m]) => {
      const q = m as Linear4bit;
      using state = packQuantState(q.quantState);
      return { path: path.replace(/\.base_layer$/, ""), state: Array.from(state.view() as Uint8Array), bias: q.bias !== null, computeDtype: q.computeDtype };
    });
  const params: [string, number][] = [];
  try {
    for (const [name, p] of model.namedParameters()) params.push([name, native.shareTensor(handleOf(p, "shareModel", name))]);
  } catch (e) {
    for (const [, id] of params) native.releaseSharedTensor(id);
    throw e;
  }
  return {
    config: llamaConfigToJSON(lm.config) as Record<string, unknown>,
    dtype: lm.dtype,
    nameOrPath: lm.nameOrPath,
    generationDefaults: lm.generationDefaults,
    adapters: peft ? Object.entries(peft.peftConfig).map(([n, c]) => [n, c.toJSON()]) : null,
    layers,
    prompt: peft?.baseModel instanceof PromptLearningModel ? { active: peft.activeAdapter, disabled: peft.baseModel.adaptersDisabled } : null,
    int8,
    fourBit,
    params,
  };
}

export function releaseShared(desc: SharedModel): void {
  for (const [, id] of desc.params) native.releaseSharedTensor(id);
}

/** Owner module and attribute of a dotted parameter name. */
function ownerOf(root: Module, name: string): { owner: Module; leaf: string } {
  const at = name.lastIndexOf(".");
  const path = at < 0 ? "" : name.slice(0, at);
  const owner = path === "" ? root : root.getSubmodule(path);
  return { owner, leaf: name.slice(at + 1) };
}

/** The model `desc` describes, its parameters the shared tensors (on the receiving thread). */
export function adoptModel(desc: SharedModel): { model: LlamaForCausalLM | PeftModel; lm: LlamaForCausalLM } {
  const lm = skipInit(() => new LlamaForCausalLM(parseLlamaConfig(desc.config), { dtype: desc.dtype }));
  lm.nameOrPath = desc.nameOrPath;
  lm.generationDefaults = desc.generationDefaults;
  for (const q of desc.int8) {
    // Placeholders: every tensor of theirs is replaced by the shared one below.
    lm.setSubmodule(q.path, Linear8bitLt.empty(q.inFeatures, q.outFeatures, { bias: q.bias, threshold: q.threshold }));
  }
  for (const q of desc.fourBit ?? []) {
    const state = Tensor.fromArray(q.state, [q.state.length], "u8");
    lm.setSubmodule(q.path, Linear4bit.fromQuantState(state, { bias: q.bias, biasDtype: desc.dtype, computeDtype: q.computeDtype }));
    state.dispose();
  }
  let model: LlamaForCausalLM | PeftModel = lm;
  if (desc.adapters) {
    const [[first, cfg], ...rest] = desc.adapters;
    const peft = skipInit(() => getPeftModel(lm, peftConfigFromJSON(cfg), { adapterName: first }));
    for (const [n, c] of rest) skipInit(() => peft.addAdapter(n, peftConfigFromJSON(c)));
    model = peft;
  }
  const params = new Map(model.namedParameters());
  for (const [name, id] of desc.params) {
    const old = params.get(name);
    if (!old) throw peftError("ERR_STATE", `adoptModel: the rebuilt model has no parameter ${name}`);
    const { owner, leaf } = ownerOf(model, name);
    const t = new Tensor(native.adoptSharedTensor(id));
    owner.registerParameter(leaf, t);
    t.requiresGrad = false; // this thread only decodes
    if ((owner as unknown as Record<string, unknown>)[leaf] === old) (owner as unknown as Record<string, unknown>)[leaf] = t;
    if (old !== t && !desc.params.some(([n]) => n !== name && params.get(n) === old)) old.dispose();
  }
  // A tied head shares the embedding's (shared) weight again; the tensor it held was the empty one.
  if (lm.config.tieWordEmbeddings && lm.lm_head.weight !== lm.model.embed_tokens.weight) {
    lm.lm_head.registerParameter("weight", lm.model.embed_tokens.weight);
    lm.lm_head.weight = lm.model.embed_tokens.weight;
    lm.model.embed_tokens.weight.requiresGrad = false;
  }
  const layers = new Map(desc.layers.map((l) => [l.path, l]));
  for (const [path, m] of model.namedModules()) {
    const s = layers.get(path);
    if (!(m instanceof BaseTunerLayer) || !s) continue;
    if (s.active.length) m.setAdapter(s.active, { allowMissing: true });
    m.mergedAdapters.splice(0, m.mergedAdapters.length, ...s.merged);
    m.enableAdapters(!s.disabled);
  }
  if (desc.prompt && model instanceof PeftModel) {
    model.setAdapter(desc.prompt.active);
    model.baseModel.enableAdapterLayers(!desc.prompt.disabled);
  }
  return { model: model.eval(), lm };
}
