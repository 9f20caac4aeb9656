// Configs of the prompt-learning methods (PEFT's PromptLearningConfig and its three subclasses): prompt tuning,
// P-tuning (PromptEncoderConfig) and prefix tuning. PEFT's fields, defaults and __post_init__ rules; the
// model-dependent fields (token_dim, num_layers, num_attention_heads, ...) stay null until getPeftModel fills
// them in from the model, as PEFT's _prepare_prompt_learning_config does (and PEFT writes them then).

import { peftError, typeError } from "../../errors.js";
import * as check from "../config-checks.js";
import { type ConfigSpec, type FieldSpec, type PeftConfigOptions, type UnsupportedSpec, PeftConfigBase, pyTruthy } from "../config.js";

export const PROMPT_TUNING_INITS = ["TEXT", "SAMPLE_VOCAB", "RANDOM"] as const;
export type PromptTuningInit = (typeof PROMPT_TUNING_INITS)[number];
export const ENCODER_REPARAMETERIZATION_TYPES = ["MLP", "LSTM"] as const;
export type PromptEncoderReparameterizationType = (typeof ENCODER_REPARAMETERIZATION_TYPES)[number];

/** The peft_type of each prompt-learning method. */
export const PROMPT_LEARNING_TYPES = ["PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"] as const;

function optPositiveInt(v: unknown, name: string): number | null {
  return v === null ? null : check.positiveInt(v, name);
}

/** PEFT's init_weights of PrefixTuningConfig: null (random) or "zero". */
function initWeights(v: unknown, name: string): "zero" | null {
  if (v === null) return null;
  if (v !== "zero") throw (typeof v === "string" ? peftError("ERR_CONFIG", `${name} must be null or "zero", got "${v}"`) : typeError(`${name} must be null or "zero", got ${check.describe(v)}`));
  return "zero";
}

export interface PromptLearningConfigOptions extends PeftConfigOptions {
  /** How many virtual tokens the prompt has (required). */
  numVirtualTokens?: number | null;
  /** The model's hidden size (filled in from the model; for prefix tuning with grouped-query attention kvHeads·headDim). */
  tokenDim?: number | null;
  /** 1 for decoder-only models (filled in). */
  numTransformerSubmodules?: number | null;
  /** Filled in from the model (its key/value heads for prefix tuning). */
  numAttentionHeads?: number | null;
  /** Filled in from the model (num_hidden_layers). */
  numLayers?: number | null;
}

const PROMPT_LEARNING_FIELDS: readonly FieldSpec[] = [
  { key: "num_virtual_tokens", check: optPositiveInt },
  { key: "token_dim", check: optPositiveInt },
  { key: "num_transformer_submodules", check: optPositiveInt },
  { key: "num_attention_heads", check: optPositiveInt },
  { key: "num_layers", check: optPositiveInt },
];

// PEFT lets prompt learning train extra modules fully; not implemented here (only null / [] accepted).
const PROMPT_LEARNING_UNSUPPORTED: readonly UnsupportedSpec[] = [{ key: "modules_to_save", default: null }];

/** What the three prompt-learning configs share (PEFT's PromptLearningConfig). */
export abstract class PromptLearningConfig extends PeftConfigBase {
  numVirtualTokens: number | null = null;
  tokenDim: number | null = null;
  numTransformerSubmodules: number | null = null;
  numAttentionHeads: number | null = null;
  numLayers: number | null = null;

  /** PEFT's is_prompt_learning. */
  get isPromptLearning(): true {
    return true;
  }

  protected validate(): void {}
}

export interface PromptTuningConfigOptions extends PromptLearningConfigOptions {
  /** "RANDOM" (default), "SAMPLE_VOCAB" (rows of the word embeddings at random ids) or "TEXT" (of promptTuningInitText). */
  promptTuningInit?: PromptTuningInit;
  promptTuningInitText?: string | null;
  /** A directory with tokenizer.json (TEXT init). */
  tokenizerNameOrPath?: string | null;
  tokenizerKwargs?: Record<string, unknown> | null;
}

const PROMPT_TUNING_SPEC: ConfigSpec = {
  className: "PromptTuningConfig",
  peftType: "PROMPT_TUNING",
  fields: [
    ...PROMPT_LEARNING_FIELDS,
    { key: "prompt_tuning_init", check: check.oneOf(PROMPT_TUNING_INITS) },
    { key: "prompt_tuning_init_text", check: check.optString },
    { key: "tokenizer_name_or_path", check: check.optString },
    { key: "tokenizer_kwargs", check: check.optPlainObject },
  ],
  unsupported: PROMPT_LEARNING_UNSUPPORTED,
};

