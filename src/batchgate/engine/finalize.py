"""Writing a finished batch's output and error files, streamed from the result rows.

Lines are rebuilt from stored rows the same way every time (request ids are derived from the
batch id and line number), so a finalisation repeated after a crash produces identical files.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from batchgate import ids
from batchgate.blobs import BlobStore, BlobWriter
from batchgate.store.queries import Row, Store


def request_id(batch_id: str, line_no: int) -> str:
    digest = hashlib.blake2b(f"{batch_id}:{line_no}".encode(), digest_size=12).hexdigest()
    return "batch_req_" + digest


def result_line(batch_id: str, row: Row) -> bytes:
    """One output/error line in OpenAI's shape; the upstream body is embedded verbatim."""
    head = orjson.dumps({"id": request_id(batch_id, row["line_no"]), "custom_id": row["custom_id"]})[:-1]
    if row["status_code"] is not None:
        response = orjson.dumps({"status_code": row["status_code"],
                                 "request_id": row["upstream_request_id"] or ""})[:-1]
        body = (row["body"] or "null").encode()
        return head + b',"response":' + response + b',"body":' + body + b'},"error":null}\n'
    error = orjson.dumps({"code": row["error_code"] or "internal_error", "message": row["error_message"] or ""})
    return head + b',"response":null,"error":' + error + b"}\n"


async def write_result_files(store: Store, blobs: BlobStore, batch: Row, now: int) -> dict[str, dict[str, Any]]:
    """Stream every result into new output/error blobs; return their file rows by role (not yet stored).

    A file is made only when it has at least one line, as OpenAI does.
    """
    writers: dict[bool, tuple[str, BlobWriter]] = {}
    try:
        async for row in store.iter_results(batch["id"]):
            ok = bool(row["ok"])
            if ok not in writers:
                key = ids.file_id()
                writers[ok] = (key, await blobs.writer(key))
            await writers[ok][1].write(result_line(batch["id"], row))
        file_rows: dict[str, dict[str, Any]] = {}
        for ok, (key, writer) in writers.items():
            sha = await writer.commit()
            expires_after = batch["output_expires_after"]
            role = "output" if ok else "error"
            file_rows[role] = {
                "id": key, "team_id": batch["team_id"], "purpose": "batch_output",
                "filename": f"{batch['id']}_{role}.jsonl", "bytes": writer.size, "sha256": sha,
                "created_at": now, "expires_at": now + expires_after if expires_after else None,
                "provider_name": None,
            }
        return file_rows
    except BaseException:
        for _, writer in writers.values():
            await writer.abort()
        raise
