"""TrueFoundry's request headers and fields, read on every route its clients use (the OpenAI routes
are mounted at its paths too): `x-tfy-metadata`, `x-tfy-provider-name` and `job_name`."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from batchgate.domain.errors import InvalidRequest
from batchgate.engine.deployments import deployment_names
from batchgate.gateway import Gateway

METADATA_HEADER = "x-tfy-metadata"
PROVIDER_HEADER = "x-tfy-provider-name"
MAX_HEADER_VALUE = 128
MAX_JOB_NAME = 256


def header_metadata(request: Request) -> dict[str, str] | None:
    """`x-tfy-metadata`: a JSON object whose keys and values are strings, values at most 128 characters."""
    raw = request.headers.get(METADATA_HEADER)
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            f"header {METADATA_HEADER} must be a JSON object of strings",
            param=METADATA_HEADER,
            code="invalid_parameter",
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise InvalidRequest(
            f"header {METADATA_HEADER} must be a JSON object whose values are strings",
            param=METADATA_HEADER,
            code="invalid_parameter",
        )
    long = [k for k, v in data.items() if len(v) > MAX_HEADER_VALUE]
    if long:
        raise InvalidRequest(
            f"header {METADATA_HEADER}: the value of {long[0]!r} is longer than {MAX_HEADER_VALUE} characters",
            param=METADATA_HEADER,
            code="invalid_parameter",
        )
    return data


def provider_name(request: Request, gateway: Gateway) -> str | None:
    """`x-tfy-provider-name`: the deployment to run on; only names from the config are accepted."""
    name = request.headers.get(PROVIDER_HEADER)
    if name is None:
        return None
    known = deployment_names(gateway.settings)
    if name not in known:
        raise InvalidRequest(
            f"header {PROVIDER_HEADER}: unknown deployment {name!r} (configured: {', '.join(sorted(known))})",
            param=PROVIDER_HEADER,
            code="invalid_parameter",
        )
    return name


def job_name(data: dict[str, Any]) -> str | None:
    value = data.get("job_name")
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_JOB_NAME:
        raise InvalidRequest(
            f"'job_name' must be a string of 1 to {MAX_JOB_NAME} characters", param="job_name", code="invalid_parameter"
        )
    return value


def metadata_header(request: Request) -> tuple[str, dict[str, str]] | None:
    """`x-tfy-metadata` with its name, as a batch create merges it (errors name the header)."""
    values = header_metadata(request)
    return (METADATA_HEADER, values) if values else None
