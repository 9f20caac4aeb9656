// A JSON-lines file of training texts ({"text": ...} per line) tokenized into padded causal-LM batches:
// bos (as the tokenizer adds it) + text + eos, cut to maxLength, padded on the right with labels -100
// where there is no token.
import { readFileSync } from "node:fs";
import { Tensor } from "../../dist/index.js";

export function readTexts(file) {
  const lines = readFileSync(file, "utf8").split("\n").map((l) => l.trim()).filter(Boolean);
  return lines.map((l, i) => {
    let row;
    try {
      row = JSON.parse(l);
    } catch (e) {
      throw new Error(`${file}:${i + 1}: not JSON (${e.message})`);
    }
    if (typeof row?.text !== "string") throw new Error(`${file}:${i + 1}: expected an object with a "text" string`);
    return row.text;
  });
}

export function tokenizeTexts(tokenizer, texts, maxLength) {
  const eos = tokenizer.eosTokenId;
  return texts.map((t) => [...tokenizer.encode(t), ...(eos === null ? [] : [eos])].slice(0, maxLength));
}

/** input_ids, attention_mask and labels [B, T] for the sequences `rows` (T = the longest). */
export function makeBatch(rows, padId) {
  const T = Math.max(...rows.map((r) => r.length));
  const ids = [], mask = [], labels = [];
  for (const r of rows)
    for (let t = 0; t < T; t++) {
      ids.push(t < r.length ? r[t] : padId);
      mask.push(t < r.length ? 1 : 0);
      labels.push(t < r.length ? r[t] : -100);
    }
  const shape = [rows.length, T];
  return { inputIds: Tensor.fromArray(ids, shape, "i64"), attentionMask: Tensor.fromArray(mask, shape, "i64"), labels: Tensor.fromArray(labels, shape, "i64"), tokens: mask.reduce((a, b) => a + b, 0) };
}
