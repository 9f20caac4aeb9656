// Prompt tuning, P-tuning and prefix tuning: configs, encoders and the tuner.
// PromptLearningConfig is the abstract base of the three configs: its type only.
export type { PromptLearningConfig } from "./config.js";
export {
  PromptTuningConfig, PromptEncoderConfig, PrefixTuningConfig, PROMPT_TUNING_INITS, ENCODER_REPARAMETERIZATION_TYPES,
  type PromptLearningConfigOptions, type PromptTuningConfigOptions, type PromptEncoderConfigOptions, type PrefixTuningConfigOptions,
  type PromptTuningInit, type PromptEncoderReparameterizationType,
} from "./config.js";
export { PromptEmbedding, PromptEncoder, PrefixEncoder, PromptEncoderBase } from "./encoders.js";
export { PromptLearningModel } from "./model.js";
export { LSTM, type LSTMOptions, type LSTMOutput } from "../../nn/lstm.js";
export type { PrefixKeyValue } from "../../models/llama.js";
