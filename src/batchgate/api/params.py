"""Parsing query parameters and JSON bodies into clear 400s."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from batchgate.domain.errors import InvalidRequest


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(
            f"'{name}' must be an integer, got {raw!r}", param=name, code="invalid_parameter"
        ) from None
    if not low <= value <= high:
        raise InvalidRequest(
            f"'{name}' must be between {low} and {high}, got {value}", param=name, code="invalid_parameter"
        )
    return value


def choice_param(request: Request, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = request.query_params.get(name) or default
    if value not in choices:
        raise InvalidRequest(
            f"'{name}' must be one of {', '.join(choices)}, got {value!r}", param=name, code="invalid_parameter"
        )
    return value


async def json_object(request: Request, max_bytes: int = 1 << 20, allow_nul: bool = False) -> dict[str, Any]:
    """The body as a JSON object. Unless `allow_nul`, no string in it (key or value) may hold a NUL
    character: they become ids, names and metadata, which PostgreSQL refuses to store."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise InvalidRequest(f"the JSON body is larger than {max_bytes} bytes", code="invalid_request")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_json")
    if not allow_nul and (path := nul_path(data)) is not None:
        path = path if len(path) <= 200 else path[:197] + "..."
        raise InvalidRequest(
            f"'{path}' must not contain NUL characters (\\u0000)", param=path, code="invalid_parameter"
        )
    return data


def nul_path(value: Any) -> str | None:
    """Where the first NUL character sits in a parsed JSON value (`a.b[2]`), or None. Iterative:
    orjson allows 1024 levels of nesting, more than Python's recursion limit."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return path or "body"
        elif isinstance(item, dict):
            for key, child in item.items():
                child_path = f"{path}.{key}" if path else key
                if "\x00" in key:
                    return child_path
                stack.append((child_path, child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
    return None
