"""Pagination tokens that carry a position only the gateway can read, bound to one batch.

xAI's results are paged by their gateway-wide commit order (`results.seq`): a plain number in the
token would let one team watch every team's volume. The token is sealed instead: a random nonce, the
position XOR a pad derived from (secret, batch, nonce), and a tag over all of it (HMAC-SHA256 as the
PRF). A token of another batch, or a forged one, does not open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

NONCE, POSITION, TAG = 8, 8, 12


def _mac(secret: bytes, scope: str, data: bytes) -> bytes:
    return hmac.new(secret, scope.encode() + b"\x00" + data, hashlib.sha256).digest()


def seal(secret: bytes, scope: str, position: int) -> str:
    nonce = os.urandom(NONCE)
    pad = _mac(secret, scope, b"pad" + nonce)[:POSITION]
    hidden = bytes(a ^ b for a, b in zip(position.to_bytes(POSITION, "big"), pad, strict=True))
    tag = _mac(secret, scope, b"tag" + nonce + hidden)[:TAG]
    return base64.urlsafe_b64encode(nonce + hidden + tag).decode().rstrip("=")


def unseal(secret: bytes, scope: str, token: str) -> int | None:
    """The position in a token made by `seal` for this scope, or None for anything else."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) != NONCE + POSITION + TAG:
        return None
    nonce, hidden, tag = raw[:NONCE], raw[NONCE : NONCE + POSITION], raw[NONCE + POSITION :]
    if not hmac.compare_digest(tag, _mac(secret, scope, b"tag" + nonce + hidden)[:TAG]):
        return None
    pad = _mac(secret, scope, b"pad" + nonce)[:POSITION]
    return int.from_bytes(bytes(a ^ b for a, b in zip(hidden, pad, strict=True)), "big")
