// PEFT's prepare_model_for_kbit_training: before adapters are added to a model with an int8 or 4-bit base, every base
// parameter is frozen, the floating ones that are not int8 (norms, embeddings, the output head, biases) are
// widened to f32 so their use stays accurate in training, and gradient checkpointing is turned on.
import { Module } from "./nn/index.js";
import { describe, optionsArg, peftError, typeError } from "./errors.js";

export interface KbitTrainingOptions {
  /** Calls the model's gradientCheckpointingEnable() when it has one (PEFT's default: true). */
  useGradientCheckpointing?: boolean;
  /** PEFT's gradient_checkpointing_kwargs (use_reentrant, ...): the recomputation here takes none. */
  gradientCheckpointingKwargs?: Record<string, unknown> | null;
}

const KNOWN = new Set(["useGradientCheckpointing", "gradientCheckpointingKwargs"]);

/** Freezes `model`, casts its f16/bf16 parameters to f32 (int8 and packed 4-bit weights and their buffers stay) and returns it. */
export function prepareModelForKbitTraining<M extends Module>(model: M, options: KbitTrainingOptions = {}): M {
  const what = "prepareModelForKbitTraining";
  if (!(model instanceof Module)) throw typeError(`${what}: model must be a Module, got ${describe(model)}`);
  const opts = optionsArg(options, what);
  for (const k of Object.keys(opts)) if (!KNOWN.has(k)) throw peftError("ERR_CONFIG", `${what}: unknown option "${k}" (expected useGradientCheckpointing, gradientCheckpointingKwargs)`);
  const useGc = opts.useGradientCheckpointing ?? true;
  if (typeof useGc !== "boolean") throw typeError(`${what}: useGradientCheckpointing must be a boolean, got ${describe(useGc)}`);
  const kwargs = opts.gradientCheckpointingKwargs;
  if (kwargs !== undefined && kwargs !== null) {
    if (typeof kwargs !== "object" || Array.isArray(kwargs)) throw typeError(`${what}: gradientCheckpointingKwargs must be an object, got ${describe(kwargs)}`);
    const keys = Object.keys(kwargs);
    if (keys.length)
      throw peftError("ERR_UNSUPPORTED", `${what}: gradientCheckpointingKwargs (${keys.join(", ")}) are not supported: the recomputation has no re-entrant mode or other options, and inputs need no requires_grad hook here`);
  }
  for (const p of model.parameters()) p.requiresGrad = false;
  // Module.to widens only floating parameters (int8 CB and buffers such as SCB stay as they are).
  model.to("f32");
  for (const p of model.parameters()) p.requiresGrad = false;
  const gc = (model as Module & { gradientCheckpointingEnable?: unknown }).gradientCheckpointingEnable;
  if (useGc && typeof gc === "function") gc.call(model);
  return model;
}
