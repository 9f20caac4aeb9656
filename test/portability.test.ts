// The build on architectures other than x86-64: the ISA kernel files drop out and every x86-only construct
// left in a portable source sits behind PEFT_X86 (scripts/cross-check.sh compiles and runs that build).
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
// @ts-expect-error: a plain .mjs build script without types
import { listSources, isX86_64 } from "../scripts/list-sources.mjs";

const GROUPS = ["avx2", "avx512", "avx512bf16", "amx"];
// Headers, builtins and attributes that exist only on x86.
const X86_ONLY = /<(imm|emm|xmm|pmm|tmm|smm|nmm|wmm|x86|cpuid)[a-z]*\.h>|__m(128|256|512)|\b_mm(256|512)?_|__attribute__\(\(target\(|__asm__|\basm\s*\(/;
// A preprocessor condition that names the architecture guards what follows it.
const ARCH_GUARD = /^#\s*(if|elif)\b.*\b(PEFT_X86|EMU_ASM_SWITCH|__x86_64__|_M_X64|__aarch64__)\b/;

describe("portable build", () => {
  it("lists the ISA kernel files only for x86-64 targets", () => {
    for (const arch of ["x64", "x86_64", "AMD64"]) expect(isX86_64(arch)).toBe(true);
    for (const arch of ["arm64", "aarch64", "ppc64", "riscv64"]) {
      expect(isX86_64(arch)).toBe(false);
      for (const g of GROUPS) expect(listSources(g, arch)).toEqual([]);
      expect(listSources("base", arch)).toEqual(listSources("base", "x64"));
    }
    for (const g of GROUPS) expect(listSources(g, "x64").length).toBeGreaterThan(0);
  });

  it("keeps x86-only code in the portable sources behind PEFT_X86", () => {
    const offenders: string[] = [];
    for (const file of listSources("base", "arm64") as string[]) {
      const text = readFileSync(file, "utf8");
      // Track #if PEFT_X86 / #elif defined(__aarch64__) ... #else/#endif nesting line by line.
      const stack: boolean[] = [];
      text.split("\n").forEach((line, i) => {
        const t = line.trim();
        if (/^#\s*if/.test(t)) stack.push(ARCH_GUARD.test(t));
        else if (/^#\s*(else|elif)/.test(t) && stack.length) stack[stack.length - 1] = ARCH_GUARD.test(t);
        else if (/^#\s*endif/.test(t)) stack.pop();
        else if (!t.startsWith("//") && X86_ONLY.test(line) && !stack.includes(true) && !/^#\s*define/.test(t))
          offenders.push(`${file}:${i + 1}: ${t}`);
      });
    }
    expect(offenders).toEqual([]);
  });

  it("gives code that ISA kernel files share through a header internal linkage (one copy per file's flags)", () => {
    // An inline function with external linkage defined in a header that files of different ISA flags include
    // is folded by the linker into one copy, compiled with whichever file's flags came first: the AVX-512
    // kernels would run the scalar file's SSE2 code. Such headers put their definitions in `namespace {`.
    const groupsOf = new Map<string, Set<string>>();
    for (const g of ["base", ...GROUPS])
      for (const file of listSources(g, "x64") as string[])
        for (const m of readFileSync(file, "utf8").matchAll(/^#include "([a-z0-9_]+\.h)"/gm)) {
          const h = relative(process.cwd(), join(dirname(file), m[1]));
          groupsOf.set(h, (groupsOf.get(h) ?? new Set()).add(g));
        }
    const shared = [...groupsOf].filter(([, gs]) => gs.size > 1 && [...gs].some((g) => g !== "base")).map(([h]) => h);
    const offenders = shared.filter((h) => {
      const text = readFileSync(h, "utf8");
      // `static inline` is internal already; plain inline functions and templates are not.
      return /^(inline|template)\b/m.test(text) && !/namespace \{/.test(text);
    });
    expect(shared).toContain("native/cpu/int8_epilogue.h");
    expect(offenders).toEqual([]);
  });
});
