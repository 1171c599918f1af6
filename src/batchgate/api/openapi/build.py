"""The pieces every part of the document is written with: schema and operation helpers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from batchgate.api import admin, tfy_headers

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


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(props: dict[str, Schema], required: list[str] | None = None, *, closed: bool = False) -> Schema:
    """An object with these properties; all required unless `required` says which."""
    schema: Schema = {"type": "object", "properties": props, "required": list(props) if required is None else required}
    if closed:
        schema["additionalProperties"] = False
    return schema


def list_of(item: Schema) -> Schema:
    return obj({"object": {"const": "list"}, "data": {"type": "array", "items": item}})


def page_of(item: Schema) -> Schema:
    return obj(
        {
            "object": {"const": "list"},
            "data": {"type": "array", "items": item},
            "first_id": NULL_STR,
            "last_id": NULL_STR,
            "has_more": {"type": "boolean"},
        }
    )


# ------------------------------------------------------------------ component schemas


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


def json_content(schema: Schema) -> Schema:
    return {"content": {"application/json": {"schema": schema}}}


def op(
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
    responses: dict[str, Schema] = {"200": {"description": "OK", **(ok_content or json_content(ok or {}))}}
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


def query(name: str, schema: Schema, description: str = "") -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def path(name: str) -> Schema:
    # Ids never hold a slash; one would route elsewhere (a 404, or Starlette's 307 for a trailing slash).
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[^/]+$"}}


def header(name: str, description: str) -> Schema:
    return {"name": name, "in": "header", "required": False, "schema": STR, "description": description}


def json_body(schema: Schema) -> Schema:
    return {"required": True, **json_content(schema)}


PROVIDER = header(tfy_headers.PROVIDER_HEADER, "TrueFoundry: pin to this configured deployment name")
