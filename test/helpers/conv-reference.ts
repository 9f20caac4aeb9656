// Float64 references of a 2-D convolution (NCHW, zero padding, groups) and its gradients, written as the
// definition: every output is a sum over its window, so they check the kernels' tiling from outside.
export interface ConvRefGeom {
  N: number; C: number; H: number; W: number;
  OC: number; KH: number; KW: number;
  sh: number; sw: number; ph: number; pw: number; dh: number; dw: number; G: number;
}

export function outSize(g: ConvRefGeom): [number, number] {
  return [
    Math.floor((g.H + 2 * g.ph - g.dh * (g.KH - 1) - 1) / g.sh) + 1,
    Math.floor((g.W + 2 * g.pw - g.dw * (g.KW - 1) - 1) / g.sw) + 1,
  ];
}

/** Calls f(n, o, oh, ow, xi, wi) for every (output, tap) pair whose input lies inside the image. */
function eachTap(g: ConvRefGeom, f: (yi: number, xi: number, wi: number) => void): void {
  const [OH, OW] = outSize(g);
  const cg = g.C / g.G, ocg = g.OC / g.G;
  for (let n = 0; n < g.N; n++)
    for (let o = 0; o < g.OC; o++) {
      const grp = Math.floor(o / ocg);
      for (let oh = 0; oh < OH; oh++)
        for (let ow = 0; ow < OW; ow++) {
          const yi = ((n * g.OC + o) * OH + oh) * OW + ow;
          for (let c = 0; c < cg; c++)
            for (let kh = 0; kh < g.KH; kh++) {
              const ih = oh * g.sh - g.ph + kh * g.dh;
              if (ih < 0 || ih >= g.H) continue;
              for (let kw = 0; kw < g.KW; kw++) {
                const iw = ow * g.sw - g.pw + kw * g.dw;
                if (iw < 0 || iw >= g.W) continue;
                f(yi, ((n * g.C + grp * cg + c) * g.H + ih) * g.W + iw, ((o * cg + c) * g.KH + kh) * g.KW + kw);
              }
            }
        }
    }
}

/** y, and Σ|x·w| per output (the magnitude the f32 roundings act on). */
export function conv2dRef(g: ConvRefGeom, x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number> | null) {
  const [OH, OW] = outSize(g);
  const y = new Float64Array(g.N * g.OC * OH * OW), mag = new Float64Array(y.length);
  if (b) for (let i = 0; i < y.length; i++) (y[i] = b[Math.floor(i / (OH * OW)) % g.OC]), (mag[i] = Math.abs(y[i]));
  eachTap(g, (yi, xi, wi) => {
    y[yi] += x[xi] * w[wi];
    mag[yi] += Math.abs(x[xi] * w[wi]);
  });
  return { y, mag };
}

/** dx, dW, db from dy, with magnitudes. */
export function conv2dGradRef(g: ConvRefGeom, x: ArrayLike<number>, w: ArrayLike<number>, dy: ArrayLike<number>) {
  const [OH, OW] = outSize(g);
  const dx = new Float64Array(g.N * g.C * g.H * g.W), dxMag = new Float64Array(dx.length);
  const dW = new Float64Array(w.length), dWMag = new Float64Array(w.length);
  const db = new Float64Array(g.OC), dbMag = new Float64Array(g.OC);
  for (let i = 0; i < dy.length; i++) {
    const o = Math.floor(i / (OH * OW)) % g.OC;
    db[o] += dy[i];
    dbMag[o] += Math.abs(dy[i]);
  }
  eachTap(g, (yi, xi, wi) => {
    dx[xi] += dy[yi] * w[wi];
    dxMag[xi] += Math.abs(dy[yi] * w[wi]);
    dW[wi] += dy[yi] * x[xi];
    dWMag[wi] += Math.abs(dy[yi] * x[xi]);
  });
  return { dx, dxMag, dW, dWMag, db, dbMag };
}
