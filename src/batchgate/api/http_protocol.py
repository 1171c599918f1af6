"""uvicorn's httptools protocol with limits on what arrives before the application sees a request.

uvicorn holds a request's line and headers in memory without limit (four clients sending 200 MB
headers and no key took a server past 1 GB before it could answer 401), waits for them forever (a
client dripping one header byte every few seconds holds a socket and a file descriptor for good),
and lets one address open any number of connections. This subclass caps the bytes of a request's
head, gives the head a deadline, and caps the connections open per client address. Each refusal is
answered in the OpenAI error envelope, then the connection is closed.

Behind a reverse proxy every client arrives from the proxy's address: raise
`limits.max_connections_per_client` there, or set it to 0 (no cap).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from batchgate.config import LimitsConfig

log = logging.getLogger(__name__)

# After a refusal, keep reading (and dropping) what the client still sends for this long: closing a
# socket with unread input makes the kernel send a reset, which can destroy the answer before it is read.
LINGER_S = 1.0


def limited_protocol(limits: LimitsConfig) -> type[LimitedHttpToolsProtocol]:
    """A protocol class bound to these limits, with its own count of open connections per address."""
    attributes = {
        "max_header_bytes": limits.max_header_bytes,
        "header_timeout_s": limits.header_timeout_s,
        "max_connections_per_client": limits.max_connections_per_client,
        "open_per_client": Counter(),
    }
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), attributes)


def error_response(
    status: int,
    error_type: str,
    code: str,
    message: str,
    default_headers: list[tuple[bytes, bytes]],
    extra: dict[str, str] | None = None,
) -> bytes:
    """A whole HTTP/1.1 response with the error envelope, telling the client the connection closes."""
    body = orjson.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}})
    headers = [
        *default_headers,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *((name.encode(), value.encode()) for name, value in (extra or {}).items()),
    ]
    return STATUS_LINE[status] + b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n" + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes: ClassVar[int] = 65_536
    header_timeout_s: ClassVar[float] = 15.0
    max_connections_per_client: ClassVar[int] = 0  # 0: no cap
    open_per_client: ClassVar[Counter[str]] = Counter()  # shared by every connection of one server

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counted_as: str | None = None  # the client address this connection counts against
        self._in_head = True  # waiting for (or reading) a request's line and headers
        self._head_bytes = 0  # bytes received while the current request's head is incomplete
        self._message_ended = False  # a request ended inside the chunk being parsed
        self._head_timer: asyncio.TimerHandle | None = None
        self._unread_timer: asyncio.TimerHandle | None = None  # the rest of an answered request's body is due
        self._refused = False  # answered with a refusal: whatever else arrives is dropped
        self._body_in_read = 0  # body bytes the parser handed on during the current read
        self._since_body = 0  # bytes after the headers in reads that carried no body (framing, trailers)

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self._admit():
            cap = self.max_connections_per_client
            self._refuse(
                503,
                "rate_limit_error",
                "too_many_connections",
                f"more than {cap} connections from your address are open; close some and retry",
                {"Retry-After": "1"},
            )
            return
        self._arm_head_timer()  # the first request's head is due from connection start

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_unread_timer()
        self._release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._arm_head_timer()
        self._message_ended = False
        self._body_in_read = 0
        super().data_received(data)  # parse first: a body that came with its headers is not head bytes
        # A chunk in which one request ended may carry the next one's head after its body; the split
        # is unknown, so such a chunk is not counted (at most one read of slack, never a false refusal).
        if self._refused or self._message_ended:
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse_large_head()
            return
        # After the headers every byte is body, except a chunked body's framing and its trailers (which
        # httptools buffers like headers): bytes in reads that carried no body count like a head.
        self._since_body = 0 if self._body_in_read else self._since_body + len(data)
        if self._since_body > self.max_header_bytes:
            self._drop(f"more than {self.max_header_bytes} bytes of chunk framing or trailers")

    # ------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head = False
        self._since_body = 0
        self._cancel_head_timer()
        if self._head_size() > self.max_header_bytes:  # a whole oversized head can arrive in one read
            self._refuse_large_head()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_in_read += len(body)
        if not self._refused:
            super().on_body(body)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Answered before its body arrived (a 401 or 404 to an upload, a route that ignores its body):
        # uvicorn reads and drops the rest for as long as the client sends it, one byte at a time if it
        # likes. The rest gets the head's deadline; a small body in flight still keeps the connection.
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self._cancel_unread_timer()
            self._unread_timer = self.loop.call_later(self.header_timeout_s, self._unread_body_timed_out)

    def _unread_body_timed_out(self) -> None:
        self._unread_timer = None
        if self.cycle is not None and self.cycle.more_body:
            self._drop(f"the rest of an answered request's body did not arrive within {self.header_timeout_s:g} s")

    def _cancel_unread_timer(self) -> None:
        if self._unread_timer is not None:
            self._unread_timer.cancel()
            self._unread_timer = None

    def on_message_complete(self) -> None:
        self._cancel_unread_timer()
        self._message_ended = True
        self._in_head = True  # what follows is the next request's head
        if not self._refused:
            super().on_message_complete()

    # ------------------------------------------------------------------ limits
    def _head_size(self) -> int:
        """The request line and headers as parsed: the bytes on the wire less a few separators."""
        return len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _refuse_large_head(self) -> None:
        self._refuse(
            431,
            "invalid_request_error",
            "headers_too_large",
            f"the request line and headers are larger than {self.max_header_bytes} bytes",
        )

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self._refuse(
            408,
            "invalid_request_error",
            "request_timeout",
            f"the request line and headers did not arrive within {self.header_timeout_s:g} s",
        )

    def _admit(self) -> bool:
        if not self.max_connections_per_client or self.client is None:  # no cap, or a Unix socket
            return True
        address = self.client[0]
        if self.open_per_client[address] >= self.max_connections_per_client:
            return False
        self.open_per_client[address] += 1
        self._counted_as = address
        return True

    def _release(self) -> None:
        if self._counted_as is None:
            return
        self.open_per_client[self._counted_as] -= 1
        if self.open_per_client[self._counted_as] <= 0:
            del self.open_per_client[self._counted_as]
        self._counted_as = None

    def _refuse(
        self, status: int, error_type: str, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        """Answer `status` and close; input that follows is read and dropped for a moment (see LINGER_S)."""
        self._refused = True
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        log.info("refused a connection from %s: %s", self.client[0] if self.client else "?", message)
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is under way (the client pipelined): an answer now would garble it
            return
        self.transport.write(
            error_response(status, error_type, code, message, self.server_state.default_headers, headers)
        )
        self._close_soon()

    def _close_soon(self) -> None:
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()  # the client sees the close at once; the socket goes when it hangs up
        self.loop.call_later(LINGER_S, self.transport.close)

    def _drop(self, why: str) -> None:
        """Close without an answer: the request's own answer may be under way or already sent."""
        self._refused = True
        self._cancel_head_timer()
        log.info("dropped a connection from %s: %s", self.client[0] if self.client else "?", why)
        self.transport.close()
