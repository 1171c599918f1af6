"""Which upstream outcomes are worth another attempt, and how long to wait before it."""

from __future__ import annotations

import random

from batchgate.upstreams.base import UpstreamReply

# Outcomes without an HTTP answer that another attempt would repeat: the answer was too big, or the
# upstream redirects elsewhere (a configuration matter, not a passing fault).
FINAL_ERRORS = frozenset({"response_too_large", "upstream_redirect"})
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})


def is_retryable(reply: UpstreamReply) -> bool:
    """429, 5xx, timeouts and broken connections may succeed later; any other 4xx will not."""
    if not reply.answered:
        return reply.error_code not in FINAL_ERRORS
    assert reply.status_code is not None
    return reply.status_code in RETRYABLE_STATUS or reply.status_code >= 500


def backoff_s(attempt: int, base_s: float, max_s: float, retry_after_s: float | None = None) -> float:
    """Exponential backoff with full jitter; an upstream's Retry-After is a floor, not a hint."""
    ceiling = min(max_s, base_s * (2 ** max(0, attempt - 1)))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, max_s))
    return delay
