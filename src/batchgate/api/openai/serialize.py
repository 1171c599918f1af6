"""Database rows to the JSON objects clients see (OpenAI's File and Batch shapes)."""

from __future__ import annotations

from typing import Any

import orjson

from batchgate.store.records import Row

_BATCH_TIMESTAMPS = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def file_object(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "expires_at": row["expires_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "status_details": None,
    }


def batch_object(row: Row) -> dict[str, Any]:
    input_tokens, output_tokens = row["input_tokens"], row["output_tokens"]
    obj: dict[str, Any] = {
        "id": row["id"],
        "object": "batch",
        "endpoint": row["endpoint"],
        "model": row["model"],
        "errors": orjson.loads(row["errors"]) if row["errors"] else None,
        "input_file_id": row["input_file_id"],
        "completion_window": row["completion_window"],
        "status": row["status"],
        "output_file_id": row["output_file_id"],
        "error_file_id": row["error_file_id"],
    }
    obj.update({name: row[name] for name in _BATCH_TIMESTAMPS})
    obj["request_counts"] = {"total": row["total"], "completed": row["completed"], "failed": row["failed"]}
    obj["usage"] = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": row["cached_tokens"]},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": row["reasoning_tokens"]},
        "total_tokens": input_tokens + output_tokens,
    }
    obj["metadata"] = orjson.loads(row["metadata"]) if row["metadata"] else None
    if row["job_name"] is not None:  # TrueFoundry's job name, kept and returned
        obj["job_name"] = row["job_name"]
    return obj


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
