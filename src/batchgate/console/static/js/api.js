// The gateway's HTTP API from the browser: the key lives in sessionStorage (this tab only) and goes
// out as a Bearer token; polled reads send If-None-Match and reuse the last body on a 304.

const KEY = "batchgate.apiKey";

export const auth = {
  get key() { return sessionStorage.getItem(KEY); },
  set key(value) {
    cached.clear();  // another key (or none): never answer from the last one's bodies
    if (value) sessionStorage.setItem(KEY, value);
    else sessionStorage.removeItem(KEY);
  },
};

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = error?.code || null;
    this.param = error?.param || null;
  }
}

const cached = new Map();  // url → {etag, data}: the last answer of each polled read

function headers(extra = {}) {
  const out = { ...extra };
  if (auth.key) out.Authorization = `Bearer ${auth.key}`;
  return out;
}

async function parse(res) {
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    if (res.status === 401) window.dispatchEvent(new CustomEvent("batchgate:unauthorized"));
    throw new ApiError(res.status, data?.error || { message: text || res.statusText });
  }
  return data;
}

/** A JSON call. `poll: true` makes it conditional on the last ETag for this URL. */
export async function api(url, { method = "GET", json, poll = false, signal } = {}) {
  const extra = {};
  if (json !== undefined) extra["Content-Type"] = "application/json";
  const previous = poll ? cached.get(url) : undefined;
  if (previous) extra["If-None-Match"] = previous.etag;
  const res = await fetch(url, {
    method, signal, cache: "no-store", headers: headers(extra),
    body: json === undefined ? undefined : JSON.stringify(json),
  });
  if (res.status === 304 && previous) return previous.data;
  const data = await parse(res);
  const etag = res.headers.get("ETag");
  if (poll && etag) cached.set(url, { etag, data });
  return data;
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** Upload with progress (fetch cannot report upload progress; XMLHttpRequest can). */
export function upload(file, purpose, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/files");
    if (auth.key) xhr.setRequestHeader("Authorization", `Bearer ${auth.key}`);
    xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); });
    xhr.addEventListener("load", () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch { data = null; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(new ApiError(xhr.status, data?.error || { message: xhr.statusText }));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, { message: "the upload failed: network error" })));
    const form = new FormData();
    form.append("purpose", purpose);
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

/** Save a file's content: fetched with the key (a plain link could not send it), then handed over as a blob. */
export async function download(fileId, filename) {
  const res = await fetch(`/v1/files/${encodeURIComponent(fileId)}/content`, { headers: headers(), cache: "no-store" });
  if (!res.ok) await parse(res);
  const url = URL.createObjectURL(await res.blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
