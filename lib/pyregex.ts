// Python `re` patterns as JS RegExps. PEFT configs carry Python regexes (target_modules as a string,
// exclude_modules, rank_pattern keys, layers_pattern), so a config written for Python must match the
// same module names here. The syntax the two share needs no change; this translates the Python-only
// spellings people actually use in these configs: named groups (?P<n>...) and (?P=n), the anchors \A
// and \Z, and leading global flags such as (?i).
//
// These patterns come from files, so they are screened before they are ever run: a backtracking engine
// takes exponential time on a pattern whose repetition can match the same text in several ways
// (`(a+)+b`, `(a|a)*b`) and high-degree polynomial time on long chains of overlapping repetitions
// (`.*.*.*.*.*x`). See screenRegex below; the verdict is cached per pattern.

import { PeftError } from "./errors.js";

const cache = new Map<string, RegExp>();
const CACHE_LIMIT = 10_000;

/**
 * Compile a Python pattern. "full" behaves like re.fullmatch (the whole string must match), "match" like
 * re.match (anchored at the start only). Throws SyntaxError for patterns JS cannot compile and
 * UnsafeRegexError for patterns that could take exponential (or high polynomial) time to match.
 */
export function pyRegex(src: string, mode: "full" | "match"): RegExp {
  const cacheKey = mode + "\0" + src;
  let re = cache.get(cacheKey);
  if (!re) {
    const { body, flags } = translate(src);
    re = new RegExp(mode === "full" ? `^(?:${body})$` : `^(?:${body})`, flags);
    // Only a pattern that compiles is screened, so the screen's parser sees valid syntax.
    const reason = screenTranslated(body, flags);
    if (reason !== null) throw new UnsafeRegexError(src, reason);
    if (cache.size >= CACHE_LIMIT) cache.clear(); // patterns come from files: keep memory bounded
    cache.set(cacheKey, re);
  }
  return re;
}

/** A pattern refused by the screen: PeftError ERR_CONFIG naming the pattern and why. */
export class UnsafeRegexError extends PeftError {
  readonly pattern: string;
  readonly reason: string;
  constructor(pattern: string, reason: string) {
    super("ERR_CONFIG", `regular expression ${JSON.stringify(pattern)} is refused: ${reason}`);
    this.name = "UnsafeRegexError";
    this.pattern = pattern;
    this.reason = reason;
  }
}

/**
 * Why a Python pattern could take super-linear time to match, or null when it is safe. Throws
 * SyntaxError for a pattern JS cannot compile.
 */
export function screenRegex(src: string): string | null {
  const { body, flags } = translate(src);
  new RegExp(body, flags);
  return screenTranslated(body, flags);
}

function translate(src: string): { body: string; flags: string } {
  let flags = "";
  let i = 0;
  // Python only allows global inline flags at the start of the pattern.
  const lead = /^\(\?([aiLmsux]+)\)/.exec(src);
  if (lead) {
    for (const f of lead[1]!) {
      if (f === "x") throw new SyntaxError(`verbose flag (?x) is not supported in pattern ${JSON.stringify(src)}`);
      if ((f === "i" || f === "m" || f === "s") && !flags.includes(f)) flags += f;
    }
    i = lead[0].length;
  }
  let out = "";
  let inClass = false;
  while (i < src.length) {
    const c = src[i]!;
    if (c === "\\") {
      const n = src[i + 1];
      if (n === undefined) throw new SyntaxError(`pattern ${JSON.stringify(src)} ends with a lone backslash`);
      if (!inClass && n === "A") out += "^";
      else if (!inClass && n === "Z") out += "$";
      else out += c + n;
      i += 2;
      continue;
    }
    if (inClass) {
      if (c === "]") inClass = false;
      out += c;
      i++;
      continue;
    }
    if (c === "[") {
      inClass = true;
      out += c;
      i++;
      // A "]" right after "[" or "[^" is a literal in Python; JS needs it escaped.
      if (src[i] === "^") {
        out += "^";
        i++;
      }
      if (src[i] === "]") {
        out += "\\]";
        i++;
      }
      continue;
    }
    if (src.startsWith("(?P<", i)) {
      out += "(?<";
      i += 4;
      continue;
    }
    if (src.startsWith("(?P=", i)) {
      const close = src.indexOf(")", i);
      if (close < 0) throw new SyntaxError(`unterminated (?P= in pattern ${JSON.stringify(src)}`);
      out += `\\k<${src.slice(i + 4, close)}>`;
      i = close + 1;
      continue;
    }
    out += c;
    i++;
  }
  return { body: out, flags };
}

