"""Who is calling. For now one admin key (or open local mode); teams and keys come later."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.requests import Request

from batchgate.errors import Unauthorized


@dataclass(frozen=True)
class Principal:
    team_id: str | None  # None: sees every team's objects
    is_admin: bool


ADMIN = Principal(team_id=None, is_admin=True)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(request: Request) -> Principal:
    admin_key: str | None = request.app.state.gateway.settings.auth.admin_key
    if admin_key is None:
        return ADMIN  # open local mode: only ever bound to loopback (checked at start-up)
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
    if not hmac.compare_digest(token.encode(), admin_key.encode()):
        raise Unauthorized("invalid API key", code="invalid_api_key")
    return ADMIN