export class PromptTuningConfig extends PromptLearningConfig {
  promptTuningInit: PromptTuningInit = "RANDOM";
  promptTuningInitText: string | null = null;
  tokenizerNameOrPath: string | null = null;
  tokenizerKwargs: Record<string, unknown> | null = null;

  constructor(opts: PromptTuningConfigOptions = {}) {
    super();
    this.load(opts, "options");
  }

  protected get spec(): ConfigSpec {
    return PROMPT_TUNING_SPEC;
  }

  /** PEFT's PromptTuningConfig.__post_init__, with its messages. */
  protected override validate(): void {
    if (this.promptTuningInit === "TEXT" && !this.tokenizerNameOrPath)
      throw peftError("ERR_CONFIG", `When prompt_tuning_init='TEXT', tokenizer_name_or_path can't be ${this.tokenizerNameOrPath === null ? "None" : "''"}.`);
    if (this.promptTuningInit === "TEXT" && this.promptTuningInitText === null)
      throw peftError("ERR_CONFIG", "When prompt_tuning_init='TEXT', prompt_tuning_init_text can't be None.");
    if (pyTruthy(this.tokenizerKwargs) && this.promptTuningInit !== "TEXT")
      throw peftError("ERR_CONFIG", "tokenizer_kwargs only valid when using prompt_tuning_init='TEXT'.");
  }
}

export interface PromptEncoderConfigOptions extends PromptLearningConfigOptions {
  /** "MLP" (default) or "LSTM" (a bidirectional LSTM, then a two-layer MLP). */
  encoderReparameterizationType?: PromptEncoderReparameterizationType;
  /** Default: tokenDim. */
  encoderHiddenSize?: number | null;
  /** The LSTM's layers (the MLP always has its fixed layers). */
  encoderNumLayers?: number;
  encoderDropout?: number;
}

const PROMPT_ENCODER_SPEC: ConfigSpec = {
  className: "PromptEncoderConfig",
  peftType: "P_TUNING",
  fields: [
    ...PROMPT_LEARNING_FIELDS,
    { key: "encoder_reparameterization_type", check: check.oneOf(ENCODER_REPARAMETERIZATION_TYPES) },
    { key: "encoder_hidden_size", check: optPositiveInt },
    { key: "encoder_num_layers", check: check.positiveInt },
    { key: "encoder_dropout", check: check.dropout, float: true },
  ],
  unsupported: PROMPT_LEARNING_UNSUPPORTED,
};

export class PromptEncoderConfig extends PromptLearningConfig {
  encoderReparameterizationType: PromptEncoderReparameterizationType = "MLP";
  encoderHiddenSize: number | null = null;
  encoderNumLayers = 2;
  encoderDropout = 0;

  constructor(opts: PromptEncoderConfigOptions = {}) {
    super();
    this.load(opts, "options");
  }

  protected get spec(): ConfigSpec {
    return PROMPT_ENCODER_SPEC;
  }
}

export interface PrefixTuningConfigOptions extends PromptLearningConfigOptions {
  /** null: random (N(0, 1) embeddings); "zero": the prefix (or the projection's last layer) starts at zero. */
  initWeights?: "zero" | null;
  /** The projection's hidden size (default tokenDim). */
  encoderHiddenSize?: number | null;
  /** Compute the prefix by a two-layer tanh MLP from small per-token embeddings (train only). */
  prefixProjection?: boolean;
}

const PREFIX_TUNING_SPEC: ConfigSpec = {
  className: "PrefixTuningConfig",
  peftType: "PREFIX_TUNING",
  fields: [
    ...PROMPT_LEARNING_FIELDS,
    { key: "init_weights", check: initWeights },
    { key: "encoder_hidden_size", check: optPositiveInt },
    { key: "prefix_projection", check: check.bool },
  ],
  unsupported: PROMPT_LEARNING_UNSUPPORTED,
};

export class PrefixTuningConfig extends PromptLearningConfig {
  initWeights: "zero" | null = null;
  encoderHiddenSize: number | null = null;
  prefixProjection = false;

  constructor(opts: PrefixTuningConfigOptions = {}) {
    super();
    this.load(opts, "options");
  }

  protected get spec(): ConfigSpec {
    return PREFIX_TUNING_SPEC;
  }
}
