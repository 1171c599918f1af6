// Files: upload (drop zone or file picker, with progress), list, delete, download, and create a batch
// from an uploaded input file.

import { api, query, upload, download } from "../api.js";
import { h, replace, fmtTime, fmtBytes, toast, confirmDialog, errorBox } from "../dom.js";

export const name = "files";
export const title = "Files";

const PURPOSES = ["batch", "batch_output", "user_data", "assistants", "fine-tune", "vision", "evals"];
const UPLOAD_PURPOSES = ["batch", "user_data", "assistants", "fine-tune", "vision", "evals"];
const ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/moderations"];
const PAGE = 50;

export async function render(main, _params, ctx) {
  const cursors = [];
  let purposeFilter = "";
  const list = h("div.table-wrap");
  const pager = h("nav.pager", { "aria-label": "File pages" });
  const creator = h("div");

  const draw = async () => {
    let page;
    const after = cursors[cursors.length - 1] || "";
    try { page = await api(`/v1/files${query({ limit: PAGE, after, purpose: purposeFilter })}`); } catch (err) { replace(list, errorBox(err)); return; }
    replace(list, page.data.length ? fileTable(page.data, { onDelete, onCreate: (f) => showCreate(f) }) : h("p.empty", {}, "No files yet."));
    replace(pager,
      h("button.secondary", { type: "button", hidden: !cursors.length, onclick: () => { cursors.pop(); draw(); } }, "← Newer"),
      h("button.secondary", { type: "button", hidden: !page.has_more, onclick: () => { cursors.push(page.last_id); draw(); } }, "Older →"));
  };

  const onDelete = async (file) => {
    if (!await confirmDialog("Delete this file?", `${file.filename} (${file.id}) is deleted for good.`, "Delete file")) return;
    try { await api(`/v1/files/${encodeURIComponent(file.id)}`, { method: "DELETE" }); toast(`Deleted ${file.filename}.`); await draw(); }
    catch (err) { toast(err.message, "error"); }
  };

  const showCreate = (file) => {
    const endpoint = h("select", { id: "endpoint", name: "endpoint" }, ENDPOINTS.map((e) => h("option", { value: e }, e)));
    const windowInput = h("input", { id: "window", name: "completion_window", value: "24h", required: true, "aria-describedby": "window-help" });
    const metadata = h("textarea", { id: "batch-metadata", name: "metadata", rows: 2, placeholder: "key=value, one a line" });
    const status = h("div", { "aria-live": "polite" });
    const form = h("form.card", {
      "aria-labelledby": "create-h",
      onsubmit: async (e) => {
        e.preventDefault();
        const meta = {};
        for (const line of metadata.value.split("\n").map((l) => l.trim()).filter(Boolean)) {
          const [k, ...v] = line.split("=");
          meta[k.trim()] = v.join("=").trim();
        }
        try {
          const batch = await api("/v1/batches", { method: "POST", json: {
            input_file_id: file.id, endpoint: endpoint.value, completion_window: windowInput.value.trim(),
            ...(Object.keys(meta).length ? { metadata: meta } : {}) } });
          toast(`Created ${batch.id}.`);
          ctx.navigate(`/ui/batches/${batch.id}`);
        } catch (err) { replace(status, errorBox(err)); }
      },
    },
    h("h2", { id: "create-h" }, `Create a batch from ${file.filename}`),
    h("div.filters", {},
      h("div.field", {}, h("label", { for: "endpoint" }, "Endpoint"), endpoint),
      h("div.field", {}, h("label", { for: "window" }, "Completion window"), windowInput,
        h("span.help", { id: "window-help" }, "24h, or any <n>s|m|h|d")),
      h("div.field.grow", {}, h("label", { for: "batch-metadata" }, "Metadata"), metadata)),
    h("div.actions", {}, h("button", { type: "submit" }, "Create batch"),
      h("button.secondary", { type: "button", onclick: () => replace(creator) }, "Close")), status);
    replace(creator, form);
    endpoint.focus();
  };

  const purposeSelect = h("select", { id: "purpose", name: "purpose" }, UPLOAD_PURPOSES.map((p) => h("option", { value: p }, p)));
  const zone = dropZone(async (file) => {
    const bar = h("progress", { max: 100, value: 0, "aria-label": `Uploading ${file.name}` });
    replace(uploads, h("div.upload", {}, h("span", {}, file.name), bar, h("span.pct", { "aria-live": "polite" }, "0%")));
    try {
      const stored = await upload(file, purposeSelect.value, (p) => {
        bar.value = Math.round(p * 100);
        uploads.querySelector(".pct").textContent = `${Math.round(p * 100)}%`;
      });
      replace(uploads, h("p.ok", { role: "status" }, `Uploaded ${stored.filename} as ${stored.id}.`));
      cursors.length = 0;
      await draw();
      if (stored.purpose === "batch") showCreate(stored);
    } catch (err) { replace(uploads, errorBox(err)); }
  });
  const uploads = h("div.uploads");
  const filter = h("select", { id: "purpose-filter", onchange: () => { purposeFilter = filter.value; cursors.length = 0; draw(); } },
    h("option", { value: "" }, "Any"), PURPOSES.map((p) => h("option", { value: p }, p)));

  replace(main, h("h1", {}, "Files"),
    h("section.card", { "aria-labelledby": "upload-h" }, h("h2", { id: "upload-h" }, "Upload"),
      h("div.field", {}, h("label", { for: "purpose" }, "Purpose"), purposeSelect), zone, uploads),
    creator,
    h("section.card", { "aria-labelledby": "list-h" }, h("div.page-head", {}, h("h2", { id: "list-h" }, "Your files"),
      h("div.field.inline", {}, h("label", { for: "purpose-filter" }, "Purpose"), filter)), list, pager));
  await draw();
  return null;
}

function dropZone(onFile) {
  const input = h("input.visually-hidden", { type: "file", id: "file-input", accept: ".jsonl,.json,.txt,application/jsonl" });
  const zone = h("div.dropzone", {},
    h("label", { for: "file-input" }, h("strong", {}, "Drop a JSONL file here"), h("span", {}, " or choose one")), input);
  input.addEventListener("change", () => { if (input.files[0]) onFile(input.files[0]); input.value = ""; });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files[0]) onFile(e.dataTransfer.files[0]);
  });
  return zone;
}

function fileTable(files, { onDelete, onCreate }) {
  return h("table.list.files", {},
    h("thead", {}, h("tr", {}, ["File", "Purpose", "Size", "Created", "Expires", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, files.map((f) => h("tr", { dataset: { id: f.id } },
      h("td", { "data-label": "File" }, h("div", {}, f.filename), h("div.mono.muted", {}, f.id)),
      h("td", { "data-label": "Purpose" }, f.purpose), h("td", { "data-label": "Size" }, fmtBytes(f.bytes)),
      h("td", { "data-label": "Created" }, fmtTime(f.created_at)), h("td", { "data-label": "Expires" }, fmtTime(f.expires_at)),
      h("td", { "data-label": "Actions" }, h("div.actions", {},
        f.purpose === "batch" ? h("button.small", { type: "button", onclick: () => onCreate(f), "aria-label": `Create a batch from ${f.filename}` }, "Create batch") : null,
        h("button.small.secondary", { type: "button", onclick: () => download(f.id, f.filename).catch((e) => toast(e.message, "error")), "aria-label": `Download ${f.filename}` }, "Download"),
        h("button.small.danger", { type: "button", onclick: () => onDelete(f), "aria-label": `Delete ${f.filename}` }, "Delete")))))));
}
