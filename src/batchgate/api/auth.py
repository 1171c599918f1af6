"""Who is calling: the admin key, a team's API key, or (no key configured, loopback only) anyone."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request

from batchgate.errors import APIError, Forbidden, Unauthorized
from batchgate.keys import KEY_PREFIX, hash_key, retry_after_header


@dataclass(frozen=True)
class Principal:
    team_id: str | None  # None: the admin, who sees every team's objects
    is_admin: bool
    key_id: str | None = None
    models: tuple[str, ...] | None = None  # models this key may use; None: all

    def allowed_models(self, configured: list[str]) -> list[str]:
        return configured if self.models is None else [m for m in configured if m in self.models]


ADMIN = Principal(team_id=None, is_admin=True)


class RateLimited(APIError):
    status_code = 429
    error_type = "rate_limit_error"


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _loopback(authority: str) -> bool:
    return urlsplit(authority if "//" in authority else "//" + authority).hostname in LOOPBACK_NAMES


def _refuse_pages_from_elsewhere(request: Request) -> None:
    """Open local mode trusts whoever reaches the loopback port, but not a web page from another site
    that a browser on this machine runs: DNS rebinding gives its calls a foreign Host, and a
    cross-site form post carries a foreign Origin."""
    host, origin = request.headers.get("host"), request.headers.get("origin")
    if (host and not _loopback(host)) or (origin is not None and not _loopback(origin)):
        raise Forbidden("open local mode (no admin key) answers only requests to localhost from its own pages; "
                        "set auth.admin_key to serve other hosts", code="foreign_origin")


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(request: Request) -> Principal:
    gateway = request.app.state.gateway
    admin_key: str | None = gateway.settings.auth.admin_key
    token = bearer_token(request)
    if token is not None and admin_key is not None and hmac.compare_digest(token.encode(), admin_key.encode()):
        return ADMIN
    if token is not None:
        row = await gateway.store.key_by_hash(hash_key(token))
        if row is not None:
            if row["rpm"]:
                wait = await gateway.take_key_token(row["id"], row["rpm"])
                if wait > 0:
                    raise RateLimited(f"rate limit of {row['rpm']} requests per minute reached for this key",
                                      code="rate_limit_exceeded", headers={"Retry-After": retry_after_header(wait)})
            models = tuple(orjson.loads(row["models"])) if row["models"] else None
            return Principal(team_id=row["team_id"], is_admin=False, key_id=row["id"], models=models)
    if admin_key is None and (token is None or not token.startswith(KEY_PREFIX)):
        _refuse_pages_from_elsewhere(request)
        return ADMIN  # open local mode: only ever bound to loopback (checked at start-up)
    if token is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
    # Also in open mode: a revoked or mistyped team key must not fall back to admin rights.
    raise Unauthorized("invalid API key", code="invalid_api_key")


async def authenticate_admin(request: Request) -> Principal:
    principal = await authenticate(request)
    if not principal.is_admin:
        raise Forbidden("this route needs the admin key", code="admin_only")
    return principal
