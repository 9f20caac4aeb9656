export { Tokenizer, type ChatMessage, type EncodeOptions, type DecodeOptions, type ChatTemplateOptions } from "./tokenizer.js";
