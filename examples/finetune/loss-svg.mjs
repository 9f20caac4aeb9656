// The loss curve as a small self-contained SVG picture (no plotting dependency): steps on x, loss on y,
// with the first and last values and the axis range written beside it.
export function lossCurveSvg(losses, { width = 640, height = 320, title = "training loss" } = {}) {
  const pad = { l: 56, r: 16, t: 28, b: 36 };
  const w = width - pad.l - pad.r, h = height - pad.t - pad.b;
  const finite = losses.filter(Number.isFinite);
  const hi = finite.length ? Math.max(...finite) : 1, lo = finite.length ? Math.min(0, ...finite) : 0;
  const x = (i) => pad.l + (losses.length > 1 ? (i / (losses.length - 1)) * w : w / 2);
  const y = (v) => pad.t + h - ((v - lo) / (hi - lo || 1)) * h;
  const points = losses.map((v, i) => (Number.isFinite(v) ? `${x(i).toFixed(1)},${y(v).toFixed(1)}` : null)).filter(Boolean).join(" ");
  const esc = (s) => String(s).replace(/[<>&"]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;" })[c]);
  const fmt = (v) => (Number.isFinite(v) ? v.toFixed(4) : "n/a");
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">
  <rect width="100%" height="100%" fill="white"/>
  <text x="${pad.l}" y="18" font-size="14">${esc(title)}: ${fmt(losses[0])} → ${fmt(losses[losses.length - 1])} over ${losses.length} steps</text>
  <line x1="${pad.l}" y1="${pad.t + h}" x2="${pad.l + w}" y2="${pad.t + h}" stroke="black"/>
  <line x1="${pad.l}" y1="${pad.t}" x2="${pad.l}" y2="${pad.t + h}" stroke="black"/>
  <text x="${pad.l - 6}" y="${pad.t + 4}" text-anchor="end">${hi.toFixed(2)}</text>
  <text x="${pad.l - 6}" y="${pad.t + h}" text-anchor="end">${lo.toFixed(2)}</text>
  <text x="${pad.l}" y="${height - 12}">step 1</text>
  <text x="${pad.l + w}" y="${height - 12}" text-anchor="end">step ${losses.length}</text>
  <polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="${points}"/>
</svg>
`;
}
