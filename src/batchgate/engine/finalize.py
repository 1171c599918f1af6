"""Writing a finished batch's output and error files, streamed from the result rows.

Lines are rebuilt from stored rows the same way every time (request ids are derived from the
batch id and line number), so a finalisation repeated after a crash produces identical files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import orjson

from batchgate.blobs import BlobStore, BlobWriter
from batchgate.domain import ids
from batchgate.store.records import Row
from batchgate.store.store import Store

STREAM_SLICE_BYTES = 1 << 20  # what a streamed response hands the socket at a time
SEPARATE_BODY_BYTES = 1 << 16  # a larger answer is not copied into its line


def request_id(batch_id: str, line_no: int) -> str:
    digest = hashlib.blake2b(f"{batch_id}:{line_no}".encode(), digest_size=12).hexdigest()
    return "batch_req_" + digest


def result_line_pieces(batch_id: str, row: Row) -> list[bytes]:
    """One output/error line in OpenAI's shape, in pieces that join to it: the upstream body (up to
    max_response_bytes) is its own piece, embedded verbatim, so a writer or a stream sends it without
    copying it into a whole line first."""
    head = orjson.dumps({"id": request_id(batch_id, row["line_no"]), "custom_id": row["custom_id"]})[:-1]
    if row["status_code"] is not None:
        response = orjson.dumps({"status_code": row["status_code"], "request_id": row["upstream_request_id"] or ""})[
            :-1
        ]
        body = (row["body"] or "null").encode()
        pieces = [head + b',"response":' + response + b',"body":', body, b'},"error":null}\n']
        return pieces if len(body) > SEPARATE_BODY_BYTES else [b"".join(pieces)]
    error = orjson.dumps({"code": row["error_code"] or "internal_error", "message": row["error_message"] or ""})
    return [head + b',"response":null,"error":' + error + b"}\n"]


def result_line(batch_id: str, row: Row) -> bytes:
    return b"".join(result_line_pieces(batch_id, row))


def slices(data: bytes, size: int = STREAM_SLICE_BYTES) -> Iterator[bytes]:
    """`data` in slices of at most `size` bytes: a streamed response waits for the client between
    them, so the socket's send buffer never holds a whole large answer."""
    if len(data) <= size:
        yield data
        return
    for start in range(0, len(data), size):
        yield data[start : start + size]


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
            for piece in result_line_pieces(batch["id"], row):
                await writers[ok][1].write(piece)
        file_rows: dict[str, dict[str, Any]] = {}
        for ok, (key, writer) in writers.items():
            sha = await writer.commit()
            expires_after = batch["output_expires_after"]
            role = "output" if ok else "error"
            file_rows[role] = {
                "id": key,
                "team_id": batch["team_id"],
                "purpose": "batch_output",
                "filename": f"{batch['id']}_{role}.jsonl",
                "bytes": writer.size,
                "sha256": sha,
                "created_at": now,
                "expires_at": now + expires_after if expires_after else None,
                "provider_name": None,
            }
        return file_rows
    except BaseException:
        for _, writer in writers.values():
            await writer.abort()
        raise
