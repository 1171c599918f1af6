"""Hostile uploads against a real server: filenames that try to be paths (or break the multipart
header), a line over the line limit, deep JSON nesting, invalid UTF-8, a slow-loris client and
clients that hang up mid-upload. The server must answer 200 or a clear 400, write nothing outside
its files directory, keep serving everyone else, and leave no partial blob behind.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.helpers import jsonl, unexpected_tracebacks
from tests.fuzz.helpers import envelope_problem, examples, files_dir, fuzz_config, paths_named, stored_entries
from tests.harness import FakeUpstreamProcess, ServerProcess, chat_line, poll_until, running_server
from tests.postgres import PostgresCluster

BOUNDARY = b"fuzzhostileboundary"
TERMINAL = ("completed", "failed", "expired", "cancelled")


@pytest.fixture(scope="module")
def server(fake_upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = fuzz_config(fake_upstream.url, body_idle_timeout_s=STALL_S)
    with running_server(config, workdir=tmp_path_factory.mktemp("hostile")) as srv:
        yield srv


STALL_S = 2  # the server gives up on a request body after this long without a byte


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


# ---------------------------------------------------------------------------- helpers
def multipart(filename: bytes, content: bytes, purpose: bytes = b"batch") -> bytes:
    """A multipart body written byte for byte, so the filename reaches the server exactly as given."""
    return (
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n' + purpose + b"\r\n"
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n--" + BOUNDARY + b"--\r\n"
    )


def post_multipart(http: httpx.Client, body: bytes) -> httpx.Response:
    return http.post(
        "/v1/files", content=body, headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY.decode()}"}
    )


def assert_envelope(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    problem = envelope_problem(status, response.json())
    assert problem is None, problem
    return response.json()["error"]


def listed_ids(http: httpx.Client) -> set[str]:
    return {f["id"] for f in http.get("/v1/files").json()["data"]}


def upload(http: httpx.Client, data: bytes) -> str:
    response = http.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def run_batch(http: httpx.Client, data: bytes, timeout: float = 60) -> dict[str, Any]:
    """Upload `data`, create a chat batch on it and wait until it ends; the final batch."""
    batch = http.post(
        "/v1/batches",
        json={"input_file_id": upload(http, data), "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    ).json()
    return poll_until(
        lambda: (b := http.get(f"/v1/batches/{batch['id']}").json())["status"] in TERMINAL and b,
        timeout,
        message=f"batch {batch['id']} never ended",
    )


def validation_errors(batch: dict[str, Any]) -> list[tuple[str, int | None]]:
    assert batch["status"] == "failed", batch
    return [(e["code"], e["line"]) for e in batch["errors"]["data"]]


def assert_harmless_label(name: str) -> None:
    assert name and len(name) <= 255, name
    assert "/" not in name and "\\" not in name and name not in (".", ".."), name
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in name), repr(name)


def search_roots(server: ServerProcess) -> list[Path]:
    """Everywhere an escaping name could land: the server's directory and its parents' trees, and /tmp."""
    return [server.workdir.parent, Path("/tmp")]


# ---------------------------------------------------------------------------- filenames
HOSTILE_NAMES = {
    "parent traversal": b"../../../MARK.jsonl",
    "absolute path": b"/tmp/MARK.jsonl",
    "windows traversal": b"..\\..\\MARK.jsonl",
    "encoded traversal": b"%2e%2e%2fMARK.jsonl",
    "NUL": b"ok\x00/../../MARK.jsonl",
    "CR LF": b"a\r\nX-Injected: MARK\r\n.jsonl",
    "lone CR": b"a\rMARK.jsonl",
    "1000 characters": b"MARK" + b"x" * 996,  # kept, cut to 255
    "5000 characters": b"MARK" + b"x" * 4996,  # over python-multipart's header limit: a 400
    "non-UTF-8": b"\xff\xfe\xc3(MARK.jsonl",
    "dot dot": b"..",
    "empty": b"",
    "only slashes": b"////",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_NAMES))
def test_hostile_filename_is_stored_as_a_harmless_label(kind: str, server: ServerProcess, http: httpx.Client) -> None:
    marker = f"hostile-{uuid.uuid4().hex[:12]}"
    name = HOSTILE_NAMES[kind].replace(b"MARK", marker.encode())
    before = stored_entries(server)
    response = post_multipart(http, multipart(name, b"payload\n"))
    if response.status_code == 400:  # a header the multipart parser refuses (CR/LF): a clear 400, nothing kept
        assert_envelope(response, 400)
        assert stored_entries(server) == before
    else:
        assert response.status_code == 200, response.text
        file = response.json()
        assert_harmless_label(file["filename"])
        assert http.get(f"/v1/files/{file['id']}").json()["filename"] == file["filename"]
        assert http.get(f"/v1/files/{file['id']}/content").content == b"payload\n"
        assert stored_entries(server) == before | {file["id"]}  # the blob is named by its id, nothing else
    assert paths_named(search_roots(server), marker) == []


@settings(deadline=None, max_examples=examples(25), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.binary(max_size=300).filter(lambda b: b'"' not in b))
def test_any_filename_bytes_give_a_label_or_a_400(name: bytes, server: ServerProcess, http: httpx.Client) -> None:
    response = post_multipart(http, multipart(name, b"x"))
    assert response.status_code in (200, 400), response.text
    if response.status_code == 200:
        assert_harmless_label(response.json()["filename"])
    else:
        assert_envelope(response, 400)


# ---------------------------------------------------------------------------- hostile lines
def _rss_while(server: ServerProcess, action: Any) -> tuple[Any, int, int]:
    """Run `action()` while sampling the server's RSS; its result, the RSS before and the peak."""
    proc = psutil.Process(server.pid)
    baseline = proc.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], proc.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = action()
    finally:
        done.set()
        sampler.join()
    return result, baseline, peak[0]