// ---------------------------------------------------------------------------------------------------
// The screen. The translated pattern is parsed and turned into a position automaton (Glushkov's
// construction, counting the distinct ways each step can be taken), the model of what a backtracking
// engine explores. On that automaton:
//   - exponential blow-up (EDA): some state has two different paths back to itself that read the same
//     text, either a doubled step inside a loop (nested quantifiers: `(a+)+`, `(\w+\s?)+`) or two copies
//     of the loop that part and meet again (overlapping alternatives: `(a|a)*`, `(\w|\d)+`, `(.*)*`);
//   - polynomial blow-up (IDA): a chain of loops p1, p2, ... where each pair (p, q) has one text that p
//     can repeat, that leads from p to q, and that q can repeat (`.*a.*b`). A chain of k loops costs
//     about n^k steps on a failing name of length n; chains longer than MAX_REPETITION_CHAIN are refused;
//   - finite ambiguity: two ways of matching that part outside loops and may meet again (`(a|a)(a|a)`,
//     overlapping optional parts, bounded repetitions); each parting along one text doubles the work,
//     so their number is bounded, alone and together with the chains.
// Lookarounds are screened as patterns of their own (their chain adds to the pattern's). A backreference
// is one step that can match anything (it matches the captured text in one way). Exponential structures
// are found exactly on this model; the polynomial and finite measures are estimates calibrated on V8's
// matching times: the screen may refuse an odd safe pattern, and of thousands of random patterns it
// accepted, none took more than tens of milliseconds on a 41-character name that does not match.

/** Longest accepted chain of overlapping unbounded repetitions (`.*a.*b.*c.*d` is 4). */
export const MAX_REPETITION_CHAIN = 4;
/** Most partings of two ways to match the same text along one text (each doubles a failing match's work). */
export const MAX_PARTINGS = 8;
/**
 * Chains and partings together: CHAIN_WEIGHT * chain + partings at most MAX_COST (a link of a chain costs
 * about a factor of the name's length, ~2^4 for module names; a chain of 4 leaves room for one parting).
 */
const CHAIN_WEIGHT = 4;
const MAX_COST = 17;
/** Patterns with more character positions than this are refused as too large to screen. */
const MAX_POSITIONS = 4000;
/** A bound on the screen's own work, so a hostile pattern cannot make the screen itself slow. */
const MAX_WORK = 2_000_000;

const verdicts = new Map<string, string | null>();

function screenTranslated(body: string, flags: string): string | null {
  const key = flags + "/" + body;
  let v = verdicts.get(key);
  if (v === undefined) {
    v = analysePattern(body, flags);
    if (verdicts.size >= CACHE_LIMIT) verdicts.clear();
    verdicts.set(key, v);
  }
  return v;
}

// Character sets: sorted, merged, inclusive UTF-16 code unit ranges, flattened [lo0, hi0, lo1, hi1, ...].
type CharSet = readonly number[];
const ALL: CharSet = [0, 0xffff];
const NONE: CharSet = [];
const DIGIT: CharSet = [48, 57];
const WORD: CharSet = [48, 57, 65, 90, 95, 95, 97, 122];
const SPACE: CharSet = [
  9, 13, 32, 32, 160, 160, 0x1680, 0x1680, 0x2000, 0x200a, 0x2028, 0x2029, 0x202f, 0x202f, 0x205f, 0x205f, 0x3000, 0x3000,
  0xfeff, 0xfeff,
];
const LINE_TERMINATORS: CharSet = [10, 10, 13, 13, 0x2028, 0x2029];

function normalize(ranges: number[][]): CharSet {
  ranges.sort((a, b) => a[0]! - b[0]!);
  const out: number[] = [];
  for (const [lo, hi] of ranges) {
    if (lo! > hi!) continue;
    const n = out.length;
    if (n > 0 && lo! <= out[n - 1]! + 1) out[n - 1] = Math.max(out[n - 1]!, hi!);
    else out.push(lo!, hi!);
  }
  return out;
}

function pairs(s: CharSet): number[][] {
  const r: number[][] = [];
  for (let i = 0; i < s.length; i += 2) r.push([s[i]!, s[i + 1]!]);
  return r;
}

function union(a: CharSet, b: CharSet): CharSet {
  return normalize([...pairs(a), ...pairs(b)]);
}

function negate(a: CharSet): CharSet {
  const out: number[] = [];
  let next = 0;
  for (let i = 0; i < a.length; i += 2) {
    if (a[i]! > next) out.push(next, a[i]! - 1);
    next = a[i + 1]! + 1;
  }
  if (next <= 0xffff) out.push(next, 0xffff);
  return out;
}

function intersect(a: CharSet, b: CharSet): CharSet {
  const out: number[] = [];
  let i = 0, j = 0;
  while (i < a.length && j < b.length) {
    const lo = Math.max(a[i]!, b[j]!), hi = Math.min(a[i + 1]!, b[j + 1]!);
    if (lo <= hi) out.push(lo, hi);
    if (a[i + 1]! < b[j + 1]!) i += 2;
    else j += 2;
  }
  return out;
}

function intersects(a: CharSet, b: CharSet): boolean {
  let i = 0, j = 0;
  while (i < a.length && j < b.length) {
    if (Math.max(a[i]!, b[j]!) <= Math.min(a[i + 1]!, b[j + 1]!)) return true;
    if (a[i + 1]! < b[j + 1]!) i += 2;
    else j += 2;
  }
  return false;
}

