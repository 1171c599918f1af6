// For the admin: teams, API keys (create, revoke) and spend, over the /admin API.

import { api } from "../api.js";
import { h, replace, fmtTime, fmtNumber, fmtUsd, toast, confirmDialog, errorBox } from "../dom.js";

export const name = "admin";
export const title = "Admin";

export async function render(main, _params, ctx) {
  if (!ctx.session.admin) {
    replace(main, h("h1", {}, "Admin"), h("p", {}, "These pages need the admin key."));
    return null;
  }
  const teams = h("div"), keys = h("div"), spend = h("div"), newKey = h("div", { "aria-live": "polite" });
  const draw = async () => {
    const [t, k, u] = await Promise.all([api("/admin/teams"), api("/admin/keys"), api("/admin/usage")]);
    replace(teams, teamTable(t.data));
    replace(keys, keyTable(k.data, revoke));
    replace(spend, spendTable(u.data));
    replace(teamSelect, t.data.map((team) => h("option", { value: team.name }, team.name)));
  };
  const revoke = async (key) => {
    if (!await confirmDialog("Revoke this key?", `${key.prefix}… (${key.name ?? key.id}) is refused from its next request.`, "Revoke key")) return;
    try { await api(`/admin/keys/${encodeURIComponent(key.id)}`, { method: "DELETE" }); toast("Key revoked."); await draw(); }
    catch (err) { toast(err.message, "error"); }
  };
  const teamSelect = h("select", { id: "key-team", name: "team", required: true });
  const teamForm = form("team-form", "Create a team", [
    field("team-name", "Name", h("input", { id: "team-name", name: "name", required: true })),
    field("team-weight", "Weight", h("input", { id: "team-weight", name: "weight", type: "number", step: "any", min: "0.001", placeholder: "1" })),
    field("team-budget", "Budget (USD)", h("input", { id: "team-budget", name: "budget_usd", type: "number", step: "any", min: "0" })),
  ], async (data) => {
    await api("/admin/teams", { method: "POST", json: pick(data, { name: String, weight: Number, budget_usd: Number }) });
    toast(`Team ${data.get("name")} created.`);
    await draw();
  });
  const keyForm = form("key-form", "Create an API key", [
    field("key-team", "Team", teamSelect),
    field("key-name", "Name", h("input", { id: "key-name", name: "name" })),
    field("key-rpm", "Requests/min", h("input", { id: "key-rpm", name: "rpm", type: "number", min: "1", step: "1" })),
    field("key-budget", "Budget (USD)", h("input", { id: "key-budget", name: "budget_usd", type: "number", step: "any", min: "0" })),
  ], async (data) => {
    const created = await api("/admin/keys", { method: "POST", json: pick(data, { team: String, name: String, rpm: Number, budget_usd: Number }) });
    replace(newKey, h("div.card.secret", {}, h("p", {}, h("strong", {}, "New key for team ", created.team, ": "),
      "copy it now, it is not shown again."), h("code.mono", { id: "new-key" }, created.key)));
    await draw();
  });
  replace(main, h("h1", {}, "Admin"),
    h("section.card", { "aria-labelledby": "spend-h" }, h("h2", { id: "spend-h" }, "Spend"), spend),
    h("section.card", { "aria-labelledby": "teams-h" }, h("h2", { id: "teams-h" }, "Teams"), teams, teamForm),
    h("section.card", { "aria-labelledby": "keys-h" }, h("h2", { id: "keys-h" }, "API keys"), keys, keyForm, newKey));
  await draw();
  return null;
}

function field(id, label, control) { return h("div.field", {}, h("label", { for: id }, label), control); }

function form(id, legend, fields, submit) {
  const status = h("div", { "aria-live": "polite" });
  const el = h("form.subform", { id, onsubmit: async (e) => {
    e.preventDefault();
    replace(status);
    try { await submit(new FormData(el)); el.reset(); } catch (err) { replace(status, errorBox(err)); }
  } }, h("fieldset", {}, h("legend", {}, legend), h("div.filters", {}, fields,
    h("div.field.buttons", {}, h("button", { type: "submit" }, "Create")))), status);
  return el;
}

/** The form's non-empty values, converted (Number fields stay numbers in the JSON body). */
function pick(data, types) {
  const out = {};
  for (const [key, type] of Object.entries(types)) {
    const v = (data.get(key) || "").toString().trim();
    if (v !== "") out[key] = type(v);
  }
  return out;
}

function table(cls, head, rows) {
  return h("div.table-wrap", {}, h(`table.list.${cls}`, {},
    h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map(([label, v]) => h("td", { "data-label": label }, v)))))));
}

function teamTable(teams) {
  if (!teams.length) return h("p.empty", {}, "No teams yet.");
  return table("teams", ["Name", "Weight", "Budget", "Max queued", "Created"], teams.map((t) => [
    ["Name", t.name], ["Weight", t.weight], ["Budget", t.budget_usd === null ? "—" : fmtUsd(t.budget_usd)],
    ["Max queued", fmtNumber(t.max_queued_requests)], ["Created", fmtTime(t.created_at)]]));
}

function keyTable(keys, revoke) {
  if (!keys.length) return h("p.empty", {}, "No keys yet.");
  return table("keys", ["Prefix", "Team", "Name", "Models", "RPM", "Budget", "Created", "State"], keys.map((k) => [
    ["Prefix", h("span.mono", {}, `${k.prefix}…`)], ["Team", k.team], ["Name", k.name ?? "—"],
    ["Models", k.models ? k.models.join(", ") : "all"], ["RPM", fmtNumber(k.rpm)],
    ["Budget", k.budget_usd === null ? "—" : fmtUsd(k.budget_usd)], ["Created", fmtTime(k.created_at)],
    ["State", k.revoked_at ? `revoked ${fmtTime(k.revoked_at)}`
      : h("button.small.danger", { type: "button", onclick: () => revoke(k), "aria-label": `Revoke key ${k.prefix}` }, "Revoke")]]));
}

function spendTable(rows) {
  if (!rows.length) return h("p.empty", {}, "No spend yet.");
  const total = rows.reduce((s, r) => s + r.cost_usd, 0);
  return h("div", {}, h("p", {}, "Total: ", h("strong", { id: "spend-total" }, fmtUsd(total))),
    table("spend", ["Team", "Key", "Model", "Batches", "Completed", "Failed", "Input tokens", "Output tokens", "Cost"], rows.map((r) => [
      ["Team", r.team ?? "— (admin)"], ["Key", h("span.mono", {}, r.key_id ?? "—")], ["Model", r.model ?? "—"],
      ["Batches", fmtNumber(r.batches)], ["Completed", fmtNumber(r.requests.completed)], ["Failed", fmtNumber(r.requests.failed)],
      ["Input tokens", fmtNumber(r.input_tokens)], ["Output tokens", fmtNumber(r.output_tokens)], ["Cost", fmtUsd(r.cost_usd)]])));
}
