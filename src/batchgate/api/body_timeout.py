"""A request body that stops arriving, or arrives too slowly, is given up (a stalled or slow-loris client).

uvicorn waits for the next body chunk forever; an upload that stalls would hold its blob writer
and its connection open until the client goes away. This wraps `receive` so that, while more of
the body is due, each chunk must arrive within `idle_s`, and, after a grace period, the body must
keep an average of at least `min_bytes_per_s` (one byte every few seconds is never idle, yet
never ends). Otherwise the handler fails with a 408 in the OpenAI envelope (and an upload aborts
its blob like any other failure). Once the body is complete, `receive` is left alone: streaming
responses wait on it for the client's disconnect.

The rate counts only the time spent waiting in `receive`: a handler that takes its time between
chunks (writing to slow storage, say) does not count against the client.
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchgate.domain.errors import APIError


class BodyTimeout(APIError):
    status_code = 408


class _BodyClock:
    """How long one request has waited for its body and how much arrived: when the next chunk is due."""

    def __init__(self, idle_s: float, min_bytes_per_s: float, grace_s: float) -> None:
        self.idle_s = idle_s
        self.min_bytes_per_s = min_bytes_per_s
        self.grace_s = grace_s
        self.waited_s = 0.0
        self.received = 0

    def allowance(self) -> tuple[float, bool]:
        """Seconds the next chunk may take, and whether the minimum rate (not the idle timeout) sets it."""
        if self.min_bytes_per_s <= 0:
            return self.idle_s, False
        # The average stays at the minimum as long as the time waited is at most received / rate.
        budget = max(self.grace_s, self.received / self.min_bytes_per_s) - self.waited_s
        return (self.idle_s, False) if self.idle_s <= budget else (max(budget, 0.0), True)

    def error(self, by_rate: bool) -> BodyTimeout:
        if not by_rate:
            return BodyTimeout(
                f"the request body stalled: no bytes arrived for {self.idle_s:g} s", code="request_timeout"
            )
        return BodyTimeout(
            f"the request body arrived too slowly: {self.received} bytes in {self.waited_s:.1f} s, "
            f"below the minimum of {self.min_bytes_per_s:g} bytes per second",
            code="request_timeout",
        )


class BodyIdleTimeout:
    def __init__(self, app: ASGIApp, idle_s: float, min_bytes_per_s: float = 0.0, grace_s: float = 0.0) -> None:
        self.app = app
        self.idle_s = idle_s
        self.min_bytes_per_s = min_bytes_per_s
        self.grace_s = grace_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        clock = _BodyClock(self.idle_s, self.min_bytes_per_s, self.grace_s)
        body_due = True

        async def timed_receive() -> Message:
            nonlocal body_due
            if not body_due:
                return await receive()
            allowed_s, by_rate = clock.allowance()
            started = time.monotonic()
            try:
                # A chunk already buffered is returned even with no time left: receive() does not wait for it.
                async with asyncio.timeout(allowed_s):
                    message = await receive()
            except TimeoutError:
                clock.waited_s += time.monotonic() - started
                raise clock.error(by_rate) from None
            clock.waited_s += time.monotonic() - started
            clock.received += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_due = False
            return message

        await self.app(scope, timed_receive, send)
