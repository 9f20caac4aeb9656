// gradcheck: analytic gradients (backward of a random projection of the output) against central finite
// differences computed in float64 from the function's outputs.
import { Tensor } from "../tensor.js";
import { arrayArg, isArray, optionsArg, peftError, typeError } from "../errors.js";
import { noGrad } from "./grad-mode.js";
import { tidy } from "./tidy.js";
import { untrack } from "./scope.js";

export interface GradcheckOptions {
  /** Step of the central difference (default 1e-3: f32 outputs carry ~1e-7 relative noise). */
  eps?: number;
  atol?: number;
  rtol?: number;
  /** Seed of the random output projection. */
  seed?: number;
}

function floatsOf(t: Tensor): Float64Array {
  return t.toFloat64Array();
}

function dot(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/**
 * Checks d(v·fn(inputs))/d(input) for every input that requires grad against finite differences; returns
 * true or throws ERR_GRADCHECK naming the input, the element and both values. Inputs must be host leaves in
 * f32 (f16/bf16 work with a larger eps and tolerance).
 */
export function gradcheck(fn: (...xs: Tensor[]) => Tensor, args: Tensor[], options: GradcheckOptions = {}): true {
  if (typeof fn !== "function") throw typeError("gradcheck: fn must be a function");
  if (!isArray(args)) throw typeError("gradcheck: inputs must be an array of Tensors");
  // fn is called with the inputs spread as arguments: a list this long is no gradient check.
  const inputs = arrayArg(args, "gradcheck", "inputs", 1024) as Tensor[];
  if (inputs.some((t) => !(t instanceof Tensor))) throw typeError("gradcheck: inputs must be an array of Tensors");
  const opts = optionsArg(options, "gradcheck");
  const eps = opts.eps ?? 1e-3, atol = opts.atol ?? 1e-3, rtol = opts.rtol ?? 1e-2;
  for (const [i, t] of inputs.entries())
    if (t.requiresGrad && (!t.isLeaf || t.device !== "cpu")) throw peftError("ERR_STATE", `gradcheck: input ${i} must be a host leaf tensor`);
  const evalAt = (): Float64Array => noGrad(() => tidy(() => floatsOf(fn(...inputs))));
  // Analytic: backward of v·out for a fixed random v.
  const saved = inputs.map((t) => t.grad);
  inputs.forEach((t) => (t.grad = null));
  let v: Tensor | null = null;
  let analytic: (Float64Array | null)[];
  try {
    analytic = tidy(() => {
      const out = fn(...inputs);
      if (!(out instanceof Tensor)) throw typeError("gradcheck: fn must return a Tensor");
      v = untrack(Tensor.randn(out.shape, { seed: opts.seed ?? 1234, dtype: out.dtype }));
      if (!out.requiresGrad) return inputs.map(() => null);
      out.backward(v);
      return inputs.map((t) => (t.requiresGrad ? (t.grad ? floatsOf(t.grad) : new Float64Array(t.numel)) : null));
    });
  } finally {
    inputs.forEach((t, i) => {
      if (t.grad && t.grad !== saved[i]) t.grad.dispose();
      t.grad = saved[i];
    });
  }
  const vs = floatsOf(v!);
  (v as Tensor | null)?.dispose();
  for (const [i, t] of inputs.entries()) {
    if (!t.requiresGrad) continue;
    const data = t.view() as Float32Array | Uint16Array;
    if (!(data instanceof Float32Array)) throw peftError("ERR_DTYPE", `gradcheck: input ${i} is ${t.dtype}; finite differences need f32 inputs`);
    for (let j = 0; j < data.length; j++) {
      const x0 = data[j];
      data[j] = x0 + eps;
      const plus = dot(vs, evalAt());
      data[j] = x0 - eps;
      const minus = dot(vs, evalAt());
      data[j] = x0;
      // The step actually taken in f32 (x0 ± eps rounded), for the quotient.
      const numeric = (plus - minus) / (Math.fround(x0 + eps) - Math.fround(x0 - eps));
      const a = analytic[i]![j];
      if (!(Math.abs(a - numeric) <= atol + rtol * Math.abs(numeric)))
        throw peftError(
          "ERR_GRADCHECK",
          `gradcheck: input ${i} (shape [${t.shape.join(", ")}]) element ${j}: analytic ${a} vs numeric ${numeric} (atol ${atol}, rtol ${rtol})`,
        );
    }
  }
  return true;
}
