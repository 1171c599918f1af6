// Path routing under /ui: links marked data-link change the view without a page load; the gateway
// answers index.html for every /ui path, so a reload or a shared link lands on the same view.

const routes = [];
let onChange = () => {};

/** route("/ui/batches/:id", view): a path pattern and its view. */
export function route(pattern, view) {
  const names = [];
  const regex = new RegExp("^" + pattern.replace(/:(\w+)/g, (_, n) => { names.push(n); return "([^/]+)"; }) + "/?$");
  routes.push({ regex, names, view });
}

export function match(path) {
  for (const r of routes) {
    const m = r.regex.exec(path);
    if (!m) continue;
    try {
      return { view: r.view, params: Object.fromEntries(r.names.map((n, i) => [n, decodeURIComponent(m[i + 1])])) };
    } catch {
      return null;  // a malformed escape (%E0): no such page
    }
  }
  return null;
}

export function navigate(url, { replace = false } = {}) {
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  onChange();
}

export function start(render) {
  onChange = render;
  window.addEventListener("popstate", render);
  document.addEventListener("click", (e) => {
    const link = e.target.closest("a[data-link]");
    if (!link || e.metaKey || e.ctrlKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault();
    navigate(link.getAttribute("href"));
  });
  render();
}
