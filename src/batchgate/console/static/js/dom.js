// Building DOM without innerHTML (every value from the API is text, never markup) and formatting.

/** h('a.cls', {href}, child, …): an element; attributes starting with "on" become listeners. */
export function h(tag, attrs = {}, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name);
  if (classes.length) el.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function fmtTime(unix) {
  if (unix === null || unix === undefined) return "—";
  return new Date(unix * 1000).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export function fmtNumber(n) {
  return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US");
}

export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB"];
  let value = n / 1024, i = 0;
  while (value >= 1024 && i < units.length - 1) { value /= 1024; i++; }
  return `${value.toFixed(1)} ${units[i]}`;
}

export function fmtRate(perSecond) {
  if (!perSecond) return "—";
  return perSecond >= 1 ? `${perSecond.toFixed(1)}/s` : `${(perSecond * 60).toFixed(1)}/min`;
}

export function fmtUsd(x) {
  return x === null || x === undefined ? "—" : `$${x < 0.01 && x > 0 ? x.toFixed(6) : x.toFixed(4)}`;
}

export function statusBadge(status) {
  return h(`span.badge.s-${status}`, {}, status.replace("_", " "));
}

/** The completed / failed / pending bar, with its numbers as text for screen readers and small screens. */
export function progressBar(counts) {
  const total = counts.total || 0;
  const pct = (n) => (total ? (100 * n) / total : 0);
  const bar = h("div.bar", { role: "img", "aria-label": progressText(counts) });
  for (const [kind, n] of [["done", counts.completed], ["failed", counts.failed]]) {
    const seg = h(`span.seg.${kind}`);
    seg.style.width = `${pct(n)}%`;  // CSSOM, which the CSP allows (no style attributes)
    bar.append(seg);
  }
  return h("div.progress", {}, bar, h("span.progress-text", {}, progressText(counts)));
}

export function progressText(c) {
  return `${fmtNumber(c.completed)} completed, ${fmtNumber(c.failed)} failed, ${fmtNumber(c.pending)} pending of ${fmtNumber(c.total)}`;
}

let toastTimer = null;
export function toast(message, kind = "info") {
  const el = document.getElementById("toast");
  el.className = `toast show ${kind}`;
  el.textContent = message;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.className = "toast"; }, 5000);
}

/** A modal confirmation (<dialog>: focus trapped, Escape cancels); resolves true on confirm. */
export function confirmDialog(title, text, confirmLabel) {
  return new Promise((resolve) => {
    const dialog = h("dialog.confirm", { "aria-labelledby": "confirm-title" },
      h("h2", { id: "confirm-title" }, title), h("p", {}, text),
      h("div.actions", {},
        h("button.secondary", { type: "button", value: "no", onclick: () => dialog.close("no") }, "Keep it"),
        h("button.danger", { type: "button", value: "yes", onclick: () => dialog.close("yes") }, confirmLabel)));
    dialog.addEventListener("close", () => { dialog.remove(); resolve(dialog.returnValue === "yes"); });
    document.body.append(dialog);
    dialog.showModal();
  });
}

export function errorBox(err) {
  return h("div.error", { role: "alert" }, err.message || String(err));
}
