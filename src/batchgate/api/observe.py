"""Counting every API request by dialect, route template and status: a pure ASGI middleware, so
streamed uploads and downloads pass through untouched."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchgate.observability import metrics, tracing

# Longest first: TrueFoundry's inference prefix sits under its shorter one.
DIALECT_PREFIXES = (
    ("/api/llm/api/inference/openai", "truefoundry"),
    ("/api/llm", "truefoundry"),
    ("/xai/v1", "xai"),
    ("/v1", "openai"),
    ("/admin", "admin"),
)


def dialect_of(path: str) -> str:
    for prefix, dialect in DIALECT_PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return dialect
    return "ops"


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app dies before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with tracing.span(scope["method"], **{"http.request.method": scope["method"]}) as span:
            try:
                await self.app(scope, receive, send_and_note)
            finally:
                # The router leaves the innermost matched route in the scope: its template, not the
                # raw path, keeps the label set small (ids never become labels).
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                dialect = dialect_of(scope["path"])
                metrics.HTTP_REQUESTS.labels(dialect, route, str(status)).inc()
                metrics.HTTP_LATENCY.labels(dialect, route).observe(time.perf_counter() - started)
                if span is not None:
                    span.update_name(f"{scope['method']} {route}")
                    span.set_attributes(
                        {
                            "http.route": route,
                            "url.path": scope["path"],
                            "http.response.status_code": status,
                            "batchgate.dialect": dialect,
                        }
                    )
