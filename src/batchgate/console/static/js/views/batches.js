// The batches list: filters, live progress, keyset pages (Older / Newer) that stay fast at any depth.

import { api, query } from "../api.js";
import { h, replace, fmtTime, fmtRate, fmtDuration, statusBadge, progressBar, errorBox } from "../dom.js";
import { every } from "../live.js";

export const name = "batches";
export const title = "Batches";

const FILTERS = ["status", "model", "team", "metadata"];

function select(id, label, options, value) {
  return [h("label", { for: id }, label),
    h("select", { id, name: id },
      h("option", { value: "" }, "Any"),
      options.map((o) => h("option", { value: o, selected: o === value }, o.replace("_", " "))))];
}

export async function render(main, _params, ctx) {
  const url = new URL(location.href);
  const filters = Object.fromEntries(FILTERS.map((f) => [f, url.searchParams.get(f) || ""]));
  const cursors = (url.searchParams.get("pages") || "").split(",").filter(Boolean);  // `after` of each page so far
  const teams = ctx.session.admin ? (await api("/admin/teams")).data.map((t) => t.name) : [];
  const admin = ctx.session.admin;

  const form = h("form.filters", {
    "aria-label": "Filter batches",
    onsubmit: (e) => {
      e.preventDefault();
      const data = new FormData(form);
      const next = Object.fromEntries(FILTERS.map((f) => [f, (data.get(f) || "").toString().trim()]));
      ctx.navigate(`/ui/${query(next)}`);
    },
  },
  h("div.field", {}, select("status", "Status", ctx.session.statuses.batch, filters.status)),
  h("div.field", {}, select("model", "Model", ctx.session.models, filters.model)),
  admin ? h("div.field", {}, select("team", "Team", teams, filters.team)) : null,
  h("div.field", {}, h("label", { for: "metadata" }, "Metadata"),
    h("input", { id: "metadata", name: "metadata", placeholder: "key=value", value: filters.metadata })),
  h("div.field.buttons", {}, h("button", { type: "submit" }, "Filter"),
    h("a.button.secondary", { href: "/ui/", "data-link": true }, "Clear")));

  const table = h("div.table-wrap");
  const pager = h("nav.pager", { "aria-label": "Pages" });
  replace(main, h("div.page-head", {}, h("h1", {}, "Batches"),
    h("a.button", { href: "/ui/files", "data-link": true }, "Upload and create a batch")), form, table, pager);

  const after = cursors[cursors.length - 1] || "";
  const listUrl = `/ui/api/batches${query({ ...filters, after, limit: 25 })}`;
  const pageUrl = (pages) => `/ui/${query({ ...filters, pages: pages.join(",") })}`;

  const draw = async () => {
    let page;
    try { page = await api(listUrl, { poll: true }); } catch (err) { replace(table, errorBox(err)); return; }
    replace(table, page.data.length ? batchTable(page.data, admin) : h("p.empty", {}, "No batches match."));
    replace(pager,
      h("a.button.secondary", { href: pageUrl(cursors.slice(0, -1)), "data-link": true, hidden: !cursors.length }, "← Newer"),
      h("span.muted", {}, `Page ${cursors.length + 1}`),
      h("a.button.secondary", { href: pageUrl([...cursors, page.last_id]), "data-link": true, hidden: !page.has_more }, "Older →"));
  };
  await draw();
  return every(2000, draw);
}

function batchTable(rows, admin) {
  const head = ["Batch", "Status", "Dialect", "Model", ...(admin ? ["Team"] : []), "Created", "Progress", "Rate", "ETA"];
  return h("table.list.batches", {},
    h("caption.sr-only", {}, "Batches, newest first"),
    h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((b) => h("tr", { dataset: { id: b.id, status: b.status } },
      h("td", { "data-label": "Batch" }, h("a.mono", { href: `/ui/batches/${b.id}`, "data-link": true }, b.id),
        b.name ? h("div.muted", {}, b.name) : null),
      h("td", { "data-label": "Status" }, statusBadge(b.status)),
      h("td", { "data-label": "Dialect" }, b.dialect),
      h("td", { "data-label": "Model" }, b.model || "—"),
      admin ? h("td", { "data-label": "Team" }, b.team || "—") : null,
      h("td", { "data-label": "Created" }, fmtTime(b.created_at)),
      h("td.wide", { "data-label": "Progress" }, progressBar(b.counts)),
      h("td", { "data-label": "Rate" }, fmtRate(b.rate_per_s)),
      h("td", { "data-label": "ETA" }, fmtDuration(b.eta_s))))));
}
