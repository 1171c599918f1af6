"""xAI Batch dialect under `/xai/v1`: open batches fed request by request, results read while running.

The same engine runs these batches as any other: an open batch is an `in_progress` batch whose
requests live in segment blobs (one per add-call) instead of one input file, and that runs until
it is cancelled or its expire_time passes.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from batchgate.api import sealed_tokens
from batchgate.api.auth import authenticate
from batchgate.api.context import gateway_of, visible_batch
from batchgate.api.params import int_param, json_object
from batchgate.api.responses import JSON
from batchgate.config import Settings
from batchgate.domain import ids
from batchgate.domain.errors import APIError, Conflict, InvalidRequest
from batchgate.domain.params import SERVED_ENDPOINTS
from batchgate.domain.pricing import cost_ticks
from batchgate.domain.status import TERMINAL, BatchStatus, RequestOutcome, RequestState
from batchgate.domain.xai_requests import ENDPOINT_KINDS, parse_add_requests
from batchgate.engine.finalize import slices
from batchgate.gateway import Gateway
from batchgate.services import batches
from batchgate.store.records import (
    BatchClosed,
    BatchFull,
    DuplicateRequestIds,
    MismatchedModel,
    QueueFull,
    Row,
    TooManyOpenBatches,
)

OPEN_BATCH_WINDOW_S = 24 * 3600
MAX_NAME = 256


# ------------------------------------------------------------------ shapes
def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def xai_batch(gateway: Gateway, row: Row) -> dict[str, Any]:
    endpoint_costs = []
    total_ticks = 0
    for usage in await gateway.store.usage_by_endpoint(row["id"]):
        ticks = cost_ticks(gateway.settings, row["model"], usage["input_tokens"], usage["output_tokens"])
        total_ticks += ticks
        endpoint_costs.append(
            {
                "endpoint": usage["endpoint"] or row["endpoint"],
                "cost_usd_ticks": ticks,
                "request_count": usage["requests"],
            }
        )
    finished = row["completed"] + row["failed"]
    return {
        "batch_id": row["id"],
        "name": row["name"],
        "input_file_id": row["input_file_id"],
        "create_time": rfc3339(row["created_at"]),
        "create_api_key_id": row["create_api_key_id"],
        "expire_time": rfc3339(row["expires_at"]),
        "cancel_time": rfc3339(row["cancelled_at"]),
        "cancel_by_xai_message": row["cancel_message"],
        "state": {
            "num_requests": row["total"],
            "num_pending": max(0, row["total"] - finished),
            "num_success": row["completed"],
            "num_error": row["failed"] - row["cancelled"],
            "num_cancelled": row["cancelled"],
        },
        "cost_breakdown": {
            "total_cost_usd_ticks": total_ticks,
            "endpoint_costs": endpoint_costs,
            "calculation_time": rfc3339(time.time()),
        },
    }


def _request_state(row: Row) -> RequestOutcome:
    if row["ok"] is None:
        return RequestOutcome.PENDING
    if row["ok"]:
        return RequestOutcome.SUCCEEDED
    return RequestOutcome.CANCELLED if row["error_code"] == "batch_cancelled" else RequestOutcome.FAILED


def _kind(endpoint: str) -> str:
    return ENDPOINT_KINDS.get(endpoint, endpoint)


def xai_result(settings: Settings, batch: Row, row: Row) -> dict[str, Any]:
    endpoint = row["endpoint"] or batch["endpoint"]
    body = orjson.loads(row["body"]) if row["body"] else None
    if row["ok"]:
        if isinstance(body, dict) and isinstance(body.get("usage"), dict):
            body["usage"]["cost_in_usd_ticks"] = cost_ticks(
                settings, batch["model"], row["input_tokens"], row["output_tokens"]
            )
        return {"batch_request_id": row["custom_id"], "batch_result": {"response": {_kind(endpoint): body}}}
    if row["status_code"] is not None:
        error = body.get("error") if isinstance(body, dict) else None
        message = (error.get("message") if isinstance(error, dict) else None) or str(body)
        code: Any = row["status_code"]
    else:
        message, code = row["error_message"] or "", row["error_code"]
    return {
        "batch_request_id": row["custom_id"],
        "batch_result": {"error": {"code": code, "message": message}},
        "error_message": message,
    }


# ------------------------------------------------------------------ pagination tokens
def encode_token(position: int | str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"after": position})).decode().rstrip("=")


MAX_LINE, MAX_SEQ = 2**31 - 1, 2**63 - 1  # request line numbers are INTEGER, result positions BIGINT


def decode_token(request: Request, kind: type, maximum: int = MAX_SEQ) -> Any:
    """The position a `pagination_token` carries: a str (a batch id) or an int in 0..maximum; else a 400."""
    raw = request.query_params.get("pagination_token")
    if not raw:
        return None
    try:
        value = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))["after"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        value = None
    if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, int) and not 0 <= value <= maximum):
        raise InvalidRequest("invalid pagination_token", param="pagination_token", code="invalid_parameter")
    return value


# ------------------------------------------------------------------ routes
async def create_batch(request: Request) -> JSON:
    principal = await authenticate(request)
    gateway = gateway_of(request)
    data = await json_object(request)
    name = data.get("name")
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise InvalidRequest(
            f"'name' must be a string of 1 to {MAX_NAME} characters",
            param="name",
            code="missing_required_parameter" if name is None else "invalid_parameter",
        )
    now = int(time.time())
    row: dict[str, Any] = {
        "id": ids.batch_id(),
        "team_id": principal.team_id,
        "dialect": "xai",
        "name": name,
        "model": None,
        "create_api_key_id": principal.key_id,
        "allowed_models": orjson.dumps(list(principal.models)).decode() if principal.models is not None else None,
        "completion_window": f"{OPEN_BATCH_WINDOW_S // 3600}h",
        "created_at": now,
        "expires_at": now + OPEN_BATCH_WINDOW_S,
        "total": 0,
        "completed": 0,
        "failed": 0,
        "input_tokens": 0,
        "cached_tokens": 0,
        "output_tokens": 0,
        "reasoning_tokens": 0,
    }
    file_id = data.get("input_file_id")
    if file_id is None:  # an open batch: requests arrive through add-calls and start at once
        quota = await batches.admission(gateway, principal, 0, opening=True)  # refuses a team or key over budget
        row.update(
            status=BatchStatus.IN_PROGRESS,
            in_progress_at=now,
            sealed=False,
            input_file_id=None,
            endpoint="/v1/chat/completions",
        )
    else:  # a sealed batch from an OpenAI-format JSONL file
        if not isinstance(file_id, str):
            raise InvalidRequest("'input_file_id' must be a string", param="input_file_id", code="invalid_parameter")
        _, quota = await batches.batch_input_file(gateway, principal, file_id)
        row.update(
            status=BatchStatus.VALIDATING,
            sealed=True,
            input_file_id=file_id,
            endpoint=await _first_endpoint(gateway, file_id),
        )
    await batches.insert_within_quota(gateway, row, quota)
    gateway.notify()
    stored = await gateway.store.get_batch(row["id"])
    assert stored is not None
    return JSON(await xai_batch(gateway, stored))


async def _first_endpoint(gateway: Gateway, file_id: str) -> str:
    """The url of the file's first request (a sealed xAI batch takes its endpoint from its lines)."""
    head = b""
    async for chunk in gateway.blobs.iter_chunks(file_id, 64 * 1024):
        head = chunk
        break
    for line in head.splitlines():
        if line.strip():
            try:
                url = orjson.loads(line).get("url")
            except (orjson.JSONDecodeError, AttributeError):
                break
            if url in SERVED_ENDPOINTS:
                return url
            break
    return "/v1/chat/completions"  # validation then reports any line that disagrees


