"""OpenAI Files API: `/v1/files`."""

from __future__ import annotations

import errno
import logging
import re
import time

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from batchgate.api import tfy_headers
from batchgate.api.auth import authenticate
from batchgate.api.context import gateway_of
from batchgate.api.openai.multipart import read_multipart
from batchgate.api.openai.serialize import file_object, page
from batchgate.api.params import choice_param, int_param
from batchgate.api.responses import JSON
from batchgate.domain import ids
from batchgate.domain.errors import APIError, Conflict, InvalidRequest, NotFound
from batchgate.gateway import Gateway
from batchgate.observability import metrics

log = logging.getLogger(__name__)

PURPOSES = ("batch", "assistants", "fine-tune", "vision", "user_data", "evals")
LISTABLE_PURPOSES = (*PURPOSES, "batch_output")
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 2_592_000
DEFAULT_BATCH_EXPIRY_S = 2_592_000  # OpenAI keeps batch input files 30 days unless told otherwise
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_filename(raw: str | None) -> str:
    """Keep only the last path component and printable characters: a filename is a label, never a path."""
    name = re.split(r"[\\/]", raw or "")[-1]
    name = _CONTROL.sub("", name).strip()[:255]
    return name if name not in ("", ".", "..") else "upload"


def _expiry_seconds(fields: dict[str, str], purpose: str) -> int | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return DEFAULT_BATCH_EXPIRY_S if purpose == "batch" else None
    if anchor != "created_at":
        raise InvalidRequest(
            "expires_after[anchor] must be 'created_at'", param="expires_after[anchor]", code="invalid_parameter"
        )
    if seconds is None or not re.fullmatch(r"[0-9]{1,10}", seconds) or not MIN_EXPIRY_S <= int(seconds) <= MAX_EXPIRY_S:
        raise InvalidRequest(
            f"expires_after[seconds] must be an integer between {MIN_EXPIRY_S} and {MAX_EXPIRY_S}",
            param="expires_after[seconds]",
            code="invalid_parameter",
        )
    return int(seconds)


class StorageError(APIError):
    """The files storage cannot take an upload: the server's trouble, not the client's request."""

    error_type = "server_error"


