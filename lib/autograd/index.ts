// Autograd: graph nodes above the modules' fused kernels, backward, grad mode, tidy scopes, gradcheck.
export { noGrad, isGradEnabled } from "./grad-mode.js";
export { tidy } from "./tidy.js";
export { gradcheck, type GradcheckOptions } from "./gradcheck.js";
export { record, wantsGrad, type RecordOptions } from "./record.js";
export { Node, type BackwardFn, type Edge } from "./node.js";
export { observeBackward, type BackwardObserver } from "./observe.js";
