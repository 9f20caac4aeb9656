// A JSON config file (adapter_config.json, a model's config.json) read as one object: a file that cannot be
// read is ERR_CHECKPOINT, text that is not a JSON object is `invalid` (the caller's code), each naming the file.
import { readFile } from "node:fs/promises";
import { peftError, type PeftErrorCode } from "../errors.js";

export async function readJsonObject(path: string, what: string, invalid: PeftErrorCode = "ERR_CHECKPOINT"): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    throw peftError("ERR_CHECKPOINT", `${path}: cannot read the ${what} (${(e as Error).message})`);
  }
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    throw peftError(invalid, `${path}: not valid JSON (${(e as Error).message})`);
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) throw peftError(invalid, `${path}: expected a JSON object`);
  return obj as Record<string, unknown>;
}
