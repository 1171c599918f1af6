// The console's entry point: who is signed in, the navigation, and which view shows.

import { api, auth, ApiError } from "./api.js";
import { h, replace, errorBox } from "./dom.js";
import { route, match, navigate, start } from "./router.js";
import * as signin from "./views/signin.js";
import * as batches from "./views/batches.js";
import * as batch from "./views/batch.js";
import * as files from "./views/files.js";
import * as deployments from "./views/deployments.js";
import * as admin from "./views/admin.js";

route("/ui", batches);
route("/ui/batches/:id", batch);
route("/ui/files", files);
route("/ui/deployments", deployments);
route("/ui/admin", admin);
route("/ui/signin", signin);

const ctx = { session: null, navigate, signOut };
let stopView = null;

async function loadSession() {
  try {
    ctx.session = await api("/ui/api/session");
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 401) throw err;
    ctx.session = null;
  }
  showChrome();
}

function showChrome() {
  const s = ctx.session;
  document.getElementById("nav").hidden = !s;
  document.getElementById("nav-admin").hidden = !(s && s.admin);
  const who = document.getElementById("who");
  if (!s) { replace(who); return; }
  const label = s.admin ? (s.open_mode && !auth.key ? "Admin (open local mode)" : "Admin") : `Team ${s.team?.name ?? "?"}`;
  replace(who, h("span.who-name", {}, label),
    auth.key ? h("button.link", { type: "button", onclick: signOut }, "Sign out") : null);
}

function signOut() {
  auth.key = null;
  ctx.session = null;
  showChrome();
  navigate("/ui/signin");
}

async function render() {
  if (stopView) { stopView(); stopView = null; }
  const main = document.getElementById("main");
  const path = location.pathname;
  if (!ctx.session && path !== "/ui/signin") {
    try { await loadSession(); } catch (err) { replace(main, errorBox(err)); return; }
    if (!ctx.session) { navigate(`/ui/signin?next=${encodeURIComponent(path + location.search)}`, { replace: true }); return; }
  }
  const found = match(path) || { view: null };
  for (const a of document.querySelectorAll("[data-nav]")) {
    const current = found.view && a.dataset.nav === found.view.name;
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  if (!found.view) {
    replace(main, h("h1", {}, "Not found"), h("p", {}, "There is no such page in the console."));
    return;
  }
  document.title = `${found.view.title} · batchgate`;
  replace(main, h("p.muted", {}, "Loading…"));
  try {
    stopView = (await found.view.render(main, found.params, ctx)) || null;
  } catch (err) {
    replace(main, h("h1", {}, found.view.title), errorBox(err));
  }
  main.focus({ preventScroll: true });
}

ctx.signedIn = async () => { await loadSession(); return ctx.session; };

window.addEventListener("batchgate:unauthorized", () => {
  if (ctx.session && auth.key) signOut();  // the key was revoked while signed in
});

start(render);
