// PEFT adapter checkpoints: `adapter_config.json` + `adapter_model.safetensors` (+ a short model card) in
// the directory, non-default adapters in `<dir>/<adapter>/`, as Python PEFT writes and reads them.
import { mkdir, open, rename, rmdir, stat, unlink } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { arrayArg, clip, describe, optionsArg, peftError, shownValue, typeError } from "../errors.js";
import { findTargetModules } from "../matching.js";
import { defaultTargetModules } from "../mappings.js";
import { Conv1D, Module } from "../nn/index.js";
import { DTYPE_SIZE, Tensor } from "../tensor.js";
import { configFromJSON, type PeftConfig } from "../tuners/peft-config.js";
import { CONFIG_NAME, checkConfigDepth, configToJSONString, PEFT_FORMAT_VERSION, PeftConfigBase } from "../tuners/config.js";
import { LoraConfig } from "../tuners/lora/config.js";
import { LoraLayer } from "../tuners/lora/layer.js";
import { loraMatchOptions } from "../tuners/lora/model.js";
import { getPeftModelStateDict, setPeftModelStateDict, type TunedModel } from "../tuners/state-dict.js";
import { BaseTuner } from "../tuners/tuner.js";
import { IA3Config } from "../tuners/ia3/config.js";
import { PromptLearningConfig } from "../tuners/prompt-learning/config.js";
import { ia3TargetShapes } from "../tuners/ia3/model.js";
import { AdaLoraConfig } from "../tuners/adalora/config.js";
import { checkAdaLoraShapes } from "../tuners/adalora/file-check.js";
import { fileDType } from "./safetensors-format.js";
import { buildHeader, checkName, tempPath } from "./safetensors-write.js";
import { loadSafetensors, openSafetensors, saveSafetensors } from "./index.js";
import { describeTorchCheckpoint, loadTorchCheckpoint } from "./torch-checkpoint.js";
import { readJsonObject } from "./json-file.js";

export const WEIGHTS_NAME = "adapter_model.safetensors";
export const TORCH_WEIGHTS_NAME = "adapter_model.bin";
const README_NAME = "README.md";
const PREFIX = "base_model.model.";

/**
 * What these functions need of a PeftModel. peft-model.ts imports this file; this file never imports it (a
 * new PeftModel comes from the `wrap` function fromPretrained is given).
 */
export interface AdapterHost extends TunedModel {
  readonly peftConfig: Record<string, PeftConfig>;
  addAdapter(name: string, config: PeftConfig): void;
  deleteAdapter(name: string): void;
}

type WrapOptions = { adapterName?: string; modelType?: string };

function hostArg(m: unknown, op: string): AdapterHost {
  if (!(m instanceof Module) || !((m as { baseModel?: unknown }).baseModel instanceof BaseTuner)) throw typeError(`${op}: expected a PeftModel`);
  return m as AdapterHost;
}

/** A directory argument: a non-empty string, checked before it reaches node:path or node:fs. */
function dirArg(dir: unknown, op: string): string {
  if (typeof dir !== "string" || !dir) throw typeError(`${op}: dir must be a non-empty string, got ${dir === "" ? "an empty string" : describe(dir)}`);
  return dir;
}

function adapterDir(dir: string, adapterName: string): string {
  return adapterName === "default" ? dir : join(dir, adapterName);
}

/** A YAML scalar for the model card's front matter: plain when that is safe, else JSON-quoted. */
function yamlScalar(s: string): string {
  return /^[A-Za-z0-9_./@-][A-Za-z0-9_./@ -]*$/.test(s) && !s.endsWith(" ") ? s : JSON.stringify(s);
}

