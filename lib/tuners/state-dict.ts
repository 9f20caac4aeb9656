// Adapter state dicts with PEFT's file key names: `base_model.model.<path>.lora_A.weight`, `<path>.ia3_l`
// (adapter name removed), a saved module's parameters as `<path>.<name>`, base-layer biases as `<path>.bias` for bias
// "all" / "lora_only".
import { Tensor } from "../tensor.js";
import { clip, peftError, typeError } from "../errors.js";
import { describe } from "../tensor.js";
import { Module, tensorEntries } from "../nn/module.js";
import { BaseTuner } from "./tuner.js";
import { BaseTunerLayer } from "./tuner-layer.js";

const PREFIX = "base_model.model.";

/** What state dicts need of a PeftModel (this file knows the tuner, not the PeftModel class). */
export interface TunedModel extends Module {
  readonly baseModel: BaseTuner;
  readonly activeAdapter: string;
}

function peftModelArg(m: unknown, op: string): TunedModel {
  if (!(m instanceof Module) || !((m as { baseModel?: unknown }).baseModel instanceof BaseTuner)) throw typeError(`${op}: expected a PeftModel, got ${describe(m)}`);
  return m as TunedModel;
}

/** File key -> live tensor for one adapter, and which of those keys a checkpoint must contain. */
function adapterKeyMap(m: TunedModel, adapterName: string): { keys: Map<string, Tensor>; required: Set<string> } {
  if (typeof adapterName !== "string") throw typeError(`adapter state dict: adapterName must be a string, got ${describe(adapterName)}`);
  const configs = m.baseModel.peftConfig;
  const config = Object.hasOwn(configs, adapterName) ? configs[adapterName] : undefined;
  if (!config) throw peftError("ERR_CONFIG", `Adapter ${clip(adapterName)} not found; this model has ${clip(Object.keys(configs).join(", "), 200)}`);
  // A tuner whose adapter lives outside its layers names its own tensors (prompt learning: `prompt_embeddings`).
  const own = m.baseModel.adapterTensors(adapterName);
  if (own) return { keys: own, required: new Set(own.keys()) };
  const model = m.baseModel.model;
  const keys = new Map<string, Tensor>();
  const required = new Set<string>();
  const add = (key: string, t: Tensor, must: boolean) => {
    keys.set(PREFIX + key, t);
    if (must) required.add(PREFIX + key);
  };
  const bias = (config as { bias?: string }).bias ?? "none";
  for (const [path, mod] of model.namedModules()) {
    if (mod instanceof BaseTunerLayer && mod.adapterNames.includes(adapterName)) {
      for (const [suffix, t] of mod.adapterStateEntries(adapterName)) add(`${path}.${suffix}`, t, true);
      const b = [...mod.baseLayer.namedParameters("", { recurse: false })].find(([n]) => n === "bias")?.[1];
      if (b && bias !== "none") add(`${path}.bias`, b, true);
    }
  }
  for (const [path, w] of m.baseModel.savedModules()) {
    if (!w.adapterNames.includes(adapterName)) continue;
    for (const [n, t] of w.modulesToSave.get(adapterName).namedParameters()) add(`${path}.${n}`, t, true);
  }
  if (bias === "all") {
    // Every other bias of the model (outside adapter layers and saved modules), as PEFT saves them.
    for (const [name, t] of model.namedParameters()) {
      if (!name.endsWith("bias") || /(^|\.)(lora_[AB]|lora_embedding_[AB]|modules_to_save|original_module|base_layer)\./.test(name)) continue;
      add(name, t, true);
    }
  }
  return { keys, required };
}

/** The adapter's tensors under PEFT's file key names (handles sharing the live storage). */
export function getPeftModelStateDict(m: TunedModel, opts: { adapterName?: string } = {}): Record<string, Tensor> {
  peftModelArg(m, "getPeftModelStateDict");
  if (opts === null || typeof opts !== "object") throw typeError("getPeftModelStateDict: options must be an object");
  const name = opts.adapterName ?? m.activeAdapter;
  const out: Record<string, Tensor> = {};
  for (const [k, t] of adapterKeyMap(m, name).keys) out[k] = t.reshape(t.shape);
  return m.baseModel.adapterStateDict(name, out);
}

/**
 * Loads file-keyed tensors into an adapter. Every key must be used and every expected key present, with
 * matching shapes, or ERR_CHECKPOINT lists the first mismatches (nothing is copied then).
 */
export function setPeftModelStateDict(m: TunedModel, record: Record<string, Tensor>, opts: { adapterName?: string } = {}): void {
  peftModelArg(m, "setPeftModelStateDict");
  if (opts === null || typeof opts !== "object") throw typeError("setPeftModelStateDict: options must be an object");
  const sd = tensorEntries(record, "setPeftModelStateDict");
  const name = opts.adapterName ?? m.activeAdapter;
  if (typeof name === "string") m.baseModel.prepareAdapterForLoad(name);
  const { keys, required } = adapterKeyMap(m, name);
  const shape = (t: unknown) => (t instanceof Tensor ? `[${t.shape.join(", ")}]` : "");
  const all = [...sd.keys()];
  const unexpected = all.filter((k) => !keys.has(k));
  const missing = [...required].filter((k) => !sd.has(k));
  const wrongShape = all.filter((k) => { const t = sd.get(k); return keys.has(k) && t instanceof Tensor && t.shape.join() !== keys.get(k)!.shape.join(); });
  const notTensors = all.filter((k) => !(sd.get(k) instanceof Tensor));
  const disposed = all.filter((k) => { const t = sd.get(k); return t instanceof Tensor && t.disposed; });
  if (unexpected.length || missing.length || wrongShape.length || notTensors.length || disposed.length) {
    const parts: string[] = [];
    const list = (ks: string[], f: (k: string) => string) => ks.slice(0, 8).map(f).join(", ") + (ks.length > 8 ? `, … (${ks.length} in all)` : "");
    if (missing.length) parts.push(`missing: ${list(missing, (k) => `${k} ${shape(keys.get(k))}`)}`);
    if (unexpected.length) parts.push(`unexpected: ${list(unexpected, (k) => `${k} ${shape(sd.get(k))}`)}`);
    if (wrongShape.length) parts.push(`shape mismatch: ${list(wrongShape, (k) => `${k} ${shape(sd.get(k))} vs model ${shape(keys.get(k))}`)}`);
    if (notTensors.length) parts.push(`not tensors: ${list(notTensors, (k) => k)}`);
    if (disposed.length) parts.push(`disposed: ${list(disposed, (k) => k)}`);
    throw peftError("ERR_CHECKPOINT", `adapter "${name}": the checkpoint does not fit the model: ${parts.join("; ")}`);
  }
  for (const [k, t] of sd) keys.get(k)!.copyFrom(t as Tensor);
}
