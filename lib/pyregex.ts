// Python `re` patterns as JS RegExps. PEFT configs carry Python regexes (target_modules as a string,
// exclude_modules, rank_pattern keys, layers_pattern), so a config written for Python must match the
// same module names here. The syntax the two share needs no change; this translates the Python-only
// spellings people actually use in these configs: named groups (?P<n>...) and (?P=n), the anchors \A
// and \Z, and leading global flags such as (?i).

const cache = new Map<string, RegExp>();

/**
 * Compile a Python pattern. "full" behaves like re.fullmatch (the whole string must match), "match" like
 * re.match (anchored at the start only). Throws SyntaxError for patterns JS cannot compile.
 */
export function pyRegex(src: string, mode: "full" | "match"): RegExp {
  const cacheKey = mode + "\0" + src;
  let re = cache.get(cacheKey);
  if (!re) {
    const { body, flags } = translate(src);
    re = new RegExp(mode === "full" ? `^(?:${body})$` : `^(?:${body})`, flags);
    cache.set(cacheKey, re);
  }
  return re;
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