function modelCard(config: PeftConfig): string {
  const base = config.baseModelNameOrPath;
  return [
    "---",
    ...(base ? [`base_model: ${yamlScalar(base)}`] : []),
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


/** Writes `text` to a new file (refused if `path` exists) and fsyncs it. */
export async function writeTextDurable(path: string, text: string): Promise<void> {
  const h = await open(path, "wx");
  try {
    await h.writeFile(text, "utf8");
    await h.sync();
  } finally {
    await h.close();
  }
}

/** What one adapter's directory will hold, all serialised and checked before any file is written. */
interface AdapterFiles {
  dir: string;
  config: string;
  card: string;
  tensors: Record<string, Tensor>;
}

/** Checks what saveSafetensors would refuse (names, disposed tensors, header size) without writing. */
function checkTensorsWritable(file: string, tensors: Record<string, Tensor>): void {
  const entries = Object.entries(tensors).map(([k, t]) => {
    const name = checkName("savePretrained", file, k);
    if (!(t instanceof Tensor)) throw typeError(`savePretrained: ${shownValue(name)} is not a Tensor`);
    if (t.disposed) throw peftError("ERR_DISPOSED", `savePretrained: tensor ${shownValue(name)} has been disposed`);
    return { name, dtype: fileDType(t.dtype), shape: t.shape, nbytes: t.numel * DTYPE_SIZE[t.dtype] };
  });
  buildHeader("savePretrained", file, entries, undefined);
}

function checkAdapterNameForDir(name: unknown, known: Record<string, PeftConfig>): string {
  if (typeof name !== "string") throw typeError(`savePretrained: adapter names must be strings, got ${describe(name)}`);
  if (!Object.hasOwn(known, name)) {
    throw peftError("ERR_CONFIG", `savePretrained: unknown adapter ${shownValue(name)}; this model has ${clip(Object.keys(known).join(", "), 200)}`);
  }
  // A non-default adapter becomes a directory name: it must stay one directory below `dir`.
  if (name !== "default" && (name === "" || name === "." || name === ".." || /[/\\\0]/.test(name))) {
    throw peftError("ERR_CONFIG", `savePretrained: adapter name ${shownValue(name)} cannot be used as a directory name`);
  }
  return name;
}

/**
 * Saves adapters (default: all) in PEFT's layout. Everything (config text, model card, the tensors'
 * header) is built and checked first; then each file goes to a temporary name beside its target and all
 * are renamed into place at the end, configs last, so a failure leaves the directory as it was (never
 * weights without their config).
 */
export async function savePretrained(m: AdapterHost, dir: string, opts: { adapterNames?: string[] } = {}): Promise<void> {
  hostArg(m, "savePretrained");
  dirArg(dir, "savePretrained");
  const known = m.peftConfig;
  const requested = optionsArg(opts, "savePretrained").adapterNames ?? Object.keys(known);
  const names = [...new Set(arrayArg(requested, "savePretrained", "adapterNames").map((n) => checkAdapterNameForDir(n, known)))];

  const plans: AdapterFiles[] = [];
  try {
    for (const name of names) {
      // What is saved is an inference adapter (PEFT sets inference_mode on save).
      const config = configFromJSON({ ...(known[name]!.toJSON() as object), inference_mode: true });
      const plan: AdapterFiles = { dir: adapterDir(dir, name), config: configToJSONString(config), card: modelCard(config), tensors: {} };
      plans.push(plan);
      plan.tensors = getPeftModelStateDict(m, { adapterName: name });
      checkTensorsWritable(join(plan.dir, WEIGHTS_NAME), plan.tensors);
    }
    await writeAll(plans).catch((e: unknown) => {
      throw fileSystemFailure(e, dir);
    });
  } finally {
    for (const p of plans) for (const t of Object.values(p.tensors)) t.dispose();
  }
}

/** A file-system error while saving becomes ERR_CHECKPOINT naming the path that failed (else the directory). */
export function fileSystemFailure(e: unknown, dir: string): unknown {
  const err = e as NodeJS.ErrnoException;
  if (!(e instanceof Error) || typeof err.syscall !== "string") return e;
  const path = typeof err.path === "string" ? err.path : dir;
  const out = peftError("ERR_CHECKPOINT", `savePretrained: cannot write ${JSON.stringify(path)}: ${err.code ?? "error"} (${err.syscall}: ${err.message})`);
  return Object.assign(out, { cause: e, path });
}

async function writeAll(plans: AdapterFiles[]): Promise<void> {
  const created: { top: string; leaf: string }[] = [];
  const pending: { tmp: string; dest: string }[] = [];
  let renaming = false;
  try {
    for (const p of plans) {
      const made = await mkdir(p.dir, { recursive: true });
      if (made !== undefined) created.push({ top: resolve(made), leaf: resolve(p.dir) });
    }
    const configs: { tmp: string; dest: string }[] = [];
    for (const p of plans) {
      const weights = { tmp: tempPath(join(p.dir, WEIGHTS_NAME)), dest: join(p.dir, WEIGHTS_NAME) };
      pending.push(weights);
      await saveSafetensors(weights.tmp, p.tensors);
      const card = { tmp: tempPath(join(p.dir, README_NAME)), dest: join(p.dir, README_NAME) };
      pending.push(card);
      await writeTextDurable(card.tmp, p.card);
      const config = { tmp: tempPath(join(p.dir, CONFIG_NAME)), dest: join(p.dir, CONFIG_NAME) };
      pending.push(config);
      configs.push(config);
      await writeTextDurable(config.tmp, p.config);
    }
    // Weights and model cards first, configs last: a directory never shows new weights under no config.
    const order = [...pending.filter((f) => !configs.includes(f)), ...configs];
    renaming = true;
    for (const f of order) {
      await rename(f.tmp, f.dest);
      pending.splice(pending.indexOf(f), 1);
    }
  } catch (e) {
    await Promise.all(pending.map((f) => unlink(f.tmp).catch(() => {})));
    // Directories this save created go again while empty (rmdir never removes a file), deepest first.
    if (!renaming) {
      for (const { top, leaf } of created.reverse()) {
        for (let d = leaf; ; d = dirname(d)) {
          if (!(await rmdir(d).then(() => true, () => false)) || d === top || d === dirname(d)) break;
        }
      }
    }
    throw e;
  }
}

export async function readAdapterConfig(dir: string): Promise<PeftConfig> {
  const path = join(dirArg(dir, "readAdapterConfig"), CONFIG_NAME);
  const obj = await readJsonObject(path, "adapter config");
  checkConfigDepth(obj, path);
  try {
    return configFromJSON(obj);
  } catch (e) {
    // Name the file: the config's own messages name only the key.
    if (e instanceof Error && typeof (e as { code?: unknown }).code === "string" && !e.message.includes(path)) {
      e.message = `${path}: ${e.message}`;
    }
    throw e;
  }
}

// PEFT reads adapter_model.bin (torch.save's format) when there is no safetensors file; so do we, through
// the restricted reader that executes nothing.
async function weightsPath(dir: string): Promise<string> {
  for (const name of [WEIGHTS_NAME, TORCH_WEIGHTS_NAME]) {
    const path = join(dir, name);
    if (await stat(path).then(() => true, () => false)) return path;
  }
  throw peftError("ERR_CHECKPOINT", `${dir}: neither ${WEIGHTS_NAME} nor ${TORCH_WEIGHTS_NAME} is there`);
}

const isTorchFile = (file: string) => file.endsWith(".bin");

/** Each tensor's shape, from the file's header (or pickle) alone. */
function weightShapes(file: string): Map<string, number[]> {
  if (isTorchFile(file)) return new Map([...describeTorchCheckpoint(file)].map(([k, v]) => [k, v.shape]));
  using f = openSafetensors(file);
  return new Map(f.keys().map((k) => [k, f.info(k).shape]));
}

/** (in, out) features of a module a LoRA layer wraps, when the screen can tell them. */
function featuresOf(mod: unknown): [number, number] | null {
  const base = mod instanceof LoraLayer ? mod.baseLayer : mod;
  if (base instanceof Conv1D) return [base.nx, base.nf];
  const f = base as { inFeatures?: unknown; outFeatures?: unknown };
  return typeof f.inFeatures === "number" && typeof f.outFeatures === "number" ? [f.inFeatures, f.outFeatures] : null;
}

function shapeStr(s: readonly number[]): string {
  return `[${s.join(", ")}]`;
}

/**
 * Checks an adapter file's LoRA tensors against the config and the model from the file's header alone,
 * before any adapter layer is allocated: each lora_A / lora_B must have the rank the config gives its
 * module (r or its rank_pattern entry), and each module the config targets must have its tensors with the
 * module's feature sizes. A config whose r disagrees with the weights would otherwise make the layers
 * allocate (and initialise) whatever that r asks for before the shapes are compared.
 */
function checkLoraFile(model: Module, config: LoraConfig, file: string, modelType: string | undefined): void {
  const inFile = weightShapes(file);
  const shapes = new Map<string, number[]>();
  const withLoraKeys = new Set<string>();
  for (const key of inFile.keys()) {
    const at = key.indexOf(".lora_");
    if (key.startsWith(PREFIX) && at > PREFIX.length) withLoraKeys.add(key.slice(PREFIX.length, at));
    const m = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/.exec(key);
    if (!m) continue;
    const [, path, which] = m as unknown as [string, string, "A" | "B"];
    const shape = inFile.get(key)!;
    shapes.set(key, shape);
    const want = config.rankFor(path);
    const rank = shape.length >= 2 ? (which === "A" ? shape[0] : shape[1]) : undefined;
    if (rank !== want) {
      throw peftError(
        "ERR_CHECKPOINT",
        `${file}: ${key} has shape ${shapeStr(shape)}` +
          (rank === undefined ? ", not a LoRA weight" : ` (rank ${rank})`) +
          ` but the config gives ${path} r = ${want}`,
      );
    }
  }

  let targeted: string[];
  try {
    const effective =
      config.targetModules === null ? new LoraConfig({ ...config, targetModules: defaultTargetModules("LORA", modelType) }) : config;
    targeted = findTargetModules(model, effective, { ...loraMatchOptions(config), warn: false }).targeted;
  } catch {
    return; // the model's own matching reports this, before it allocates anything
  }
  for (const path of targeted) {
    const r = config.rankFor(path);
    const feats = featuresOf(model.getSubmodule(path));
    const keyA = `${PREFIX}${path}.lora_A.weight`, keyB = `${PREFIX}${path}.lora_B.weight`;
    const a = shapes.get(keyA), b = shapes.get(keyB);
    if (!a && !b) {
      if (withLoraKeys.has(path)) continue; // a custom layer's own parameter names
      const expect = feats ? ` ${shapeStr([r, feats[0]])}, ${keyB} ${shapeStr([feats[1], r])}` : `, ${keyB}`;
      throw peftError(
        "ERR_CHECKPOINT",
        `${file}: the checkpoint does not fit the model: the config targets ${path} (r = ${r}) but the file has no LoRA weights for it (missing: ${keyA}${expect})`,
      );
    }
    if (!feats) continue;
    for (const [key, got, want] of [[keyA, a, [r, feats[0]]], [keyB, b, [feats[1], r]]] as const) {
      if (got && got.length === 2 && (got[0] !== want[0] || got[1] !== want[1])) {
        throw peftError(
          "ERR_CHECKPOINT",
          `${file}: ${key} has shape ${shapeStr(got)} but ${path} needs ${shapeStr(want)} (${feats[0]} -> ${feats[1]} features, r = ${r})`,
        );
      }
    }
  }
}

/**
 * Checks an IA3 file's ia3_l tensors from its header against the shapes the config gives the model's targets
 * ((1, in) for feed-forward modules, (out, 1) otherwise; (1, C, 1, 1) on convolutions), before any layer is made.
 */
function checkIa3File(model: Module, config: IA3Config, file: string, modelType: string | undefined): void {
  let expected: Map<string, number[]>;
  try {
    expected = ia3TargetShapes(model, config, modelType);
  } catch {
    return; // the model's own injection reports this, before it changes anything
  }
  const inFile = weightShapes(file);
  for (const [path, want] of expected) {
    const key = `${PREFIX}${path}.ia3_l`;
    const got = inFile.get(key);
    if (!got) throw peftError("ERR_CHECKPOINT", `${file}: the checkpoint does not fit the model: the config targets ${path} but the file has no ${key} ${shapeStr(want)}`);
    if (got.join() !== want.join()) throw peftError("ERR_CHECKPOINT", `${file}: ${key} has shape ${shapeStr(got)} but ${path} needs ${shapeStr(want)}`);
  }
  for (const key of inFile.keys()) {
    const m = /^base_model\.model\.(.+)\.ia3_l$/.exec(key);
    if (m && !expected.has(m[1])) throw peftError("ERR_CHECKPOINT", `${file}: ${key} is for ${m[1]}, which the config does not target in this model`);
  }
}

async function checkFileFits(model: Module, config: PeftConfig, file: string, modelType?: string): Promise<void> {
  if (config instanceof LoraConfig) checkLoraFile(model, config, file, modelType);
  if (config instanceof IA3Config) checkIa3File(model, config, file, modelType);
  if (config instanceof AdaLoraConfig) checkAdaLoraShapes(config, weightShapes(file), file);
}

async function loadWeightsInto(m: AdapterHost, file: string, adapterName: string): Promise<void> {
  const sd = isTorchFile(file) ? loadTorchCheckpoint(file) : await loadSafetensors(file);
  try {
    setPeftModelStateDict(m, sd, { adapterName });
  } finally {
    for (const t of Object.values(sd)) t.dispose();
  }
}

function freezeForInference(m: AdapterHost, adapterName: string, isTrainable: boolean): void {
  if (isTrainable) return;
  // `lora_A.<name>.weight`, or a vector named by the adapter itself (`ia3_l.<name>`).
  for (const [name, p] of m.namedParameters()) if (name.includes(`.${adapterName}.`) || name.endsWith(`.${adapterName}`)) p.requiresGrad = false;
  m.eval();
}

/**
 * A saved prompt-learning adapter holds the computed prompt, not the encoder that made it: it loads for
 * inference only (PEFT's rule and message).
 */
function notTrainablePrompt(isTrainable: unknown): true {
  if (isTrainable === true) throw peftError("ERR_CONFIG", "Cannot set a prompt learning adapter to trainable when loading pretrained adapter.");
  return true;
}

/**
 * PEFT's PeftModel.from_pretrained: the config from `dir` (or `opts.config`), then the weights; `wrap` makes
 * the PeftModel.
 */
export async function fromPretrained<M extends AdapterHost>(
  model: Module,
  dir: string,
  options: { adapterName?: string; isTrainable?: boolean; config?: PeftConfig; modelType?: string },
  wrap: (model: Module, config: PeftConfig, opts: WrapOptions) => M,
): Promise<M> {
  dirArg(dir, "fromPretrained");
  const opts = optionsArg(options, "fromPretrained");
  const adapterName = opts.adapterName ?? "default";
  const config = opts.config ?? (await readAdapterConfig(dir));
  if (config instanceof PromptLearningConfig) config.inferenceMode = notTrainablePrompt(opts.isTrainable);
  else if (config instanceof PeftConfigBase) config.inferenceMode = !opts.isTrainable;
  const file = await weightsPath(dir);
  await checkFileFits(model, config, file, opts.modelType);
  const m = wrap(model, config, { adapterName, modelType: opts.modelType });
  await loadWeightsInto(m, file, adapterName);
  freezeForInference(m, adapterName, opts.isTrainable === true);
  return m;
}

/** Adds an adapter saved in `dir` under `adapterName` (inactive until setAdapter, as in PEFT). */
export async function loadAdapter(m: AdapterHost, dir: string, adapterName: string, options: { isTrainable?: boolean } = {}): Promise<void> {
  hostArg(m, "loadAdapter");
  dirArg(dir, "loadAdapter");
  const opts = optionsArg(options, "loadAdapter");
  const config = await readAdapterConfig(dir);
  const file = await weightsPath(dir);
  if (typeof adapterName === "string" && Object.hasOwn(m.peftConfig, adapterName)) {
    throw peftError("ERR_CONFIG", `Adapter with name ${shownValue(adapterName)} already exists.`);
  }
  if (config instanceof PromptLearningConfig) config.inferenceMode = notTrainablePrompt(opts.isTrainable);
  await checkFileFits(m.baseModel.model, config, file);
  m.addAdapter(adapterName, config);
  try {
    await loadWeightsInto(m, file, adapterName);
  } catch (e) {
    m.deleteAdapter(adapterName);
    throw e;
  }
  freezeForInference(m, adapterName, opts.isTrainable === true);
}
