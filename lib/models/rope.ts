// Rotary position embedding tables as transformers builds them (LlamaRotaryEmbedding): inverse frequencies
// (default, "linear" or "llama3" scaling) and cos/sin of position · frequency in the cat(freqs, freqs) layout
// F.rotaryEmbedding takes. The scalings implemented here have attention scaling 1, so the tables are plain
// cos and sin.
import { Tensor } from "../tensor.js";
import { describe, peftError, typeError } from "../errors.js";
import type { RopeScaling } from "./llama-config.js";

/** inv_freq[j] = 1 / theta^(2j / headDim), rescaled by the config's rope scaling. */
export function ropeInvFreq(headDim: number, theta: number, scaling: RopeScaling | null): Float64Array {
  if (typeof headDim !== "number" || !Number.isInteger(headDim) || headDim < 2 || headDim % 2)
    throw typeError(`ropeInvFreq: headDim must be a positive even integer, got ${describe(headDim)}`);
  if (typeof theta !== "number" || !(theta > 0)) throw typeError(`ropeInvFreq: theta must be a positive number, got ${describe(theta)}`);
  if (scaling !== null && scaling !== undefined && (typeof scaling !== "object" || (scaling.type !== "linear" && scaling.type !== "llama3") || typeof scaling.factor !== "number"))
    throw typeError(`ropeInvFreq: scaling must be null or a {type: "linear" | "llama3", factor, ...} object, got ${describe(scaling)}`);
  const half = headDim / 2;
  const inv = new Float64Array(half);
  for (let j = 0; j < half; j++) inv[j] = 1 / theta ** ((2 * j) / headDim);
  if (!scaling) return inv;
  if (scaling.type === "linear") return inv.map((f) => f / scaling.factor);
  // llama3: long wavelengths slowed by `factor`, short ones kept, the band between interpolated smoothly.
  const { factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings: old } = scaling;
  const lowWavelen = old / lowFreqFactor, highWavelen = old / highFreqFactor;
  return inv.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen > lowWavelen) return f / factor;
    if (wavelen < highWavelen) return f;
    const smooth = (old / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
    return (1 - smooth) * (f / factor) + smooth * f;
  });
}

/**
 * cos and sin f32 [rows, T, headDim] for positions [rows][T] (rows 1 when every batch row shares them).
 * Angles are computed in float64 and rounded once.
 */
export function ropeTables(invFreq: Float64Array, positions: readonly (readonly number[])[]): { cos: Tensor; sin: Tensor } {
  if (!(invFreq instanceof Float64Array)) throw typeError(`ropeTables: invFreq must be a Float64Array, got ${describe(invFreq)}`);
  if (!Array.isArray(positions) || !positions.every((row) => Array.isArray(row) && row.every((p) => typeof p === "number" && Number.isFinite(p))))
    throw typeError(`ropeTables: positions must be arrays of finite numbers (one per batch row), got ${describe(positions)}`);
  const rows = positions.length, T = rows ? positions[0].length : 0, half = invFreq.length, D = 2 * half;
  const cos = new Float32Array(rows * T * D), sin = new Float32Array(rows * T * D);
  for (let b = 0; b < rows; b++) {
    if (positions[b].length !== T) throw peftError("ERR_SHAPE", `rope: position row ${b} has ${positions[b].length} entries, expected ${T}`);
    for (let t = 0; t < T; t++) {
      const at = (b * T + t) * D, p = positions[b][t];
      for (let j = 0; j < half; j++) {
        const a = p * invFreq[j];
        cos[at + j] = cos[at + j + half] = Math.cos(a);
        sin[at + j] = sin[at + j + half] = Math.sin(a);
      }
    }
  }
  return { cos: Tensor.fromArray(cos, [rows, T, D]), sin: Tensor.fromArray(sin, [rows, T, D]) };
}

/** Positions 0..T-1 shared by every row. */
export function defaultPositions(T: number): number[][] {
  return [Array.from({ length: T }, (_, t) => t)];
}
