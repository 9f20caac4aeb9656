// Differentiable elementwise ops with PyTorch broadcasting. Forward and backward are both elementwise
// kernel calls; a gradient that was broadcast is summed back to its input's shape.
import { Tensor } from "../tensor.js";
import { record, wantsGrad } from "../autograd/record.js";
import { ew, numberArg, promote, sumTo, tensorArg, type Operand } from "./raw.js";
import { optionsArg, typeError } from "../errors.js";

type Grads = (Tensor | null)[];

function binary(name: string, op: string, a: Tensor, b: Tensor, backward: (g: Tensor, a: Tensor, b: Tensor, y: Tensor, needs: readonly boolean[]) => Grads, saveOut = false): Tensor {
  const y = ew(op, [a, b], promote(a, b));
  if (!wantsGrad(a, b)) return y;
  const [sa, sb] = [a.shape, b.shape];
  return record(name, [a, b], y, ([g], saved, needs) => {
    if (!g) return [null, null];
    const [ga, gb] = backward(g, saved[0], saved[1], saved[2], needs);
    return reduceBoth(g, ga, gb, sa, sb);
  }, saveOut ? [a, b, y] : [a, b]);
}

/** Sums broadcast gradients back to the inputs' shapes, disposing what is no longer needed (never g). */
function reduceBoth(g: Tensor, ga: Tensor | null, gb: Tensor | null, sa: readonly number[], sb: readonly number[]): Grads {
  const ra = ga ? sumTo(ga, sa) : null;
  const rb = gb ? sumTo(gb, sb) : null;
  for (const t of new Set([ga, gb])) if (t && t !== g && t !== ra && t !== rb) t.dispose();
  return [ra, rb];
}

function unaryOp(name: string, op: string, x: Tensor, backward: (g: Tensor, x: Tensor, y: Tensor) => Tensor, scalars: number[] = []): Tensor {
  const y = ew(op, [x], x.dtype, scalars);
  if (!wantsGrad(x)) return y;
  return record(name, [x], y, ([g], [xs, ys]) => [g ? backward(g, xs, ys) : null], [x, y]);
}

/** g·s for a number s (no graph). */
const scaled = (g: Tensor, s: number) => ew("affine", [g], g.dtype, [s, 0]);

function scalarAffine(name: string, x: Tensor, a: number, b: number): Tensor {
  const y = ew("affine", [x], x.dtype, [a, b]);
  if (!wantsGrad(x)) return y;
  return record(name, [x], y, ([g]) => [g ? (a === 1 ? g : scaled(g, a)) : null]);
}

function operands(op: string, a: Operand, b: Operand): [Tensor | number, Tensor | number] {
  if (!(a instanceof Tensor) && !(b instanceof Tensor)) throw typeError(`${op}: at least one operand must be a Tensor`);
  for (const [v, n] of [[a, "a"], [b, "b"]] as const) if (!(v instanceof Tensor)) numberArg(v, op, n);
  return [a, b];
}

export function add(a: Operand, b: Operand): Tensor {
  const [x, y] = operands("add", a, b);
  if (typeof y === "number") return scalarAffine("AddBackward", x as Tensor, 1, y);
  if (typeof x === "number") return scalarAffine("AddBackward", y, 1, x);
  return binary("AddBackward", "add", x, y, (g, _a, _b, _y, [na, nb]) => [na ? g : null, nb ? g : null]);
}

export function sub(a: Operand, b: Operand): Tensor {
  const [x, y] = operands("sub", a, b);
  if (typeof y === "number") return scalarAffine("SubBackward", x as Tensor, 1, -y);
  if (typeof x === "number") return scalarAffine("SubBackward", y, -1, x);
  return binary("SubBackward", "sub", x, y, (g, _a, _b, _y, [na, nb]) => [na ? g : null, nb ? scaled(g, -1) : null]);
}

export function mul(a: Operand, b: Operand): Tensor {
  const [x, y] = operands("mul", a, b);
  if (typeof y === "number") return scalarAffine("MulBackward", x as Tensor, y, 0);
  if (typeof x === "number") return scalarAffine("MulBackward", y, x, 0);
  return binary("MulBackward", "mul", x, y, (g, a, b, _y, [na, nb]) => [na ? ew("mul", [g, b], a.dtype) : null, nb ? ew("mul", [g, a], b.dtype) : null]);
}

export function div(a: Operand, b: Operand): Tensor {
  const [x, y] = operands("div", a, b);
  if (typeof y === "number") return scalarAffine("DivBackward", x as Tensor, 1 / y, 0);
  if (typeof x === "number") return scalarOver(x, y);
  return binary("DivBackward", "div", x, y, (g, a, b, out, [na, nb]) => {
    const ga = na ? ew("div", [g, b], a.dtype) : null;
    let gb: Tensor | null = null;
    if (nb) {
      const q = ew("div", [out, b], b.dtype);
      const r = ew("mul", [g, q], b.dtype);
      gb = scaled(r, -1);
      q.dispose();
      r.dispose();
    }
    return [ga, gb];
  }, true);
}

/** s / y for a number s: d/dy = -s / y² = -out / y. */
function scalarOver(s: number, y: Tensor): Tensor {
  const r = ew("reciprocal", [y], y.dtype);
  const out = ew("affine", [r], y.dtype, [s, 0]);
  r.dispose();
  if (!wantsGrad(y)) return out;
  return record("DivBackward", [y], out, ([g], [ys, o]) => {
    if (!g) return [null];
    const q = ew("div", [o, ys], ys.dtype);
    const d = scaled(q, -1);
    q.dispose();
    return [times(g, d)];
  }, [y, out]);
}

export function neg(x: Tensor): Tensor {
  return scalarAffine("NegBackward", tensorArg(x, "neg", "x"), -1, 0);
}

