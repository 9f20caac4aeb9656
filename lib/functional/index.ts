// F: differentiable functional ops. Each records one graph node when grad mode is on and an input
// requires grad; the tape-free kernels (losses returning {loss, grad}) stay at the package root.
export { linear, relu, silu, gelu, logSoftmax, dropout, embedding } from "./nn.js";
export { nllLoss, crossEntropy, mseLoss } from "./losses.js";
