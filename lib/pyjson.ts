// JSON text exactly as Python's `json.dumps(obj, indent=2, sort_keys=True)` writes it, which is how PEFT
// writes adapter_config.json. JSON.stringify differs in four ways that matter for byte-identical files:
// keys are not sorted (and integer-like keys are always ordered first by JS objects), non-ASCII is not
// escaped (Python's ensure_ascii=True escapes it), floats lose their ".0" and small/large floats use a
// different exponent style (Python writes 1e-05, JS 0.00001).

export interface PyJSONOptions {
  /**
   * Keys whose numbers are Python floats: written with Python's float repr even when integral (0 -> "0.0").
   * JS numbers carry no int/float distinction, so the writer needs to be told. A top-level key is named as
   * is, a nested one by its dotted path ("quantization_config.llm_int8_threshold").
   */
  floatKeys?: ReadonlySet<string>;
  /** Indent width; Python's default for PEFT files is 2. */
  indent?: number;
}

/** Serialize like Python's json.dumps(value, indent=2, sort_keys=True, ensure_ascii=True). */
export function pyJSONDumps(value: unknown, opts: PyJSONOptions = {}): string {
  const indent = opts.indent ?? 2;
  const floatKeys = opts.floatKeys ?? new Set<string>();
  return write(value, 0, indent, false, (path) => floatKeys.has(path), "");
}

type FloatKeyTest = (path: string) => boolean;

function write(v: unknown, depth: number, indent: number, asFloat: boolean, isFloatKey: FloatKeyTest, path: string): string {
  if (v === null || v === undefined) return "null";
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v === "number") return asFloat || !Number.isInteger(v) ? pyFloatRepr(v) : pyIntRepr(v);
  if (typeof v === "string") return pyString(v);
  const pad = " ".repeat(indent * (depth + 1));
  const end = " ".repeat(indent * depth);
  if (Array.isArray(v)) {
    if (v.length === 0) return "[]";
    const items = v.map((x) => pad + write(x, depth + 1, indent, asFloat, isFloatKey, path));
    return "[\n" + items.join(",\n") + "\n" + end + "]";
  }
  if (typeof v === "object") {
    const keys = Object.keys(v).filter((k) => (v as Record<string, unknown>)[k] !== undefined);
    if (keys.length === 0) return "{}";
    keys.sort(compareCodePoints);
    const items = keys.map(
      (k) =>
        pad +
        pyString(k) +
        ": " +
        write((v as Record<string, unknown>)[k], depth + 1, indent, isFloatKey(path ? `${path}.${k}` : k), isFloatKey, path ? `${path}.${k}` : k),
    );
    return "{\n" + items.join(",\n") + "\n" + end + "}";
  }
  throw new TypeError(`cannot serialize a value of type ${typeof v} as JSON`);
}

/** Python sorts str keys by code point; JS's default sort compares UTF-16 units (differs above U+FFFF). */
export function compareCodePoints(a: string, b: string): number {
  const ia = a[Symbol.iterator]();
  const ib = b[Symbol.iterator]();
  for (;;) {
    const x = ia.next();
    const y = ib.next();
    if (x.done) return y.done ? 0 : -1;
    if (y.done) return 1;
    const cx = x.value.codePointAt(0)!;
    const cy = y.value.codePointAt(0)!;
    if (cx !== cy) return cx - cy;
  }
}

function pyIntRepr(v: number): string {
  // Python ints never use exponent notation; JS switches at 1e21.
  return Math.abs(v) >= 1e21 ? BigInt(v).toString() : String(v === 0 ? 0 : v);
}

/** Python's repr(float): shortest round-trip digits, fixed for 1e-4 <= |v| < 1e16, else d.ddde±XX. */
export function pyFloatRepr(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "Infinity";
  if (v === -Infinity) return "-Infinity";
  if (v === 0) return Object.is(v, -0) ? "-0.0" : "0.0";
  const sign = v < 0 ? "-" : "";
  // toExponential() without an argument gives the shortest digits that round-trip, like Python's repr.
  const [mant, expStr] = Math.abs(v).toExponential().split("e");
  const digits = mant!.replace(".", "");
  const exp = Number(expStr);
  if (exp >= -4 && exp < 16) {
    if (exp < 0) return sign + "0." + "0".repeat(-exp - 1) + digits;
    const intPart = digits.slice(0, exp + 1).padEnd(exp + 1, "0");
    const frac = digits.slice(exp + 1);
    return sign + intPart + "." + (frac === "" ? "0" : frac);
  }
  const m = digits.length > 1 ? digits[0] + "." + digits.slice(1) : digits;
  const e = Math.abs(exp).toString().padStart(2, "0");
  return sign + m + "e" + (exp < 0 ? "-" : "+") + e;
}

/** A JSON string with Python's ensure_ascii escaping (lowercase \uXXXX, DEL escaped too). */
function pyString(s: string): string {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const ch = s[i]!;
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\b") out += "\\b";
    else if (ch === "\f") out += "\\f";
    else if (c < 0x20 || c > 0x7e) out += "\\u" + c.toString(16).padStart(4, "0");
    else out += ch;
  }
  return out + '"';
}
