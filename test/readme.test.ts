// Every code block of the README runs as written, in order, in a fresh project that has node-peft
// installed (a link to this package, so `import ... from "node-peft"` goes through its exports and dist/)
// and, as example files, the fixture checkpoint (model.safetensors) and its LoRA adapter (model-adapter/).
// TypeScript blocks are type-checked (strict) and run compiled; blocks marked `not run: <why>` are only
// type-checked (TypeScript) or parsed (JavaScript, shell).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { spawnSync } from "node:child_process";
import { chmodSync, cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { root } from "./helpers/child.js";
import { FIXTURE_DIR } from "./helpers/fixtures.js";
import { codeBlocks, type CodeBlock } from "./helpers/readme-blocks.js";

const readme = readFileSync(join(root, "README.md"), "utf8");
const blocks = codeBlocks(readme);
const dir = mkdtempSync(join(tmpdir(), "node-peft-readme-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function fileOf(b: CodeBlock): string {
  if (b.lang === "ts") return `block-${b.index}.ts`;
  if (b.lang === "js") return /\brequire\(/.test(b.code) ? `block-${b.index}.cjs` : `block-${b.index}.mjs`;
  if (b.lang === "sh") return `block-${b.index}.sh`;
  throw new Error(`README line ${b.line}: a code block in ${JSON.stringify(b.lang)}; the README test runs ts, js and sh`);
}

function run(cmd: string, args: string[]) {
  const env = { ...process.env, PATH: `${join(dir, "node_modules", ".bin")}:${process.env.PATH}`, NODE_PEFT_CUDA: process.env.NODE_PEFT_CUDA ?? "emu" };
  const r = spawnSync(cmd, args, { cwd: dir, encoding: "utf8", timeout: 120_000, env });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

beforeAll(() => {
  mkdirSync(join(dir, "node_modules", ".bin"), { recursive: true });
  symlinkSync(root, join(dir, "node_modules", "node-peft"));
  symlinkSync(join(root, "node_modules", "@types"), join(dir, "node_modules", "@types"));
  const bin = join(dir, "node_modules", ".bin", "node-peft");
  writeFileSync(bin, `#!/bin/sh\nexec "${process.execPath}" "${join(root, "dist", "cli.js")}" "$@"\n`);
  chmodSync(bin, 0o755);
  writeFileSync(join(dir, "package.json"), JSON.stringify({ name: "readme-examples", private: true, type: "module" }));
  cpSync(join(FIXTURE_DIR, "base_model.safetensors"), join(dir, "model.safetensors"));
  cpSync(join(FIXTURE_DIR, "adapter"), join(dir, "model-adapter"), { recursive: true });
  for (const b of blocks) writeFileSync(join(dir, fileOf(b)), b.code);
  writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({
    compilerOptions: {
      target: "ES2022", lib: ["ES2022", "ESNext.Disposable"], module: "NodeNext", moduleResolution: "NodeNext", moduleDetection: "force",
      strict: true, types: ["node"], outDir: "out", rootDir: ".", skipLibCheck: true, // a type error fails its own test, the other blocks still run
    },
    include: ["block-*.ts"],
  }));
});

describe("README", () => {
  it("has code blocks, the first one plain JavaScript that runs in an .mjs file", () => {
    expect(blocks.length).toBeGreaterThan(5);
    const first = blocks.find((b) => b.lang === "js" || b.lang === "ts");
    expect(first?.lang).toBe("js");
    expect(first?.code).not.toMatch(/\busing\b/);
  });

  it("type-checks every TypeScript block (strict)", () => {
    if (!blocks.some((b) => b.lang === "ts")) return;
    const r = run(process.execPath, [join(root, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"]);
    expect(r.out).toBe("");
    expect(r.code).toBe(0);
  });

  it("parses the blocks marked not run", () => {
    for (const b of blocks.filter((x) => x.noRun !== null && x.lang !== "ts")) {
      const r = b.lang === "sh" ? run("bash", ["-n", fileOf(b)]) : run(process.execPath, ["--check", fileOf(b)]);
      expect(r.code, `README line ${b.line}: ${r.out}`).toBe(0);
    }
  });

  for (const b of blocks.filter((x) => x.noRun === null))
    it(`runs the ${b.lang} block at line ${b.line} (${b.heading})`, () => {
      const file = fileOf(b);
      const r =
        b.lang === "sh" ? run("bash", ["-e", file])
        : b.lang === "ts" ? run(process.execPath, [join("out", file.replace(/\.ts$/, ".js"))])
        : run(process.execPath, [file]);
      expect(r.code, `README line ${b.line}:\n${r.out}`).toBe(0);
    });

  it("lists every error code the library and the addon throw", () => {
    const errors = readme.slice(readme.indexOf("\n## Errors"));
    const codes = new Set<string>();
    const walk = (d: string) => {
      for (const e of readdirSync(d, { withFileTypes: true })) {
        const p = join(d, e.name);
        if (e.isDirectory()) walk(p);
        else if (/\.(ts|cc|h)$/.test(e.name))
          // Codes given to an error: peftError/PeftError/fail/PeftException(kind, ...) arguments and `code` assignments.
          for (const m of readFileSync(p, "utf8").matchAll(/(?:peftError\(|PeftError\(|fail\(|PeftException\([^,()]*,\s*|code\s*[=:]\s*)"((?:ERR|ABORT)_[A-Z_]+)"/g)) codes.add(m[1]);
      }
    };
    walk(join(root, "lib"));
    walk(join(root, "native"));
    expect(codes.size).toBeGreaterThan(10);
    for (const c of codes) expect(errors, `${c} is missing from the README's error list`).toContain(`\`${c}\``);
  });
});
