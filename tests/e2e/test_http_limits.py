"""End to end: what the HTTP layer refuses before any handler runs (huge or slow headers, too many
connections from one address) and what it must keep accepting (pipelined requests, big bodies), plus
the minimum rate of a request body. Every test speaks raw HTTP over a socket, as a hostile client would.
"""

from __future__ import annotations

import json
import os
import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from typing import Any

import httpx
import psutil
import pytest

from tests.e2e.helpers import API_ENGINE, gateway_config, jsonl
from tests.harness import (
    FakeUpstreamProcess,
    ServerProcess,
    chat_line,
    poll_until,
    running_server,
    upstream_model_config,
)

BOUNDARY = "httplimitsboundary"
HEADER_TIMEOUT_S = 1.5
PER_CLIENT = 6
GRACE_S = 1.0


def limits_config(upstream_url: str, **limits: Any) -> dict[str, Any]:
    config = gateway_config(upstream_model_config(upstream_url), engine=API_ENGINE)
    config["limits"] = limits
    return config


@pytest.fixture(scope="module")
def plain(fake_upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Default limits: what every deployment gets without configuring anything."""
    with running_server(limits_config(fake_upstream.url), workdir=tmp_path_factory.mktemp("plain")) as srv:
        yield srv


@pytest.fixture(scope="module")
def tight(fake_upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A short header deadline and a short grace before the body's minimum rate applies."""
    config = limits_config(
        fake_upstream.url,
        header_timeout_s=HEADER_TIMEOUT_S,
        body_min_bytes_per_s=1024,
        body_rate_grace_s=GRACE_S,
        body_idle_timeout_s=60,
    )
    with running_server(config, workdir=tmp_path_factory.mktemp("tight")) as srv:
        yield srv


@pytest.fixture(scope="module")
def capped(fake_upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A small cap on connections per client address (and a header deadline far beyond the test)."""
    config = limits_config(fake_upstream.url, max_connections_per_client=PER_CLIENT, header_timeout_s=60)
    with running_server(config, workdir=tmp_path_factory.mktemp("capped")) as srv:
        yield srv


# ---------------------------------------------------------------------------- raw HTTP helpers
def connect(server: ServerProcess, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def read_response(sock: socket.socket, buffered: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response (status, lower-cased headers, body) from `sock`; bytes past it stay in `buffered`."""
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a whole response head: {bytes(buffered)!r}")
        buffered += chunk
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed mid-body")
        rest += chunk
    buffered[:] = rest[length:]
    return int(status_line.split()[1]), headers, rest[:length]


def is_closed(sock: socket.socket) -> bool:
    """The server closed its side: the next read sees EOF (or a reset), not more data."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def closed_now(sock: socket.socket) -> bool:
    """Without blocking: has the server closed its side (whatever it wrote first is read and dropped)?"""
    try:
        while select.select([sock], [], [], 0)[0]:
            if sock.recv(65536) == b"":
                return True
    except ConnectionResetError:
        return True
    return False


def assert_envelope(body: bytes, code: str) -> dict[str, Any]:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["code"] == code and error["message"], error
    return error


def send_ignoring_close(sock: socket.socket, data: bytes) -> None:
    """Send as much as the server takes: a server that refuses and closes is what some tests want."""
    with suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def get(path: str, **headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def upload_request(content: bytes, filename: str = "in.jsonl") -> bytes:
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
    ).encode()
    return head + body


def server_fds(server: ServerProcess) -> int:
    assert server.pid is not None
    return psutil.Process(server.pid).num_fds()


# ---------------------------------------------------------------------------- header size (431)
def test_a_huge_header_is_431_and_the_connection_closes(plain: ServerProcess) -> None:
    rss_before = psutil.Process(plain.pid).memory_info().rss
    with connect(plain) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        for _ in range(64):  # up to 64 MiB, one MiB at a time, never finishing the header, until an answer
            if select.select([sock], [], [], 0)[0]:
                break
            send_ignoring_close(sock, b"a" * 1_048_576)
        status, headers, body = read_response(sock, bytearray())
        assert status == 431
        assert headers.get("connection") == "close"
        assert "65536" in assert_envelope(body, "headers_too_large")["message"]
        assert is_closed(sock)
    # It was refused early: the server never held the megabytes it was sent.
    assert psutil.Process(plain.pid).memory_info().rss < rss_before + 32 * 1_048_576


def test_many_headers_in_one_packet_over_the_limit_are_431(plain: ServerProcess) -> None:
    headers = {f"X-H{i}": "v" * 1000 for i in range(80)}  # 80 kB of complete headers, sent at once
    with connect(plain) as sock:
        send_ignoring_close(sock, get("/health", **headers))
        status, _, body = read_response(sock, bytearray())
        assert status == 431
        assert_envelope(body, "headers_too_large")
        assert is_closed(sock)


def test_headers_under_the_limit_with_a_body_in_the_same_packet_pass(plain: ServerProcess) -> None:
    # 60 kB of headers and a 300 kB upload in one send: the body is never counted as header bytes.
    request = upload_request(jsonl(*(chat_line(f"r{i}", "x" * 200) for i in range(1000))))
    head, _, body = request.partition(b"\r\n\r\n")
    padding = b"".join(f"X-Pad{i}: {'p' * 990}\r\n".encode() for i in range(60))
    with connect(plain) as sock:
        sock.sendall(head + b"\r\n" + padding + b"\r\n" + body)
        status, _, answer = read_response(sock, bytearray())
    assert status == 200, answer
    assert json.loads(answer)["bytes"] > 250_000


def test_pipelined_requests_with_bodies_are_all_answered(plain: ServerProcess) -> None:
    # A 400 kB upload, then two GETs and a second upload, written in one go on one connection.
    first = upload_request(b'{"a": 1}\n' * 45_000, "first.jsonl")
    second = upload_request(b'{"b": 2}\n' * 10, "second.jsonl")
    with connect(plain) as sock:
        sock.sendall(first + get("/health") + get("/v1/models") + second)
        buffered = bytearray()
        answers = [read_response(sock, buffered) for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 200], answers
    assert json.loads(answers[0][2])["filename"] == "first.jsonl"
    assert json.loads(answers[1][2]) == {"status": "ok"}
    assert json.loads(answers[3][2])["filename"] == "second.jsonl"


def test_keep_alive_requests_each_get_a_fresh_header_budget(plain: ServerProcess) -> None:
    # Each request carries 40 kB of headers: together far over 64 KiB, each one well under it.
    with connect(plain) as sock:
        buffered = bytearray()
        for _ in range(5):
            sock.sendall(get("/health", **{f"X-H{i}": "v" * 1000 for i in range(40)}))
            assert read_response(sock, buffered)[0] == 200


def test_a_large_upload_at_normal_speed_still_works(plain: ServerProcess) -> None:
    content = os.urandom(150 * 1_048_576)
    with httpx.Client(base_url=plain.url, timeout=120) as http:
        response = http.post("/v1/files", files={"file": ("big.bin", content)}, data={"purpose": "user_data"})
        assert response.status_code == 200, response.text
        assert response.json()["bytes"] == len(content)


# ---------------------------------------------------------------------------- slow headers (408)
def test_headers_dripping_past_the_deadline_get_408_and_a_close(tight: ServerProcess) -> None:
    with connect(tight) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sock.settimeout(0.2)
        deadline = time.monotonic() + HEADER_TIMEOUT_S + 5
        received = b""
        while b"\r\n\r\n" not in received:  # one header line every 0.2 s: each chunk well within any idle timeout
            assert time.monotonic() < deadline, "the server never gave up on the dripping headers"
            send_ignoring_close(sock, b"X-Drip: 1\r\n")
            try:
                received += sock.recv(65536)
            except TimeoutError:
                continue
        sock.settimeout(5)
        status, headers, body = read_response(sock, bytearray(received))
        assert status == 408
        assert headers.get("connection") == "close"
        assert_envelope(body, "request_timeout")
        assert is_closed(sock)


def test_a_connection_that_never_sends_a_byte_is_closed(tight: ServerProcess) -> None:
    with connect(tight, timeout=HEADER_TIMEOUT_S + 5) as sock:
        started = time.monotonic()
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 5
        assert data == b"" or data.startswith(b"HTTP/1.1 408 ")


def test_many_dripping_connections_are_all_closed(tight: ServerProcess) -> None:
    # Like a slow-loris attack: many connections, each stuck mid-headers; the descriptors come back.
    fds_before = server_fds(tight)
    with ExitStack() as stack:
        socks = [stack.enter_context(connect(tight)) for _ in range(100)]
        for sock in socks:
            sock.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
        open_socks = list(socks)

        def all_closed() -> bool:
            open_socks[:] = [sock for sock in open_socks if not closed_now(sock)]
            return not open_socks

        poll_until(
            all_closed,
            HEADER_TIMEOUT_S + 10,
            interval=0.1,
            message=lambda: f"{len(open_socks)} dripping connections stayed open",
        )
    poll_until(lambda: server_fds(tight) <= fds_before, 10, message=lambda: f"fds {server_fds(tight)} > {fds_before}")


# ---------------------------------------------------------------------------- connections per client (503)
def test_connections_past_the_per_client_cap_are_refused(capped: ServerProcess) -> None:
    with ExitStack() as stack:
        held = [stack.enter_context(connect(capped)) for _ in range(PER_CLIENT)]
        for sock in held:
            sock.sendall(b"GET /health HTTP/1.1\r\n")  # in their header phase: open, not yet answered
        with connect(capped) as extra:
            send_ignoring_close(extra, get("/health"))
            status, headers, body = read_response(extra, bytearray())
            assert status == 503
            assert headers.get("connection") == "close"
            assert_envelope(body, "too_many_connections")
            assert is_closed(extra)
        held.pop().close()

        def admitted() -> bool:
            with connect(capped) as sock:
                send_ignoring_close(sock, get("/health"))
                return read_response(sock, bytearray())[0] == 200

        poll_until(admitted, 10, message="a slot freed by a closed connection was never reused")
        # The held ones still work once they finish their request.
        held[0].sendall(b"Host: 127.0.0.1\r\n\r\n")
        assert read_response(held[0], bytearray())[0] == 200


# ---------------------------------------------------------------------------- slow bodies (408)
def test_a_body_below_the_minimum_rate_gets_408(tight: ServerProcess) -> None:
    request = upload_request(b'{"x": 1}\n' * 20_000)
    head, _, body = request.partition(b"\r\n\r\n")
    with connect(tight) as sock:
        sock.sendall(head + b"\r\n\r\n")
        sock.settimeout(0.2)
        deadline = time.monotonic() + GRACE_S + 8
        received, sent = b"", 0
        while b"\r\n\r\n" not in received:  # 20 bytes every 0.2 s: 100 B/s, far below 1024 B/s, never idle
            assert time.monotonic() < deadline, "the server kept waiting on a body arriving at 100 bytes a second"
            send_ignoring_close(sock, body[sent : sent + 20])
            sent += 20
            try:
                received += sock.recv(65536)
            except TimeoutError:
                continue
        sock.settimeout(5)
        status, _, answer = read_response(sock, bytearray(received))
    assert status == 408
    error = assert_envelope(answer, "request_timeout")
    assert "1024" in error["message"], error


def test_a_body_at_a_modest_steady_rate_is_accepted(tight: ServerProcess) -> None:
    # 8 kB/s, eight times the minimum, for longer than the grace period.
    request = upload_request(b'{"y": 2}\n' * 2_500)
    head, _, body = request.partition(b"\r\n\r\n")
    with connect(tight) as sock:
        sock.sendall(head + b"\r\n\r\n")
        for start in range(0, len(body), 800):
            sock.sendall(body[start : start + 800])
            time.sleep(0.1)  # pacing a slow client, not synchronisation
        status, _, answer = read_response(sock, bytearray())
    assert status == 200, answer


# ---------------------------------------------------------------------------- after the headers
def test_trailers_of_a_chunked_body_are_capped_like_headers(plain: ServerProcess) -> None:
    """httptools buffers a chunked body's trailers like headers: past the head's limit the connection goes."""
    assert plain.pid is not None
    rss_before = psutil.Process(plain.pid).memory_info().rss
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
    ).encode()
    with connect(plain) as sock:
        sock.sendall(head + b"5\r\n--htt\r\n0\r\n")  # a body, its last chunk, then trailers without end
        closed = False
        for _ in range(64):  # up to 64 MiB of trailer lines, a MiB at a time, until the server hangs up
            try:
                sock.sendall(b"X-T: " + b"a" * 1_048_570 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed or is_closed(sock), "the server kept reading trailers"
    assert psutil.Process(plain.pid).memory_info().rss < rss_before + 32 * 1_048_576


def test_an_answer_before_the_body_closes_the_connection(tight: ServerProcess) -> None:
    """A 404 to a 100 GB upload: the rest of the body gets the head's deadline, however it drips."""
    with connect(tight) as sock:
        sock.sendall(b"POST /nope HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000000000\r\n\r\nx")
        status, _, body = read_response(sock, bytearray())
        assert status == 404
        assert_envelope(body, "not_found")
        sock.settimeout(0.2)
        deadline = time.monotonic() + HEADER_TIMEOUT_S + 5
        while True:  # one byte every 0.2 s: without the deadline this never ends
            assert time.monotonic() < deadline, "the server kept the connection open for the dripped body"
            send_ignoring_close(sock, b"x")
            try:
                if sock.recv(65536) == b"":
                    break
            except TimeoutError:
                continue
            except ConnectionResetError:
                break


def test_upgrade_requests_do_not_use_up_the_per_client_cap(capped: ServerProcess) -> None:
    """A WebSocket upgrade used to swap the connection's protocol and never give its count back."""
    upgrade = get(
        "/health",
        Upgrade="websocket",
        Connection="Upgrade",
        **{"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"},
    )
    for _ in range(PER_CLIENT + 2):
        with connect(capped) as sock:
            sock.sendall(upgrade)
            assert read_response(sock, bytearray())[0] == 200
    with ExitStack() as stack:

        def all_admitted() -> bool:
            socks = [stack.enter_context(connect(capped)) for _ in range(PER_CLIENT)]
            for sock in socks:
                send_ignoring_close(sock, get("/health"))
            statuses = [read_response(sock, bytearray())[0] for sock in socks]
            for sock in socks:
                sock.close()
            return statuses == [200] * PER_CLIENT

        poll_until(all_admitted, 10, message="connections were refused after upgrade requests had closed")


def test_a_route_that_ignores_its_small_body_keeps_the_connection(plain: ServerProcess) -> None:
    """Answered before its body arrived, then the body and a second request on the same connection."""
    with connect(plain) as sock:
        buffered = bytearray()
        sock.sendall(b"POST /nope HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n")
        assert read_response(sock, buffered)[0] == 404
        sock.sendall(b"{}" + get("/health"))
        assert read_response(sock, buffered)[0] == 200