/** Adds the other ASCII case of every letter (what (?i) makes equivalent; non-ASCII folding is ignored). */
function foldCase(a: CharSet): CharSet {
  const extra: number[][] = [];
  for (const [lo, hi] of pairs(a)) {
    const up = [Math.max(lo!, 65), Math.min(hi!, 90)], low = [Math.max(lo!, 97), Math.min(hi!, 122)];
    if (up[0]! <= up[1]!) extra.push([up[0]! + 32, up[1]! + 32]);
    if (low[0]! <= low[1]!) extra.push([low[0]! - 32, low[1]! - 32]);
  }
  return extra.length ? normalize([...pairs(a), ...extra]) : a;
}

type RegexNode =
  | { t: "empty" }
  | { t: "chars"; set: CharSet; at: number }
  | { t: "seq"; items: RegexNode[] }
  | { t: "alt"; items: RegexNode[] }
  | { t: "rep"; body: RegexNode; min: number; max: number; from: number; to: number }
  | { t: "look"; body: RegexNode }
  | { t: "backref"; at: number };

const EMPTY_NODE: RegexNode = { t: "empty" };
const QUANTIFIER = /\{(\d+)(?:,(\d*))?\}/y;
const MODIFIERS = /\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?:/y;

/** A parser for the JS patterns translate() produces (non-unicode mode, with the web-compat extensions). */
class PatternParser {
  i = 0;
  constructor(
    readonly src: string,
    private ignoreCase: boolean,
    private dotAll: boolean,
    private readonly namedGroups: boolean,
  ) {}

  parse(): RegexNode {
    const n = this.disjunction();
    if (this.i < this.src.length) throw new SyntaxError(`unexpected ${this.src[this.i]} at ${this.i}`);
    return n;
  }

  private disjunction(): RegexNode {
    const items = [this.alternative()];
    while (this.src[this.i] === "|") {
      this.i++;
      items.push(this.alternative());
    }
    return items.length === 1 ? items[0]! : { t: "alt", items };
  }

  private alternative(): RegexNode {
    const items: RegexNode[] = [];
    while (this.i < this.src.length && this.src[this.i] !== "|" && this.src[this.i] !== ")") items.push(this.term());
    return items.length === 1 ? items[0]! : { t: "seq", items };
  }

  private term(): RegexNode {
    const from = this.i;
    const atom = this.atom();
    const q = this.quantifier();
    // A repeated assertion still matches no text.
    if (!q || atom.t === "look" || atom.t === "empty") return atom;
    return { t: "rep", body: atom, min: q.min, max: q.max, from, to: this.i };
  }

  private quantifier(): { min: number; max: number } | null {
    const c = this.src[this.i];
    let q: { min: number; max: number } | null = null;
    if (c === "*") q = { min: 0, max: Infinity };
    else if (c === "+") q = { min: 1, max: Infinity };
    else if (c === "?") q = { min: 0, max: 1 };
    if (q) this.i++;
    else if (c === "{") {
      QUANTIFIER.lastIndex = this.i;
      const m = QUANTIFIER.exec(this.src);
      if (m) {
        const min = Number(m[1]);
        q = { min, max: m[2] === undefined ? min : m[2] === "" ? Infinity : Number(m[2]) };
        this.i += m[0].length;
      }
    }
    if (q && this.src[this.i] === "?") this.i++; // lazy: the same paths, tried in another order
    return q;
  }

  private chars(set: CharSet, at: number): RegexNode {
    return { t: "chars", set: this.ignoreCase ? foldCase(set) : set, at };
  }

  private atom(): RegexNode {
    const at = this.i;
    const c = this.src[this.i]!;
    switch (c) {
      case "^":
      case "$":
        this.i++;
        return EMPTY_NODE;
      case ".":
        this.i++;
        return this.chars(this.dotAll ? ALL : negate(LINE_TERMINATORS), at);
      case "[":
        return this.charClass();
      case "(":
        return this.group();
      case "\\":
        return this.escape();
      default:
        this.i++;
        return this.chars([c.charCodeAt(0), c.charCodeAt(0)], at);
    }
  }

  private group(): RegexNode {
    const s = this.src;
    let look = false;
    const saved = [this.ignoreCase, this.dotAll] as const;
    if (s.startsWith("(?=", this.i) || s.startsWith("(?!", this.i)) {
      this.i += 3;
      look = true;
    } else if (s.startsWith("(?<=", this.i) || s.startsWith("(?<!", this.i)) {
      this.i += 4;
      look = true;
    } else if (s.startsWith("(?<", this.i)) {
      const close = s.indexOf(">", this.i);
      if (close < 0) throw new SyntaxError("unterminated group name");
      this.i = close + 1;
    } else if (s[this.i + 1] === "?") {
      MODIFIERS.lastIndex = this.i;
      const m = MODIFIERS.exec(s);
      if (!m) throw new SyntaxError(`unknown group syntax at ${this.i}`);
      // A scoped flag only widens the sets (over-approximated either way).
      if (m[1]!.includes("i")) this.ignoreCase = true;
      if (m[1]!.includes("s")) this.dotAll = true;
      this.i += m[0].length;
    } else {
      this.i++;
    }
    const body = this.disjunction();
    [this.ignoreCase, this.dotAll] = saved;
    if (s[this.i] !== ")") throw new SyntaxError("missing )");
    this.i++;
    return look ? { t: "look", body } : body;
  }

