"""What a batch may be created with: endpoints, completion windows, metadata, output expiry."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from batchgate.domain import ids
from batchgate.domain.errors import InvalidRequest
from batchgate.domain.status import BatchStatus

SERVED_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/moderations")
UNSERVED_ENDPOINTS = (
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/images/variations",
    "/v1/videos",
    "/v1/audio/speech",
    "/v1/audio/transcriptions",
)
_WINDOW = re.compile(r"([1-9][0-9]{0,6})([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW_S = 366 * 86400
MAX_METADATA_KEYS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
MIN_OUTPUT_EXPIRY_S, MAX_OUTPUT_EXPIRY_S = 3600, 2_592_000


@dataclass(frozen=True)
class BatchParams:
    input_file_id: str
    endpoint: str
    completion_window: str
    window_s: int
    metadata: dict[str, str] | None
    output_expires_after: int | None


def _bad(message: str, param: str, code: str = "invalid_parameter") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def parse_endpoint(value: Any) -> str:
    if value is None:
        raise _bad("missing required parameter 'endpoint'", "endpoint", "missing_required_parameter")
    if value in UNSERVED_ENDPOINTS:
        raise _bad(
            f"endpoint {value} is not served by batchgate; it runs {', '.join(SERVED_ENDPOINTS)}",
            "endpoint",
            "unsupported_endpoint",
        )
    if value not in SERVED_ENDPOINTS:
        raise _bad(f"'endpoint' must be one of {', '.join(SERVED_ENDPOINTS)}, got {value!r}", "endpoint")
    return value


def window_seconds(value: Any) -> int:
    """`24h` as OpenAI has it, plus any `<n>s|m|h|d` (a batchgate extension), at most a year."""
    match = _WINDOW.fullmatch(value) if isinstance(value, str) else None
    if value is None:
        raise _bad("missing required parameter 'completion_window'", "completion_window", "missing_required_parameter")
    if not match:
        raise _bad(
            f"'completion_window' must look like '24h' (a number and one of s, m, h, d), got {value!r}",
            "completion_window",
        )
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds > MAX_WINDOW_S:
        raise _bad("'completion_window' may be at most 366 days", "completion_window")
    return seconds


def parse_metadata(value: Any, param: str = "metadata") -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad("'metadata' must be an object of string keys and string values", param)
    if len(value) > MAX_METADATA_KEYS:
        raise _bad(f"'metadata' may have at most {MAX_METADATA_KEYS} keys, got {len(value)}", param)
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise _bad(f"metadata key {key[:20]!r}... is longer than {MAX_METADATA_KEY} characters", param)
        if not isinstance(item, str):
            raise _bad(f"metadata value for {key!r} must be a string", param)
        if len(item) > MAX_METADATA_VALUE:
            raise _bad(f"metadata value for {key!r} is longer than {MAX_METADATA_VALUE} characters", param)
    return value


def parse_output_expiry(value: Any) -> int | None:
    if value is None:
        return None
    param = "output_expires_after"
    if not isinstance(value, dict) or value.get("anchor") != "created_at":
        raise _bad('\'output_expires_after\' must be {"anchor": "created_at", "seconds": N}', param)
    seconds = value.get("seconds")
    if (
        not isinstance(seconds, int)
        or isinstance(seconds, bool)
        or not (MIN_OUTPUT_EXPIRY_S <= seconds <= MAX_OUTPUT_EXPIRY_S)
    ):
        raise _bad(
            f"output_expires_after.seconds must be an integer between {MIN_OUTPUT_EXPIRY_S} and {MAX_OUTPUT_EXPIRY_S}",
            param + ".seconds",
        )
    return seconds


def parse_batch_params(data: dict[str, Any]) -> BatchParams:
    file_id = data.get("input_file_id")
    if not isinstance(file_id, str) or not file_id:
        raise _bad("missing required parameter 'input_file_id'", "input_file_id", "missing_required_parameter")
    endpoint = parse_endpoint(data.get("endpoint"))
    window = data.get("completion_window")
    window_s = window_seconds(window)  # refuses anything but a window string
    assert isinstance(window, str)
    return BatchParams(
        file_id,
        endpoint,
        window,
        window_s,
        parse_metadata(data.get("metadata")),
        parse_output_expiry(data.get("output_expires_after")),
    )


def new_batch_row(
    params: BatchParams, *, team_id: str | None, now: int, model_override: str | None = None
) -> dict[str, Any]:
    return {
        "id": ids.batch_id(),
        "team_id": team_id,
        "endpoint": params.endpoint,
        "model": model_override,
        "model_override": model_override,
        "input_file_id": params.input_file_id,
        "completion_window": params.completion_window,
        "status": BatchStatus.VALIDATING,
        "metadata": orjson.dumps(params.metadata).decode() if params.metadata is not None else None,
        "output_expires_after": params.output_expires_after,
        "created_at": now,
        "expires_at": now + params.window_s,
        "total": 0,
        "completed": 0,
        "failed": 0,
        "input_tokens": 0,
        "cached_tokens": 0,
        "output_tokens": 0,
        "reasoning_tokens": 0,
    }
