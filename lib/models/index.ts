// Architectures people fine-tune, built from transformers-format checkpoints.
export { LlamaForCausalLM, LlamaModel, LlamaDecoderLayer, LlamaAttention, LlamaMLP, type CausalLMForwardOptions, type CausalLMOutput, type PretrainedOptions, type PrefixKeyValue } from "./llama.js";
export type { SavePretrainedOptions } from "../io/save-pretrained.js";
export { parseLlamaConfig, readLlamaConfig, llamaConfig, llamaConfigToJSON, LLAMA_MODEL_TYPES, type LlamaConfig, type LlamaConfigInit, type LlamaModelType, type RopeScaling } from "./llama-config.js";
export { ropeInvFreq, ropeTables } from "./rope.js";
export { KVCache, type KVCacheOptions } from "./kv-cache.js";
