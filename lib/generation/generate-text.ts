// The common case in one call: text (or chat messages, through the tokenizer's chat template) in, the
// model's continuation as text out, with the tokenizer of the directory the model was loaded from.
import { optionsArg, peftError, typeError, describe } from "../errors.js";
import { Tokenizer, type ChatMessage } from "../tokenizer/tokenizer.js";
import { causalLMOf, streamTokens, type CausalLMLike, type GenerateOptions } from "./generate.js";

export interface GenerateTextOptions extends GenerateOptions {
  /** Default: the tokenizer.json of the directory fromPretrained read. */
  tokenizer?: Tokenizer;
  /** Called with each new piece of text as it is decoded. */
  onText?: (piece: string) => void;
}

const tokenizers = new WeakMap<object, Tokenizer>();

/** The tokenizer of the model's directory, read once per model. */
export function tokenizerOf(model: CausalLMLike, op: string): Tokenizer {
  const lm = causalLMOf(model, op);
  let tok = tokenizers.get(lm);
  if (!tok) {
    if (lm.nameOrPath === null) throw peftError("ERR_STATE", `${op}: the model was not loaded from a directory; pass options.tokenizer`);
    tok = Tokenizer.fromPretrained(lm.nameOrPath);
    tokenizers.set(lm, tok);
  }
  return tok;
}

/**
 * The continuation of `prompt` as text, special tokens left out. A string is encoded with the tokenizer's
 * special tokens (bos for Llama); messages are rendered by the chat template first, which writes its own.
 */
export async function generateText(model: CausalLMLike, prompt: string | readonly ChatMessage[], options: GenerateTextOptions = {}): Promise<string> {
  const op = "generateText";
  const opts = optionsArg(options, op);
  const tok = opts.tokenizer ?? tokenizerOf(model, op);
  if (!(tok instanceof Tokenizer)) throw typeError(`${op}: tokenizer must be a Tokenizer, got ${describe(tok)}`);
  let ids: number[];
  if (typeof prompt === "string") ids = tok.encode(prompt);
  else if (Array.isArray(prompt)) ids = tok.encode(tok.applyChatTemplate(prompt), { addSpecialTokens: false });
  else throw typeError(`${op}: prompt must be a string or an array of chat messages, got ${describe(prompt)}`);
  const { tokenizer: _t, onText, ...gen } = opts;
  if (gen.eosTokenId === undefined && !causalLMOf(model, op).generationDefaults?.eosTokenId.length && tok.eosTokenId !== null) gen.eosTokenId = tok.eosTokenId;
  const out: number[] = [];
  let text = "";
  for await (const id of streamTokens(model, ids, gen)) {
    out.push(id);
    // Decoding the whole tail each time keeps multi-token characters and word-initial spaces right.
    const now = tok.decode(out, { skipSpecialTokens: true });
    if (onText && now.length > text.length) onText(now.slice(text.length));
    text = now;
  }
  return text;
}
