"""A request body that stops arriving is given up after an idle timeout (a stalled or slow-loris client).

uvicorn waits for the next body chunk forever; an upload that stalls would hold its blob writer
and its connection open until the client goes away. This wraps `receive` so that, while more of
the body is due, each chunk must arrive within `idle_s`; the handler then fails with a 408 in the
OpenAI envelope (and an upload aborts its blob like any other failure). Once the body is complete,
`receive` is left alone: streaming responses wait on it for the client's disconnect.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchgate.errors import APIError


class BodyTimeout(APIError):
    status_code = 408


class BodyIdleTimeout:
    def __init__(self, app: ASGIApp, idle_s: float) -> None:
        self.app = app
        self.idle_s = idle_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_due = True

        async def timed_receive() -> Message:
            nonlocal body_due
            if not body_due:
                return await receive()
            try:
                async with asyncio.timeout(self.idle_s):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(f"the request body stalled: no bytes arrived for {self.idle_s:g} s",
                                  code="request_timeout") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_due = False
            return message

        await self.app(scope, timed_receive, send)