  private escape(): RegexNode {
    const at = this.i;
    const s = this.src;
    const n = s[this.i + 1];
    if (n === undefined) throw new SyntaxError("lone backslash");
    this.i += 2;
    if (n === "b" || n === "B") return EMPTY_NODE;
    if (n >= "1" && n <= "9") {
      while (/[0-9]/.test(s[this.i] ?? "")) this.i++;
      return { t: "backref", at };
    }
    if (n === "k" && this.namedGroups && s[this.i] === "<") {
      const close = s.indexOf(">", this.i);
      if (close < 0) throw new SyntaxError("unterminated \\k<name>");
      this.i = close + 1;
      return { t: "backref", at };
    }
    return this.chars(this.escapeSet(n, false), at);
  }

  /** The characters of the escape `\n` (its letter already consumed; hex digits etc. are read here). */
  private escapeSet(n: string, inClass: boolean): CharSet {
    const s = this.src;
    const one = (k: number): CharSet => [k, k];
    switch (n) {
      case "d": return DIGIT;
      case "D": return negate(DIGIT);
      case "w": return WORD;
      case "W": return negate(WORD);
      case "s": return SPACE;
      case "S": return negate(SPACE);
      case "n": return one(10);
      case "r": return one(13);
      case "t": return one(9);
      case "f": return one(12);
      case "v": return one(11);
      case "b": return inClass ? one(8) : NONE;
      case "x":
      case "u": {
        const len = n === "x" ? 2 : 4;
        const hex = s.slice(this.i, this.i + len);
        if (hex.length === len && /^[0-9a-fA-F]+$/.test(hex)) {
          this.i += len;
          return one(Number.parseInt(hex, 16));
        }
        return one(n.charCodeAt(0));
      }
      case "c": {
        const l = s[this.i];
        if (l !== undefined && /[a-zA-Z]/.test(l)) {
          this.i++;
          return one(l.charCodeAt(0) % 32);
        }
        return ALL; // "\c" read literally: over-approximated
      }
      default:
        if (n >= "0" && n <= "7") {
          // Legacy octal escape (\0, and \1-\7 inside a class).
          let v = Number(n);
          while (v < 32 && /[0-7]/.test(s[this.i] ?? "")) v = v * 8 + Number(s[this.i++]);
          return one(v);
        }
        return one(n.charCodeAt(0));
    }
  }

  private classAtom(): { set: CharSet; code: number | null } {
    const c = this.src[this.i]!;
    if (c !== "\\") {
      this.i++;
      const k = c.charCodeAt(0);
      return { set: [k, k], code: k };
    }
    const n = this.src[this.i + 1];
    if (n === undefined) throw new SyntaxError("lone backslash");
    this.i += 2;
    const set = this.escapeSet(n, true);
    return { set, code: set.length === 2 && set[0] === set[1] ? set[0]! : null };
  }

  private charClass(): RegexNode {
    const at = this.i;
    const s = this.src;
    this.i++;
    let negated = false;
    if (s[this.i] === "^") {
      negated = true;
      this.i++;
    }
    let set: CharSet = NONE;
    while (s[this.i] !== "]") {
      if (this.i >= s.length) throw new SyntaxError("missing ]");
      const a = this.classAtom();
      if (s[this.i] === "-" && this.i + 1 < s.length && s[this.i + 1] !== "]") {
        this.i++;
        const b = this.classAtom();
        if (a.code !== null && b.code !== null) set = union(set, [Math.min(a.code, b.code), Math.max(a.code, b.code)]);
        else set = union(union(union(set, a.set), [45, 45]), b.set); // [\w-x]: the "-" is a literal
        continue;
      }
      set = union(set, a.set);
    }
    this.i++;
    return this.chars(negated ? negate(set) : set, at);
  }
}

class ScreenTooComplex extends Error {}

/** Ways (0, 1, or 2 standing for "two or more") to take each step, keyed by position. */
type Counts = ReadonlyMap<number, number>;
interface Frag {
  first: Counts;
  last: Counts;
  /** Ways to match the empty text. */
  nul: number;
}

const cap = (n: number) => (n > 2 ? 2 : n);
const EMPTY_COUNTS: Counts = new Map();
const emptyFrag = (): Frag => ({ first: EMPTY_COUNTS, last: EMPTY_COUNTS, nul: 1 });

function nodeSize(n: RegexNode): number {
  switch (n.t) {
    case "chars":
    case "backref":
      return 1;
    case "seq":
    case "alt":
      return n.items.reduce((a, x) => a + nodeSize(x), 0);
    case "rep":
      return nodeSize(n.body) * Math.min(Number.isFinite(n.max) ? n.max : n.min || 1, 8) + 1;
    default:
      return 0;
  }
}

/** Glushkov's position automaton, counting paths: follow[p].get(q) = ways to step from p to q. */
class PositionAutomaton {
  readonly sets: CharSet[] = [];
  readonly at: number[] = [];
  readonly follow: Map<number, number>[] = [];
  readonly looks = new Set<RegexNode>();
  readonly reps: { from: number; to: number }[] = [];

  constructor(private readonly budget: { work: number }) {}

  tick(n = 1): void {
    this.budget.work += n;
    if (this.budget.work > MAX_WORK) throw new ScreenTooComplex();
  }

