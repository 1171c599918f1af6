// One batch: live progress, timeline, usage and cost, validation errors, its requests (paged), any
// request's output or error line, downloads, and cancel behind a confirmation.

import { api, query, download, ApiError } from "../api.js";
import {
  h, replace, fmtTime, fmtRate, fmtDuration, fmtNumber, fmtUsd, statusBadge, progressBar, toast, confirmDialog,
  errorBox,
} from "../dom.js";
import { every } from "../live.js";

export const name = "batches";
export const title = "Batch";

const PAGE = 50;

export async function render(main, { id }, ctx) {
  const statuses = ctx.session.statuses;  // the server's names: domain/status.py
  const FINAL = statuses.terminal;
  const base = `/ui/api/batches/${encodeURIComponent(id)}`;
  let detail;
  try {
    detail = await api(base, { poll: true });
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      replace(main, h("h1", {}, "Batch not found"),
        h("p", {}, `There is no batch ${id} that this key can see.`),
        h("a", { href: "/ui/", "data-link": true }, "Back to the batches"));
      return null;
    }
    throw err;
  }
  const head = h("div.page-head");
  const summary = h("section.card", { "aria-labelledby": "progress-h" });
  const cards = h("div.grid");
  const errors = h("div");
  const requests = h("section.card", { "aria-labelledby": "requests-h" });
  const viewer = h("section.card.viewer", { "aria-labelledby": "viewer-h", hidden: true });
  replace(main, h("p", {}, h("a", { href: "/ui/", "data-link": true }, "← Batches")), head, summary, cards, errors,
    requests, viewer);

  const table = requestTable(base, requests, viewer, statuses);
  const drawDetail = (d) => {
    detail = d;
    const b = d.batch;
    const cancellable = statuses.cancellable.includes(b.status);
    replace(head,
      h("h1", {}, h("span.mono", {}, b.id), " ", statusBadge(b.status)),
      h("div.actions", {},
        b.output_file_id ? h("button", { type: "button", onclick: () => save(b.output_file_id, `${b.id}_output.jsonl`) }, "Download output") : null,
        b.error_file_id ? h("button.secondary", { type: "button", onclick: () => save(b.error_file_id, `${b.id}_errors.jsonl`) }, "Download errors") : null,
        cancellable ? h("button.danger", { type: "button", onclick: () => cancel(b.id) }, "Cancel batch") : null));
    replace(summary, h("h2", { id: "progress-h" }, "Progress"), progressBar(d.counts),
      h("dl.inline", {},
        h("dt", {}, "Rate"), h("dd", { id: "rate" }, fmtRate(d.rate_per_s)),
        h("dt", {}, "ETA"), h("dd", { id: "eta" }, FINAL.includes(b.status) ? "done" : fmtDuration(d.eta_s))),
      d.cancel_message ? h("p.note", {}, d.cancel_message) : null);
    replace(cards, detailsCard(d), usageCard(d), timelineCard(d));
    replace(errors, b.errors?.data?.length ? validationCard(b.errors) : null);
  };
  drawDetail(detail);
  await table.draw();

  const cancel = async (batchId) => {
    const ok = await confirmDialog("Cancel this batch?",
      `Batch ${batchId} stops at once: requests not yet answered end with batch_cancelled; finished results are kept.`,
      "Cancel batch");
    if (!ok) return;
    try {
      await api(`/v1/batches/${encodeURIComponent(batchId)}/cancel`, { method: "POST" });
      toast("Cancelling: unfinished requests are being stopped.");
      drawDetail(await api(base, { poll: true }));
    } catch (err) { toast(err.message, "error"); }
  };

  return every(1500, async () => {
    if (FINAL.includes(detail.batch.status) && table.settled) return;
    drawDetail(await api(base, { poll: true }));
    await table.draw();
  });
}

async function save(fileId, filename) {
  try { await download(fileId, filename); } catch (err) { toast(err.message, "error"); }
}

function row(label, value) { return [h("dt", {}, label), h("dd", {}, value ?? "—")]; }

function detailsCard(d) {
  const b = d.batch;
  const meta = b.metadata ? Object.entries(b.metadata).map(([k, v]) => h("span.tag", {}, `${k}=${v}`)) : "—";
  return h("section.card", { "aria-labelledby": "details-h" }, h("h2", { id: "details-h" }, "Details"),
    h("dl", {},
      row("Endpoint", b.endpoint), row("Model", b.model), row("Dialect", d.dialect), row("Team", d.team),
      row("Name", d.name), row("Input file", b.input_file_id ? `${d.input_filename ?? ""} (${b.input_file_id})` : null),
      row("Window", b.completion_window), row("Expires", fmtTime(b.expires_at)), row("Metadata", meta)));
}

