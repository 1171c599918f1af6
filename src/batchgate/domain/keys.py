"""API keys: how they look, how they are stored (hashed), and the per-key request-rate limiter."""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from dataclasses import dataclass

KEY_PREFIX = "bg_"
SHOWN_PREFIX_LEN = 12


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """Keys are long random secrets, so one SHA-256 suffices (no password hashing needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def shown_prefix(key: str) -> str:
    return key[:SHOWN_PREFIX_LEN]


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key: `rpm` requests a minute, bursts up to `rpm`. In memory, per process."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}

    def try_acquire(self, key_id: str, rpm: int, now: float | None = None) -> float:
        """0 if the request may go ahead, else the seconds until it may (for Retry-After)."""
        now = time.monotonic() if now is None else now
        rate = rpm / 60.0
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = _Bucket(float(rpm), now)
        bucket.tokens = min(float(rpm), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / rate


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
