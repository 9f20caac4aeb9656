// A seeded synthetic two-class problem in 20 dimensions: the label is whether two random projections of x
// agree in sign (an XOR of half-spaces), which a linear model cannot fit but a small MLP can.
import { Tensor } from "../dist/index.js";

// The task (its two projections) is fixed by `taskSeed`; `seed` draws the samples.
export function makeDataset(n, { seed = 0, taskSeed = 1234, dim = 20 } = {}) {
  const x = Tensor.randn([n, dim], { seed, stream: 1 });
  const proj = Tensor.randn([2, dim], { seed: taskSeed }).toFloat64Array();
  const xv = x.toFloat64Array();
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let a = 0, b = 0;
    for (let k = 0; k < dim; k++) {
      a += xv[i * dim + k] * proj[k];
      b += xv[i * dim + k] * proj[dim + k];
    }
    labels[i] = (a > 0) === (b > 0) ? 1 : 0;
  }
  return { x, y: Tensor.fromArray(labels, [n], "i64"), labels, dim };
}

/** Rows [start, start + count) of a dataset as fresh tensors. */
export function batch(ds, start, count) {
  const xv = ds.x.toFloat32Array().subarray(start * ds.dim, (start + count) * ds.dim);
  return {
    x: Tensor.fromArray(xv, [count, ds.dim]),
    y: Tensor.fromArray(ds.labels.subarray(start, start + count), [count], "i64"),
  };
}

export function accuracy(logProbs, labels) {
  const v = logProbs.toFloat32Array();
  const classes = logProbs.shape[1];
  let right = 0;
  for (let i = 0; i < labels.length; i++) {
    let best = 0;
    for (let c = 1; c < classes; c++) if (v[i * classes + c] > v[i * classes + best]) best = c;
    if (best === labels[i]) right++;
  }
  return right / labels.length;
}