function usageCard(d) {
  const u = d.batch.usage;
  return h("section.card", { "aria-labelledby": "usage-h" }, h("h2", { id: "usage-h" }, "Usage and cost"),
    h("dl", {},
      row("Input tokens", fmtNumber(u.input_tokens)), row("Cached", fmtNumber(u.input_tokens_details.cached_tokens)),
      row("Output tokens", fmtNumber(u.output_tokens)),
      row("Reasoning", fmtNumber(u.output_tokens_details.reasoning_tokens)),
      row("Total tokens", fmtNumber(u.total_tokens)), row("Cost", h("span", { id: "cost" }, fmtUsd(d.cost_usd)))));
}

function timelineCard(d) {
  return h("section.card", { "aria-labelledby": "timeline-h" }, h("h2", { id: "timeline-h" }, "Timeline"),
    h("ol.timeline", {}, d.timeline.map((e) => h("li", {}, statusBadge(e.status), " ", h("time", {}, fmtTime(e.at))))));
}

function validationCard(errors) {
  return h("section.card", { "aria-labelledby": "validation-h" },
    h("h2", { id: "validation-h" }, `Validation errors (${fmtNumber(errors.total ?? errors.data.length)})`),
    h("div.table-wrap", {}, h("table.list", {},
      h("thead", {}, h("tr", {}, ["Line", "Code", "Parameter", "Message"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, errors.data.map((e) => h("tr", {},
        h("td", { "data-label": "Line" }, e.line ?? "—"), h("td.mono", { "data-label": "Code" }, e.code),
        h("td", { "data-label": "Parameter" }, e.param ?? "—"), h("td", { "data-label": "Message" }, e.message)))))));
}

/** The requests table: pages by line number, filter by state, and a look-up by custom_id. */
function requestTable(base, section, viewer, statuses) {
  const cursors = [];  // `after` line of each page so far
  let state = "";
  const body = h("div.table-wrap");
  const pager = h("nav.pager", { "aria-label": "Request pages" });
  const stateSelect = h("select", { id: "req-state", onchange: () => { state = stateSelect.value; cursors.length = 0; self.draw(); } },
    [["", "Any"], ...statuses.request].map(([v, l]) => h("option", { value: v }, l)));
  const lookup = h("input", { id: "lookup", name: "custom_id", placeholder: "custom_id" });
  const self = {
    settled: false,
    async draw() {
      const url = `${base}/requests${query({ after: cursors[cursors.length - 1] || 0, limit: PAGE, state })}`;
      let page;
      try { page = await api(url, { poll: true }); } catch (err) { replace(body, errorBox(err)); return; }
      self.settled = page.data.every((r) => statuses.request_finished.includes(r.state));
      replace(body, page.data.length ? h("table.list.requests", {},
        h("thead", {}, h("tr", {}, ["Line", "custom_id", "State", "Attempts", "HTTP", "Error", "Finished", ""].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, page.data.map((r) => h("tr", { dataset: { customId: r.custom_id } },
          h("td", { "data-label": "Line" }, r.line), h("td.mono", { "data-label": "custom_id" }, r.custom_id),
          h("td", { "data-label": "State" }, h(`span.state.r-${r.state}`, {}, r.state)),
          h("td", { "data-label": "Attempts" }, r.attempts), h("td", { "data-label": "HTTP" }, r.status_code ?? "—"),
          h("td.mono", { "data-label": "Error" }, r.error_code ?? "—"),
          h("td", { "data-label": "Finished" }, r.finished_at ? fmtTime(r.finished_at) : "—"),
          h("td", {}, r.finished_at ? h("button.link", { type: "button", "aria-label": `View result of ${r.custom_id}`,
            onclick: () => showResult(base, viewer, { line: r.line }) }, "View") : null)))))
        : h("p.empty", {}, "No requests here yet."));
      replace(pager,
        h("button.secondary", { type: "button", hidden: !cursors.length, onclick: () => { cursors.pop(); self.draw(); } }, "← Previous"),
        h("span.muted", {}, `Lines after ${cursors[cursors.length - 1] || 0}`),
        h("button.secondary", { type: "button", hidden: !page.has_more, onclick: () => { cursors.push(page.last_line); self.draw(); } }, "Next →"));
    },
  };
  replace(section, h("h2", { id: "requests-h" }, "Requests"),
    h("div.filters", {},
      h("div.field", {}, h("label", { for: "req-state" }, "State"), stateSelect),
      h("form.field.lookup", { onsubmit: (e) => { e.preventDefault(); if (lookup.value) showResult(base, viewer, { custom_id: lookup.value }); } },
        h("label", { for: "lookup" }, "Find a result by custom_id"), h("div.row", {}, lookup, h("button", { type: "submit" }, "Show")))),
    body, pager);
  return self;
}

async function showResult(base, viewer, which) {
  viewer.hidden = false;
  try {
    const r = await api(`${base}/result${query(which)}`);
    replace(viewer, h("h2", { id: "viewer-h" }, `Line ${r.line}: ${r.custom_id}`),
      h("p", {}, `In the ${r.file} file.`), h("pre.json", { tabindex: 0 }, JSON.stringify(r.content, null, 2)));
  } catch (err) {
    replace(viewer, h("h2", { id: "viewer-h" }, "Result"), errorBox(err));
  }
  viewer.scrollIntoView({ block: "nearest" });
}
