"""The web console's JSON API, at `/ui/api`: what the console shows that the OpenAI and admin routes
do not (filtered batch lists, progress rates, timelines, request tables, deployment activity).

Auth is the gateway's own: a team key sees its team's objects, the admin key everything, another
team's id answers 404. Polled routes answer 304 to a matching `If-None-Match`. The console uploads,
creates, cancels and downloads through the ordinary `/v1` and `/admin` routes.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from batchgate.api.auth import authenticate
from batchgate.api.context import gateway_of, visible_batch
from batchgate.api.openai.serialize import batch_object
from batchgate.api.params import int_param
from batchgate.api.responses import JSON
from batchgate.domain.errors import InvalidRequest, NotFound
from batchgate.domain.pricing import cost_usd
from batchgate.domain.principal import Principal
from batchgate.domain.status import CANCELLABLE, TERMINAL, BatchStatus, RequestOutcome, RequestState
from batchgate.engine import activity
from batchgate.engine.finalize import result_line
from batchgate.gateway import Gateway
from batchgate.store.records import Row

STATUSES = tuple(BatchStatus)
REQUEST_STATES = tuple(RequestState)
# The names the page shows and filters by, from the one place they are spelled (domain/status.py).
SESSION_STATUSES = {
    "batch": list(BatchStatus),
    "terminal": list(TERMINAL),
    "cancellable": list(CANCELLABLE),
    "request": [[RequestState.PENDING, "Pending"], [RequestState.RUNNING, "Running"], [RequestState.DONE, "Finished"]],
    "request_finished": [RequestOutcome.SUCCEEDED, RequestOutcome.FAILED],
}
# (timestamp column, status it marks), in the order a batch moves through them
TIMELINE = (
    ("created_at", BatchStatus.VALIDATING),
    ("in_progress_at", BatchStatus.IN_PROGRESS),
    ("cancelling_at", BatchStatus.CANCELLING),
    ("finalizing_at", BatchStatus.FINALIZING),
    ("completed_at", BatchStatus.COMPLETED),
    ("failed_at", BatchStatus.FAILED),
    ("expired_at", BatchStatus.EXPIRED),
    ("cancelled_at", BatchStatus.CANCELLED),
)


def polled(request: Request, payload: dict[str, Any]) -> Response:
    """JSON with an ETag of its bytes; 304 when the console already holds exactly this."""
    body = orjson.dumps(payload)
    tag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if tag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def page_of(request: Request, data: list[dict[str, Any]], has_more: bool, cursor: str) -> Response:
    """A polled list page; `cursor` names the field whose last value the next page starts after."""
    return polled(
        request,
        {"object": "list", "data": data, "has_more": has_more, f"last_{cursor}": data[-1][cursor] if data else None},
    )


def optional_choice(request: Request, name: str, choices: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name) or None
    if value is not None and value not in choices:
        raise InvalidRequest(
            f"'{name}' must be one of {', '.join(choices)}, got {value!r}", param=name, code="invalid_parameter"
        )
    return value


def progress(row: Row, now: float) -> dict[str, Any]:
    """Counts with `pending`, and the rate (requests a second since work started) and ETA in seconds."""
    total, done = row["total"], row["completed"] + row["failed"]
    pending = max(0, total - done)
    started = row["in_progress_at"]
    ended = next(
        (
            row[c]
            for c in ("finalizing_at", "completed_at", "failed_at", "expired_at", "cancelled_at")
            if row[c] is not None
        ),
        None,
    )
    elapsed = ((ended or now) - started) if started else 0
    rate = done / max(elapsed, 1) if done and started else None  # timestamps are whole seconds
    running = row["status"] == BatchStatus.IN_PROGRESS
    return {
        "counts": {"total": total, "completed": row["completed"], "failed": row["failed"], "pending": pending},
        "rate_per_s": round(rate, 3) if rate else None,
        "eta_s": round(pending / rate) if rate and running and pending else None,
    }


def batch_summary(row: Row, now: float, team_names: dict[str, str]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "status": row["status"],
        "dialect": row["dialect"],
        "endpoint": row["endpoint"],
        "model": row["model"],
        "created_at": row["created_at"],
        "name": row["name"] or row["job_name"],
        "team": team_names.get(row["team_id"]) if row["team_id"] else None,
        "metadata": orjson.loads(row["metadata"]) if row["metadata"] else None,
        **progress(row, now),
    }


async def team_names(gateway: Gateway, principal: Principal) -> dict[str, str]:
    if principal.is_admin:
        return {t["id"]: t["name"] for t in await gateway.store.list_teams()}
    team = await gateway.store.team_by_id(principal.team_id) if principal.team_id else None
    return {team["id"]: team["name"]} if team else {}


def metadata_needle(raw: str) -> str:
    """`key=value` as it appears in the stored (compact, orjson) metadata JSON: `"key":"value"`.
    A JSON string's quotes are escaped inside it, so the needle matches that exact pair only."""
    key, sep, value = raw.partition("=")
    if not sep or not key:
        raise InvalidRequest("'metadata' must be key=value", param="metadata", code="invalid_parameter")
    return orjson.dumps(key).decode() + ":" + orjson.dumps(value).decode()