async def list_batches(request: Request) -> JSON:
    principal = await authenticate(request)
    gateway = gateway_of(request)
    limit = int_param(request, "limit", 100, 1, 1000)
    after = decode_token(request, str)
    rows = await gateway.store.list_batches(after=after, limit=limit + 1, team_id=principal.team_id)
    page = rows[:limit]
    token = encode_token(page[-1]["id"]) if len(rows) > limit else None
    return JSON({"batches": [await xai_batch(gateway, r) for r in page], "pagination_token": token})


async def get_batch(request: Request) -> JSON:
    row = await visible_batch(request, await authenticate(request))
    return JSON(await xai_batch(gateway_of(request), row))


async def cancel_batch(request: Request) -> JSON:
    gateway = gateway_of(request)
    row = await visible_batch(request, await authenticate(request))
    return JSON(await xai_batch(gateway, await batches.request_cancel(gateway, row)))


async def add_requests(request: Request) -> JSON:
    principal = await authenticate(request)
    gateway = gateway_of(request)
    limits = gateway.settings.limits
    batch = await visible_batch(request, principal)
    # Request bodies go to a blob and may hold anything; only the ids and the model reach the database.
    data = await json_object(request, max_bytes=limits.max_add_bytes, allow_nul=True)
    configured = principal.allowed_models([m.name for m in gateway.settings.models])
    try:
        items, model = parse_add_requests(data, known_models=configured, max_items=limits.max_add_requests)
    except orjson.JSONEncodeError as exc:  # written back as an input line: orjson writes 254 levels at most
        raise InvalidRequest(
            f"a request in 'batch_requests' nests JSON too deeply to be stored ({exc})",
            param="batch_requests",
            code="invalid_request",
        ) from None
    for index, item in enumerate(items):
        if "\x00" in item.request_id:
            raise InvalidRequest(
                f"batch_requests[{index}]: batch_request_id must not contain NUL characters",
                param=f"batch_requests[{index}].batch_request_id",
                code="invalid_request",
            )
    quota = await batches.admission(gateway, principal, len(items))
    segment = "seg_" + ids.new_ulid()
    writer = await gateway.blobs.writer(segment)
    rows, offset, now = [], 0, time.time()
    try:
        for item in items:
            await writer.write(item.line + b"\n")
            rows.append(
                {
                    "custom_id": item.request_id,
                    "offset": offset,
                    "length": len(item.line),
                    "state": RequestState.PENDING,
                    "attempts": 0,
                    "next_attempt_at": 0.0,
                    "blob_key": segment,
                    "endpoint": item.endpoint,
                    "created_at": now,
                }
            )
            offset += len(item.line) + 1
        await writer.commit()
    except BaseException:
        await writer.abort()
        raise
    try:
        await gateway.store.append_requests(batch["id"], rows, model, limits.max_requests_per_batch, quota)
    except DuplicateRequestIds as exc:
        await gateway.blobs.delete(segment)
        index = min(i for i, item in enumerate(items) if item.request_id in set(exc.ids))
        raise InvalidRequest(
            f"batch_requests[{index}]: batch_request_id {items[index].request_id!r} is already in batch {batch['id']}",
            param=f"batch_requests[{index}].batch_request_id",
            code="duplicate_batch_request_id",
        ) from exc
    except (BatchClosed, MismatchedModel, BatchFull) as exc:
        await gateway.blobs.delete(segment)
        raise _add_error(batch, exc) from exc
    except (QueueFull, TooManyOpenBatches) as exc:
        await gateway.blobs.delete(segment)
        raise batches.quota_error(exc, quota) from None
    except BaseException:
        await gateway.blobs.delete(segment)
        raise
    gateway.notify(urgent=False)
    return JSON({})