  private position(set: CharSet, at: number): number {
    if (this.sets.length >= MAX_POSITIONS) throw new ScreenTooComplex();
    this.sets.push(set);
    this.at.push(at);
    this.follow.push(new Map());
    return this.sets.length - 1;
  }

  private link(last: Counts, first: Counts): void {
    for (const [p, a] of last) {
      const f = this.follow[p]!;
      for (const [q, b] of first) {
        this.tick();
        f.set(q, cap((f.get(q) ?? 0) + a * b));
      }
    }
  }

  private plusCounts(a: Counts, b: Counts, k: number): Counts {
    if (k === 0 || b.size === 0) return a;
    if (a.size === 0 && k === 1) return b;
    this.tick(a.size + b.size);
    const out = new Map(a);
    for (const [p, n] of b) out.set(p, cap((out.get(p) ?? 0) + n * k));
    return out;
  }

  private concat(x: Frag, y: Frag): Frag {
    this.link(x.last, y.first);
    return {
      first: this.plusCounts(x.first, y.first, x.nul),
      last: this.plusCounts(y.last, x.last, y.nul),
      nul: cap(x.nul * y.nul),
    };
  }

  // ECMAScript's RepeatMatcher fails an optional iteration that matches the empty text, so a loop or "?"
  // matches the empty text in one way only (by not iterating); a mandatory first iteration keeps its ways.
  private opt(f: Frag): Frag {
    return { first: f.first, last: f.last, nul: 1 };
  }

  private plus(f: Frag): Frag {
    this.link(f.last, f.first);
    return f;
  }

  private star(f: Frag): Frag {
    return this.opt(this.plus(f));
  }

  build(n: RegexNode): Frag {
    switch (n.t) {
      case "empty":
        return emptyFrag();
      case "chars": {
        const m = new Map([[this.position(n.set, n.at), 1]]);
        return { first: m, last: m, nul: 0 };
      }
      case "backref": {
        // Matches the text a group captured, in one way: one step that can match anything.
        const m = new Map([[this.position(ALL, n.at), 1]]);
        return { first: m, last: m, nul: 0 };
      }
      case "look":
        this.looks.add(n.body);
        return emptyFrag();
      case "seq": {
        let acc = emptyFrag();
        for (const item of n.items) acc = this.concat(acc, this.build(item));
        return acc;
      }
      case "alt": {
        let acc: Frag = { first: EMPTY_COUNTS, last: EMPTY_COUNTS, nul: 0 };
        for (const item of n.items) {
          const f = this.build(item);
          acc = { first: this.plusCounts(acc.first, f.first, 1), last: this.plusCounts(acc.last, f.last, 1), nul: cap(acc.nul + f.nul) };
        }
        return acc;
      }
      case "rep":
        this.reps.push({ from: n.from, to: n.to });
        return this.repeat(n.body, n.min, n.max);
    }
  }

  private repeat(body: RegexNode, min: number, max: number): Frag {
    if (max === 0) return emptyFrag();
    if (max === 1) return min === 0 ? this.opt(this.build(body)) : this.build(body);
    const copies = Number.isFinite(max) ? max : min;
    // Large counts are taken as unbounded loops: more paths, never fewer.
    if (copies > 8 || copies * nodeSize(body) > 256) return min === 0 ? this.star(this.build(body)) : this.plus(this.build(body));
    let acc = emptyFrag();
    if (!Number.isFinite(max)) {
      if (min === 0) return this.star(this.build(body));
      for (let k = 0; k < min - 1; k++) acc = this.concat(acc, this.build(body));
      return this.concat(acc, this.plus(this.build(body)));
    }
    for (let k = 0; k < min; k++) acc = this.concat(acc, this.build(body));
    // b{0,3} as (b(b(b)?)?)?: each optional copy only after the previous one.
    let tail: Frag | null = null;
    for (let k = 0; k < max - min; k++) tail = this.opt(tail ? this.concat(this.build(body), tail) : this.build(body));
    return tail ? this.concat(acc, tail) : acc;
  }
}

/** Strongly connected components of the position graph (iterative Tarjan): component id per position. */
function components(a: PositionAutomaton): { comp: Int32Array; count: number } {
  const n = a.sets.length;
  const index = new Int32Array(n).fill(-1), low = new Int32Array(n), comp = new Int32Array(n).fill(-1);
  const onStack = new Uint8Array(n);
  const stack: number[] = [];
  const succ = a.follow.map((f) => [...f.keys()]);
  let next = 0, count = 0;
  for (let root = 0; root < n; root++) {
    if (index[root] !== -1) continue;
    const work: [number, number][] = [[root, 0]];
    while (work.length) {
      const top = work[work.length - 1]!;
      const [v, k] = top;
      if (k === 0) {
        index[v] = low[v] = next++;
        stack.push(v);
        onStack[v] = 1;
      }
      if (k < succ[v]!.length) {
        top[1] = k + 1;
        const w = succ[v]![k]!;
        if (index[w] === -1) work.push([w, 0]);
        else if (onStack[w]) low[v] = Math.min(low[v]!, index[w]!);
        continue;
      }
      work.pop();
      if (work.length) {
        const u = work[work.length - 1]![0];
        low[u] = Math.min(low[u]!, low[v]!);
      }
      if (low[v] === index[v]) {
        let w: number;
        do {
          w = stack.pop()!;
          onStack[w] = 0;
          comp[w] = count;
        } while (w !== v);
        count++;
      }
    }
  }
  return { comp, count };
}

