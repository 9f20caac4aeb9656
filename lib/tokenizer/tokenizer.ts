// A model directory's tokenizer as transformers' PreTrainedTokenizerFast reads it: tokenizer.json through
// @huggingface/tokenizers (the tokenizers library's pipeline in JS: normalizer, pre-tokenizer, BPE /
// WordPiece / Unigram model, post-processor, decoder) and tokenizer_config.json for the special tokens and
// the chat template, which @huggingface/jinja renders as transformers' apply_chat_template does.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Tokenizer as HFTokenizer } from "@huggingface/tokenizers";
import { Template } from "@huggingface/jinja";
import { describe, optionsArg, peftError, typeError } from "../errors.js";

export interface ChatMessage {
  role: string;
  content: string;
}

export interface EncodeOptions {
  /** Add the special tokens the post-processor adds (bos for Llama), as transformers does by default. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Leave out special tokens (bos, eos, padding). */
  skipSpecialTokens?: boolean;
}

export interface ChatTemplateOptions {
  /** End with the assistant turn's header so the model writes the reply (default true). */
  addGenerationPrompt?: boolean;
  /** A template other than tokenizer_config.json's chat_template. */
  chatTemplate?: string;
}

function readJson(file: string, what: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw peftError("ERR_CONFIG", `Tokenizer.fromPretrained: cannot read ${what} ${file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  try {
    const v = JSON.parse(text);
    if (v === null || typeof v !== "object" || Array.isArray(v)) throw new Error("not a JSON object");
    return v;
  } catch (e) {
    throw peftError("ERR_CONFIG", `Tokenizer.fromPretrained: ${file} is not a valid ${what} (${(e as Error).message})`);
  }
}

/** A special token entry of tokenizer_config.json: a string or an AddedToken object with `content`. */
function tokenText(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") return (v as { content: string }).content;
  return null;
}

export class Tokenizer {
  readonly #tok: HFTokenizer;
  readonly config: Record<string, unknown>;
  readonly chatTemplate: string | null;

  constructor(tokenizerJson: Record<string, unknown>, tokenizerConfig: Record<string, unknown> = {}) {
    this.config = tokenizerConfig;
    try {
      this.#tok = new HFTokenizer(tokenizerJson, tokenizerConfig);
    } catch (e) {
      throw peftError("ERR_CONFIG", `Tokenizer: tokenizer.json is not one the tokenizers library can build (${(e as Error).message})`);
    }
    const t = tokenizerConfig.chat_template;
    // Newer files may list named templates [{name, template}]; "default" is the one apply_chat_template uses.
    if (typeof t === "string") this.chatTemplate = t;
    else if (Array.isArray(t)) this.chatTemplate = (t.find((x) => x?.name === "default")?.template as string | undefined) ?? null;
    else this.chatTemplate = null;
  }

  /** Reads `dir`/tokenizer.json and (if present) tokenizer_config.json and chat_template.jinja. */
  static fromPretrained(dir: string): Tokenizer {
    if (typeof dir !== "string") throw typeError(`Tokenizer.fromPretrained: dir must be a string, got ${describe(dir)}`);
    const file = join(dir, "tokenizer.json");
    if (!existsSync(file)) throw peftError("ERR_CONFIG", `Tokenizer.fromPretrained: ${dir} has no tokenizer.json (only fast tokenizers are supported)`);
    const tj = readJson(file, "tokenizer.json");
    const cfgFile = join(dir, "tokenizer_config.json");
    const cfg = existsSync(cfgFile) ? readJson(cfgFile, "tokenizer_config.json") : {};
    const jinja = join(dir, "chat_template.jinja");
    if (cfg.chat_template === undefined && existsSync(jinja)) cfg.chat_template = readFileSync(jinja, "utf8");
    return new Tokenizer(tj, cfg);
  }

  #special(key: string): string | null {
    return tokenText(this.config[key]);
  }

  #idOf(key: string): number | null {
    const t = this.#special(key);
    return t === null ? null : (this.#tok.token_to_id(t) ?? null);
  }

  get bosToken(): string | null { return this.#special("bos_token"); }
  get eosToken(): string | null { return this.#special("eos_token"); }
  get bosTokenId(): number | null { return this.#idOf("bos_token"); }
  get eosTokenId(): number | null { return this.#idOf("eos_token"); }
  get padTokenId(): number | null { return this.#idOf("pad_token"); }

  /** Vocabulary size including added tokens. */
  get vocabSize(): number {
    return this.#tok.get_vocab(true).size;
  }

  tokenToId(token: string): number | null {
    return this.#tok.token_to_id(token) ?? null;
  }

  idToToken(id: number): string | null {
    return this.#tok.id_to_token(id) ?? null;
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    if (typeof text !== "string") throw typeError(`Tokenizer.encode: text must be a string, got ${describe(text)}`);
    const opts = optionsArg(options, "Tokenizer.encode");
    return this.#tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids;
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    if (!Array.isArray(ids) || !ids.every((i) => Number.isInteger(i) && i >= 0)) throw typeError(`Tokenizer.decode: ids must be an array of token ids, got ${describe(ids)}`);
    const opts = optionsArg(options, "Tokenizer.decode");
    const clean = this.config.clean_up_tokenization_spaces;
    return this.#tok.decode([...ids], { skip_special_tokens: opts.skipSpecialTokens ?? false, clean_up_tokenization_spaces: typeof clean === "boolean" ? clean : false });
  }

  /** The conversation rendered by the chat template (the text, with bos etc. as the template writes them). */
  applyChatTemplate(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    const opts = optionsArg(options, "Tokenizer.applyChatTemplate");
    if (!Array.isArray(messages) || !messages.every((m) => m && typeof m.role === "string" && typeof m.content === "string"))
      throw typeError(`Tokenizer.applyChatTemplate: messages must be an array of {role, content} strings, got ${describe(messages)}`);
    const source = opts.chatTemplate ?? this.chatTemplate;
    if (source === null) throw peftError("ERR_CONFIG", "Tokenizer.applyChatTemplate: tokenizer_config.json has no chat_template (pass options.chatTemplate)");
    let template: Template;
    try {
      template = new Template(source);
    } catch (e) {
      throw peftError("ERR_CONFIG", `Tokenizer.applyChatTemplate: the chat template does not parse (${(e as Error).message})`);
    }
    const specials = Object.fromEntries(["bos_token", "eos_token", "unk_token", "pad_token"].map((k) => [k, this.#special(k) ?? ""]));
    return template.render({ messages, add_generation_prompt: opts.addGenerationPrompt ?? true, ...specials });
  }
}
