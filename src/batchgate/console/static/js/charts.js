// Small per-minute bar charts as inline SVG: no library, nothing fetched.

const NS = "http://www.w3.org/2000/svg";
const W = 300, H = 90, PAD_L = 34, PAD_B = 16, PAD_T = 6;

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function short(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(Math.round(n * 10) / 10);
}

/** One bar per minute, oldest left. `values` has 60 numbers; `unit` names them for the text alternative. */
export function minuteChart(title, values, unit) {
  const max = Math.max(...values, 0);
  const top = max > 0 ? max : 1;
  const latest = values[values.length - 1] ?? 0;
  const summary = `${title}: latest minute ${short(latest)} ${unit}, peak ${short(max)} ${unit} over the last hour`;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": summary });
  root.append(svg("title", {}, summary));
  const plotW = W - PAD_L, plotH = H - PAD_B - PAD_T;
  root.append(svg("line", { x1: PAD_L, y1: PAD_T + plotH, x2: W, y2: PAD_T + plotH, class: "axis" }));
  root.append(svg("text", { x: PAD_L - 4, y: PAD_T + 8, class: "tick", "text-anchor": "end" }, short(max)));
  root.append(svg("text", { x: PAD_L - 4, y: PAD_T + plotH, class: "tick", "text-anchor": "end" }, "0"));
  root.append(svg("text", { x: PAD_L, y: H - 3, class: "tick" }, "−60 min"));
  root.append(svg("text", { x: W, y: H - 3, class: "tick", "text-anchor": "end" }, "now"));
  const step = plotW / values.length;
  values.forEach((v, i) => {
    if (v <= 0) return;
    const height = Math.max(1, (v / top) * plotH);
    root.append(svg("rect", { x: PAD_L + i * step + 0.5, y: PAD_T + plotH - height, width: Math.max(1, step - 1),
      height, class: "barfill" }));
  });
  const figure = document.createElement("figure");
  figure.className = "chart-box";
  const caption = document.createElement("figcaption");
  caption.textContent = `${title} (${short(latest)} now)`;
  figure.append(caption, root);
  return figure;
}
