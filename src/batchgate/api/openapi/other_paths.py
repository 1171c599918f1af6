"""The admin, console and operations routes."""

from __future__ import annotations

from batchgate.api import admin
from batchgate.api.openapi.build import (
    MAX_INT32,
    MAX_INT64,
    OPEN,
    STR,
    Schema,
    json_body,
    json_content,
    list_of,
    obj,
    op,
    path,
    query,
    ref,
)
from batchgate.console import api as console


def admin_paths() -> dict[str, Schema]:
    tag = "admin"
    team = obj(
        {
            "name": {"type": "string", "minLength": 1, "maxLength": admin.MAX_NAME},
            "weight": {"type": ["number", "null"], "minimum": 0.001},
            "budget_usd": {"type": ["number", "null"], "minimum": 0},
            "max_queued_requests": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_INT32},
        },
        ["name"],
    )
    key = obj(
        {
            "team": {"type": "string", "minLength": 1, "maxLength": admin.MAX_NAME, "description": "a team name or id"},
            "name": {"type": ["string", "null"], "minLength": 1, "maxLength": admin.MAX_NAME},
            "models": {"type": ["array", "null"], "items": STR},
            "rpm": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_INT32},
            "budget_usd": {"type": ["number", "null"], "minimum": 0},
        },
        ["team"],
    )
    errors = (403,)
    return {
        "/teams": {
            "post": op("Create a team", tag, ref("Team"), (*errors, 400, 409), body=json_body(team)),
            "get": op("List teams", tag, list_of(ref("Team")), errors),
        },
        "/keys": {
            "post": op(
                "Create an API key (the full key is shown this once)",
                tag,
                ref("ApiKey"),
                (*errors, 400, 404),
                body=json_body(key),
            ),
            "get": op("List API keys (prefixes only)", tag, list_of(ref("ApiKey")), errors),
        },
        "/keys/{key_id}": {
            "delete": op(
                "Revoke an API key",
                tag,
                obj({"id": STR, "object": {"const": "api_key"}, "deleted": {"const": True}}),
                (*errors, 404),
                parameters=[path("key_id")],
            ),
        },
        "/usage": {
            "get": op(
                "Requests, tokens and USD per team, key and model",
                tag,
                ref("Usage"),
                (*errors, 400, 404),
                parameters=[
                    query("team", STR, "a team name or id"),
                    query("key", STR, "an API key id"),
                    query("since", {"type": "integer", "minimum": 0, "maximum": MAX_INT64}, "Unix seconds"),
                    query("batch", STR, "a batch id"),
                ],
            ),
        },
    }


def console_paths() -> dict[str, Schema]:
    """The web console's own JSON API (src/batchgate/console/api.py), under /ui/api."""
    tag, batch_id = "console", path("batch_id")
    listed = obj(
        {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"type": "object"}},
            "has_more": {"type": "boolean"},
        },
        ["object", "data", "has_more"],
    )
    batch_filters = [
        query("status", {"enum": list(console.STATUSES)}),
        query("model", STR),
        query("team", STR, "a team name or id (the admin: any; a team: its own)"),
        query("metadata", STR, "key=value, matched exactly"),
        query("after", STR, "a batch id: the page starts after it"),
        query("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
    ]
    return {
        "/session": {"get": op("Who the key is, and what the console may show", tag, {"type": "object"}, ())},
        "/batches": {
            "get": op(
                "Batches, newest first, filtered, with progress, rate and ETA",
                tag,
                listed,
                (400, 404),
                parameters=batch_filters,
            )
        },
        "/batches/{batch_id}": {
            "get": op(
                "A batch with its timeline, usage and cost", tag, {"type": "object"}, (404,), parameters=[batch_id]
            )
        },
        "/batches/{batch_id}/requests": {
            "get": op(
                "A batch's requests in line order, with state and attempts",
                tag,
                listed,
                (400, 404),
                parameters=[
                    batch_id,
                    query("after", {"type": "integer", "minimum": 0, "maximum": MAX_INT32}, "a line number"),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                    query("state", {"enum": list(console.REQUEST_STATES)}),
                ],
            )
        },
        "/batches/{batch_id}/result": {
            "get": op(
                "One finished request's output or error line",
                tag,
                {"type": "object"},
                (400, 404),
                parameters=[
                    batch_id,
                    query("line", {"type": "integer", "minimum": 1, "maximum": MAX_INT32}),
                    query("custom_id", STR),
                ],
            )
        },
        "/deployments": {
            "get": op(
                "Each deployment's last hour, minute by minute",
                tag,
                obj(
                    {
                        "object": {"const": "list"},
                        "engine": {"type": "boolean"},
                        "shared": {"type": "boolean"},
                        "data": {"type": "array", "items": {"type": "object"}},
                    }
                ),
                (),
            )
        },
    }


def ops_paths() -> dict[str, Schema]:
    return {
        "/health": {"get": op("Liveness", OPEN, obj({"status": {"const": "ok"}}), ())},
        "/ready": {
            "get": op(
                "Readiness: the database and the files storage answer",
                OPEN,
                None,
                (),
                ok_content=json_content(
                    obj({"status": {"const": "ready"}, "checks": {"type": "object", "additionalProperties": STR}})
                ),
            )
        },
        "/metrics": {
            "get": {
                **op(
                    "Prometheus metrics",
                    OPEN,
                    None,
                    (401, 403),
                    ok_content={"content": {"text/plain": {"schema": STR}}},
                ),
                "security": [{}, {"bearer": []}],
                "description": "With an admin key set, the admin key only (403 for a team key); "
                "auth.protect_metrics: false opens it. Open local mode answers anyone.",
            }
        },
        "/openapi.json": {"get": op("This document", OPEN, {"type": "object"}, ())},
        "/ui/{path}": {
            "get": op(
                "The web console's page (the console asks for a key itself)",
                OPEN,
                None,
                (),
                parameters=[path("path")],
                ok_content={"content": {"text/html": {"schema": STR}}},
            )
        },
    }
