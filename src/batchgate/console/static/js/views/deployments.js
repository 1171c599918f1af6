// Deployments: each one's calls in flight, circuit, and its last hour per minute, as charts.

import { api } from "../api.js";
import { h, replace, fmtNumber, errorBox } from "../dom.js";
import { minuteChart } from "../charts.js";
import { every } from "../live.js";

export const name = "deployments";
export const title = "Deployments";

export async function render(main) {
  const body = h("div");
  const help = h("p.help", {}, "The last hour, minute by minute.");
  replace(main, h("h1", {}, "Deployments"), help, body);
  const draw = async () => {
    let page;
    try { page = await api("/ui/api/deployments", { poll: true }); } catch (err) { replace(body, errorBox(err)); return; }
    help.textContent = page.shared
      ? "The last hour, minute by minute, from every worker sharing this database (up to 5 s behind)."
      : "The last hour, minute by minute, as this gateway process's engine saw it.";
    replace(body,
      page.engine || page.shared ? null
        : h("p.note", {}, "This process runs no engine (serve --no-engine): its workers' activity is not shown here."),
      page.data.map(card));
  };
  await draw();
  return every(5000, draw);
}

function card(d) {
  const s = d.series;
  const errorRate = s.requests.map((n, i) => (n ? (100 * s.errors[i]) / n : 0));
  const circuit = d.circuit ?? "unknown";
  return h("section.card.deployment", { "aria-labelledby": `dep-${d.name}`, dataset: { name: d.name } },
    h("div.page-head", {}, h("h2", { id: `dep-${d.name}` }, d.name),
      h("div.pills", {},
        h("span.pill", {}, `model ${d.model}`), h("span.pill", {}, d.provider),
        h("span.pill.inflight", {}, `in flight ${d.in_flight ?? "—"} / ${d.window ?? d.max_concurrency}`),
        h(`span.pill.circuit.c-${circuit}`, {}, `circuit ${circuit.replace("_", " ")}`))),
    h("p.muted", {}, `Limits: ${fmtNumber(d.max_concurrency)} concurrent`, d.rpm ? `, ${fmtNumber(d.rpm)} rpm` : "",
      d.tpm ? `, ${fmtNumber(d.tpm)} tpm` : ""),
    h("div.charts", {},
      minuteChart("Requests per minute", s.requests, "requests"),
      minuteChart("Tokens per minute (estimated)", s.tokens, "tokens"),
      minuteChart("429s per minute", s.throttled, "429s"),
      minuteChart("Error rate %", errorRate, "%"),
      minuteChart("Peak in flight", s.peak_in_flight, "calls"),
      minuteChart("Circuit open", s.circuit_open, "(1 = open)")));
}
