// Gradient clipping with torch.nn.utils.clip_grad_norm_'s semantics: the norm of the per-tensor norms of
// every gradient (parameters without one are skipped), then every gradient scaled by
// min(1, maxNorm / (total + 1e-6)). The norms are summed in float64, so the result is the exact norm of
// the stored values (torch sums in the gradients' dtype).
import { arrayArg, describe, isArray, optionsArg, peftError, typeError } from "../errors.js";
import { scaleInPlace } from "../kernels.js";
import { Tensor, transientBytes } from "../tensor.js";

export interface ClipGradNormOptions {
  /** The p of the p-norm: a positive number, or Infinity / "inf" for the largest magnitude (default 2). */
  normType?: number | "inf";
  /** Throw when the total norm is NaN or infinite, instead of scaling by it (default false, as torch). */
  errorIfNonfinite?: boolean;
}

const MAX_PARAMS = 10_000_000;

function paramsArg(params: unknown, op: string): Tensor[] {
  if (params instanceof Tensor) return [params];
  let list: unknown[];
  if (isArray(params)) list = arrayArg(params, op, "params", MAX_PARAMS);
  else if (params !== null && typeof params === "object" && typeof (params as Iterable<unknown>)[Symbol.iterator] === "function") list = [...(params as Iterable<unknown>)];
  else throw typeError(`${op}: params must be a Tensor or an iterable of tensors, got ${describe(params)}`);
  list.forEach((p, i) => {
    if (!(p instanceof Tensor)) throw typeError(`${op}: params[${i}] must be a Tensor, got ${describe(p)}`);
  });
  return list as Tensor[];
}

/** The gradient's values as numbers: the storage itself for host f32, else a float64 copy. */
function valuesOf(g: Tensor): ArrayLike<number> {
  if (g.dtype !== "f32" || g.device !== "cpu") return g.toFloat64Array();
  const b = transientBytes(g, false);
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

/** Σ|v|^p (or max |v| for p = ∞) of one gradient, in float64. */
function powerSum(v: ArrayLike<number>, p: number): number {
  let s = 0;
  if (p === Infinity) for (let i = 0; i < v.length; i++) s = Math.max(s, Math.abs(v[i]!)); // NaN stays NaN
  else if (p === 2) for (let i = 0; i < v.length; i++) s += v[i]! * v[i]!;
  else if (p === 1) for (let i = 0; i < v.length; i++) s += Math.abs(v[i]!);
  else for (let i = 0; i < v.length; i++) s += Math.abs(v[i]!) ** p;
  return s;
}


function pNorm(v: ArrayLike<number>, p: number): number {
  const s = powerSum(v, p);
  return p === Infinity ? s : s ** (1 / p);
}

/**
 * Scales the gradients of `params` in place so their total p-norm is at most maxNorm; returns the total norm
 * before clipping (0 when no parameter has a gradient).
 */
export function clipGradNorm(params: Iterable<Tensor> | Tensor, maxNorm: number, options: ClipGradNormOptions = {}): number {
  const op = "clipGradNorm";
  const list = paramsArg(params, op);
  if (typeof maxNorm !== "number") throw typeError(`${op}: maxNorm must be a number, got ${describe(maxNorm)}`);
  if (!(maxNorm >= 0)) throw peftError("ERR_CONFIG", `${op}: maxNorm must be >= 0, got ${maxNorm}`);
  const opts = optionsArg(options, op);
  const raw = opts.normType ?? 2;
  const p = raw === "inf" ? Infinity : raw;
  if (typeof p !== "number") throw typeError(`${op}: normType must be a number or "inf", got ${describe(raw)}`);
  if (!(p > 0)) throw peftError("ERR_CONFIG", `${op}: normType must be positive (or Infinity), got ${p}`);
  const grads = list.map((t) => t.grad).filter((g): g is Tensor => g !== null);
  if (grads.length === 0) return 0;
  // Each tensor's norm, then the norm of those norms: torch's order of operations.
  const total = pNorm(grads.map((g) => pNorm(valuesOf(g), p)), p);
  if (opts.errorIfNonfinite === true && !Number.isFinite(total))
    throw peftError("ERR_CONFIG", `${op}: the total norm of order ${p} of the gradients is ${total}; set errorIfNonfinite: false to scale by it anyway`);
  const coef = Math.min(maxNorm / (total + 1e-6), 1);
  // A factor of 1 changes nothing; NaN (a NaN norm) is applied, as torch does.
  if (!(coef >= 1)) for (const g of grads) scaleInPlace(g, coef);
  return total;
}