/** g·f(x, y) for the common unary backward shape. */
function times(g: Tensor, f: Tensor): Tensor {
  const r = ew("mul", [g, f], g.dtype);
  f.dispose();
  return r;
}

export function exp(x: Tensor): Tensor {
  return unaryOp("ExpBackward", "exp", tensorArg(x, "exp", "x"), (g, _x, y) => ew("mul", [g, y], g.dtype));
}

export function log(x: Tensor): Tensor {
  return unaryOp("LogBackward", "log", tensorArg(x, "log", "x"), (g, xs) => ew("div", [g, xs], g.dtype));
}

export function sqrt(x: Tensor): Tensor {
  // d sqrt(x) = 1 / (2 sqrt(x))
  return unaryOp("SqrtBackward", "sqrt", tensorArg(x, "sqrt", "x"), (g, _x, y) => halve(g, y));
}

function halve(g: Tensor, y: Tensor): Tensor {
  const r = ew("div", [g, y], g.dtype);
  const s = scaled(r, 0.5);
  r.dispose();
  return s;
}

export function rsqrt(x: Tensor): Tensor {
  // d x^-1/2 = -1/2 · x^-3/2 = -1/2 · y³
  return unaryOp("RsqrtBackward", "rsqrt", tensorArg(x, "rsqrt", "x"), (g, _x, y) => times(g, scaledPow(y, 3, -0.5)));
}

function scaledPow(y: Tensor, p: number, s: number): Tensor {
  const c = ew("pow_scalar", [y], y.dtype, [p]);
  const r = scaled(c, s);
  c.dispose();
  return r;
}

export function reciprocal(x: Tensor): Tensor {
  // d 1/x = -1/x² = -y²
  return unaryOp("ReciprocalBackward", "reciprocal", tensorArg(x, "reciprocal", "x"), (g, _x, y) => times(g, scaledPow(y, 2, -1)));
}

export function abs(x: Tensor): Tensor {
  return unaryOp("AbsBackward", "abs", tensorArg(x, "abs", "x"), (g, xs) => times(g, ew("sign", [xs], xs.dtype)));
}

export function tanh(x: Tensor): Tensor {
  // 1 - y²
  return unaryOp("TanhBackward", "tanh", tensorArg(x, "tanh", "x"), (g, _x, y) => {
    const y2 = ew("square", [y], y.dtype);
    const d = ew("affine", [y2], y.dtype, [-1, 1]);
    y2.dispose();
    return times(g, d);
  });
}

export function sigmoid(x: Tensor): Tensor {
  // y (1 - y)
  return unaryOp("SigmoidBackward", "sigmoid", tensorArg(x, "sigmoid", "x"), (g, _x, y) => {
    const one = ew("affine", [y], y.dtype, [-1, 1]);
    const d = ew("mul", [y, one], y.dtype);
    one.dispose();
    return times(g, d);
  });
}

/** x^p for a number p, or elementwise x^y for a tensor exponent. */
export function pow(x: Tensor, p: Operand): Tensor {
  tensorArg(x, "pow", "x");
  if (typeof p === "number") {
    return unaryOp("PowBackward", "pow_scalar", x, (g, xs) => times(g, scaledPow(xs, p - 1, p)), [p]);
  }
  tensorArg(p, "pow", "exponent");
  return binary("PowBackward", "pow", x, p, (g, a, b, y, [na, nb]) => {
    let ga: Tensor | null = null, gb: Tensor | null = null;
    if (na) {
      // b · a^(b-1) = b · y / a (a ≠ 0); computed as b · a^(b - 1) to stay finite at a = 0
      const bm1 = ew("affine", [b], b.dtype, [1, -1]);
      const p1 = ew("pow", [a, bm1], a.dtype);
      bm1.dispose();
      const d = ew("mul", [p1, b], a.dtype);
      p1.dispose();
      ga = times(g, d);
    }
    if (nb) {
      const la = ew("log", [a], a.dtype);
      const d = ew("mul", [y, la], b.dtype);
      la.dispose();
      gb = times(g, d);
    }
    return [ga, gb];
  }, true);
}

/** min(max(x, lo), hi); either bound may be omitted. The gradient flows where lo ≤ x ≤ hi. */
export function clamp(x: Tensor, options: { min?: number; max?: number } = {}): Tensor {
  tensorArg(x, "clamp", "x");
  const opts = optionsArg(options, "clamp");
  const lo = opts.min ?? Number.NaN, hi = opts.max ?? Number.NaN;
  if (opts.min !== undefined) numberArg(opts.min, "clamp", "min");
  if (opts.max !== undefined) numberArg(opts.max, "clamp", "max");
  return unaryOp("ClampBackward", "clamp", x, (g, xs, y) => times(g, ew("eq", [xs, y], g.dtype)), [lo, hi]);
}

/** cond ? a : b elementwise with broadcasting; cond is any tensor (non-zero = true) and gets no gradient. */
export function where(cond: Tensor, a: Tensor, b: Tensor): Tensor {
  tensorArg(cond, "where", "cond");
  tensorArg(a, "where", "a");
  tensorArg(b, "where", "b");
  const y = ew("where", [cond, a, b], promote(a, b));
  if (!wantsGrad(a, b)) return y;
  return record("WhereBackward", [a, b], y, ([g], [c], [na, nb]) => {
    if (!g) return [null, null];
    const zero = Tensor.zeros([], { dtype: g.dtype });
    const ga = na ? ew("where", [c, g, zero], g.dtype) : null;
    const gb = nb ? ew("where", [c, zero, g], g.dtype) : null;
    zero.dispose();
    return reduceBoth(g, ga, gb, a.shape, b.shape);
  }, [cond]);
}
