"""The one interface every provider implements, and the outcome of one upstream call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(slots=True)
class UpstreamReply:
    """What one attempt produced: an HTTP answer, or an error code when nothing answered."""

    status_code: int | None
    body: bytes | None = None
    request_id: str | None = None
    retry_after_s: float | None = None
    error_code: str | None = None  # request_timeout | upstream_unreachable (no HTTP answer)
    error_message: str | None = None

    @property
    def answered(self) -> bool:
        return self.status_code is not None


class Upstream(Protocol):
    """A deployment's client: send one OpenAI-shaped request body to one endpoint path."""

    async def send(self, endpoint: str, body: dict[str, Any], timeout_s: float) -> UpstreamReply: ...

    async def close(self) -> None: ...


def error_body(message: str, code: str, error_type: str = "invalid_request_error") -> bytes:
    import orjson

    return orjson.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}})


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (HTTP dates are rare from LLM servers and ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