def test_a_30_mb_line_fails_validation_and_memory_stays_flat(server: ServerProcess, http: httpx.Client) -> None:
    limit = 26_214_400  # limits.max_line_bytes' default
    huge = json.dumps(chat_line("huge", "x" * 30_000_000)).encode()
    data = jsonl(chat_line("first", "hi")) + huge + b"\n" + jsonl(chat_line("last", "bye"))
    batch, baseline, peak = _rss_while(server, lambda: run_batch(http, data))
    assert validation_errors(batch) == [("invalid_json_line", 2)]
    assert f"longer than {limit} bytes" in batch["errors"]["data"][0]["message"]
    # Streamed in chunks and skipped unparsed: at most about one line limit's worth is ever buffered.
    assert peak - baseline < 64 * 2**20, f"RSS grew by {(peak - baseline) / 2**20:.0f} MiB"


def test_deep_nesting_in_a_line_is_a_clear_invalid_json_line(server: ServerProcess, http: httpx.Client) -> None:
    data = jsonl(chat_line("a", "hi")) + b"[" * 100_000 + b"\n" + jsonl(chat_line("b", "hi"))
    batch = run_batch(http, data)
    assert validation_errors(batch) == [("invalid_json_line", 2)]
    assert "line 2 is not valid JSON" in batch["errors"]["data"][0]["message"]
    assert http.get("/health").status_code == 200


def test_nesting_too_deep_to_forward_fails_validation_not_the_request(
    server: ServerProcess, http: httpx.Client
) -> None:
    """300 levels is valid JSON but more than the gateway can re-serialise: a validation error, not an
    `internal_error` in the error file."""
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    line = chat_line("deep", "hi", extra=deep)
    batch = run_batch(http, jsonl(line))
    assert validation_errors(batch) == [("invalid_json_line", 1)]
    assert "levels deep" in batch["errors"]["data"][0]["message"]


def test_deep_nesting_in_json_bodies_is_a_400(server: ServerProcess, http: httpx.Client) -> None:
    deep = b"[" * 100_000
    assert assert_envelope(http.post("/v1/batches", content=deep), 400)["code"] == "invalid_json"
    open_batch = http.post("/xai/v1/batches", json={"name": "deep"}).json()["batch_id"]
    nested = "[" * 300 + "]" * 300  # valid JSON, too deep to store as an input line
    body = (
        '{"batch_requests": [{"batch_request": {"chat_get_completion": {"model": "fake-model", '
        '"messages": [{"role": "user", "content": "hi"}], "extra": ' + nested + "}}}]}"
    )
    error = assert_envelope(http.post(f"/xai/v1/batches/{open_batch}/requests", content=body), 400)
    assert error["param"] == "batch_requests"


def test_invalid_utf8_in_a_line_is_a_clear_invalid_json_line(server: ServerProcess, http: httpx.Client) -> None:
    bad = json.dumps(chat_line("bad", "MARK")).encode().replace(b"MARK", b"caf\xe9 \xff\xfe")
    batch = run_batch(http, jsonl(chat_line("ok", "hi")) + bad + b"\n")
    assert validation_errors(batch) == [("invalid_json_line", 2)]
    assert "UTF-8" in batch["errors"]["data"][0]["message"]


