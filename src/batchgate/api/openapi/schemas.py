"""The objects the API answers with (components/schemas)."""

from __future__ import annotations

from batchgate.api.openapi.build import INT, NULL_INT, NULL_NUM, NULL_STR, STR, Schema, list_of, obj, page_of, ref
from batchgate.domain.status import BatchStatus, RequestOutcome


def schemas() -> dict[str, Schema]:
    usage = obj(
        {
            "input_tokens": INT,
            "input_tokens_details": obj({"cached_tokens": INT}),
            "output_tokens": INT,
            "output_tokens_details": obj({"reasoning_tokens": INT}),
            "total_tokens": INT,
        }
    )
    validation_error = obj({"code": STR, "message": STR, "param": NULL_STR, "line": NULL_INT})
    batch_props: dict[str, Schema] = {
        "id": STR,
        "object": {"const": "batch"},
        "endpoint": STR,
        "model": NULL_STR,
        "errors": {
            "oneOf": [
                {"type": "null"},
                obj({"object": {"const": "list"}, "data": {"type": "array", "items": validation_error}, "total": INT}),
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
        "request_counts": obj({"total": INT, "completed": INT, "failed": INT}),
        "usage": usage,
        "metadata": {"type": ["object", "null"], "additionalProperties": STR},
        "job_name": STR,  # TrueFoundry's, present when the batch was created with one
    }
    rfc3339 = {"type": "string", "format": "date-time"}
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    xai_batch = obj(
        {
            "batch_id": STR,
            "name": NULL_STR,
            "input_file_id": NULL_STR,
            "create_time": rfc3339,
            "create_api_key_id": NULL_STR,
            "expire_time": rfc3339,
            "cancel_time": nullable_time,
            "cancel_by_xai_message": NULL_STR,
            "state": obj(
                {k: INT for k in ("num_requests", "num_pending", "num_success", "num_error", "num_cancelled")}
            ),
            "cost_breakdown": obj(
                {
                    "total_cost_usd_ticks": INT,
                    "calculation_time": rfc3339,
                    "endpoint_costs": {
                        "type": "array",
                        "items": obj({"endpoint": STR, "cost_usd_ticks": INT, "request_count": INT}),
                    },
                }
            ),
        }
    )
    return {
        "Error": obj(
            {"error": obj({"message": STR, "type": STR, "param": NULL_STR, "code": NULL_STR}, closed=True)},
            closed=True,
        ),
        "File": obj(
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
        "FileList": page_of(ref("File")),
        "DeletedFile": obj({"id": STR, "object": {"const": "file"}, "deleted": {"const": True}}),
        "Batch": obj(batch_props, [k for k in batch_props if k != "job_name"]),
        "BatchList": page_of(ref("Batch")),
        "OutputLine": obj(
            {
                "id": STR,
                "custom_id": STR,
                "response": obj({"status_code": INT, "request_id": STR, "body": {}}),
                "error": {"type": "null"},
            }
        ),
        "ModelList": list_of(obj({"id": STR, "object": {"const": "model"}, "created": INT, "owned_by": STR})),
        "XaiBatch": xai_batch,
        "XaiBatchList": obj({"batches": {"type": "array", "items": ref("XaiBatch")}, "pagination_token": NULL_STR}),
        "XaiRequestList": obj(
            {
                "batch_request_metadata": {
                    "type": "array",
                    "items": obj(
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
        "XaiResultList": obj(
            {
                "results": {
                    "type": "array",
                    "items": obj(
                        {"batch_request_id": STR, "batch_result": {"type": "object"}, "error_message": STR},
                        ["batch_request_id", "batch_result"],
                    ),
                },
                "pagination_token": NULL_STR,
            }
        ),
        "Team": obj(
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
        "ApiKey": obj(
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
        "Usage": list_of(
            obj(
                {
                    "team": NULL_STR,
                    "team_id": NULL_STR,
                    "key_id": NULL_STR,
                    "model": NULL_STR,
                    "batches": INT,
                    "requests": obj({"completed": INT, "failed": INT}),
                    "input_tokens": INT,
                    "output_tokens": INT,
                    "cost_usd": {"type": "number"},
                }
            )
        ),
    }


# ------------------------------------------------------------------ operations
