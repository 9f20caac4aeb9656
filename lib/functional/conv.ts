// conv2d as a function: one graph node whose backward is the fused conv2dBackward (dx, dW, db in one call).
import { Tensor } from "../tensor.js";
import { conv2d as conv2dKernel, conv2dBackward } from "../ops.js";
import { record, wantsGrad } from "../autograd/record.js";
import { optionsArg } from "../errors.js";
import { pairArg, type Pair } from "../nn/conv.js";
import { tensorArg } from "./raw.js";

export interface Conv2dFnOptions {
  stride?: Pair;
  padding?: Pair;
  dilation?: Pair;
  groups?: number;
}

/** PyTorch's F.conv2d: x (N, C, H, W), weight (out, C / groups, kh, kw), zero padding. */
export function conv2d(x: Tensor, weight: Tensor, bias?: Tensor | null, options: Conv2dFnOptions = {}): Tensor {
  tensorArg(x, "conv2d", "x");
  tensorArg(weight, "conv2d", "weight");
  const o = optionsArg(options, "conv2d");
  const geometry = {
    stride: pairArg(o.stride ?? 1, "conv2d: stride", 1),
    padding: pairArg(o.padding ?? 0, "conv2d: padding", 0),
    dilation: pairArg(o.dilation ?? 1, "conv2d: dilation", 1),
    groups: o.groups ?? 1,
  };
  const y = conv2dKernel(x, weight, bias ?? null, geometry);
  if (!wantsGrad(x, weight, bias)) return y;
  const xShape = x.shape;
  return record("Conv2dBackward", [x, weight, bias ?? null], y, ([g], [xs, w], [needX, needW, needB]) => {
    if (!g) return [null, null, null];
    const dW = needW ? Tensor.zeros(w.shape, { dtype: w.dtype }) : null;
    const db = needB ? Tensor.zeros([w.shape[0]], { dtype: bias!.dtype }) : null;
    const dx = conv2dBackward(g, needW ? xs : xShape, w, geometry, { wantDx: needX, dW, db });
    return [dx, dW, db];
  }, [x, weight]);
}
