// The fenced code blocks of a Markdown file, each with its language, the heading above it and whether it
// carries the visible no-run marker (a first line `// not run: <why>` or `# not run: <why>`).
export interface CodeBlock {
  index: number;
  lang: string;
  code: string;
  heading: string;
  line: number;
  noRun: string | null;
}

export function codeBlocks(markdown: string): CodeBlock[] {
  const out: CodeBlock[] = [];
  const lines = markdown.split("\n");
  let heading = "(top)";
  for (let i = 0; i < lines.length; i++) {
    const h = /^#{1,6}\s+(.*)$/.exec(lines[i]);
    if (h) heading = h[1];
    const open = /^```(\S*)\s*$/.exec(lines[i]);
    if (!open) continue;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && !/^```\s*$/.test(lines[i]); i++) body.push(lines[i]);
    const code = body.join("\n") + "\n";
    const marker = /^(?:\/\/|#)\s*not run:\s*(.+)$/i.exec(body[0] ?? "");
    out.push({ index: out.length, lang: open[1] || "text", code, heading, line: start + 1, noRun: marker ? marker[1] : null });
  }
  return out;
}
