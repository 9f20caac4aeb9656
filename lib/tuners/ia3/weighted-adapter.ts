// IA3Model.addWeightedAdapter (PEFT's IA3Model.add_weighted_adapter): a new adapter on the union of the sources'
// targets whose vector on each layer is Σ wᵢ·lᵢ over the sources that layer holds; it starts frozen.
import { arrayArg, clip, peftError, shownValue, stringsArg, typeError } from "../../errors.js";
import { addInPlace, fill } from "../../kernels.js";
import { IA3Config } from "./config.js";
import { IA3Layer } from "./layer.js";
import type { IA3Model } from "./model.js";

const OP = "addWeightedAdapter";

type Modules = string | string[] | null;

/** PEFT's rule: the sources' lists are merged, regexes joined as alternatives; a mix is refused. */
function union(lists: Modules[]): Modules {
  const kinds = new Set(lists.map((t) => (typeof t === "string" ? "string" : "list")));
  if (kinds.size > 1) throw peftError("ERR_CONFIG", "All adapter configs should have the same type for target and feedforward modules.");
  if (typeof lists[0] === "string") return lists.map((t) => `(${t})`).join("|");
  return [...new Set(lists.flatMap((t) => (t as string[] | null) ?? []))];
}

export function addIa3WeightedAdapter(model: IA3Model, adapters: string[], weights: number[], adapterName: string): void {
  const names = stringsArg(adapters, OP, "adapters");
  const ws = arrayArg(weights, OP, "weights").map((w, i) => {
    if (typeof w !== "number" || !Number.isFinite(w)) throw typeError(`${OP}: weights[${i}] must be a finite number, got ${shownValue(w)}`);
    return w;
  });
  if (names.length !== ws.length) throw peftError("ERR_CONFIG", `${OP}: got ${names.length} adapters and ${ws.length} weights; pass one weight per adapter`);
  if (Object.hasOwn(model.peftConfig, adapterName)) {
    // PEFT returns without a word; the warning says why nothing changed.
    process.emitWarning(`${OP}: an adapter named ${clip(String(adapterName))} already exists; nothing was added`, { code: "PEFT_ADAPTER_EXISTS" });
    return;
  }
  if (!names.length) throw peftError("ERR_CONFIG", `${OP}: no adapters to combine`);
  for (const n of names) if (!Object.hasOwn(model.peftConfig, n)) throw peftError("ERR_CONFIG", `Adapter ${clip(n)} does not exist`);
  for (const [, w] of model.savedModules())
    if (names.filter((n) => w.adapterNames.includes(n)).length > 1) throw peftError("ERR_CONFIG", "Cannot add weighted adapters targeting the same module with modules_to_save.");
  const configs = names.map((n) => model.peftConfig[n]);
  const config = new IA3Config({ ...configs[0], targetModules: union(configs.map((c) => c.targetModules)), feedforwardModules: null });
  config.feedforwardModules = union(configs.map((c) => c.feedforwardModules));
  model.injectAdapter(config, adapterName);
  for (const l of model.ia3Layers()) {
    if (!(l instanceof IA3Layer) || !l.adapterNames.includes(adapterName)) continue;
    const target = l.ia3Vector(adapterName);
    fill(target, 0);
    names.forEach((n, i) => {
      if (l.adapterNames.includes(n)) addInPlace(target, l.ia3Vector(n), ws[i]);
    });
    target.requiresGrad = false;
  }
  for (const [, w] of model.savedModules())
    if (w.adapterNames.includes(adapterName)) for (const p of w.modulesToSave.get(adapterName).parameters()) p.requiresGrad = false;
}