/**
 * The smallest repetition in the source that holds all the given positions (with `nested`, the smallest
 * that also holds another repetition over some of them: the outer loop of nested quantifiers), for messages.
 */
function enclosingRepetition(a: PositionAutomaton, body: string, positions: number[], nested = false): string {
  let lo = Infinity, hi = -Infinity;
  for (const p of positions) {
    lo = Math.min(lo, a.at[p]!);
    hi = Math.max(hi, a.at[p]!);
  }
  const around = a.reps.filter((r) => r.from <= lo && r.to > hi).sort((x, y) => x.to - x.from - (y.to - y.from));
  const holdsInner = (r: { from: number; to: number }) =>
    a.reps.some((i) => i !== r && r.from <= i.from && i.to <= r.to && (i.from !== r.from || i.to !== r.to) &&
      positions.some((p) => i.from <= a.at[p]! && a.at[p]! < i.to));
  const best = (nested ? around.find(holdsInner) : undefined) ?? around[0];
  return best ? ` (in ${JSON.stringify(body.slice(best.from, best.to))})` : "";
}

export interface Verdict {
  reason: string | null;
  /** The longest chain of overlapping loops (polynomial degree). */
  chain: number;
  /** How many different chains have that length (each adds its own n^chain ways). */
  chains: number;
  /** The most finite partings along one text (each doubles the ways a failing match is tried). */
  partings: number;
}

function analyseNode(node: RegexNode, body: string, budget: { work: number }): Verdict {
  const a = new PositionAutomaton(budget);
  const whole = a.build(node);
  const n = a.sets.length;
  const { comp, count } = components(a);
  const members: number[][] = Array.from({ length: count }, () => []);
  for (let p = 0; p < n; p++) members[comp[p]!]!.push(p);
  const loops = members.filter((m) => m.length > 1 || a.follow[m[0]!]!.has(m[0]!));

  // 1. A step taken in two ways inside a loop: nested quantifiers.
  for (let p = 0; p < n; p++) {
    for (const [q, ways] of a.follow[p]!) {
      if (ways >= 2 && comp[p] === comp[q]) {
        return {
          reason:
            `a repetition inside another repetition can split the same text in many ways${enclosingRepetition(a, body, members[comp[p]!]!, true)}, ` +
            "so matching can take exponential time (nested quantifiers such as \"(a+)+\")",
          chain: 0,
          chains: 0,
          partings: 0,
        };
      }
    }
  }

  // 2. Two copies of a loop that part and meet again on the same text: within the loop's component, a
  //    pair of different positions reachable from the diagonal that can also get back to it.
  for (const m of loops) {
    if (m.length < 2) continue;
    const local = new Map(m.map((p, i) => [p, i]));
    const k = m.length;
    const valid = (i: number, j: number) => i === j || intersects(a.sets[m[i]!]!, a.sets[m[j]!]!);
    const succ = m.map((p) => [...a.follow[p]!.keys()].filter((q) => local.has(q)).map((q) => local.get(q)!));
    const pred: number[][] = Array.from({ length: k }, () => []);
    succ.forEach((s, i) => s.forEach((j) => pred[j]!.push(i)));
    const search = (adj: number[][]): Uint8Array => {
      const seen = new Uint8Array(k * k);
      const queue: number[] = [];
      for (let i = 0; i < k; i++) {
        seen[i * k + i] = 1;
        queue.push(i * k + i);
      }
      while (queue.length) {
        const s = queue.pop()!;
        const i = Math.floor(s / k), j = s % k;
        for (const i2 of adj[i]!) {
          for (const j2 of adj[j]!) {
            a.tick();
            const t = i2 * k + j2;
            if (!seen[t] && valid(i2, j2)) {
              seen[t] = 1;
              queue.push(t);
            }
          }
        }
      }
      return seen;
    };
    const forward = search(succ), backward = search(pred);
    for (let s = 0; s < k * k; s++) {
      if (forward[s] && backward[s] && Math.floor(s / k) !== s % k) {
        return {
          reason:
            `parts of a repeated group can match the same text${enclosingRepetition(a, body, m)}, so matching can take ` +
            "exponential time (overlapping alternatives or repetitions such as \"(a|a)*\", \"(\\w|\\d)+\" or \"(.*)*\")",
          chain: 0,
          chains: 0,
          partings: 0,
        };
      }
    }
  }

  // 3. Chains of loops p -> q with a text that p repeats, leads from p to q, and q repeats.
  let chain = 0, chains = 0;
  if (loops.length > 0) {
    const succ = a.follow.map((f) => [...f.keys()]), pred = predecessorsOf(a);
    const reach = (from: number[], dir: "fwd" | "bwd"): Uint8Array => {
      const seen = new Uint8Array(n);
      const adj = dir === "fwd" ? succ : pred;
      const queue = [...from];
      for (const p of from) seen[p] = 1;
      while (queue.length) {
        const p = queue.pop()!;
        for (const q of adj[p]!) {
          a.tick();
          if (!seen[q]) {
            seen[q] = 1;
            queue.push(q);
          }
        }
      }
      return seen;
    };
    const fwd = loops.map((m) => reach(m, "fwd"));
    const bwd = loops.map((m) => reach(m, "bwd"));
    const edges: number[][] = loops.map(() => []);
    for (let x = 0; x < loops.length; x++) {
      for (let y = 0; y < loops.length; y++) {
        a.tick();
        if (x === y || !fwd[x]![loops[y]![0]!]) continue;
        if (chained(a, loops[x]!, loops[y]!, comp, bwd[y]!)) edges[x]!.push(y);
      }
    }
    // The longest chain from each loop, and how many chains of that length start there.
    const longest = new Int32Array(loops.length).fill(-1);
    const ways = new Float64Array(loops.length);
    const visit = (x: number): number => {
      if (longest[x]! >= 0) return longest[x]!;
      let best = 1, count = 1;
      for (const y of edges[x]!) {
        const l = 1 + visit(y);
        if (l > best) [best, count] = [l, ways[y]!];
        else if (l === best) count += ways[y]!;
      }
      ways[x] = Math.min(count, 2 ** 30);
      return (longest[x] = best);
    };
    for (let x = 0; x < loops.length; x++) chain = Math.max(chain, visit(x));
    for (let x = 0; x < loops.length; x++) if (longest[x] === chain) chains += ways[x]!;
  }

  const partings = finitePartings(a, whole.first, comp);
  if (partings === Infinity) {
    return {
      reason: "two ways of matching the same text meet and part again in a loop, so matching can take exponential time",
      chain: 0,
      chains: 0,
      partings: 0,
    };
  }

  // Lookarounds run as patterns of their own, at positions the rest of the pattern reaches.
  let lookChain = 0, lookChains = 1, lookPartings = 0;
  for (const look of a.looks) {
    const v = analyseNode(look, body, budget);
    if (v.reason !== null) return v;
    if (v.chain > lookChain) [lookChain, lookChains] = [v.chain, v.chains];
    lookPartings = Math.max(lookPartings, v.partings);
  }
  return { reason: null, chain: chain + lookChain, chains: Math.max(chains, 1) * lookChains, partings: partings + lookPartings };
}

