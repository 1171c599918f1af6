"""xAI add-requests payloads: checked whole before anything is stored (the call is all or nothing)."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import orjson

from batchgate.domain.errors import InvalidRequest

# xAI's request kinds batchgate runs, and the OpenAI endpoint each one is.
KIND_ENDPOINTS = {"chat_get_completion": "/v1/chat/completions", "responses": "/v1/responses"}
ENDPOINT_KINDS = {v: k for k, v in KIND_ENDPOINTS.items()}
MAX_REQUEST_ID = 256


@dataclass(frozen=True, slots=True)
class AddedRequest:
    request_id: str
    endpoint: str
    line: bytes  # the request as an OpenAI batch input line, so the engine reads it like any other


def _bad(index: int, message: str, param: str = "") -> InvalidRequest:
    where = f"batch_requests[{index}]"
    return InvalidRequest(f"{where}: {message}", param=where + param, code="invalid_request")


def parse_add_requests(
    data: dict[str, Any], *, known_models: Collection[str], max_items: int
) -> tuple[list[AddedRequest], str]:
    """The items of one add-call, and the one model they all name; the first bad item raises."""
    items = data.get("batch_requests")
    if not isinstance(items, list) or not items:
        raise InvalidRequest(
            "'batch_requests' must be a non-empty list", param="batch_requests", code="missing_required_parameter"
        )
    if len(items) > max_items:
        raise InvalidRequest(
            f"at most {max_items} requests per call, got {len(items)}", param="batch_requests", code="too_many_requests"
        )
    parsed: list[AddedRequest] = []
    seen: set[str] = set()
    model: str | None = None
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise _bad(index, "must be an object")
        request_id = item.get("batch_request_id")
        if request_id is None:
            request_id = str(uuid.uuid4())
        elif not isinstance(request_id, str) or not request_id or len(request_id) > MAX_REQUEST_ID:
            raise _bad(
                index, f"batch_request_id must be a string of 1 to {MAX_REQUEST_ID} characters", ".batch_request_id"
            )
        if request_id in seen:
            raise _bad(index, f"batch_request_id {request_id!r} appears twice in this call", ".batch_request_id")
        seen.add(request_id)
        kind, body = _kind_and_body(index, item.get("batch_request"))
        body_model = body.get("model")
        if not isinstance(body_model, str) or not body_model:
            raise _bad(index, "the request needs a 'model'", f".batch_request.{kind}.model")
        if body_model not in known_models:
            raise _bad(
                index,
                f"model {body_model!r} is not served by this gateway (configured: {', '.join(sorted(known_models))})",
                f".batch_request.{kind}.model",
            )
        if model is not None and body_model != model:
            raise _bad(
                index,
                f"model {body_model!r} differs from {model!r}: one model per batch",
                f".batch_request.{kind}.model",
            )
        model = body_model
        if body.get("stream") is True:
            raise _bad(index, "stream must not be true in a batch", f".batch_request.{kind}.stream")
        endpoint = KIND_ENDPOINTS[kind]
        line = orjson.dumps({"custom_id": request_id, "method": "POST", "url": endpoint, "body": body})
        parsed.append(AddedRequest(request_id, endpoint, line))
    assert model is not None
    return parsed, model


def _kind_and_body(index: int, request: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(request, dict) or len(request) != 1:
        raise _bad(
            index,
            f"batch_request must be an object with exactly one request kind ({', '.join(KIND_ENDPOINTS)})",
            ".batch_request",
        )
    kind, body = next(iter(request.items()))
    if kind not in KIND_ENDPOINTS:
        if "image" in kind or "video" in kind:
            raise _bad(
                index,
                f"request kind {kind!r} is not served by batchgate (it runs {', '.join(KIND_ENDPOINTS)})",
                f".batch_request.{kind}",
            )
        raise _bad(
            index,
            f"unknown request kind {kind!r}; expected one of {', '.join(KIND_ENDPOINTS)}",
            f".batch_request.{kind}",
        )
    if not isinstance(body, dict):
        raise _bad(index, f"{kind} must be an object", f".batch_request.{kind}")
    return kind, body
