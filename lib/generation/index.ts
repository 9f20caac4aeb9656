// Text generation: decoding loops over causal LMs and the sampling processors they use.
export { generate, streamTokens, causalLMOf, type GenerateOptions, type GenerateResult, type CausalLMLike } from "./generate.js";
export { readGenerationDefaults, type GenerationDefaults } from "./generation-config.js";
export type { SamplingOptions } from "./sampling.js";
export { generateText, tokenizerOf, type GenerateTextOptions } from "./generate-text.js";
