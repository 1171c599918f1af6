"""Time-sortable ids with OpenAI's prefixes.

48 bits of milliseconds then 80 random bits, in lowercase Crockford base32: ids sort by creation
time as plain strings, so newest-first listing and `after` pagination are one index range scan.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_last_ms = 0
_last_random = 0


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_ulid() -> str:
    """A 26-character id; monotonic within one process even inside one millisecond."""
    global _last_ms, _last_random
    now_ms = int(time.time() * 1000)
    if now_ms <= _last_ms:
        now_ms = _last_ms
        _last_random += 1
    else:
        _last_random = secrets.randbits(80) >> 1  # leave headroom for increments
    _last_ms = now_ms
    return _encode(now_ms, 10) + _encode(_last_random, 16)


def file_id() -> str:
    return "file-" + new_ulid()


def batch_id() -> str:
    return "batch_" + new_ulid()


def batch_request_id() -> str:
    return "batch_req_" + new_ulid()
