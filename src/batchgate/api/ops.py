"""Operations: liveness, readiness, metrics and the model list."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from batchgate.api.auth import authenticate, authenticate_admin
from batchgate.api.context import gateway_of
from batchgate.api.responses import JSON

STARTED_AT = int(time.time())


async def health(_: Request) -> JSON:
    return JSON({"status": "ok"})


async def ready(request: Request) -> JSON:
    gateway = gateway_of(request)
    checks: dict[str, str] = {}
    for name, probe in (("database", gateway.store.ping), ("files", gateway.blobs.ping)):
        try:
            await asyncio.wait_for(probe(), 5)
            checks[name] = "ok"
        except Exception as exc:  # any failure means not ready; say which and why
            checks[name] = f"error: {type(exc).__name__}: {exc}"
    ok = all(v == "ok" for v in checks.values())
    return JSON({"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503)


async def metrics(request: Request) -> Response:
    # Counters name teams' models, deployments and volumes: with an admin key set, only the admin sees
    # them (unless auth.protect_metrics: false). Open local mode answers anyone on loopback.
    gateway = gateway_of(request)
    if gateway.settings.auth.metrics_protected():
        await authenticate_admin(request)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def models(request: Request) -> JSON:
    await authenticate(request)
    gateway = gateway_of(request)
    data = [
        {"id": m.name, "object": "model", "created": STARTED_AT, "owned_by": "batchgate"}
        for m in gateway.settings.models
    ]
    return JSON({"object": "list", "data": data})


def routes() -> list[Route]:
    return [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def model_routes() -> list[Route]:
    return [Route("/models", models, methods=["GET"])]
