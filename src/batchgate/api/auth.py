"""Who is calling: the admin key, a team's API key, or (no key configured, loopback only) anyone."""

from __future__ import annotations

import hmac

import orjson
from starlette.requests import Request

from batchgate.api.context import gateway_of
from batchgate.domain.errors import Forbidden, RateLimited, Unauthorized
from batchgate.domain.keys import KEY_PREFIX, hash_key, retry_after_header
from batchgate.domain.principal import ADMIN, Principal

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
# Headers a reverse proxy adds: behind one, every caller reaches the loopback port.
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")


def _own_port(request: Request) -> int | None:
    server = request.scope.get("server")
    return server[1] if server and len(server) > 1 else None


def _is_own_host(host: str, port: int | None) -> bool:
    """Exactly a loopback name, with this server's port or none: compared as strings, so no userinfo
    (`evil.example@127.0.0.1`), suffix or other port can pass as what a parser would make of it."""
    allowed = {*LOOPBACK_HOSTS, *(f"{name}:{port}" for name in LOOPBACK_HOSTS if port is not None)}
    return host.lower() in allowed


def _is_own_origin(origin: str, port: int | None) -> bool:
    """A page this server served: http, a loopback name and this port (another local program's page is
    another site). Browsers leave out the default port, so :80 may be implied."""
    allowed = {f"http://{name}:{port}" for name in LOOPBACK_HOSTS if port is not None}
    if port == 80:
        allowed |= {f"http://{name}" for name in LOOPBACK_HOSTS}
    return origin.lower() in allowed


def _refuse_proxied_requests(request: Request) -> None:
    sent = [name for name in PROXY_HEADERS if name in request.headers]
    if sent:
        raise Forbidden(
            f"open local mode (no admin key) does not answer requests through a proxy (this one carries "
            f"{', '.join(sent)}): behind a proxy every caller would get admin rights; set auth.admin_key "
            "(or BATCHGATE_ADMIN_KEY) to serve through one",
            code="proxied_open_mode",
        )


def _refuse_pages_from_elsewhere(request: Request) -> None:
    """Open local mode trusts whoever reaches the loopback port, but not a web page from another site
    that a browser on this machine runs: DNS rebinding gives its calls a foreign Host, and a
    cross-site form post carries a foreign Origin."""
    _refuse_proxied_requests(request)
    port = _own_port(request)
    host, origin = request.headers.get("host"), request.headers.get("origin")
    if (host is not None and not _is_own_host(host, port)) or (origin is not None and not _is_own_origin(origin, port)):
        raise Forbidden(
            "open local mode (no admin key) answers only requests to localhost from its own pages; "
            "set auth.admin_key to serve other hosts",
            code="foreign_origin",
        )


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(request: Request) -> Principal:
    gateway = gateway_of(request)
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
                    raise RateLimited(
                        f"rate limit of {row['rpm']} requests per minute reached for this key",
                        code="rate_limit_exceeded",
                        headers={"Retry-After": retry_after_header(wait)},
                    )
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
