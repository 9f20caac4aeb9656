// DoraOps for dense bases (Linear, Conv1D, an int8 or 4-bit base): x in rows (M, K) f32, y (M, N), the base
// weight read through baseWeightF32 once per call. Layers whose base computes differently (int8's own
// kernel for its result and dx) override baseOut / baseGrad.
import type { Tensor } from "../../tensor.js";
import { linear, linearGradInput, linearGradWeight, matmul } from "../../ops.js";
import { Module, gradOf } from "../../nn/index.js";
import { baseWeightF32, type BaseWeight } from "./dora-weight.js";
import type { DoraOps } from "./dora.js";

export type DenseDoraOps = DoraOps & Disposable;

export function denseDoraOps(base: Module, override: Partial<Pick<DoraOps, "baseOut" | "baseGrad">> = {}): DenseDoraOps {
  let bw: BaseWeight | null = null;
  const weight = () => (bw ??= baseWeightF32(base));
  const through = (x: Tensor) => {
    const { weight: w, inOut } = weight();
    return linear(x, w, null, { weightInOut: inOut });
  };
  return {
    reduceDims: () => [0],
    baseOut: override.baseOut ?? through,
    weightOut: through,
    baseGrad:
      override.baseGrad ??
      ((dz, x, wantDx) => {
        const { weight: w, inOut } = weight();
        const own = (base as Module & { weight?: Tensor }).weight;
        if (own?.requiresGrad) linearGradWeight(dz, x, gradOf(own), { accumulate: true, weightInOut: inOut });
        return wantDx ? linearGradInput(dz, w, { weightInOut: inOut }) : null;
      }),
    loraA: (x, A) => linear(x, A),
    loraB: (T, B) => linear(T, B),
    loraGrad: (du, xd, T, A, B, dA, dB, wantDx) => {
      // u = T·Bᵀ, T = xd·Aᵀ: dB += duᵀ·T, dT = du·B, dA += dTᵀ·xd, dxd = dT·A.
      if (dB) linearGradWeight(du, T, dB, { accumulate: true });
      if (!dA && !wantDx) return null;
      using dT = matmul(du, B);
      if (dA) linearGradWeight(dT, xd, dA, { accumulate: true });
      return wantDx ? matmul(dT, A) : null;
    },
    [Symbol.dispose]() {
      if (bw?.owned) bw.weight.dispose();
      bw = null;
    },
  };
}
