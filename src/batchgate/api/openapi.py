"""The OpenAPI 3.1 description of every route, served at `GET /openapi.json`.

The app is plain Starlette (no FastAPI models to derive it from), so the document is written out
here, next to the handlers' own limits it quotes. tests/fuzz checks that it names every mounted
route and nothing else, and fuzzes the server against it (schemathesis).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from batchgate import __version__
from batchgate.api import admin, tfy_headers, xai
from batchgate.api.openai import files
from batchgate.api.responses import JSON
from batchgate.console import api as console
from batchgate.domain.params import (
    MAX_METADATA_KEY,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE,
    MAX_OUTPUT_EXPIRY_S,
    MIN_OUTPUT_EXPIRY_S,
    SERVED_ENDPOINTS,
)
from batchgate.domain.status import BatchStatus, RequestOutcome
from batchgate.domain.xai_requests import KIND_ENDPOINTS, MAX_REQUEST_ID

Schema = dict[str, Any]

# The OpenAI surface is mounted under each of these (TrueFoundry's paths too); app.py mounts the same list.
OPENAI_PREFIXES = ("/v1", "/api/llm/api/inference/openai", "/api/llm")
OPEN = "ops"  # tag of the routes that never need a key

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NULL_STR: Schema = {"type": ["string", "null"]}
NULL_INT: Schema = {"type": ["integer", "null"]}
NULL_NUM: Schema = {"type": ["number", "null"]}
MAX_INT32, MAX_INT64 = admin.MAX_INT32, admin.MAX_INT64


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Schema], required: list[str] | None = None, *, closed: bool = False) -> Schema:
    """An object with these properties; all required unless `required` says which."""
    schema: Schema = {"type": "object", "properties": props, "required": list(props) if required is None else required}
    if closed:
        schema["additionalProperties"] = False
    return schema


def _list_of(item: Schema) -> Schema:
    return _obj({"object": {"const": "list"}, "data": {"type": "array", "items": item}})


def _page_of(item: Schema) -> Schema:
    return _obj(
        {
            "object": {"const": "list"},
            "data": {"type": "array", "items": item},
            "first_id": NULL_STR,
            "last_id": NULL_STR,
            "has_more": {"type": "boolean"},
        }
    )


# ------------------------------------------------------------------ component schemas
def _schemas() -> dict[str, Schema]:
    usage = _obj(
        {
            "input_tokens": INT,
            "input_tokens_details": _obj({"cached_tokens": INT}),
            "output_tokens": INT,
            "output_tokens_details": _obj({"reasoning_tokens": INT}),
            "total_tokens": INT,
        }
    )
    validation_error = _obj({"code": STR, "message": STR, "param": NULL_STR, "line": NULL_INT})
    batch_props: dict[str, Schema] = {
        "id": STR,
        "object": {"const": "batch"},
        "endpoint": STR,
        "model": NULL_STR,
        "errors": {
            "oneOf": [
                {"type": "null"},
                _obj({"object": {"const": "list"}, "data": {"type": "array", "items": validation_error}, "total": INT}),
            ]
        },
        "input_file_id": NULL_STR,
        "completion_window": STR,
        "status": {"enum": list(BatchStatus)},
        "output_file_id": NULL_STR,
        "error_file_id": NULL_STR,
        "created_at": INT,
        "in_progress_at": NULL_INT,
        "expires_at": INT,
        "finalizing_at": NULL_INT,
        "completed_at": NULL_INT,
        "failed_at": NULL_INT,
        "expired_at": NULL_INT,
        "cancelling_at": NULL_INT,
        "cancelled_at": NULL_INT,
        "request_counts": _obj({"total": INT, "completed": INT, "failed": INT}),
        "usage": usage,
        "metadata": {"type": ["object", "null"], "additionalProperties": STR},
        "job_name": STR,  # TrueFoundry's, present when the batch was created with one
    }
    rfc3339 = {"type": "string", "format": "date-time"}
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    xai_batch = _obj(
        {
            "batch_id": STR,
            "name": NULL_STR,
            "input_file_id": NULL_STR,
            "create_time": rfc3339,
            "create_api_key_id": NULL_STR,
            "expire_time": rfc3339,
            "cancel_time": nullable_time,
            "cancel_by_xai_message": NULL_STR,
            "state": _obj(
                {k: INT for k in ("num_requests", "num_pending", "num_success", "num_error", "num_cancelled")}
            ),
            "cost_breakdown": _obj(
                {
                    "total_cost_usd_ticks": INT,
                    "calculation_time": rfc3339,
                    "endpoint_costs": {
                        "type": "array",
                        "items": _obj({"endpoint": STR, "cost_usd_ticks": INT, "request_count": INT}),
                    },
                }
            ),
        }
    )
    return {
        "Error": _obj(
            {"error": _obj({"message": STR, "type": STR, "param": NULL_STR, "code": NULL_STR}, closed=True)},
            closed=True,
        ),
        "File": _obj(
            {
                "id": STR,
                "object": {"const": "file"},
                "bytes": INT,
                "created_at": INT,
                "expires_at": NULL_INT,
                "filename": STR,
                "purpose": STR,
                "status": {"const": "processed"},
                "status_details": {"type": "null"},
            }
        ),
        "FileList": _page_of(_ref("File")),
        "DeletedFile": _obj({"id": STR, "object": {"const": "file"}, "deleted": {"const": True}}),
        "Batch": _obj(batch_props, [k for k in batch_props if k != "job_name"]),
        "BatchList": _page_of(_ref("Batch")),
        "OutputLine": _obj(
            {
                "id": STR,
                "custom_id": STR,
                "response": _obj({"status_code": INT, "request_id": STR, "body": {}}),
                "error": {"type": "null"},
            }
        ),
        "ModelList": _list_of(_obj({"id": STR, "object": {"const": "model"}, "created": INT, "owned_by": STR})),
        "XaiBatch": xai_batch,
        "XaiBatchList": _obj({"batches": {"type": "array", "items": _ref("XaiBatch")}, "pagination_token": NULL_STR}),
        "XaiRequestList": _obj(
            {
                "batch_request_metadata": {
                    "type": "array",
                    "items": _obj(
                        {
                            "batch_request_id": STR,
                            "endpoint": STR,
                            "model": NULL_STR,
                            "state": {"enum": list(RequestOutcome)},
                            "create_time": rfc3339,
                            "finish_time": nullable_time,
                        }
                    ),
                },
                "pagination_token": NULL_STR,
            }
        ),
        "XaiResultList": _obj(
            {
                "results": {
                    "type": "array",
                    "items": _obj(
                        {"batch_request_id": STR, "batch_result": {"type": "object"}, "error_message": STR},
                        ["batch_request_id", "batch_result"],
                    ),
                },
                "pagination_token": NULL_STR,
            }
        ),
        "Team": _obj(
            {
                "id": STR,
                "object": {"const": "team"},
                "name": STR,
                "weight": {"type": "number"},
                "budget_usd": NULL_NUM,
                "max_queued_requests": NULL_INT,
                "created_at": INT,
            }
        ),
        "ApiKey": _obj(
            {
                "id": STR,
                "object": {"const": "api_key"},
                "prefix": STR,
                "team": STR,
                "name": NULL_STR,
                "models": {"type": ["array", "null"], "items": STR},
                "rpm": NULL_INT,
                "budget_usd": NULL_NUM,
                "created_at": INT,
                "revoked_at": NULL_INT,
                "key": STR,
            },
            ["id", "object", "prefix", "team", "name", "models", "rpm", "budget_usd", "created_at", "revoked_at"],
        ),
        "Usage": _list_of(
            _obj(
                {
                    "team": NULL_STR,
                    "team_id": NULL_STR,
                    "key_id": NULL_STR,
                    "model": NULL_STR,
                    "batches": INT,
                    "requests": _obj({"completed": INT, "failed": INT}),
                    "input_tokens": INT,
                    "output_tokens": INT,
                    "cost_usd": {"type": "number"},
                }
            )
        ),
    }


# ------------------------------------------------------------------ operations
ERROR_TEXT = {
    400: "A bad parameter, named in `error.param`",
    401: "Missing or invalid API key",
    403: "This route needs the admin key",
    404: "No such object (or another team's)",
    409: "The object's state forbids it",
    413: "The upload is over `limits.max_upload_bytes`",
    429: "A key's rpm, a team's queue cap or a budget",
    500: "The stored blob is missing or not what was uploaded (file_corrupted)",
    503: "The files storage is unavailable",
    507: "The files storage is full",
}


def _json(schema: Schema) -> Schema:
    return {"content": {"application/json": {"schema": schema}}}


def _op(
    summary: str,
    tag: str,
    ok: Schema | None,
    errors: tuple[int, ...],
    *,
    parameters: Sequence[Schema] = (),
    body: Schema | None = None,
    ok_content: Schema | None = None,
) -> Schema:
    """One operation: `ok` is the 200 JSON schema (or `ok_content` the whole 200 content); `errors` the
    statuses it may answer with the error envelope. Every keyed route may also answer 401 and 429."""
    keyed = tag != OPEN
    codes = sorted({*errors, *((401, 429) if keyed else ())})
    responses: dict[str, Schema] = {"200": {"description": "OK", **(ok_content or _json(ok or {}))}}
    for code in codes:
        responses[str(code)] = {"$ref": f"#/components/responses/E{code}"}
    op: Schema = {"summary": summary, "tags": [tag], "responses": responses}
    if parameters:
        op["parameters"] = list(parameters)
    if body is not None:
        op["requestBody"] = body
    if not keyed:
        op["security"] = []
    return op


def _query(name: str, schema: Schema, description: str = "") -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str) -> Schema:
    # Ids never hold a slash; one would route elsewhere (a 404, or Starlette's 307 for a trailing slash).
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[^/]+$"}}


def _header(name: str, description: str) -> Schema:
    return {"name": name, "in": "header", "required": False, "schema": STR, "description": description}


def _json_body(schema: Schema) -> Schema:
    return {"required": True, **_json(schema)}


PROVIDER = _header(tfy_headers.PROVIDER_HEADER, "TrueFoundry: pin to this configured deployment name")


def _openai_paths(tag: str) -> dict[str, Schema]:
    upload = _obj(
        {
            "file": {"type": "string", "format": "binary"},
            "purpose": {"enum": list(files.PURPOSES)},
            "expires_after[anchor]": {"const": "created_at"},
            "expires_after[seconds]": {"type": "integer", "minimum": files.MIN_EXPIRY_S, "maximum": files.MAX_EXPIRY_S},
        },
        ["file", "purpose"],
    )
    create = _obj(
        {
            "input_file_id": {"type": "string", "minLength": 1},
            "endpoint": {"enum": list(SERVED_ENDPOINTS)},
            "completion_window": {
                "type": "string",
                "pattern": "^[1-9][0-9]{0,6}[smhd]$",
                "description": "24h, or any <n>s|m|h|d up to 366 days",
            },
            "metadata": {
                "type": ["object", "null"],
                "maxProperties": MAX_METADATA_KEYS,
                "propertyNames": {"maxLength": MAX_METADATA_KEY},
                "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE},
            },
            "output_expires_after": {
                "type": ["object", "null"],
                "required": ["anchor", "seconds"],
                "properties": {
                    "anchor": {"const": "created_at"},
                    "seconds": {"type": "integer", "minimum": MIN_OUTPUT_EXPIRY_S, "maximum": MAX_OUTPUT_EXPIRY_S},
                },
            },
            "job_name": {"type": ["string", "null"], "minLength": 1, "maxLength": tfy_headers.MAX_JOB_NAME},
        },
        ["input_file_id", "endpoint", "completion_window"],
    )
    file_id, batch_id = _path("file_id"), _path("batch_id")
    return {
        "/files": {
            "post": _op(
                "Upload a file (streamed to storage)",
                tag,
                _ref("File"),
                (400, 413, 503, 507),
                parameters=[PROVIDER],
                body={"required": True, "content": {"multipart/form-data": {"schema": upload}}},
            ),
            "get": _op(
                "List files",
                tag,
                _ref("FileList"),
                (400,),
                parameters=[
                    _query("after", STR, "a file id: the page starts after it"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000}),
                    _query("order", {"enum": ["asc", "desc"]}),
                    _query("purpose", {"enum": list(files.LISTABLE_PURPOSES)}),
                ],
            ),
        },
        "/files/{file_id}": {
            "get": _op("Retrieve a file", tag, _ref("File"), (404,), parameters=[file_id]),
            "delete": _op("Delete a file", tag, _ref("DeletedFile"), (404, 409), parameters=[file_id]),
        },
        "/files/{file_id}/content": {
            "get": _op(
                "A file's bytes",
                tag,
                None,
                (404, 500),
                parameters=[file_id],
                ok_content={
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
                },
            ),
        },
        "/batches": {
            "post": _op(
                "Create a batch",
                tag,
                _ref("Batch"),
                (400, 404),
                body=_json_body(create),
                parameters=[
                    _header(tfy_headers.METADATA_HEADER, "TrueFoundry: a JSON object of strings merged into metadata"),
                    PROVIDER,
                ],
            ),
            "get": _op(
                "List batches, newest first",
                tag,
                _ref("BatchList"),
                (400,),
                parameters=[
                    _query("after", STR, "a batch id: the page starts after it"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
                ],
            ),
        },
        "/batches/{batch_id}": {"get": _op("Retrieve a batch", tag, _ref("Batch"), (404,), parameters=[batch_id])},
        "/batches/{batch_id}/cancel": {
            "post": _op("Cancel a batch", tag, _ref("Batch"), (404, 409), parameters=[batch_id]),
        },
        "/batches/{batch_id}/output": {
            "get": _op(
                "TrueFoundry: the output lines finished so far",
                tag,
                {"type": "array", "items": _ref("OutputLine")},
                (404,),
                parameters=[batch_id],
            ),
        },
        "/models": {"get": _op("The configured models", tag, _ref("ModelList"), ())},
    }


def _xai_paths() -> dict[str, Schema]:
    tag, batch_id = "xai", _path("batch_id")
    paging = [
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
        _query("pagination_token", STR, "the previous page's pagination_token"),
    ]
    create = _obj(
        {
            "name": {"type": "string", "minLength": 1, "maxLength": xai.MAX_NAME},
            "input_file_id": {"type": ["string", "null"]},
        },
        ["name"],
    )
    item = _obj(
        {
            "batch_request_id": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_REQUEST_ID},
            "batch_request": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "propertyNames": {"enum": list(KIND_ENDPOINTS)},
                "additionalProperties": _obj({"model": STR}, ["model"]),
            },
        },
        ["batch_request"],
    )
    add = _obj({"batch_requests": {"type": "array", "minItems": 1, "items": item}})
    return {
        "/batches": {
            "post": _op(
                "Create an open batch, or a sealed one from a file",
                tag,
                _ref("XaiBatch"),
                (400, 404),
                body=_json_body(create),
            ),
            "get": _op("List batches", tag, _ref("XaiBatchList"), (400,), parameters=paging),
        },
        "/batches/{batch_id}": {"get": _op("Retrieve a batch", tag, _ref("XaiBatch"), (404,), parameters=[batch_id])},
        "/batches/{batch_id}:cancel": {
            "post": _op("Cancel a batch", tag, _ref("XaiBatch"), (404, 409), parameters=[batch_id]),
        },
        "/batches/{batch_id}/requests": {
            "post": _op(
                "Add requests (all or nothing)",
                tag,
                {"type": "object", "maxProperties": 0},
                (400, 404, 409),
                parameters=[batch_id],
                body=_json_body(add),
            ),
            "get": _op(
                "The batch's requests and their state",
                tag,
                _ref("XaiRequestList"),
                (400, 404),
                parameters=[batch_id, *paging],
            ),
        },
        "/batches/{batch_id}/results": {
            "get": _op(
                "Results, readable while the batch runs",
                tag,
                _ref("XaiResultList"),
                (400, 404),
                parameters=[batch_id, *paging],
            ),
        },
    }


def _admin_paths() -> dict[str, Schema]:
    tag = "admin"
    team = _obj(
        {
            "name": {"type": "string", "minLength": 1, "maxLength": admin.MAX_NAME},
            "weight": {"type": ["number", "null"], "minimum": 0.001},
            "budget_usd": {"type": ["number", "null"], "minimum": 0},
            "max_queued_requests": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_INT32},
        },
        ["name"],
    )
    key = _obj(
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
            "post": _op("Create a team", tag, _ref("Team"), (*errors, 400, 409), body=_json_body(team)),
            "get": _op("List teams", tag, _list_of(_ref("Team")), errors),
        },
        "/keys": {
            "post": _op(
                "Create an API key (the full key is shown this once)",
                tag,
                _ref("ApiKey"),
                (*errors, 400, 404),
                body=_json_body(key),
            ),
            "get": _op("List API keys (prefixes only)", tag, _list_of(_ref("ApiKey")), errors),
        },
        "/keys/{key_id}": {
            "delete": _op(
                "Revoke an API key",
                tag,
                _obj({"id": STR, "object": {"const": "api_key"}, "deleted": {"const": True}}),
                (*errors, 404),
                parameters=[_path("key_id")],
            ),
        },
        "/usage": {
            "get": _op(
                "Requests, tokens and USD per team, key and model",
                tag,
                _ref("Usage"),
                (*errors, 400, 404),
                parameters=[
                    _query("team", STR, "a team name or id"),
                    _query("key", STR, "an API key id"),
                    _query("since", {"type": "integer", "minimum": 0, "maximum": MAX_INT64}, "Unix seconds"),
                    _query("batch", STR, "a batch id"),
                ],
            ),
        },
    }


def _console_paths() -> dict[str, Schema]:
    """The web console's own JSON API (src/batchgate/console/api.py), under /ui/api."""
    tag, batch_id = "console", _path("batch_id")
    listed = _obj(
        {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"type": "object"}},
            "has_more": {"type": "boolean"},
        },
        ["object", "data", "has_more"],
    )
    batch_filters = [
        _query("status", {"enum": list(console.STATUSES)}),
        _query("model", STR),
        _query("team", STR, "a team name or id (the admin: any; a team: its own)"),
        _query("metadata", STR, "key=value, matched exactly"),
        _query("after", STR, "a batch id: the page starts after it"),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
    ]
    return {
        "/session": {"get": _op("Who the key is, and what the console may show", tag, {"type": "object"}, ())},
        "/batches": {
            "get": _op(
                "Batches, newest first, filtered, with progress, rate and ETA",
                tag,
                listed,
                (400, 404),
                parameters=batch_filters,
            )
        },
        "/batches/{batch_id}": {
            "get": _op(
                "A batch with its timeline, usage and cost", tag, {"type": "object"}, (404,), parameters=[batch_id]
            )
        },
        "/batches/{batch_id}/requests": {
            "get": _op(
                "A batch's requests in line order, with state and attempts",
                tag,
                listed,
                (400, 404),
                parameters=[
                    batch_id,
                    _query("after", {"type": "integer", "minimum": 0, "maximum": MAX_INT32}, "a line number"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                    _query("state", {"enum": list(console.REQUEST_STATES)}),
                ],
            )
        },
        "/batches/{batch_id}/result": {
            "get": _op(
                "One finished request's output or error line",
                tag,
                {"type": "object"},
                (400, 404),
                parameters=[
                    batch_id,
                    _query("line", {"type": "integer", "minimum": 1, "maximum": MAX_INT32}),
                    _query("custom_id", STR),
                ],
            )
        },
        "/deployments": {
            "get": _op(
                "Each deployment's last hour, minute by minute",
                tag,
                _obj(
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


def _ops_paths() -> dict[str, Schema]:
    return {
        "/health": {"get": _op("Liveness", OPEN, _obj({"status": {"const": "ok"}}), ())},
        "/ready": {
            "get": _op(
                "Readiness: the database and the files storage answer",
                OPEN,
                None,
                (),
                ok_content=_json(
                    _obj({"status": {"const": "ready"}, "checks": {"type": "object", "additionalProperties": STR}})
                ),
            )
        },
        "/metrics": {
            "get": {
                **_op(
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
        "/openapi.json": {"get": _op("This document", OPEN, {"type": "object"}, ())},
        "/ui/{path}": {
            "get": _op(
                "The web console's page (the console asks for a key itself)",
                OPEN,
                None,
                (),
                parameters=[_path("path")],
                ok_content={"content": {"text/html": {"schema": STR}}},
            )
        },
    }


def _prefixed(prefix: str, paths: dict[str, Schema]) -> dict[str, Schema]:
    return {prefix + path: item for path, item in paths.items()}


def document() -> Schema:
    paths: dict[str, Schema] = dict(_ops_paths())
    for prefix, tag in zip(OPENAI_PREFIXES, ("openai", "truefoundry", "truefoundry"), strict=True):
        paths.update(_prefixed(prefix, _openai_paths(tag)))
    paths.update(_prefixed("/xai/v1", _xai_paths()))
    paths.update(_prefixed("/admin", _admin_paths()))
    paths.update(_prefixed("/ui/api", _console_paths()))
    for path, item in paths.items():  # operation ids, unique across the prefixes
        for method, op in item.items():
            op["operationId"] = f"{method}_{path.strip('/')}".replace("/", "_").replace("{", "").replace("}", "")
    error = {"description": "", **_json(_ref("Error"))}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "batchgate",
            "version": __version__,
            "description": "OpenAI Files + Batches API (also at TrueFoundry's paths), xAI batches, admin API, "
            "the web console's API.",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "responses": {f"E{code}": {**error, "description": text} for code, text in ERROR_TEXT.items()},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "The admin key or a team's API key"}
            },
        },
        "security": [{"bearer": []}],
    }


async def openapi_json(_: Request) -> JSON:
    return JSON(_cached_document())


@functools.cache
def _cached_document() -> Schema:
    return document()


def routes() -> list[Route]:
    return [Route("/openapi.json", openapi_json, methods=["GET"])]
