// A float64 reference of torch.nn.LSTM (batch_first, zero initial state, no dropout): stacked, optionally
// bidirectional, gates in PyTorch's order (input, forget, cell, output), parameters by PyTorch's names.

const sigmoid = (v: number) => 1 / (1 + Math.exp(-v));

export interface RefLstmShape {
  batch: number;
  seq: number;
  inputSize: number;
  hiddenSize: number;
  numLayers: number;
  bidirectional: boolean;
}

/** output [batch·seq·dirs·hidden]; hN, cN [layers·dirs·batch·hidden]. */
export function refLstm(p: Map<string, Float64Array>, x: Float64Array, s: RefLstmShape): { output: Float64Array; hN: Float64Array; cN: Float64Array } {
  const { batch: B, seq: T, hiddenSize: H, numLayers: L } = s;
  const dirs = s.bidirectional ? 2 : 1;
  let input = x, inF = s.inputSize;
  const hN: number[] = [], cN: number[] = [];
  for (let l = 0; l < L; l++) {
    const out = new Float64Array(B * T * dirs * H);
    for (let d = 0; d < dirs; d++) {
      const sfx = d ? "_reverse" : "";
      const wih = p.get(`weight_ih_l${l}${sfx}`)!, whh = p.get(`weight_hh_l${l}${sfx}`)!;
      const bih = p.get(`bias_ih_l${l}${sfx}`), bhh = p.get(`bias_hh_l${l}${sfx}`);
      const hs = new Float64Array(B * H), cs = new Float64Array(B * H);
      for (let b = 0; b < B; b++) {
        const h = new Float64Array(H), c = new Float64Array(H);
        for (let k = 0; k < T; k++) {
          const t = d ? T - 1 - k : k;
          const g = new Float64Array(4 * H);
          for (let r = 0; r < 4 * H; r++) {
            let v = (bih?.[r] ?? 0) + (bhh?.[r] ?? 0);
            for (let i = 0; i < inF; i++) v += wih[r * inF + i] * input[(b * T + t) * inF + i];
            for (let i = 0; i < H; i++) v += whh[r * H + i] * h[i];
            g[r] = v;
          }
          for (let j = 0; j < H; j++) {
            c[j] = sigmoid(g[H + j]) * c[j] + sigmoid(g[j]) * Math.tanh(g[2 * H + j]);
            h[j] = sigmoid(g[3 * H + j]) * Math.tanh(c[j]);
            out[((b * T + t) * dirs + d) * H + j] = h[j];
          }
        }
        hs.set(h, b * H);
        cs.set(c, b * H);
      }
      hN.push(...hs);
      cN.push(...cs);
    }
    input = out;
    inF = dirs * H;
  }
  return { output: input, hN: Float64Array.from(hN), cN: Float64Array.from(cN) };
}
