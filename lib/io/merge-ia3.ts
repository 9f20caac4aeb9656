// The IA3 part of the checkpoint merge: each `<path>.ia3_l` scales `<path>.weight` in place of PEFT's merge —
// the input columns for feed-forward modules, the output rows (and `<path>.bias`) for the others; which axis
// is which comes from the base tensor's shape, the config's fan_in_fan_out deciding only for square weights.
import { peftError } from "../errors.js";
import type { Tensor } from "../tensor.js";
import { isFeedforwardModule } from "../matching.js";
import type { IA3Config } from "../tuners/ia3/config.js";
import { ia3MergeInPlace } from "../tuners/ia3/kernels.js";

const PREFIX = "base_model.model.";
const IA3_KEY = /^(.*)\.ia3_l$/;

export interface Ia3Scale {
  l: Tensor;
  path: string;
  feedforward: boolean;
  /** The scale applies to the module's bias (1-D). */
  bias: boolean;
}

export interface Ia3Plan {
  /** Base key -> the scale it is multiplied by. */
  scales: Map<string, Ia3Scale>;
  /** Base keys that must exist (weights; a bias is scaled only where the base has one). */
  required: string[];
}

/** Whether an ia3_l of this shape scales a feed-forward module's input, from the config (or the shape when it has no list). */
function feedforwardOf(config: IA3Config, path: string, l: Tensor, adapterDir: string): boolean {
  const s = l.shape;
  const dense = s.length === 2 && (s[0] === 1 || s[1] === 1);
  const conv = s.length === 4 && s[0] === 1 && s[2] === 1 && s[3] === 1;
  if (!dense && !conv) throw peftError("ERR_CHECKPOINT", `${adapterDir}: ${path}.ia3_l has shape [${s}], not an (IA)³ vector ((1, in), (out, 1) or (1, C, 1, 1))`);
  const ff = config.feedforwardModules !== null ? isFeedforwardModule(config, path) : dense && s[0] === 1 && s[1] !== 1;
  const fits = !dense || (ff ? s[0] === 1 : s[1] === 1);
  if (!fits)
    throw peftError("ERR_CHECKPOINT", `${adapterDir}: ${path}.ia3_l has shape [${s}] but the config makes ${path} ${ff ? "a feed-forward module ((1, in))" : "an output-scaled module ((out, 1))"}`);
  return ff;
}

/** The adapter's tensors sorted into scales and tensors that replace base tensors (saved modules). */
export function planIa3Merge(config: IA3Config, adapterTensors: Record<string, Tensor>, adapterDir: string): { replace: Map<string, Tensor>; ia3: Ia3Plan } {
  const replace = new Map<string, Tensor>();
  const ia3: Ia3Plan = { scales: new Map(), required: [] };
  for (const [key, t] of Object.entries(adapterTensors)) {
    if (!key.startsWith(PREFIX)) throw peftError("ERR_CHECKPOINT", `${adapterDir}: adapter key "${key}" does not start with "${PREFIX}"`);
    const rest = key.slice(PREFIX.length);
    const m = IA3_KEY.exec(rest);
    if (!m) {
      replace.set(rest, t);
      continue;
    }
    const path = m[1];
    const feedforward = feedforwardOf(config, path, t, adapterDir);
    ia3.scales.set(`${path}.weight`, { l: t, path, feedforward, bias: false });
    ia3.required.push(`${path}.weight`);
    if (!feedforward) ia3.scales.set(`${path}.bias`, { l: t, path, feedforward, bias: true });
  }
  return { replace, ia3 };
}

/** The shape the vector takes to broadcast against the base tensor (`shape`) along the axis it scales. */
function broadcastShape(key: string, shape: readonly number[], s: Ia3Scale, fanInFanOut: boolean): number[] {
  const n = s.l.numel;
  const along = (axis: number) => shape.map((_, i) => (i === axis ? n : 1));
  const refuse = (why: string) => peftError("ERR_SHAPE", `"${key}" has shape [${shape}] but ${s.path}.ia3_l has ${n} entries${why}`);
  if (s.bias) {
    if (shape.length !== 1 || shape[0] !== n) throw refuse("");
    return [n];
  }
  if (shape.length === 4) {
    const axis = s.feedforward ? 1 : 0;
    if (shape[axis] !== n) throw refuse(s.feedforward ? " (a grouped convolution's input scale cannot be merged)" : "");
    return along(axis);
  }
  if (shape.length !== 2) throw refuse("");
  // (out, in) as Linear stores it, or (in, out) as GPT-2's Conv1D does.
  const inAxisOutIn = 1, inAxisInOut = 0;
  const want = (inAxis: number) => (s.feedforward ? inAxis : 1 - inAxis);
  const fitsOutIn = shape[want(inAxisOutIn)] === n, fitsInOut = shape[want(inAxisInOut)] === n;
  if (!fitsOutIn && !fitsInOut) throw refuse("");
  const inOut = fitsOutIn && fitsInOut ? fanInFanOut : fitsInOut;
  return along(want(inOut ? inAxisInOut : inAxisOutIn));
}

/** Multiplies `out` (the base tensor at `key`, f32) by its scale in place. */
export function ia3ScaleInto(out: Tensor, key: string, s: Ia3Scale, fanInFanOut: boolean): void {
  using l = s.l.reshape(broadcastShape(key, out.shape, s, fanInFanOut));
  ia3MergeInPlace(out, [l]);
}
