// bitsandbytes' int8 dequantisation (int8_vectorwise_dequant): what merging into an int8 base and DoRA's weight
// norm read from CB/SCB.
import { Tensor } from "../../tensor.js";
import { describe, peftError, typeError } from "../../errors.js";

/** bitsandbytes' int8_vectorwise_dequant multiplies by 1/127 rounded to f32 (7.874015718698502e-3). */
const INV127 = Math.fround(1 / 127);

/** W = CB·SCB·(1/127) in f32, (out, in), rounded as bitsandbytes' int8_vectorwise_dequant rounds it. */
export function int8Dequantize(cb: Tensor, scb: Tensor): Tensor {
  for (const [t, n] of [[cb, "cb"], [scb, "scb"]] as const)
    if (!(t instanceof Tensor)) throw typeError(`int8Dequantize: ${n} must be a Tensor, got ${describe(t)}`);
  if (cb.dtype !== "i8" || scb.dtype !== "f32" || cb.shape.length !== 2 || scb.shape.length !== 1 || scb.shape[0] !== cb.shape[0])
    throw peftError("ERR_SHAPE", `int8Dequantize: expected CB i8 (out, in) and SCB f32 (out), got CB ${cb.dtype} [${cb.shape.join(", ")}] and SCB ${scb.dtype} [${scb.shape.join(", ")}]`);
  if (cb.device !== "cpu" || scb.device !== "cpu") {
    // A merge's rare read of a device weight: dequantised on the host, then moved back to CB's device.
    using c = cb.to("cpu"), s = scb.to("cpu");
    using w = int8Dequantize(c, s);
    return w.to(cb.device);
  }
  const [n, k] = cb.shape;
  const q = cb.view() as Int8Array;
  const s = scb.view() as Float32Array;
  const w = new Float32Array(n * k);
  for (let i = 0; i < n; i++) {
    const si = s[i];
    for (let j = i * k, e = j + k; j < e; j++) w[j] = Math.fround(Math.fround(q[j] * si) * INV127);
  }
  return Tensor.fromArray(w, [n, k], "f32");
}
