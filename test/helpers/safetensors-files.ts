// Building safetensors files by hand for tests: raw bytes from a header string, and temp directories.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** 8-byte little-endian length (`n`, default the header's UTF-8 length), the header bytes, then `data`. */
export function stFile(header: string | Uint8Array, data: Uint8Array | number = 0, n?: bigint): Buffer {
  const h = typeof header === "string" ? Buffer.from(header, "utf8") : header;
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(n ?? BigInt(h.length));
  return Buffer.concat([prefix, h, typeof data === "number" ? Buffer.alloc(data) : data]);
}

/** A JSON tensor entry. */
export function entry(dtype: string, shape: number[], begin: number, end: number): string {
  return `{"dtype":"${dtype}","shape":[${shape.join(",")}],"data_offsets":[${begin},${end}]}`;
}

/** A fresh directory under the OS temp dir; remove it with the returned cleanup. */
export function tempDir(prefix = "node-peft-st-"): { dir: string; file: (name: string, bytes?: Uint8Array) => string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return {
    dir,
    file: (name, bytes) => {
      const p = join(dir, name);
      if (bytes) writeFileSync(p, bytes);
      return p;
    },
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
