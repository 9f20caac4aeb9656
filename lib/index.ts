// The public API of node-peft.
export { PeftError } from "./errors.js";
export { Tensor, type DType, type Device } from "./tensor.js";
export { manualSeed } from "./random.js";
export { linear, linearGradInput, linearGradWeight, matmul } from "./ops.js";
export { backend, type CudaState } from "./backend.js";