/**
 * 4. Finite ambiguity: two ways of matching that part from a shared position, both leaving that
 *    position's loop (or from positions in no loop: `(a|a)(a|a)...`, overlapping optional parts, bounded
 *    repetitions), and may meet again later; each such parting along one text multiplies the ways a
 *    failing match is tried. Returns the most partings along one path of the graph of position pairs
 *    (a heaviest path: the pair graph's components are condensed as they complete, sinks first), or
 *    Infinity if a parting lies on a cycle.
 */
function finitePartings(a: PositionAutomaton, first: Counts, comp: Int32Array): number {
  const n = a.sets.length;
  const START = n;
  const width = n + 1;
  const succ = (p: number): Iterable<[number, number]> => (p === START ? first : a.follow[p]!);
  const compOf = (p: number) => (p === START ? -1 : comp[p]!);
  // Partings into loops are where the polynomial chains slide; only partings outside loops count here.
  const looped = new Uint8Array(n);
  for (let p = 0; p < n; p++) for (const q of a.follow[p]!.keys()) if (comp[q] === comp[p]) looped[p] = looped[q] = 1;
  const edges = (s: number): [number, number][] => {
    const p = Math.floor(s / width), q = s % width;
    const out: [number, number][] = [];
    for (const [p2, wp] of succ(p)) {
      for (const [q2, wq] of succ(q)) {
        a.tick();
        if (p2 === q2) {
          // The same step twice from one position: parallel ways to take it.
          out.push([p2 * width + q2, p === q && wp >= 2 && wq >= 2 ? 1 : 0]);
        } else if (intersects(a.sets[p2]!, a.sets[q2]!)) {
          const parting = p === q && !looped[p2] && !looped[q2] && compOf(p2) !== compOf(p) && compOf(q2) !== compOf(p);
          out.push([Math.min(p2, q2) * width + Math.max(p2, q2), parting ? 1 : 0]);
        }
      }
    }
    return out;
  };
  // Iterative Tarjan over the pair states reachable from the start, with the heaviest path per component.
  const index = new Map<number, number>(), low = new Map<number, number>(), compId = new Map<number, number>();
  // Each open state's edges, kept until its component completes (computed once).
  const open = new Map<number, [number, number][]>();
  const edgesOf = (s: number) => {
    let e = open.get(s);
    if (!e) open.set(s, (e = edges(s)));
    return e;
  };
  const best: number[] = [];
  const stack: number[] = [];
  const onStack = new Set<number>();
  let next = 0;
  const root = START * width + START;
  const work: { s: number; out: [number, number][]; k: number }[] = [{ s: root, out: edgesOf(root), k: 0 }];
  index.set(root, next);
  low.set(root, next++);
  stack.push(root);
  onStack.add(root);
  while (work.length) {
    const top = work[work.length - 1]!;
    if (top.k < top.out.length) {
      const [t] = top.out[top.k++]!;
      if (!index.has(t)) {
        index.set(t, next);
        low.set(t, next++);
        stack.push(t);
        onStack.add(t);
        work.push({ s: t, out: edgesOf(t), k: 0 });
      } else if (onStack.has(t)) {
        low.set(top.s, Math.min(low.get(top.s)!, index.get(t)!));
      }
      continue;
    }
    work.pop();
    if (work.length) {
      const u = work[work.length - 1]!.s;
      low.set(u, Math.min(low.get(u)!, low.get(top.s)!));
    }
    if (low.get(top.s) === index.get(top.s)) {
      const id = best.length;
      const members: number[] = [];
      let w: number;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        compId.set(w, id);
        members.push(w);
      } while (w !== top.s);
      let b = 0;
      for (const m of members) {
        const out = edgesOf(m);
        open.delete(m);
        for (const [t, weight] of out) {
          const c = compId.get(t)!;
          if (c === id) {
            if (weight > 0) return Infinity;
          } else {
            b = Math.max(b, weight + best[c]!);
          }
        }
      }
      best.push(b);
    }
  }
  return best[best.length - 1]!;
}