def test_nul_in_a_custom_id_fails_validation_on_postgresql(
    postgres: PostgresCluster, upstream: FakeUpstreamProcess, tmp_path: Path
) -> None:
    """PostgreSQL cannot store a NUL: such a batch used to stay `validating` forever, retrying."""
    config = {**fuzz_config(upstream.url), "storage": {"database": postgres.new_database()}}
    with running_server(config, workdir=tmp_path) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        batch = run_batch(client, jsonl(chat_line("ok", "hi"), chat_line("a\x00b", "hi")), timeout=20)
    assert validation_errors(batch) == [("missing_required_parameter", 2)]
    assert "NUL" in batch["errors"]["data"][0]["message"]


# ---------------------------------------------------------------------------- slow and vanishing clients
def _request_head(server: ServerProcess, length: int) -> bytes:
    return (
        f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY.decode()}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_slow_loris_upload_does_not_hold_up_other_clients(server: ServerProcess, http: httpx.Client) -> None:
    body = multipart(b"slow.jsonl", jsonl(*(chat_line(f"r{i}", "hi") for i in range(50))))
    before_ids, before_entries = listed_ids(http), stored_entries(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(_request_head(server, len(body)))
        sent = 0
        for _ in range(40):  # a trickle: a few bytes at a time, then it stalls with most of the body unsent
            sock.sendall(body[sent : sent + 7])
            sent += 7
            time.sleep(0.005)
        # While it stalls, everyone else is served, uploads included.
        started = time.monotonic()
        for _ in range(20):
            assert http.get("/health").status_code == 200
        other = upload(http, jsonl(chat_line("x", "y")))
        assert http.get(f"/v1/files/{other}/content").content == jsonl(chat_line("x", "y"))
        assert time.monotonic() - started < 5, "other clients waited on the slow one"
        assert listed_ids(http) == before_ids | {other}  # the stalled upload is not a file (yet)
        # The server gives up on it: a 408 in the envelope, and the connection closed.
        sock.settimeout(STALL_S + 10)
        answer = _read_until_closed(sock)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer
        assert json.loads(body)["error"] == {
            "message": f"the request body stalled: no bytes arrived for {STALL_S} s",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_timeout",
        }
    # Its partial blob goes, and it never appears.
    poll_until(
        lambda: stored_entries(server) == before_entries | {other},
        10,
        message=lambda: f"leftovers: {stored_entries(server) - before_entries - {other}}",
    )
    assert listed_ids(http) == before_ids | {other}


def _read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


CUTS = {  # where the client hangs up: how many bytes of the body it sent
    "in the purpose part": lambda body: body.index(b"batch") + 2,
    "in the file part's headers": lambda body: body.index(b"filename=") + 5,
    "half the file": lambda body: len(body) // 2,
    "before the closing boundary": lambda body: len(body) - 8,
}


@pytest.mark.parametrize("cut", sorted(CUTS))
def test_disconnect_mid_upload_leaves_nothing(cut: str, server: ServerProcess, http: httpx.Client) -> None:
    body = multipart(b"gone.jsonl", b'{"x": 1}\n' * 300_000)  # 2.7 MB: several chunks reach the blob
    sent = CUTS[cut](body)
    before_ids, before_entries = listed_ids(http), stored_entries(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(_request_head(server, len(body)) + body[:sent])
        if sent > len(body) // 4:  # the upload really is being streamed to a temporary blob before we hang up
            poll_until(
                lambda: stored_entries(server) - before_entries,
                10,
                message="the server never started writing the upload",
            )
    poll_until(
        lambda: stored_entries(server) == before_entries,
        10,
        message=lambda: f"leftovers: {stored_entries(server) - before_entries}",
    )
    assert listed_ids(http) == before_ids
    assert not list(files_dir(server).glob(".*.part"))
    assert http.get("/health").status_code == 200


def test_disconnect_mid_chunked_upload_leaves_nothing(server: ServerProcess, http: httpx.Client) -> None:
    """The same without a Content-Length: a chunked body that stops in the middle of a chunk."""
    body = multipart(b"gone.jsonl", b'{"x": 1}\n' * 300_000)
    half = body[: len(body) // 2]
    before_ids, before_entries = listed_ids(http), stored_entries(server)
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY.decode()}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + f"{len(body):x}\r\n".encode() + half)
        poll_until(lambda: stored_entries(server) - before_entries, 10, message="the upload never reached a blob")
    poll_until(
        lambda: stored_entries(server) == before_entries,
        10,
        message=lambda: f"leftovers: {stored_entries(server) - before_entries}",
    )
    assert listed_ids(http) == before_ids


def test_no_unhandled_errors_in_the_server_log(server: ServerProcess) -> None:
    assert unexpected_tracebacks(server.log_text()) == []
