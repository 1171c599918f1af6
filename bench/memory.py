"""`make bench-memory`: the server's peak RSS while large answers pass through it, against its bounds.

Each scenario starts a fresh batchgate server in a temp dir (one model, `fake-model`, on the fake
upstream with max_concurrency 16 and the default max_response_bytes of 32 MiB). A thread samples
the RSS of the server process and its children every ~20 ms; the baseline is taken after start-up.
  1  16 concurrent 25 MB answers: a 16-line batch (`@big:25000000 @latency:1000`, all 16 in flight
     at once) through the openai SDK, until completed        bound: baseline + 16 × 3 × 25 MB
  2  /output of that batch, streamed (a fresh server on the same storage)   bound: baseline + 6 × 25 MB
  3  xAI /results of such a batch (16 added requests), streamed (a fresh server on the same storage
     for the read)                                                         bound: baseline + 6 × 25 MB
  (2 and 3: one answer at a time, a few copies of it (SQLite's, the row's text, parsed, serialised)
  and allocator slack: the bound is a multiple of the largest answer, whatever the number of answers)
  4  200 MB headers without a key: four raw sockets each sending a 200 MB header to a server with an
     admin key                                                             bound: baseline + 50 MB
Nothing is asserted: each row says PASS or MISS. The table is printed and written to bench/MEMORY.md.
Run: .venv/bin/python bench/memory.py [PART…] (e.g. `3`; the table is written only for a whole run)
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from common import ROOT, FakeUpstreamProcess, ServerProcess

from tests.harness import base_config, chat_line, openai_client, poll_until, write_jsonl

MEMORY_MD = ROOT / "bench" / "MEMORY.md"
MB = 1_000_000
MIB = 1024 * 1024
ANSWERS, ANSWER_BYTES, LATENCY_MS = 16, 25_000_000, 1000
ONE_ANSWER_BOUND_MB, ONE_ANSWER_BOUND = 6 * ANSWER_BYTES / MB, "6 × 25 MB"
HEADER_BYTES, HEADER_SOCKETS = 200 * MB, 4
ADMIN_KEY = "bench-memory-admin-key-0123456789"
API_KEY = "bench"  # open local mode takes any key


@dataclass
class Row:
    scenario: str
    baseline_mib: float
    peak_mib: float
    allowance_mb: float  # the bound is baseline + this
    allowance_text: str
    seconds: float
    check: str  # what the scenario saw (line counts, status lines)

    @property
    def bound_mib(self) -> float:
        return self.baseline_mib + self.allowance_mb * MB / MIB

    @property
    def verdict(self) -> str:
        return "PASS" if self.peak_mib <= self.bound_mib else "MISS"


class RssSampler:
    """The summed RSS of a process and its children, sampled every `interval` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        total = 0
        for proc in [self.process, *self._children()]:
            with suppress(psutil.NoSuchProcess, psutil.AccessDenied):  # a child that ended meanwhile
                total += proc.memory_info().rss
        return total

    def _children(self) -> list[psutil.Process]:
        try:
            return self.process.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.rss())
            except psutil.NoSuchProcess:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with suppress(psutil.NoSuchProcess):
            self.peak = max(self.peak, self.rss())

    @property
    def peak_mib(self) -> float:
        return self.peak / MIB


def baseline_mib(server: ServerProcess, settle_s: float = 1.0) -> float:
    """The server's RSS once started: the highest of a second's samples, so start-up work has settled."""
    assert server.pid is not None
    sampler = RssSampler(server.pid)
    deadline = time.monotonic() + settle_s
    peak = 0
    while time.monotonic() < deadline:
        peak = max(peak, sampler.rss())
        time.sleep(0.05)
    return peak / MIB


