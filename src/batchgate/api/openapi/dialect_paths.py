"""The OpenAI (and TrueFoundry) and xAI routes."""

from __future__ import annotations

from batchgate.api import tfy_headers, xai
from batchgate.api.openai import files
from batchgate.api.openapi.build import PROVIDER, STR, Schema, header, json_body, obj, op, path, query, ref
from batchgate.domain.params import (
    MAX_METADATA_KEY,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE,
    MAX_OUTPUT_EXPIRY_S,
    MIN_OUTPUT_EXPIRY_S,
    SERVED_ENDPOINTS,
)
from batchgate.domain.xai_requests import KIND_ENDPOINTS, MAX_REQUEST_ID


def openai_paths(tag: str) -> dict[str, Schema]:
    upload = obj(
        {
            "file": {"type": "string", "format": "binary"},
            "purpose": {"enum": list(files.PURPOSES)},
            "expires_after[anchor]": {"const": "created_at"},
            "expires_after[seconds]": {"type": "integer", "minimum": files.MIN_EXPIRY_S, "maximum": files.MAX_EXPIRY_S},
        },
        ["file", "purpose"],
    )
    create = obj(
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
    file_id, batch_id = path("file_id"), path("batch_id")
    return {
        "/files": {
            "post": op(
                "Upload a file (streamed to storage)",
                tag,
                ref("File"),
                (400, 413, 503, 507),
                parameters=[PROVIDER],
                body={"required": True, "content": {"multipart/form-data": {"schema": upload}}},
            ),
            "get": op(
                "List files",
                tag,
                ref("FileList"),
                (400,),
                parameters=[
                    query("after", STR, "a file id: the page starts after it"),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000}),
                    query("order", {"enum": ["asc", "desc"]}),
                    query("purpose", {"enum": list(files.LISTABLE_PURPOSES)}),
                ],
            ),
        },
        "/files/{file_id}": {
            "get": op("Retrieve a file", tag, ref("File"), (404,), parameters=[file_id]),
            "delete": op("Delete a file", tag, ref("DeletedFile"), (404, 409), parameters=[file_id]),
        },
        "/files/{file_id}/content": {
            "get": op(
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
            "post": op(
                "Create a batch",
                tag,
                ref("Batch"),
                (400, 404),
                body=json_body(create),
                parameters=[
                    header(tfy_headers.METADATA_HEADER, "TrueFoundry: a JSON object of strings merged into metadata"),
                    PROVIDER,
                ],
            ),
            "get": op(
                "List batches, newest first",
                tag,
                ref("BatchList"),
                (400,),
                parameters=[
                    query("after", STR, "a batch id: the page starts after it"),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
                ],
            ),
        },
        "/batches/{batch_id}": {"get": op("Retrieve a batch", tag, ref("Batch"), (404,), parameters=[batch_id])},
        "/batches/{batch_id}/cancel": {
            "post": op("Cancel a batch", tag, ref("Batch"), (404, 409), parameters=[batch_id]),
        },
        "/batches/{batch_id}/output": {
            "get": op(
                "TrueFoundry: the output lines finished so far",
                tag,
                {"type": "array", "items": ref("OutputLine")},
                (404,),
                parameters=[batch_id],
            ),
        },
        "/models": {"get": op("The configured models", tag, ref("ModelList"), ())},
    }


def xai_paths() -> dict[str, Schema]:
    tag, batch_id = "xai", path("batch_id")
    paging = [
        query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
        query("pagination_token", STR, "the previous page's pagination_token"),
    ]
    create = obj(
        {
            "name": {"type": "string", "minLength": 1, "maxLength": xai.MAX_NAME},
            "input_file_id": {"type": ["string", "null"]},
        },
        ["name"],
    )
    item = obj(
        {
            "batch_request_id": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_REQUEST_ID},
            "batch_request": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "propertyNames": {"enum": list(KIND_ENDPOINTS)},
                "additionalProperties": obj({"model": STR}, ["model"]),
            },
        },
        ["batch_request"],
    )
    add = obj({"batch_requests": {"type": "array", "minItems": 1, "items": item}})
    return {
        "/batches": {
            "post": op(
                "Create an open batch, or a sealed one from a file",
                tag,
                ref("XaiBatch"),
                (400, 404),
                body=json_body(create),
            ),
            "get": op("List batches", tag, ref("XaiBatchList"), (400,), parameters=paging),
        },
        "/batches/{batch_id}": {"get": op("Retrieve a batch", tag, ref("XaiBatch"), (404,), parameters=[batch_id])},
        "/batches/{batch_id}:cancel": {
            "post": op("Cancel a batch", tag, ref("XaiBatch"), (404, 409), parameters=[batch_id]),
        },
        "/batches/{batch_id}/requests": {
            "post": op(
                "Add requests (all or nothing)",
                tag,
                {"type": "object", "maxProperties": 0},
                (400, 404, 409),
                parameters=[batch_id],
                body=json_body(add),
            ),
            "get": op(
                "The batch's requests and their state",
                tag,
                ref("XaiRequestList"),
                (400, 404),
                parameters=[batch_id, *paging],
            ),
        },
        "/batches/{batch_id}/results": {
            "get": op(
                "Results, readable while the batch runs",
                tag,
                ref("XaiResultList"),
                (400, 404),
                parameters=[batch_id, *paging],
            ),
        },
    }
