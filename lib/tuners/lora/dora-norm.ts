// DoRA's weight norm (PEFT's get_weight_norm): ‖W + s·B·A‖ per output feature, over everything else (the in
// features; a convolution's in/g·kh·kw). W is 2-D here, (N, K) or stored (K, N) (`inOut`), A (r, K), B (N, r).
//
// The forward needs it on every call, and W is large, so it is expanded instead of forming W + s·B·A:
//   n_i² = ‖w_i‖² + 2s·Σ_j B_ij·(W·Aᵀ)_ij + s²·B_i·(A·Aᵀ)·B_iᵀ
// which reads W once (the thin product W·Aᵀ) and reuses ‖w_i‖² while W is unchanged. The three terms are
// combined in float64; the cancellation this could suffer needs ‖s·B_i·A‖ ≈ ‖w_i‖ pointing against w_i, where
// the norm itself is near zero (and PEFT's direct f32 sum is as unreliable).
import { Tensor } from "../../tensor.js";
import { linear, matmul } from "../../ops.js";
import { ew, reduceRaw } from "../../functional/raw.js";

/** Σ_k W_ik² per output feature i (W (N, K), or (K, N) when inOut), in float64. */
export function outputSumSquares(w: Tensor, inOut: boolean): Float64Array {
  using sq = ew("square", [w], "f32");
  using s = reduceRaw("sum", sq, [inOut ? 0 : 1], false, "f32").values;
  return Float64Array.from(s.toFloat32Array());
}

/** ‖W + s·B·A‖ per output feature, from ‖w_i‖² (outputSumSquares of W) and the factors (f32, 2-D). */
export function expandedNorms(w: Tensor, inOut: boolean, sumSquares: Float64Array, A: Tensor, B: Tensor, scale: number): Float64Array {
  const [r, N] = [A.shape[0], B.shape[0]];
  // (W·Aᵀ)ᵀ = A·Wᵀ (r, N) as a linear layer over the r rows of A: W is the GEMM's weight operand (packed
  // once and kept), read once at the small-M rate, instead of a skinny product with r output columns.
  using g = linear(A, w, null, { weightInOut: inOut });
  using p = matmul(A, A, { transB: true }); // (r, r)
  const G = g.toFloat32Array(), P = p.toFloat32Array(), Bv = B.toFloat32Array();
  const out = new Float64Array(N);
  const bp = new Float64Array(r);
  for (let i = 0; i < N; i++) {
    let cross = 0, quad = 0;
    for (let j = 0; j < r; j++) {
      cross += Bv[i * r + j] * G[j * N + i];
      let t = 0;
      for (let l = 0; l < r; l++) t += P[j * r + l] * Bv[i * r + l];
      bp[j] = t;
    }
    for (let j = 0; j < r; j++) quad += Bv[i * r + j] * bp[j];
    // Rounding can take an exact zero slightly below it.
    out[i] = Math.sqrt(Math.max(0, sumSquares[i] + 2 * scale * cross + scale * scale * quad));
  }
  return out;
}

/** ‖w_i‖ per output feature of an already formed weight (a merge's W + ΔW). */
export function outputNorms(w: Tensor, inOut: boolean): Float64Array {
  return outputSumSquares(w, inOut).map(Math.sqrt);
}

/** w scaled per output feature by f (rows when (N, K), columns when inOut), as a new f32 tensor. */
export function scaleOutputs(w: Tensor, f: ArrayLike<number>, inOut: boolean): Tensor {
  const N = f.length;
  using t = Tensor.fromArray(f, inOut ? [N] : [N, 1], "f32");
  return ew("mul", [w, t], "f32");
}
