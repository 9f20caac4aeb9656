// F: differentiable functional ops. Each records one graph node when grad mode is on and an input
// requires grad; the tape-free kernels (losses returning {loss, grad}) stay at the package root.
export { conv2d, type Conv2dFnOptions } from "./conv.js";
export { linear, relu, silu, gelu, dropout, embedding, softmax, logSoftmaxDim as logSoftmax, layerNorm, rmsNorm } from "./nn.js";
export { nllLoss, crossEntropy, mseLoss } from "./losses.js";
export { add, sub, mul, div, neg, exp, log, sqrt, rsqrt, reciprocal, abs, tanh, sigmoid, pow, clamp, where } from "./elementwise.js";
export { reshape, view, contiguous, flatten, unsqueeze, squeeze, permute, transpose, expand, narrow, cat, stack, split, indexSelect, gather } from "./shape.js";
export { sum, mean, variance as var, max, min, argmax, type ReduceOptions } from "./reduce.js";
export { matmul } from "./matmul.js";
export { rotaryEmbedding, scaledDotProductAttention, type AttentionOptions } from "./attention.js";