async def session(request: Request) -> JSON:
    principal = await authenticate(request)
    gateway = gateway_of(request)
    team = await gateway.store.team_by_id(principal.team_id) if principal.team_id else None
    return JSON(
        {
            "object": "session",
            "admin": principal.is_admin,
            "team": {"id": team["id"], "name": team["name"]} if team else None,
            "key_id": principal.key_id,
            "open_mode": gateway.settings.auth.admin_key is None,
            "engine": gateway.engine is not None,
            "models": principal.allowed_models([m.name for m in gateway.settings.models]),
            "statuses": SESSION_STATUSES,
        }
    )


async def list_batches(request: Request) -> Response:
    principal = await authenticate(request)
    gateway = gateway_of(request)
    params = request.query_params
    limit = int_param(request, "limit", 25, 1, 100)
    status = optional_choice(request, "status", STATUSES)
    names = await team_names(gateway, principal)
    team_id = principal.team_id
    if team := params.get("team"):
        wanted = next((tid for tid, name in names.items() if team in (tid, name)), None)
        if wanted is None:  # unknown, or another team's: an admin learns it is unknown, a team sees nothing
            if principal.is_admin:
                raise NotFound(f"no such team: {team!r}", param="team", code="team_not_found")
            return page_of(request, [], False, "id")
        team_id = wanted
    metadata = params.get("metadata")
    rows = await gateway.store.console_batch_page(
        team_id=team_id,
        after=params.get("after") or None,
        limit=limit + 1,
        status=status,
        model=params.get("model") or None,
        metadata_contains=metadata_needle(metadata) if metadata else None,
    )
    now = time.time()
    data = [batch_summary(r, now, names) for r in rows[:limit]]
    return page_of(request, data, len(rows) > limit, "id")


async def batch_detail(request: Request) -> Response:
    principal = await authenticate(request)
    gateway = gateway_of(request)
    row = await visible_batch(request, principal)
    names = await team_names(gateway, principal)
    timeline = sorted(
        ({"status": status, "at": row[column]} for column, status in TIMELINE if row[column] is not None),
        key=lambda event: event["at"],
    )
    input_file = await gateway.store.get_file(row["input_file_id"], int(time.time())) if row["input_file_id"] else None
    return polled(
        request,
        {
            **batch_summary(row, time.time(), names),
            "batch": batch_object(row),
            "timeline": timeline,
            "cost_usd": round(cost_usd(gateway.settings, row["model"], row["input_tokens"], row["output_tokens"]), 10),
            "input_filename": input_file["filename"] if input_file else None,
            "cancel_message": row["cancel_message"],
        },
    )


