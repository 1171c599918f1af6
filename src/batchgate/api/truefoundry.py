"""TrueFoundry AI Gateway dialect: the partial-results `/output` route (its headers: api/tfy_headers.py).

The rest of its surface is the OpenAI Files + Batches API mounted at TrueFoundry's paths (app.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from batchgate.api.auth import authenticate
from batchgate.api.context import gateway_of, visible_batch
from batchgate.engine.finalize import result_line_pieces, slices


async def batch_output(request: Request) -> StreamingResponse:
    """The output lines finished so far as one JSON array, streamed; works while the batch runs."""
    batch = await visible_batch(request, await authenticate(request))
    gateway = gateway_of(request)

    async def body() -> AsyncIterator[bytes]:
        yield b"["
        first = True
        async for row in gateway.store.iter_results_by_seq(batch["id"], ok=True):
            if not first:
                yield b","
            first = False
            pieces = result_line_pieces(batch["id"], row)
            pieces[-1] = pieces[-1].rstrip(b"\n")
            for piece in pieces:
                for part in slices(piece):
                    yield part
            del row, pieces  # not held while the next page is read
        yield b"]"

    return StreamingResponse(body(), media_type="application/json")


def routes() -> list[Route]:
    return [Route("/batches/{batch_id}/output", batch_output, methods=["GET"])]