def _add_error(batch: Row, exc: Exception) -> APIError:
    if isinstance(exc, BatchClosed):
        if exc.sealed:
            return InvalidRequest(
                f"batch {batch['id']} was created from a file and takes no more requests",
                param="batch_id",
                code="batch_sealed",
            )
        return Conflict(
            f"batch {batch['id']} is {exc.status}; requests can no longer be added",
            param="batch_id",
            code="batch_not_open",
        )
    if isinstance(exc, MismatchedModel):
        return InvalidRequest(
            f"batch {batch['id']} runs model {exc.model!r}; one model per batch",
            param="batch_requests",
            code="mismatched_model",
        )
    if isinstance(exc, BatchFull):
        return InvalidRequest(
            f"batch {batch['id']} would exceed its limit of requests ({exc.total} already)",
            param="batch_requests",
            code="too_many_requests",
        )
    raise exc


async def list_requests(request: Request) -> JSON:
    principal = await authenticate(request)
    gateway = gateway_of(request)
    batch = await visible_batch(request, principal)
    limit = int_param(request, "limit", 100, 1, 1000)
    after = decode_token(request, int, MAX_LINE) or 0
    rows = await gateway.store.request_page(batch["id"], after, limit + 1)
    page = rows[:limit]
    return JSON(
        {
            "batch_request_metadata": [
                {
                    "batch_request_id": r["custom_id"],
                    "endpoint": _kind(r["endpoint"] or batch["endpoint"]),
                    "model": batch["model"],
                    "state": _request_state(r),
                    "create_time": rfc3339(r["created_at"] if r["created_at"] is not None else batch["created_at"]),
                    "finish_time": rfc3339(r["finished_at"]),
                }
                for r in page
            ],
            "pagination_token": encode_token(page[-1]["line_no"]) if len(rows) > limit else None,
        }
    )


