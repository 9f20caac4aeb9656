// The AdaLoRA part of the checkpoint merge: each layer's `<path>.lora_A` (r, in), `lora_E` (r, 1) and `lora_B`
// (out, r) become one LoRA-form delta, A' = A ⊙ E and B with the factor scaling / (ranknum + 1e-5), where ranknum
// is init_r (PEFT keeps it when it prunes ranks) and scaling is lora_alpha (or the layer's rank when alpha <= 0).
// Ranks are checked against init_r and the rank pattern first; a layer pruned to rank 0 adds nothing.
import { peftError } from "../errors.js";
import { Tensor } from "../tensor.js";
import { ew } from "../functional/raw.js";
import type { AdaLoraConfig } from "../tuners/adalora/config.js";
import { checkAdaLoraShapes } from "../tuners/adalora/file-check.js";
import { svdScale } from "../tuners/adalora/layer.js";

const PREFIX = "base_model.model.";
const SVD_KEY = /^(.*)\.lora_([AEB])$/;

export interface AdaLoraDelta {
  A: Tensor;
  B: Tensor;
  scale: number;
  embedding: false;
}

/** Base weight key -> delta, and the other adapter tensors (biases, saved modules) by base key. */
export function planAdaLoraMerge(config: AdaLoraConfig, adapterTensors: Record<string, Tensor>, adapterDir: string): { lora: Map<string, AdaLoraDelta>; replace: Map<string, Tensor> } {
  const replace = new Map<string, Tensor>();
  const paths = new Set<string>();
  for (const [key, t] of Object.entries(adapterTensors)) {
    if (!key.startsWith(PREFIX)) throw peftError("ERR_CHECKPOINT", `${adapterDir}: adapter key "${key}" does not start with "${PREFIX}"`);
    const rest = key.slice(PREFIX.length);
    const m = SVD_KEY.exec(rest);
    if (m) paths.add(m[1]);
    else if (/\.lora_/.test(rest)) throw peftError("ERR_UNSUPPORTED", `${adapterDir}: adapter key "${key}" is not an AdaLoRA tensor (lora_A, lora_E, lora_B)`);
    else replace.set(rest, t);
  }
  checkAdaLoraShapes(config, new Map(Object.entries(adapterTensors).map(([k, t]) => [k, t.shape])), adapterDir);
  const lora = new Map<string, AdaLoraDelta>();
  try {
    for (const path of paths) {
      const [A, E, B] = ["A", "E", "B"].map((w) => adapterTensors[`${PREFIX}${path}.lora_${w}`]);
      if (!A || !E || !B) throw peftError("ERR_CHECKPOINT", `${adapterDir}: ${path} needs lora_A, lora_E and lora_B; the file has ${["A", "E", "B"].filter((w, i) => [A, E, B][i]).map((w) => `lora_${w}`).join(", ")}`);
      const r = A.shape[0];
      if (B.shape.length !== 2 || B.shape[1] !== r) throw peftError("ERR_CHECKPOINT", `${adapterDir}: ${path}.lora_B has shape [${B.shape}] but lora_A has rank ${r}`);
      if (r === 0) continue;
      const scaling = config.loraAlpha > 0 ? config.loraAlpha : r;
      lora.set(`${path}.weight`, { A: ew("mul", [A, E], "f32"), B: B.reshape(B.shape), scale: svdScale(scaling, config.initR), embedding: false });
    }
  } catch (e) {
    for (const d of lora.values()) d.A.dispose(), d.B.dispose();
    throw e;
  }
  return { lora, replace };
}