def request_state(row: Row) -> str:
    """What a request is doing, as a person reads it: pending, retrying, running, succeeded, failed."""
    if row["state"] == RequestState.DONE:
        return RequestOutcome.SUCCEEDED if row["ok"] else RequestOutcome.FAILED
    if row["state"] == RequestState.PENDING and row["attempts"] > 0:
        return "retrying"
    return row["state"]


async def batch_requests(request: Request) -> Response:
    principal = await authenticate(request)
    gateway = gateway_of(request)
    batch = await visible_batch(request, principal)
    limit = int_param(request, "limit", 50, 1, 500)
    after = int_param(request, "after", 0, 0, 2**31 - 1)
    state = optional_choice(request, "state", REQUEST_STATES)
    rows = await gateway.store.console_request_page(batch["id"], after_line=after, limit=limit + 1, state=state)
    data = [
        {
            "line": r["line_no"],
            "custom_id": r["custom_id"],
            "state": request_state(r),
            "attempts": r["attempts"],
            "status_code": r["status_code"],
            "error_code": r["error_code"],
            "finished_at": r["finished_at"],
        }
        for r in rows[:limit]
    ]
    return page_of(request, data, len(rows) > limit, "line")


async def batch_result(request: Request) -> JSON:
    """One request's output or error line, exactly as the batch's files hold (or will hold) it."""
    principal = await authenticate(request)
    gateway = gateway_of(request)
    batch = await visible_batch(request, principal)
    custom_id = request.query_params.get("custom_id")
    if custom_id is None and request.query_params.get("line") is None:
        raise InvalidRequest("give 'line' or 'custom_id'", param="line", code="missing_required_parameter")
    line_no = None if custom_id is not None else int_param(request, "line", 1, 1, 2**31 - 1)
    row = await gateway.store.console_result(batch["id"], line_no=line_no, custom_id=custom_id)
    if row is None:
        which = f"custom_id {custom_id!r}" if custom_id is not None else f"line {line_no}"
        raise NotFound(
            f"no finished request with {which} in batch {batch['id']}",
            param="custom_id" if custom_id is not None else "line",
            code="result_not_found",
        )
    return JSON(
        {
            "object": "batch.result",
            "line": row["line_no"],
            "custom_id": row["custom_id"],
            "file": "output" if row["ok"] else "error",
            "content": orjson.loads(result_line(batch["id"], row)),
        }
    )


async def deployments(request: Request) -> Response:
    await authenticate(request)
    gateway = gateway_of(request)
    pools = gateway.engine.pools if gateway.engine is not None else {}
    now = time.time()
    # Scale-out (a shared database): the other engines' published minutes join this process's own.
    shared = gateway.store.dialect != "sqlite"
    others = (
        await gateway.store.activity_minutes(
            int(now) // 60 - activity.MINUTES + 1,
            exclude_owner=gateway.engine.owner if gateway.engine is not None else None,
        )
        if shared
        else []
    )
    data = []
    for model in gateway.settings.models:
        live = {d.name: d for d in pools[model.name].deployments} if model.name in pools else {}
        for config in model.deployments:
            deployment = live.get(config.name or "")
            data.append(
                {
                    "name": config.name,
                    "model": model.name,
                    "provider": config.provider,
                    "max_concurrency": config.max_concurrency,
                    "rpm": config.rpm,
                    "tpm": config.tpm,
                    "in_flight": deployment.in_flight if deployment else None,
                    "window": deployment.limits.concurrency if deployment else None,
                    "circuit": deployment.limits.circuit.state if deployment else None,
                    **activity.snapshot(config.name or "", now, others),
                }
            )
    return polled(request, {"object": "list", "engine": gateway.engine is not None, "shared": shared, "data": data})


def routes() -> list[Route]:
    return [
        Route("/session", session, methods=["GET"]),
        Route("/batches", list_batches, methods=["GET"]),
        Route("/batches/{batch_id}", batch_detail, methods=["GET"]),
        Route("/batches/{batch_id}/requests", batch_requests, methods=["GET"]),
        Route("/batches/{batch_id}/result", batch_result, methods=["GET"]),
        Route("/deployments", deployments, methods=["GET"]),
    ]
