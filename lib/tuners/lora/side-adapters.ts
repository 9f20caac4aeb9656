// LoRA adapters run beside a base layer whose product is not a plain GEMM (a quantised base): in f32 on the
// base's f32 output and dy, with PEFT's dropout on x (the same counter-based mask in forward and backward).
// What a quantised LoRA layer's fused forward/backward adds to its base's own kernels.
import { Tensor } from "../../tensor.js";
import { linear, linearGradWeight, matmul } from "../../ops.js";
import { addInPlace, dropout, scaleInPlace } from "../../kernels.js";
import { gradOf } from "../../nn/index.js";
import type { NativeAdapter } from "./layer.js";

type Factors = (name: string) => { A: Tensor; B: Tensor };

/**
 * y2 (M, N) f32 += s·drop(x2)·Aᵀ·Bᵀ per adapter; returns U = s·drop(x2)·Aᵀ (M, r) of each, which backward needs for dB
 * (the caller owns them).
 */
export function addAdapterOutputs(factors: Factors, x2: Tensor, y2: Tensor, adapters: NativeAdapter[]): Tensor[] {
  const saved: Tensor[] = [];
  try {
    for (const a of adapters) {
      const { A, B } = factors(a.name);
      using xd = a.p > 0 ? dropout(x2, a.p, a.seed, a.stream) : null;
      const U = linear(xd ?? x2, A);
      saved.push(U);
      scaleInPlace(U, a.scale);
      using delta = linear(U, B);
      addInPlace(y2, delta);
    }
    return saved;
  } catch (e) {
    saved.forEach((t) => t.dispose());
    throw e;
  }
}

/**
 * dB += dy2ᵀ·U, dA += Gᵀ·drop(x2) and dx2 += drop(G·A) with G = s·dy2·B, for every adapter whose descriptor asks
 * (dA / dB) and dx2 when given; `x2` (f32 (M, K)) is asked for only when some dA is wanted.
 */
export function accumulateAdapterGrads(factors: Factors, dy2: Tensor, x2: () => Tensor, saved: Tensor[], adapters: NativeAdapter[], dx2: Tensor | null): void {
  adapters.forEach((a, i) => {
    const { A, B } = factors(a.name);
    if (a.dB) linearGradWeight(dy2, saved[i], gradOf(B), { accumulate: true });
    if (!a.dA && !dx2) return;
    using G = matmul(dy2, B);
    scaleInPlace(G, a.scale);
    if (a.dA) {
      const xf = x2();
      using xd = a.p > 0 ? dropout(xf, a.p, a.seed, a.stream) : null;
      linearGradWeight(G, xd ?? xf, gradOf(A), { accumulate: true });
    }
    if (dx2) {
      using g = matmul(G, A);
      using gd = a.p > 0 ? dropout(g, a.p, a.seed, a.stream) : null;
      addInPlace(dx2, gd ?? g);
    }
  });
}
