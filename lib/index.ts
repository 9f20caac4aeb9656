// The public API of node-peft.
export { PeftError } from "./errors.js";
export { Tensor, type DType, type Device } from "./tensor.js";
export { manualSeed } from "./random.js";
export { linear, linearGradInput, linearGradWeight, matmul } from "./ops.js";
export { backend, type CudaState } from "./backend.js";
export { LoraConfig, type LoraConfigOptions } from "./tuners/lora/config.js";
export { IA3Config, type IA3ConfigOptions } from "./tuners/ia3/config.js";
export { configFromJSON, configFromPretrained, type PeftConfig } from "./tuners/peft-config.js";
export { configToJSONString, TASK_TYPES, type TaskType } from "./tuners/config.js";
export { checkTargetModuleExists, findTargetModules, type MatchReport } from "./matching.js";
export { defaultTargetModules, defaultFeedforwardModules } from "./mappings.js";
export { loadSafetensors, loadSafetensorsSync, saveSafetensors, saveSafetensorsSync, openSafetensors, type SafetensorsFile, loadShardedSafetensors, openSharded, type ShardedSafetensors } from "./io/index.js";
