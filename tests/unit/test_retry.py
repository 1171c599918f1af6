"""engine/retry.py: backoff with jitter, Retry-After, what is retryable."""

from __future__ import annotations

import pytest

from batchgate.engine.retry import backoff_s, is_retryable
from batchgate.upstreams.base import UpstreamReply


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 20, 60])
@pytest.mark.parametrize(("base", "cap"), [(0.5, 60.0), (0.01, 0.05), (1.0, 1.0)])
def test_backoff_is_jittered_within_half_to_full_exponential_ceiling(attempt: int, base: float, cap: float) -> None:
    ceiling = min(cap, base * 2 ** (attempt - 1))
    for _ in range(200):
        delay = backoff_s(attempt, base, cap)
        assert ceiling / 2 <= delay <= ceiling
        assert delay <= cap


def test_backoff_grows_with_attempts_until_the_cap() -> None:
    # Lower bound of attempt n+1 equals the upper bound of attempt n while under the cap.
    for attempt in range(1, 6):
        low_next = min(60.0, 0.1 * 2**attempt) / 2
        assert all(backoff_s(attempt, 0.1, 60.0) <= low_next + 1e-12 for _ in range(50))
    assert all(30.0 <= backoff_s(40, 0.1, 60.0) <= 60.0 for _ in range(50))


def test_backoff_attempt_zero_or_negative_is_treated_as_the_first() -> None:
    for attempt in (0, -3):
        assert all(0.25 <= backoff_s(attempt, 0.5, 60.0) <= 0.5 for _ in range(50))


@pytest.mark.parametrize("retry_after", [0.0, 0.3, 1.0, 7.5, 59.0])
def test_retry_after_is_a_floor_on_the_delay(retry_after: float) -> None:
    for attempt in (1, 3):
        for _ in range(100):
            delay = backoff_s(attempt, 0.01, 60.0, retry_after)
            assert delay >= retry_after
            assert delay >= min(60.0, 0.01 * 2 ** (attempt - 1)) / 2  # never shorter than the backoff
            assert delay <= max(retry_after, 0.01 * 2 ** (attempt - 1))


def test_retry_after_longer_than_the_cap_waits_the_cap() -> None:
    # An upstream asking for an hour does not park a request (and its slot) for an hour.
    assert all(backoff_s(1, 0.01, 5.0, 3600.0) == 5.0 for _ in range(20))


RETRYABLE_STATUSES = (429, 408, 409, 425, 500, 502, 503, 504, 529, 599)
FINAL_STATUSES = (400, 401, 403, 404, 413, 422)


@pytest.mark.parametrize(
    ("reply", "retryable"),
    [
        *[(UpstreamReply(status), True) for status in RETRYABLE_STATUSES],
        (UpstreamReply(None, error_code="request_timeout", error_message="slow"), True),
        (UpstreamReply(None, error_code="upstream_unreachable", error_message="reset"), True),
        *[(UpstreamReply(status), False) for status in FINAL_STATUSES],
    ],
    ids=lambda v: str(v.status_code or v.error_code) if isinstance(v, UpstreamReply) else str(v),
)
def test_is_retryable_table(reply: UpstreamReply, retryable: bool) -> None:
    assert is_retryable(reply) is retryable