def storage_error(exc: OSError) -> StorageError:
    """507 when the storage is full, 503 for any other storage failure; the message names the cause."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    log.warning("upload refused, the files storage failed: %s", exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(
            f"the files storage is full ({cause}); the upload was not stored", status_code=507, code="storage_full"
        )
    return StorageError(
        f"the files storage cannot store uploads right now ({cause}); the upload was not stored",
        status_code=503,
        code="storage_unavailable",
    )


async def upload_file(request: Request) -> JSON:
    principal = await authenticate(request)
    gateway = gateway_of(request)
    pinned = tfy_headers.provider_name(request, gateway)  # checked before a byte is stored
    file_id = ids.file_id()
    try:  # read_multipart aborts the blob on any error, so a failed write leaves nothing behind
        upload = await read_multipart(
            request, "file", lambda: gateway.blobs.writer(file_id), gateway.settings.limits.max_upload_bytes
        )
    except OSError as exc:
        raise storage_error(exc) from exc
    writer = upload.writer
    try:
        if writer is None:
            raise InvalidRequest("missing required parameter 'file'", param="file", code="missing_required_parameter")
        purpose = upload.fields.get("purpose")
        if not purpose:
            raise InvalidRequest(
                "missing required parameter 'purpose'", param="purpose", code="missing_required_parameter"
            )
        if purpose not in PURPOSES:
            raise InvalidRequest(
                f"'purpose' must be one of {', '.join(PURPOSES)}, got {purpose!r}",
                param="purpose",
                code="invalid_parameter",
            )
        expires_s = _expiry_seconds(upload.fields, purpose)
        try:
            sha = await writer.commit()
        except OSError as exc:  # fsync or rename: a full or read-only disk often shows only here
            raise storage_error(exc) from exc
    except BaseException:
        if writer is not None:
            await writer.abort()
        raise
    now = int(time.time())
    row = {
        "id": file_id,
        "team_id": principal.team_id,
        "filename": safe_filename(upload.filename),
        "purpose": purpose,
        "bytes": writer.size,
        "sha256": sha,
        "created_at": now,
        "expires_at": now + expires_s if expires_s else None,
        "provider_name": pinned,
        "lines": writer.lines,
    }
    try:
        await gateway.store.insert_file(row)
    except BaseException:
        await gateway.blobs.delete(file_id)
        raise
    metrics.FILES_UPLOADED.inc()
    metrics.BYTES_UPLOADED.inc(writer.size)
    return JSON(file_object(row))


async def list_files(request: Request) -> JSON:
    principal = await authenticate(request)
    gateway = gateway_of(request)
    limit = int_param(request, "limit", 10_000, 1, 10_000)
    order = choice_param(request, "order", "desc", ("asc", "desc"))
    purpose = request.query_params.get("purpose") or None
    if purpose is not None and purpose not in LISTABLE_PURPOSES:
        raise InvalidRequest(
            f"'purpose' must be one of {', '.join(LISTABLE_PURPOSES)}", param="purpose", code="invalid_parameter"
        )
    rows = await gateway.store.list_files(
        now=int(time.time()),
        after=request.query_params.get("after") or None,
        limit=limit + 1,
        order=order,
        purpose=purpose,
        team_id=principal.team_id,
    )
    return JSON(page([file_object(r) for r in rows[:limit]], len(rows) > limit))


async def _visible_file(request: Request) -> tuple[Gateway, dict]:
    principal = await authenticate(request)
    gateway = gateway_of(request)
    file_id = request.path_params["file_id"]
    row = await gateway.store.get_file(file_id, int(time.time()), team_id=principal.team_id)
    if row is None:
        raise NotFound(f"no such file: {file_id!r}", param="file_id", code="file_not_found")
    return gateway, dict(row)


async def retrieve_file(request: Request) -> JSON:
    _, row = await _visible_file(request)
    return JSON(file_object(row))


async def delete_file(request: Request) -> JSON:
    gateway, row = await _visible_file(request)
    if row["id"] in await gateway.store.input_files_in_use():
        raise Conflict(
            f"file {row['id']} is the input of a batch that is still running; cancel it or wait",
            param="file_id",
            code="file_in_use",
        )
    await gateway.store.delete_file(row["id"])
    await gateway.blobs.delete(row["id"])
    return JSON({"id": row["id"], "object": "file", "deleted": True})


async def file_content(request: Request) -> StreamingResponse:
    gateway, row = await _visible_file(request)
    # Checked before the 200 goes out: a damaged blob must be an error, not a cut-off download.
    try:
        stored = await gateway.blobs.size(row["id"])
    except FileNotFoundError:
        stored = None
    if stored != row["bytes"]:
        found = "missing" if stored is None else f"{stored} bytes, not the {row['bytes']} uploaded"
        log.error("the stored content of %s is damaged: %s", row["id"], found)
        raise StorageError(
            f"the stored content of {row['id']} is damaged ({found}); it cannot be served",
            param="file_id",
            code="file_corrupted",
            status_code=500,
        )
    return StreamingResponse(
        gateway.blobs.iter_chunks(row["id"]),
        media_type="application/octet-stream",
        headers={
            "content-length": str(row["bytes"]),
            "content-disposition": f'attachment; filename="{row["id"]}.jsonl"',
        },
    )


def routes() -> list[Route]:
    return [
        Route("/files", upload_file, methods=["POST"]),
        Route("/files", list_files, methods=["GET"]),
        Route("/files/{file_id}", retrieve_file, methods=["GET"]),
        Route("/files/{file_id}", delete_file, methods=["DELETE"]),
        Route("/files/{file_id}/content", file_content, methods=["GET"]),
    ]
