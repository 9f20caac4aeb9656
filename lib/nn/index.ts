export { Module, retain, gradOf, disposeDropped, markAbstract, type BackwardOptions } from "./module.js";
export { Linear, Conv1D, DenseBase } from "./linear.js";
export { Embedding } from "./embedding.js";
export { Conv2d, type Conv2dOptions } from "./conv.js";
export { Sequential, ModuleList, ModuleDict, ParameterDict } from "./containers.js";
export { ReLU, GELU, SiLU, LogSoftmax, Dropout } from "./activations.js";
export { Linear8bitLt, type Linear8bitLtOptions } from "./linear8bit.js";
export { Linear4bit, type Linear4bitOptions, type ComputeDtype4bit } from "./linear4bit.js";
export { RMSNorm } from "./norm.js";
