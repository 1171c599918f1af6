"""Admin API (admin key only): teams, API keys and usage. `batchgate keys …` and `usage` wrap it."""

from __future__ import annotations

import time
from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.routing import Route

from batchgate.api.auth import authenticate_admin
from batchgate.api.context import gateway_of
from batchgate.api.params import json_object
from batchgate.api.responses import JSON
from batchgate.domain import ids
from batchgate.domain.errors import Conflict, InvalidRequest, NotFound
from batchgate.domain.keys import hash_key, new_key, shown_prefix
from batchgate.domain.pricing import cost_usd
from batchgate.store.records import Row

MAX_NAME = 128
# Largest values the columns hold (rpm and max_queued_requests are INTEGER, timestamps BIGINT): a
# larger one would fail in the database (a 500), not here.
MAX_INT32, MAX_INT64 = 2**31 - 1, 2**63 - 1


def _optional_number(data: dict[str, Any], name: str, kind: type, minimum: float) -> Any:
    value = data.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float) if kind is float else int)
        or value < minimum
        or (kind is int and value > MAX_INT32)
    ):
        what = f"a number ≥ {minimum}" if kind is float else f"a whole number from {minimum} to {MAX_INT32}"
        raise InvalidRequest(f"'{name}' must be {what}", param=name, code="invalid_parameter")
    return kind(value)


def _name(data: dict[str, Any], name: str, required: bool) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise InvalidRequest(
            f"'{name}' must be a string of 1 to {MAX_NAME} characters",
            param=name,
            code="missing_required_parameter" if value is None else "invalid_parameter",
        )
    return value.strip()


def team_object(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "team",
        "name": row["name"],
        "weight": row["weight"],
        "budget_usd": row["budget_usd"],
        "max_queued_requests": row["max_queued_requests"],
        "created_at": row["created_at"],
    }


def key_object(row: Row, team_name: str) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "api_key",
        "prefix": row["prefix"],
        "team": team_name,
        "name": row["name"],
        "models": orjson.loads(row["models"]) if row["models"] else None,
        "rpm": row["rpm"],
        "budget_usd": row["budget_usd"],
        "created_at": row["created_at"],
        "revoked_at": row["revoked_at"],
    }


async def create_team(request: Request) -> JSON:
    await authenticate_admin(request)
    gateway = gateway_of(request)
    data = await json_object(request)
    row = {
        "id": "team_" + ids.new_ulid(),
        "name": _name(data, "name", True),
        "weight": _optional_number(data, "weight", float, 0.001) or 1.0,
        "budget_usd": _optional_number(data, "budget_usd", float, 0),
        "max_queued_requests": _optional_number(data, "max_queued_requests", int, 0),
        "created_at": int(time.time()),
    }
    try:
        await gateway.store.insert_team(row)
    except IntegrityError:
        raise Conflict(f"a team named {row['name']!r} exists already", param="name", code="team_exists") from None
    return JSON(team_object(row))


async def list_teams(request: Request) -> JSON:
    await authenticate_admin(request)
    gateway = gateway_of(request)
    return JSON({"object": "list", "data": [team_object(t) for t in await gateway.store.list_teams()]})


async def create_key(request: Request) -> JSON:
    await authenticate_admin(request)
    gateway = gateway_of(request)
    data = await json_object(request)
    team_name = _name(data, "team", True)
    assert team_name is not None
    team = await gateway.store.team_by_name(team_name) or await gateway.store.team_by_id(team_name)
    if team is None:
        raise NotFound(f"no such team: {team_name!r}", param="team", code="team_not_found")
    models = data.get("models")
    if models is not None:
        configured = {m.name for m in gateway.settings.models}
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise InvalidRequest("'models' must be a list of model names", param="models", code="invalid_parameter")
        unknown = [m for m in models if m not in configured]
        if unknown:
            raise InvalidRequest(
                f"unknown models {unknown} (configured: {', '.join(sorted(configured))})",
                param="models",
                code="model_not_found",
            )
    key = new_key()
    row = {
        "id": "key_" + ids.new_ulid(),
        "team_id": team["id"],
        "name": _name(data, "name", False),
        "prefix": shown_prefix(key),
        "key_hash": hash_key(key),
        "models": orjson.dumps(models).decode() if models is not None else None,
        "rpm": _optional_number(data, "rpm", int, 1),
        "budget_usd": _optional_number(data, "budget_usd", float, 0),
        "created_at": int(time.time()),
        "revoked_at": None,
    }
    await gateway.store.insert_key(row)
    return JSON({**key_object(row, team["name"]), "key": key})  # the only time the full key is shown


async def list_keys(request: Request) -> JSON:
    await authenticate_admin(request)
    gateway = gateway_of(request)
    return JSON({"object": "list", "data": [key_object(r, r["team_name"]) for r in await gateway.store.list_keys()]})


async def revoke_key(request: Request) -> JSON:
    await authenticate_admin(request)
    gateway = gateway_of(request)
    key_id = request.path_params["key_id"]
    if await gateway.store.get_key(key_id) is None:
        raise NotFound(f"no such key: {key_id!r}", param="key_id", code="key_not_found")
    await gateway.store.revoke_key(key_id, int(time.time()))
    return JSON({"id": key_id, "object": "api_key", "deleted": True})


async def usage(request: Request) -> JSON:
    await authenticate_admin(request)
    gateway = gateway_of(request)
    team_id = None
    if team_name := request.query_params.get("team"):
        team = await gateway.store.team_by_name(team_name) or await gateway.store.team_by_id(team_name)
        if team is None:
            raise NotFound(f"no such team: {team_name!r}", param="team", code="team_not_found")
        team_id = team["id"]
    since = request.query_params.get("since")
    # ASCII digits only (str.isdigit() also takes '²', which int() refuses), and a BIGINT.
    if since is not None and not (since.isascii() and since.isdigit() and len(since) <= 19 and int(since) <= MAX_INT64):
        raise InvalidRequest("'since' must be a Unix timestamp in seconds", param="since", code="invalid_parameter")
    rows = await gateway.store.usage(
        team_id=team_id,
        key_id=request.query_params.get("key") or None,
        since=int(since) if since else None,
        batch_id=request.query_params.get("batch") or None,
    )
    data = []
    for r in rows:
        # PostgreSQL sums BIGINT columns as NUMERIC (Decimal), which neither float maths nor orjson take.
        counts = {
            name: int(r[name] or 0) for name in ("batches", "completed", "failed", "input_tokens", "output_tokens")
        }
        cost = cost_usd(gateway.settings, r["model"], counts["input_tokens"], counts["output_tokens"])
        data.append(
            {
                "team": r["team"],
                "team_id": r["team_id"],
                "key_id": r["key_id"],
                "model": r["model"],
                "batches": counts["batches"],
                "requests": {"completed": counts["completed"], "failed": counts["failed"]},
                "input_tokens": counts["input_tokens"],
                "output_tokens": counts["output_tokens"],
                "cost_usd": round(cost, 10),
            }
        )
    return JSON({"object": "list", "data": data})


def routes() -> list[Route]:
    return [
        Route("/teams", create_team, methods=["POST"]),
        Route("/teams", list_teams, methods=["GET"]),
        Route("/keys", create_key, methods=["POST"]),
        Route("/keys", list_keys, methods=["GET"]),
        Route("/keys/{key_id}", revoke_key, methods=["DELETE"]),
        Route("/usage", usage, methods=["GET"]),
    ]
