"""The ASGI application: routers mounted per dialect over one gateway (store, blobs, engine)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import parse_qsl

import asyncpg
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from batchgate.api import admin, openapi, ops, truefoundry, xai
from batchgate.api.body_timeout import BodyIdleTimeout
from batchgate.api.observe import RequestMetrics
from batchgate.api.openai import batches, files
from batchgate.api.responses import JSON
from batchgate.config import Settings
from batchgate.console import routes as ui
from batchgate.domain.errors import APIError
from batchgate.gateway import open_gateway
from batchgate.store.outage import is_transient

log = logging.getLogger(__name__)


async def _api_error(_: Request, exc: Exception) -> JSON:
    assert isinstance(exc, APIError)
    return JSON(exc.body(), status_code=exc.status_code, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSON:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"unknown route: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": "not_found" if exc.status_code == 404 else None,
        }
    }
    return JSON(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client hung up mid-request (an upload, say): nothing was stored and nobody is listening.
    log.info("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=499)


DATABASE_RETRY_AFTER_S = 5


async def _storage_error(request: Request, exc: Exception) -> JSON:
    """Database and OS errors: one that means the database (or storage) is down or restarting is a 503
    a client may retry; anything else is a bug, answered like one."""
    if not is_transient(exc):
        return await _unexpected(request, exc)
    gateway = getattr(request.app.state, "gateway", None)
    if gateway is not None:  # logged once per outage, not once per request
        gateway.store.outage.failed(exc, f"answering {request.method} {request.url.path}")
    body = {
        "error": {
            "message": "the gateway's database is not answering right now; retry in a few seconds",
            "type": "server_error",
            "param": None,
            "code": "database_unavailable",
        }
    }
    return JSON(body, status_code=503, headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)})


async def _unexpected(request: Request, exc: Exception) -> JSON:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = {
        "error": {
            "message": "internal server error; see the server log",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    return JSON(body, status_code=500)


class RejectNulInUrl:
    """A 400 for a NUL character anywhere in the path or query: no id, name or token holds one, and
    PostgreSQL refuses it in any query (a 500 there), so it is turned away before any handler."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = scope.get("query_string", b"").decode("latin-1")
            if "\x00" in scope["path"] or "%00" in query or "\x00" in query:
                param = next(
                    (k or None for k, v in parse_qsl(query, keep_blank_values=True) if "\x00" in v and "\x00" not in k),
                    None,
                )
                body = {
                    "error": {
                        "message": "the URL must not contain NUL characters (%00)",
                        "type": "invalid_request_error",
                        "param": param,
                        "code": "invalid_request",
                    }
                }
                await JSON(body, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def openai_routes() -> list:
    """The OpenAI Files + Batches surface, plus TrueFoundry's /output route: one set, mounted per dialect."""
    return [*files.routes(), *batches.routes(), *truefoundry.routes(), *ops.model_routes()]


async def _report_failure(failed: asyncio.Future[str], on_engine_failure: Callable[[str], None]) -> None:
    on_engine_failure(await failed)


def create_app(
    settings: Settings, *, run_engine: bool = True, on_engine_failure: Callable[[str], None] | None = None
) -> Starlette:
    """The ASGI app; `on_engine_failure(reason)` is called if an engine loop dies (serve stops the server)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_gateway(settings, run_engine=run_engine) as gateway:
            app.state.gateway = gateway
            watch = None
            if gateway.engine is not None and gateway.engine.failed is not None and on_engine_failure is not None:
                watch = asyncio.create_task(_report_failure(gateway.engine.failed, on_engine_failure))
            yield
            if watch is not None:
                watch.cancel()

    return Starlette(
        routes=[
            *ops.routes(),
            *openapi.routes(),
            Mount("/v1", routes=openai_routes()),
            # TrueFoundry's gateway paths; the longer prefix first, as Mount matches by prefix.
            Mount("/api/llm/api/inference/openai", routes=openai_routes()),
            Mount("/api/llm", routes=openai_routes()),
            Mount("/xai/v1", routes=xai.routes()),
            Mount("/admin", routes=admin.routes()),
            *ui.routes(),  # the web console and its API
        ],
        # Handlers by class run in Starlette's ExceptionMiddleware and answer; the catch-all `Exception`
        # one answers too but re-raises, so only bugs should reach it.
        exception_handlers={
            APIError: _api_error,
            HTTPException: _http_error,
            ClientDisconnect: _client_gone,
            SQLAlchemyError: _storage_error,
            OSError: _storage_error,
            asyncpg.PostgresError: _storage_error,
            asyncpg.InterfaceError: _storage_error,
            Exception: _unexpected,
        },
        middleware=[
            Middleware(RequestMetrics),
            Middleware(RejectNulInUrl),
            Middleware(
                BodyIdleTimeout,
                idle_s=settings.limits.body_idle_timeout_s,
                min_bytes_per_s=settings.limits.body_min_bytes_per_s,
                grace_s=settings.limits.body_rate_grace_s,
            ),
        ],
        lifespan=lifespan,
    )