@contextmanager
def fresh_server(upstream_url: str, workdir: Path, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """A started, ready server on `workdir` (its storage is kept there), stopped on exit however it ends."""
    config = base_config(upstream_url, max_concurrency=ANSWERS)
    server = ServerProcess(config, env=env, workdir=workdir)
    try:
        yield server.start().wait_ready()
    finally:
        server.stop()


class LineLengths:
    """The length of each line of a stream fed in chunks, without keeping the lines."""

    def __init__(self) -> None:
        self.lengths: list[int] = []
        self._current = 0

    def feed(self, chunk: bytes) -> None:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            self.lengths.append(self._current + end - start)
            self._current, start = 0, end + 1
        self._current += len(chunk) - start

    def finish(self) -> list[int]:
        if self._current:
            self.lengths.append(self._current)
            self._current = 0
        return self.lengths


class MarkerCount:
    """How often `marker` occurs in a stream fed in chunks (also across chunk boundaries)."""

    def __init__(self, marker: bytes) -> None:
        self.marker, self.count, self._tail = marker, 0, b""

    def feed(self, chunk: bytes) -> None:
        window = self._tail + chunk[: len(self.marker) - 1]  # a marker in it spans the boundary
        self.count += window.count(self.marker) + chunk.count(self.marker)
        self._tail = chunk[-(len(self.marker) - 1) :]


def stream_to_devnull(
    client: httpx.Client, url: str, copy_to: Path | None = None, marker: MarkerCount | None = None
) -> tuple[int, list[int]]:
    """GET `url` streamed to /dev/null (and to `copy_to` if given): total bytes and each line's length."""
    total, lines = 0, LineLengths()
    with open(os.devnull, "wb") as sink, client.stream("GET", url) as response:
        response.raise_for_status()
        copy = copy_to.open("wb") if copy_to is not None else None
        try:
            for chunk in response.iter_bytes():
                sink.write(chunk)
                if copy is not None:
                    copy.write(chunk)
                total += len(chunk)
                lines.feed(chunk)
                if marker is not None:
                    marker.feed(chunk)
        finally:
            if copy is not None:
                copy.close()
    return total, lines.finish()


def timed(fn: Callable[[], Row]) -> Row:
    start = time.perf_counter()
    row = fn()
    row.seconds = time.perf_counter() - start
    return row


# ------------------------------------------------------------------ scenarios 1 and 2
def openai_batch(upstream_url: str, workdir: Path) -> tuple[Row, Row]:
    """Scenario 1 on one server, then scenario 2 on a fresh one over the same storage."""
    input_path = write_jsonl(
        workdir / "input.jsonl",
        (chat_line(f"r{i}", f"@big:{ANSWER_BYTES} @latency:{LATENCY_MS} r{i}") for i in range(ANSWERS)),
    )
    started = time.perf_counter()
    with fresh_server(upstream_url, workdir / "server") as server:
        base = baseline_mib(server)
        client = openai_client(server, api_key=API_KEY, timeout=600)
        assert server.pid is not None
        with RssSampler(server.pid) as sampler:
            file = client.files.create(file=input_path.open("rb"), purpose="batch")
            batch = client.batches.create(
                input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            batch = poll_until(
                lambda: (
                    (b := client.batches.retrieve(batch.id)).status in ("completed", "failed", "expired", "cancelled")
                    and b
                ),
                timeout=240,
                interval=0.2,
                message=lambda: f"batch not finished; log:\n{server.log_tail()}",
            )
        counts = batch.request_counts
        check = f"{batch.status}, {counts.completed if counts else '?'}/{ANSWERS} completed"
        if batch.output_file_id:
            counter = LineLengths()
            with client.files.with_streaming_response.content(batch.output_file_id) as response:
                for chunk in response.iter_bytes():
                    counter.feed(chunk)
            lines = counter.finish()
            big = sum(1 for n in lines if n > ANSWER_BYTES)
            check += f"; output {len(lines)} lines, {big} > {ANSWER_BYTES:,} B"
            check += " ✓" if len(lines) == ANSWERS and big == ANSWERS else " ✗"
        else:
            check += "; no output file ✗"
    first = Row(
        f"1. {ANSWERS} concurrent 25 MB answers (openai SDK batch)",
        base,
        sampler.peak_mib,
        ANSWERS * 3 * ANSWER_BYTES / MB,
        f"{ANSWERS} × 3 × 25 MB",
        time.perf_counter() - started,
        check,
    )

    started = time.perf_counter()
    with fresh_server(upstream_url, workdir / "server") as server:
        base = baseline_mib(server)
        assert server.pid is not None
        auth = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=server.url, timeout=600, headers=auth) as http, RssSampler(server.pid) as sampler:
            # TrueFoundry's shape: one JSON array of output lines; each element starts with its request id.
            elements = MarkerCount(b'{"id":"batch_req_')
            total, _ = stream_to_devnull(http, f"/v1/batches/{batch.id}/output", marker=elements)
    ok = total > ANSWERS * ANSWER_BYTES and elements.count == ANSWERS
    second = Row(
        "2. /v1/batches/{id}/output of that batch, streamed",
        base,
        sampler.peak_mib,
        ONE_ANSWER_BOUND_MB,
        ONE_ANSWER_BOUND,
        time.perf_counter() - started,
        f"{total:,} B, {elements.count} answers in one JSON array (> {ANSWERS} × 25 MB) {'✓' if ok else '✗'}",
    )
    return first, second


# ------------------------------------------------------------------ scenario 3
def xai_results(upstream_url: str, workdir: Path) -> Row:
    """The batch is made and run on one server; /results is read from a fresh one over the same storage."""
    started = time.perf_counter()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with (
        fresh_server(upstream_url, workdir / "server") as server,
        httpx.Client(base_url=f"{server.url}/xai/v1", timeout=600, headers=auth) as http,
    ):
        batch_id = http.post("/batches", json={"name": "mem"}).raise_for_status().json()["batch_id"]
        items = [
            {
                "batch_request_id": f"r{i}",
                "batch_request": {
                    "chat_get_completion": {
                        "model": "fake-model",
                        "messages": [{"role": "user", "content": f"@big:{ANSWER_BYTES} @latency:{LATENCY_MS} r{i}"}],
                    }
                },
            }
            for i in range(ANSWERS)
        ]
        http.post(f"/batches/{batch_id}/requests", json={"batch_requests": items}).raise_for_status()

        def finished() -> dict[str, Any] | None:
            state = http.get(f"/batches/{batch_id}").raise_for_status().json()["state"]
            if state["num_error"]:
                raise AssertionError(f"xAI batch requests failed: {state}; log:\n{server.log_tail()}")
            return state if state["num_success"] == ANSWERS else None

        poll_until(finished, timeout=240, interval=0.2, message=f"xAI batch {batch_id} did not finish")
    with (
        fresh_server(upstream_url, workdir / "server") as server,
        httpx.Client(base_url=f"{server.url}/xai/v1", timeout=600, headers=auth) as http,
    ):
        base = baseline_mib(server)
        copy = workdir / "results.json"
        assert server.pid is not None
        with RssSampler(server.pid) as sampler:
            total, _ = stream_to_devnull(http, f"/batches/{batch_id}/results?limit=100", copy_to=copy)
    results = json.loads(copy.read_bytes())["results"]
    copy.unlink()
    good = sum(1 for r in results if "response" in r.get("batch_result", {}))
    ok = len(results) == ANSWERS and good == ANSWERS
    return Row(
        "3. xAI /results?limit=100 of such a batch, streamed",
        base,
        sampler.peak_mib,
        ONE_ANSWER_BOUND_MB,
        ONE_ANSWER_BOUND,
        time.perf_counter() - started,
        f"{len(results)} results ({good} answers), {total:,} B {'✓' if ok else '✗'}",
    )


# ------------------------------------------------------------------ scenario 4
def big_header(port: int) -> str:
    """Send one request whose X-Big header is 200 MB of 'a'; what came back (status line, or how it ended)."""
    chunk = b"a" * MIB
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        ended = ""
        try:
            sock.sendall(b"GET /v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            while sent < HEADER_BYTES:
                piece = chunk[: min(MIB, HEADER_BYTES - sent)]
                sock.sendall(piece)
                sent += len(piece)
            sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError) as exc:
            ended = f"{type(exc).__name__} after {sent / MB:.0f} MB sent"
        except TimeoutError:
            ended = f"send stalled 30 s after {sent / MB:.0f} MB sent"
        answer = b""
        try:
            while b"\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except (ConnectionResetError, TimeoutError) as exc:
            ended = ended or f"{type(exc).__name__} after {sent / MB:.0f} MB sent"
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace") if answer else "closed without an answer"
    return f"{status} ({ended or f'all {sent / MB:.0f} MB sent'})"


def big_headers(upstream_url: str, workdir: Path) -> Row:
    started = time.perf_counter()
    with fresh_server(upstream_url, workdir / "server", env={"BATCHGATE_ADMIN_KEY": ADMIN_KEY}) as server:
        base = baseline_mib(server)
        assert server.pid is not None
        with RssSampler(server.pid) as sampler, ThreadPoolExecutor(HEADER_SOCKETS) as pool:
            answers = list(pool.map(big_header, [server.port] * HEADER_SOCKETS))
        alive = "server still up" if server.is_running() else "server DIED"
    seen: dict[str, int] = {}
    for answer in answers:
        seen[answer] = seen.get(answer, 0) + 1
    check = "; ".join(f"{n} × {a}" for a, n in seen.items()) + f"; {alive}"
    return Row(
        f"4. {HEADER_SOCKETS} × 200 MB headers without a key (admin key set)",
        base,
        sampler.peak_mib,
        50,
        "50 MB",
        time.perf_counter() - started,
        check,
    )


# ------------------------------------------------------------------ the table
def table(rows: list[Row]) -> str:
    lines = ["| Scenario | Baseline | Peak RSS | Bound | | Duration | Seen |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.baseline_mib:.0f} MiB | {r.peak_mib:.0f} MiB (+{r.peak_mib - r.baseline_mib:.0f}) "
            f"| {r.bound_mib:.0f} MiB (baseline + {r.allowance_text}) | {r.verdict} | {r.seconds:.1f} s "
            f"| {r.check} |"
        )
    return "\n".join(lines)


def failed_row(name: str, exc: BaseException, seconds: float) -> Row:
    return Row(name, 0.0, float("nan"), 0, "—", seconds, f"ERROR {type(exc).__name__}: {str(exc)[:300]}")


def main() -> None:
    started = time.perf_counter()
    rows: list[Row] = []
    upstream = FakeUpstreamProcess().start()
    try:
        parts: list[tuple[str, Callable[[Path], list[Row]]]] = [
            ("1+2. openai batch and its /output", lambda d: list(openai_batch(upstream.url, d))),
            ("3. xAI /results", lambda d: [xai_results(upstream.url, d)]),
            ("4. 200 MB headers", lambda d: [big_headers(upstream.url, d)]),
        ]
        wanted = sys.argv[1:]  # e.g. `bench/memory.py 3`: only the parts whose name starts with these
        for name, part in parts:
            if wanted and not any(name.startswith(w) for w in wanted):
                continue
            print(f"running {name} ...", flush=True)
            part_start = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
                try:
                    new = part(Path(tmp))
                except Exception as exc:  # a broken scenario is a row, the others still run
                    new = [failed_row(name, exc, time.perf_counter() - part_start)]
            for r in new:
                print(
                    f"  {r.scenario}: peak {r.peak_mib:.0f} MiB, bound {r.bound_mib:.0f} MiB → {r.verdict} "
                    f"({r.seconds:.1f} s; {r.check})",
                    flush=True,
                )
            rows += new
    finally:
        upstream.stop()
    text = table(rows)
    print("\n" + text)
    if wanted:
        return
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    MEMORY_MD.write_text(
        f"# Memory benchmark\n\n`make bench-memory` on {stamp}: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}. Peak RSS is the server process plus its children, sampled every "
        f"20 ms; the baseline is taken after start-up, on a fresh server for each measurement. "
        f"{time.perf_counter() - started:.0f} s in all.\n\n{text}\n"
    )
    print(f"\nwritten to {MEMORY_MD.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
