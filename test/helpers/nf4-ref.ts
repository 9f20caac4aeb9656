// bitsandbytes' 4-bit quantisation written out independently of the library: a value's code is the count of
// sorted midpoints it lies strictly above (the CUDA kernel's comparison tree, whose thresholds are the f32
// midpoints of adjacent code values; FP4's are the kernel's own literals), with the f32 steps of the kernel
// (reciprocal of the absmax, one multiply) emulated by Math.fround. Everything else is float64.
const f = Math.fround;

// get_4bit_type("nf4"): sorted, so a code is its rank.
export const NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
  -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224, 0.44070982933044434,
  0.5626170039176941, 0.7229568362236023, 1.0];
// get_4bit_type("fp4") before the division by 12; the sign bit is 8.
const FP4_RAW = [0, 0.0625, 8, 12, 4, 6, 2, 3];
export const FP4 = [...FP4_RAW, ...FP4_RAW.map((v) => -v)].map((v) => f(v / 12));
const NF4_MIDS = NF4.slice(1).map((v, i) => f((NF4[i] + v) / 2));
// dQuantizeFP4's thresholds on |x|, and the codes of the magnitudes in ascending order.
const FP4_MIDS = [0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333].map(f);
const FP4_BY_RANK = [0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011];

export type QT = "nf4" | "fp4";
export const table = (t: QT): number[] => (t === "nf4" ? NF4.map(f) : FP4);

export function code(t: QT, x: number): number {
  if (t === "nf4") {
    if (Number.isNaN(x)) return 0;
    return NF4_MIDS.filter((m) => x > m).length;
  }
  const sign = x < 0 ? 8 : 0;
  const a = Math.abs(x);
  return FP4_BY_RANK[Number.isNaN(a) ? 0 : FP4_MIDS.filter((m) => a > m).length] + sign;
}

/** quantize_4bit's packed bytes and absmax for values `v` (already exact in their dtype). */
export function quantize(v: ArrayLike<number>, t: QT, bs: number): { packed: Uint8Array; absmax: Float32Array } {
  const n = v.length, blocks = Math.ceil(n / bs);
  const codes = new Uint8Array(n + 1);
  const absmax = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    let m = 0;
    for (let i = b * bs; i < Math.min(n, (b + 1) * bs); i++) m = Math.max(m, Math.abs(v[i]));
    absmax[b] = m;
    const r = f(1 / m);
    for (let i = b * bs; i < Math.min(n, (b + 1) * bs); i++) codes[i] = code(t, f(v[i] * r));
    if (n % 2 && b === blocks - 1) codes[n] = code(t, f(0 * r)); // the kernel quantises a 0 past the end
  }
  const packed = new Uint8Array(Math.ceil(n / 2));
  for (let i = 0; i < packed.length; i++) packed[i] = (codes[2 * i] << 4) | codes[2 * i + 1];
  return { packed, absmax };
}

/** dequantize_4bit: table[code]·absmax in f32, in row-major order. */
export function dequantize(packed: Uint8Array, absmax: ArrayLike<number>, t: QT, bs: number, n: number): Float64Array {
  const tab = table(t);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const c = (packed[i >> 1] >> (i % 2 ? 0 : 4)) & 15;
    out[i] = f(tab[c] * absmax[Math.floor(i / bs)]);
  }
  return out;
}

/** The code of the nearest value of a sorted 256-value map (float64 distances; exact ties are left out by the caller). */
export function nearest8(map: ArrayLike<number>, x: number): number {
  let best = 0;
  for (let j = 1; j < map.length; j++) if (Math.abs(x - map[j]) < Math.abs(x - map[best])) best = j;
  return best;
}

/** y = x·Wᵀ + b in float64 over (M, K) x and (N, K) W, and Σ|x||w| per output (for error bounds). */
export function linearRef(x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number> | null, M: number, K: number, N: number) {
  const y = new Float64Array(M * N), mag = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = b ? b[n] : 0, a = b ? Math.abs(b[n]) : 0;
      for (let k = 0; k < K; k++) (s += x[m * K + k] * w[n * K + k]), (a += Math.abs(x[m * K + k] * w[n * K + k]));
      y[m * N + n] = s, mag[m * N + n] = a;
    }
  return { y, mag };
}

/** dx = dy·W in float64 over (M, N) dy and (N, K) W, and Σ|dy||w| per input. */
export function gradInputRef(dy: ArrayLike<number>, w: ArrayLike<number>, M: number, K: number, N: number) {
  const dx = new Float64Array(M * K), mag = new Float64Array(M * K);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      const g = dy[m * N + n];
      for (let k = 0; k < K; k++) (dx[m * K + k] += g * w[n * K + k]), (mag[m * K + k] += Math.abs(g * w[n * K + k]));
    }
  return { dx, mag };
}