async def list_results(request: Request) -> StreamingResponse:
    """Results in the order they were stored. The token is a position in that order, so pages read
    while results keep arriving never skip or repeat one; it is sealed (api/sealed_tokens.py), since
    the position is gateway-wide. It is null only at the end of what exists when every request added
    so far has ended (for an open batch, more may be added later). Streamed: a page of large answers
    is never held whole."""
    principal = await authenticate(request)
    gateway = gateway_of(request)
    batch = await visible_batch(request, principal)
    limit = int_param(request, "limit", 100, 1, 1000)
    after = _results_position(request, gateway, batch["id"])
    # Read before the results: a batch seen finished here has every result stored already.
    fresh = await gateway.store.get_batch(batch["id"])
    assert fresh is not None
    unfinished = fresh["status"] == BatchStatus.VALIDATING or (
        fresh["status"] not in TERMINAL and fresh["total"] > fresh["completed"] + fresh["failed"]
    )
    rows = gateway.store.iter_results_by_seq(batch["id"], after_seq=after, limit=limit)
    first = await anext(rows, None)  # a database failure answers 503 before the first byte is sent

    async def body() -> AsyncIterator[bytes]:
        count, position, row = 0, after, first
        yield b'{"results":['
        while row is not None:
            result: dict[str, Any] | None = xai_result(gateway.settings, fresh, row)
            position = row["seq"]
            row = None  # an answer is held once (parsed) while it is sent, and not while the next page is read
            if count:
                yield b","
            for part in slices(orjson.dumps(result)):
                yield part
            count, result = count + 1, None
            row = await anext(rows, None)
        more = count == limit or unfinished
        token = sealed_tokens.seal(gateway.token_secret, batch["id"], position) if more else None
        yield b'],"pagination_token":' + orjson.dumps(token) + b"}"

    return StreamingResponse(body(), media_type="application/json")


def _results_position(request: Request, gateway: Gateway, batch_id: str) -> int:
    raw = request.query_params.get("pagination_token")
    if not raw:
        return 0
    position = sealed_tokens.unseal(gateway.token_secret, batch_id, raw)
    if position is None:
        raise InvalidRequest("invalid pagination_token", param="pagination_token", code="invalid_parameter")
    return position


def routes() -> list[Route]:
    return [
        Route("/batches", create_batch, methods=["POST"]),
        Route("/batches", list_batches, methods=["GET"]),
        Route("/batches/{batch_id}:cancel", cancel_batch, methods=["POST"]),
        Route("/batches/{batch_id}", get_batch, methods=["GET"]),
        Route("/batches/{batch_id}/requests", add_requests, methods=["POST"]),
        Route("/batches/{batch_id}/requests", list_requests, methods=["GET"]),
        Route("/batches/{batch_id}/results", list_results, methods=["GET"]),
    ]
