// Checkpoint I/O: the safetensors reader and writer, and sharded checkpoints.
export { loadSafetensors, loadSafetensorsSync, openSafetensors, type SafetensorsFile } from "./safetensors-read.js";
export { saveSafetensors, saveSafetensorsSync } from "./safetensors-write.js";
export { loadShardedSafetensors, openSharded, type ShardedSafetensors } from "./sharded.js";
