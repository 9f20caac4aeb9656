// The PEFT-format reference adapter with torch-computed expectations (see its README.md), kept in the repo.
import { fileURLToPath } from "node:url";

export const FIXTURE_DIR = fileURLToPath(new URL("../fixtures/peft-lora-example", import.meta.url));