function predecessorsOf(a: PositionAutomaton): number[][] {
  const pred: number[][] = a.sets.map(() => []);
  a.follow.forEach((f, p) => {
    for (const q of f.keys()) pred[q]!.push(p);
  });
  return pred;
}

/**
 * Whether loop components X and Y form a link of a polynomial chain: for some p in X and q in Y, a text
 * that leads p to p, p to q, and q to q (a search over triples of positions).
 */
function chained(a: PositionAutomaton, xs: number[], ys: number[], comp: Int32Array, toY: Uint8Array): boolean {
  const n = a.sets.length;
  const cx = comp[xs[0]!]!, cy = comp[ys[0]!]!;
  const inter = new Map<number, CharSet>();
  const pairSet = (p: number, q: number): CharSet => {
    const key = p * n + q;
    let s = inter.get(key);
    if (!s) inter.set(key, (s = intersect(a.sets[p]!, a.sets[q]!)));
    return s;
  };
  for (const p of xs) {
    for (const q of ys) {
      a.tick();
      const key = (x: number, y: number, z: number) => (x * n + y) * n + z;
      const goal = key(p, q, q);
      const seen = new Set<number>([key(p, p, q)]);
      const queue: [number, number, number][] = [[p, p, q]];
      while (queue.length) {
        const [x, y, z] = queue.pop()!;
        for (const x2 of a.follow[x]!.keys()) {
          if (comp[x2] !== cx) continue;
          for (const z2 of a.follow[z]!.keys()) {
            if (comp[z2] !== cy) continue;
            const xz = pairSet(x2, z2);
            if (xz.length === 0) continue;
            for (const y2 of a.follow[y]!.keys()) {
              a.tick();
              if (!toY[y2] || !intersects(xz, a.sets[y2]!)) continue;
              const k = key(x2, y2, z2);
              if (k === goal) return true;
              if (!seen.has(k)) {
                seen.add(k);
                queue.push([x2, y2, z2]);
              }
            }
          }
        }
      }
    }
  }
  return false;
}

/** The screen's measures of a pattern (for tests and diagnostics); reason null when it is accepted. */
export function regexComplexity(src: string): Verdict {
  const { body, flags } = translate(src);
  const node = new PatternParser(body, flags.includes("i"), flags.includes("s"), body.includes("(?<")).parse();
  return analyseNode(node, body, { work: 0 });
}

function analysePattern(body: string, flags: string): string | null {
  let node: RegexNode;
  try {
    node = new PatternParser(body, flags.includes("i"), flags.includes("s"), body.includes("(?<")).parse();
  } catch (e) {
    if (!(e instanceof SyntaxError)) throw e;
    return `it uses syntax the safety check cannot read (${e.message})`;
  }
  try {
    const v = analyseNode(node, body, { work: 0 });
    if (v.reason !== null) return v.reason;
    if (v.chain > MAX_REPETITION_CHAIN) {
      return (
        `it chains ${v.chain} unbounded repetitions that can match the same text (such as ".*a.*b.*c.*d.*e"), so matching ` +
        `can take time growing with the name's length to the power ${v.chain}; at most ${MAX_REPETITION_CHAIN} are accepted`
      );
    }
    // About n^chain ways from the chain, times 2^partings: the two together are bounded too.
    if (v.partings > MAX_PARTINGS || CHAIN_WEIGHT * v.chain + Math.log2(Math.max(v.chains, 1)) + v.partings > MAX_COST) {
      return (
        `the same text can be matched in about 2^${v.partings} different ways (overlapping alternatives, optional parts ` +
        `or bounded repetitions in a row, such as "(a|a)(a|a)(a|a)..." or "a?a?a?aaa")` +
        (v.chain > 0 ? ` within ${v.chains > 1 ? `${v.chains} chains of ` : ""}${v.chain} overlapping unbounded repetitions` : "") +
        ", so a failing match can take very long"
      );
    }
    return null;
  } catch (e) {
    if (e instanceof ScreenTooComplex) return "it is too large or complex to check that it matches in reasonable time";
    throw e;
  }
}
