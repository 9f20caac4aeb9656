// PEFT adapter checkpoints: `adapter_config.json` + `adapter_model.safetensors` (+ a short model card) in
// the directory, non-default adapters in `<dir>/<adapter>/`, as Python PEFT writes and reads them.
import { mkdir, readFile, writeFile, rename, stat } from "node:fs/promises";
import { join } from "node:path";
import { peftError, typeError } from "../errors.js";
import { PeftModel, type GetPeftModelOptions } from "../peft-model.js";
import { configFromJSON, type PeftConfig } from "../tuners/peft-config.js";
import { CONFIG_NAME, configToJSONString, PEFT_FORMAT_VERSION } from "../tuners/config.js";
import { LoraConfig } from "../tuners/lora/config.js";
import { getPeftModelStateDict, setPeftModelStateDict } from "../tuners/state-dict.js";
import { loadSafetensors, saveSafetensors } from "./index.js";
import type { Module } from "../nn/index.js";
import type { Tensor } from "../tensor.js";

export const WEIGHTS_NAME = "adapter_model.safetensors";

function adapterDir(dir: string, adapterName: string): string {
  return adapterName === "default" ? dir : join(dir, adapterName);
}

function modelCard(config: PeftConfig): string {
  const base = config.baseModelNameOrPath;
  return [
    "---",
    ...(base ? [`base_model: ${base}`] : []),
    "library_name: peft",
    "tags:",
    `- ${(config as { peftType?: string }).peftType?.toLowerCase() ?? "lora"}`,
    "- node-peft",
    "---",
    "",
    "# Model Card for Model ID",
    "",
    `A ${config.constructor.name.replace("Config", "")} adapter saved by node-peft in PEFT's format (loadable with Python PEFT's`,
    "`PeftModel.from_pretrained`).",
    "",
    "### Framework versions",
    "",
    `- PEFT ${PEFT_FORMAT_VERSION}`,
    "",
  ].join("\n");
}

// A small text file written atomically (temp + rename), so an interrupted save never leaves half a config.
async function writeTextAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, text, "utf8");
  await rename(tmp, path);
}

/** Saves adapters (default: all) in PEFT's layout. */
export async function savePretrained(m: PeftModel, dir: string, opts: { adapterNames?: string[] } = {}): Promise<void> {
  if (!(m instanceof PeftModel)) throw typeError("savePretrained: expected a PeftModel");
  if (typeof dir !== "string" || !dir) throw typeError("savePretrained: dir must be a non-empty string");
  const names = opts.adapterNames ?? Object.keys(m.peftConfig);
  for (const n of names) if (!(n in m.peftConfig)) throw peftError("ERR_CONFIG", `savePretrained: unknown adapter "${n}"; this model has ${Object.keys(m.peftConfig).join(", ")}`);
  await mkdir(dir, { recursive: true });
  for (const name of names) {
    const out = adapterDir(dir, name);
    await mkdir(out, { recursive: true });
    const sd = getPeftModelStateDict(m, { adapterName: name });
    try {
      await saveSafetensors(join(out, WEIGHTS_NAME), sd);
    } finally {
      for (const t of Object.values(sd)) t.dispose();
    }
    // What is saved is an inference adapter (PEFT sets inference_mode on save).
    const config = configFromJSON({ ...(m.peftConfig[name].toJSON() as object), inference_mode: true });
    await writeTextAtomic(join(out, CONFIG_NAME), configToJSONString(config));
    await writeTextAtomic(join(out, "README.md"), modelCard(config));
  }
}

export async function readAdapterConfig(dir: string): Promise<PeftConfig> {
  const path = join(dir, CONFIG_NAME);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    throw peftError("ERR_CHECKPOINT", `${path}: cannot read the adapter config (${(e as Error).message})`);
  }
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    throw peftError("ERR_CHECKPOINT", `${path}: not valid JSON (${(e as Error).message})`);
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) throw peftError("ERR_CHECKPOINT", `${path}: expected a JSON object`);
  return configFromJSON(obj);
}

async function readAdapterWeights(dir: string): Promise<Record<string, Tensor>> {
  const path = join(dir, WEIGHTS_NAME);
  try {
    await stat(path);
  } catch {
    throw peftError("ERR_CHECKPOINT", `${dir}: no ${WEIGHTS_NAME} (only safetensors adapters are supported)`);
  }
  return loadSafetensors(path);
}

async function loadWeightsInto(m: PeftModel, dir: string, adapterName: string): Promise<void> {
  const sd = await readAdapterWeights(dir);
  try {
    setPeftModelStateDict(m, sd, { adapterName });
  } finally {
    for (const t of Object.values(sd)) t.dispose();
  }
}

function freezeForInference(m: PeftModel, adapterName: string, isTrainable: boolean): void {
  if (isTrainable) return;
  for (const [name, p] of m.namedParameters()) if (name.includes(`.${adapterName}.`)) p.requiresGrad = false;
  m.eval();
}

/** PEFT's PeftModel.from_pretrained: the config from `dir` (or `opts.config`), then the weights. */
export async function fromPretrained(
  model: Module,
  dir: string,
  opts: { adapterName?: string; isTrainable?: boolean; config?: PeftConfig } & Pick<GetPeftModelOptions, "modelType"> = {},
): Promise<PeftModel> {
  const adapterName = opts.adapterName ?? "default";
  const config = opts.config ?? (await readAdapterConfig(dir));
  if (config instanceof LoraConfig) config.inferenceMode = !opts.isTrainable;
  const m = new PeftModel(model, config, { adapterName, modelType: opts.modelType });
  await loadWeightsInto(m, dir, adapterName);
  freezeForInference(m, adapterName, opts.isTrainable === true);
  return m;
}

/** Adds an adapter saved in `dir` under `adapterName` (inactive until setAdapter, as in PEFT). */
export async function loadAdapter(m: PeftModel, dir: string, adapterName: string, opts: { isTrainable?: boolean } = {}): Promise<void> {
  const config = await readAdapterConfig(dir);
  m.addAdapter(adapterName, config);
  try {
    await loadWeightsInto(m, dir, adapterName);
  } catch (e) {
    m.deleteAdapter(adapterName);
    throw e;
  }
  freezeForInference(m, adapterName, opts.isTrainable === true);
}
