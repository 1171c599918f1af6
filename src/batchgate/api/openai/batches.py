"""OpenAI Batch API: `/v1/batches`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from batchgate.api import tfy_headers
from batchgate.api.auth import authenticate
from batchgate.api.context import gateway_of, visible_batch
from batchgate.api.openai.serialize import batch_object, page
from batchgate.api.params import int_param, json_object
from batchgate.api.responses import JSON
from batchgate.services import batches


async def create_batch(request: Request) -> JSON:
    principal = await authenticate(request)
    gateway = gateway_of(request)
    data = await json_object(request)
    row = await batches.create_batch(
        gateway,
        principal,
        data,
        header_metadata=tfy_headers.metadata_header(request),
        job_name=tfy_headers.job_name(data),
        pinned_deployment=tfy_headers.provider_name(request, gateway),
    )
    return JSON(batch_object(row))


async def list_batches(request: Request) -> JSON:
    principal = await authenticate(request)
    gateway = gateway_of(request)
    limit = int_param(request, "limit", 20, 1, 100)
    rows = await gateway.store.list_batches(
        after=request.query_params.get("after") or None, limit=limit + 1, team_id=principal.team_id
    )
    return JSON(page([batch_object(r) for r in rows[:limit]], len(rows) > limit))


async def retrieve_batch(request: Request) -> JSON:
    return JSON(batch_object(await visible_batch(request, await authenticate(request))))


async def cancel_batch(request: Request) -> JSON:
    principal = await authenticate(request)
    row = await visible_batch(request, principal)
    return JSON(batch_object(await batches.request_cancel(gateway_of(request), row)))


def routes() -> list[Route]:
    return [
        Route("/batches", create_batch, methods=["POST"]),
        Route("/batches", list_batches, methods=["GET"]),
        Route("/batches/{batch_id}", retrieve_batch, methods=["GET"]),
        Route("/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
    ]
