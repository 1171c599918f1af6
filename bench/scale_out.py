"""Scale-out on PostgreSQL: an API-only server plus 1 or 3 engine-only workers; CPU per request.

A (--skip-scale skips it). One `batchgate serve --no-engine` and N `batchgate worker`s share a fresh
PostgreSQL database, one files directory and one config; a batch with 1, then 3 workers, timed from
creation to `completed`, next to a bare aiohttp loop at the same concurrency:
  - limit-bound: max_concurrency 30, 100 ms upstream, 3,000 requests. One worker reaches the limit,
    300 req/s; 3 workers must hold it (the upstream's max_in_flight must stay <= 30).
  - worker-bound: max_concurrency 512, 200 ms upstream, 6,000 requests. The limit, 2,560 req/s, is far
    above what one Python worker drives on 2 cores: how far do 3 workers get?
B (--skip-cpu). One `batchgate serve` with its engine on SQLite, then on PostgreSQL; a 3,000-request
  batch, 0 ms upstream, max_concurrency 32: gateway CPU ms per request and, on PostgreSQL, the CPU of
  the `postgres` processes (server, our backends, background workers) in the same interval.
Timings are reported, never asserted; only "the batch completed with every request" is checked.
Run: .venv/bin/python bench/scale_out.py [--requests-scale F] [--skip-scale] [--skip-cpu]
(needs root and Debian's postgresql, like bench/pg_indexes.py; `--requests-scale 0.1` is a smoke run)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import openai
from common import FakeUpstreamProcess, ServerProcess, cpu_seconds, wait_status

from tests.harness import WorkerProcess
from tests.postgres import PostgresCluster, _psql

# name, max_concurrency, upstream latency ms, requests (before --requests-scale)
SCENARIOS = [("limit-bound", 30, 100, 3000), ("worker-bound", 512, 200, 6000)]
CPU_REQUESTS, CPU_CONCURRENCY = 3000, 32
TERMINAL = ("completed", "failed", "expired", "cancelled")
TICKS = os.sysconf("SC_CLK_TCK")
WARNINGS: list[str] = []  # max_concurrency exceeded: printed last, where nobody misses them
# a client backend: "postgres: 15/main: <user> <database> <host>(<port>) <state>"
BACKEND = re.compile(r"^postgres: [^:]+: \S+ (\S+) (?:\S+\(\d+\)|\[local\])")


def request_line(i: int) -> dict:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "fake-model",
            "messages": [{"role": "user", "content": f"classify row {i}"}],
            "max_tokens": 16,
        },
    }


async def bare_loop(url: str, requests: int, concurrency: int) -> float:
    """requests/s of a plain aiohttp client making the same calls at the same concurrency, no gateway."""
    pending = iter(range(requests))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            for i in pending:
                async with session.post(url + "/chat/completions", json=request_line(i)["body"]) as response:
                    await response.read()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.perf_counter() - start)


def write_input(path: Path, requests: int) -> Path:
    path.write_text("".join(json.dumps(request_line(i)) + "\n" for i in range(requests)))
    return path


def model_config(upstream_url: str, concurrency: int) -> list[dict]:
    return [
        {
            "name": "fake-model",
            "deployments": [
                {"provider": "openai", "base_url": upstream_url, "api_key": "k", "max_concurrency": concurrency}
            ],
        }
    ]


def run_batch(server: ServerProcess, input_path: Path, requests: int, before=lambda: None) -> float:
    """Upload, call `before()`, then seconds from batch creation to `completed`."""
    with openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as client:
        file = client.files.create(file=input_path.open("rb"), purpose="batch")
        before()
        start = time.perf_counter()
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        batch, _ = wait_status(client, batch.id, TERMINAL, timeout=900)
        elapsed = time.perf_counter() - start
    assert batch.status == "completed" and batch.request_counts.completed == requests, batch
    return elapsed


class PostgresCpu:
    """CPU seconds of every process named `postgres`, sampled in the background so backends that
    appear (one per connection) or exit during the interval are counted up to their last sample.
    Client backends of other databases (a test suite sharing the cluster) are left out."""

    def __init__(self, database: str) -> None:
        self.database, self._done = database, threading.Event()
        self.base = self._snapshot()
        self.seen = dict(self.base)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _snapshot(self) -> dict[int, int]:
        ticks = {}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    if (proc / "comm").read_text().strip() != "postgres":
                        continue
                    backend = BACKEND.search((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
                    if backend is None or backend.group(1) == self.database:
                        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                        ticks[int(proc.name)] = int(fields[11]) + int(fields[12])
        return ticks

    def _sample(self) -> None:
        while not self._done.wait(0.1):
            self.seen.update(self._snapshot())

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        self.seen.update(self._snapshot())
        return sum(t - self.base.get(pid, 0) for pid, t in self.seen.items()) / TICKS


@contextlib.contextmanager
def processes(started: list[ServerProcess]):
    """Stop every process in `started` on the way out; show their log tails if something failed."""
    try:
        yield started
    except BaseException:
        for process in started:
            print(f"----- {process!r} log tail -----\n{process.log_tail(40)}")
        raise
    finally:
        for process in started:
            process.stop()


def drop_database(url: str) -> None:
    with contextlib.suppress(subprocess.CalledProcessError):
        _psql(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")


def scale_run(
    cluster: PostgresCluster,
    upstream: FakeUpstreamProcess,
    concurrency: int,
    requests: int,
    workers: int,
    input_path: Path,
    workdir: Path,
) -> dict:
    """One API-only server and `workers` workers, all in `workdir`, on a fresh database."""
    database = cluster.new_database()
    config = {
        "storage": {"database": database, "files": str(workdir / ".batchgate" / "files")},
        "models": model_config(upstream.url, concurrency),
    }
    upstream.reset()
    try:
        with processes([]) as started:
            started.append(ServerProcess(config, workdir=workdir, extra_args=["--no-engine"]).start())
            for i in range(workers):
                worker = WorkerProcess(config, workdir=workdir)
                worker.log_path = workdir / f"worker{i}.log"  # the API server keeps server.log
                started.append(worker.start())
            for process in started:
                process.wait_ready(60)
            elapsed = run_batch(started[0], input_path, requests)
            return {"rps": requests / elapsed, "max_in_flight": upstream.stats()["max_in_flight"]}
    finally:
        drop_database(database)


def scale_out(cluster: PostgresCluster, scale: float, tmp: Path) -> list[list[str]]:
    rows = []
    for name, concurrency, latency_ms, base_requests in SCENARIOS:
        requests = max(1, round(base_requests * scale))
        limit = concurrency / (latency_ms / 1000)
        input_path = write_input(tmp / f"{name}.jsonl", requests)
        upstream = FakeUpstreamProcess(latency_ms=latency_ms).start()
        try:
            bare = asyncio.run(bare_loop(upstream.url, requests, concurrency))
            bare_in_flight = upstream.stats()["max_in_flight"]
            runs = {
                n: scale_run(cluster, upstream, concurrency, requests, n, input_path, tmp / f"{name}-{n}w")
                for n in (1, 3)
            }
        finally:
            upstream.stop()
        label = f"{name} ({requests} req, C={concurrency}, {latency_ms} ms)"
        rows.append([label, "theoretical limit", f"{limit:.1f}", "1.00", f"{limit / bare:.2f}", "", str(concurrency)])
        rows.append(["", "bare aiohttp loop", f"{bare:.1f}", f"{bare / limit:.2f}", "1.00", "", str(bare_in_flight)])
        for n, run in runs.items():
            rows.append(
                [
                    "",
                    f"batchgate, {n} worker{'s' if n > 1 else ''}",
                    f"{run['rps']:.1f}",
                    f"{run['rps'] / limit:.2f}",
                    f"{run['rps'] / bare:.2f}",
                    f"{run['rps'] / runs[1]['rps']:.2f}",
                    str(run["max_in_flight"]),
                ]
            )
            if run["max_in_flight"] > concurrency:
                WARNINGS.append(
                    f"!!! {name}, {n} workers: upstream max_in_flight {run['max_in_flight']} "
                    f"exceeds max_concurrency {concurrency}"
                )
    return rows


def cpu_run(
    upstream: FakeUpstreamProcess, database: str | None, requests: int, input_path: Path, workdir: Path
) -> dict:
    """One `batchgate serve` with its engine; CPU of the gateway (and of postgres) during the batch."""
    config: dict = {
        "models": model_config(upstream.url, CPU_CONCURRENCY),
        **({"storage": {"database": database}} if database is not None else {}),
    }
    meter: dict = {}

    def before() -> None:
        meter["cpu"] = cpu_seconds(server.pid)
        meter["pg"] = PostgresCpu(database.rsplit("/", 1)[1]) if database is not None else None

    with processes([ServerProcess(config, workdir=workdir).start()]) as (server,):
        server.wait_ready(60)
        elapsed = run_batch(server, input_path, requests, before)
        gateway = cpu_seconds(server.pid) - meter["cpu"]
        pg = meter["pg"].stop() if meter["pg"] is not None else 0.0
    return {"rps": requests / elapsed, "gateway_ms": 1000 * gateway / requests, "pg_ms": 1000 * pg / requests}


def cpu_cost(cluster: PostgresCluster, scale: float, tmp: Path) -> list[list[str]]:
    requests = max(1, round(CPU_REQUESTS * scale))
    input_path = write_input(tmp / "cpu.jsonl", requests)
    upstream = FakeUpstreamProcess(latency_ms=0).start()
    try:
        sqlite = cpu_run(upstream, None, requests, input_path, tmp / "cpu-sqlite")
        database = cluster.new_database()
        try:
            pg = cpu_run(upstream, database, requests, input_path, tmp / "cpu-pg")
        finally:
            drop_database(database)
    finally:
        upstream.stop()
    rows = []
    for name, run in (("SQLite", sqlite), ("PostgreSQL", pg)):
        total = run["gateway_ms"] + run["pg_ms"]
        rows.append(
            [
                f"{name} ({requests} req, C={CPU_CONCURRENCY}, 0 ms)",
                f"{run['rps']:.1f}",
                f"{run['gateway_ms']:.2f}",
                f"{run['pg_ms']:.2f}" if name == "PostgreSQL" else "-",
                f"{total:.2f}",
                f"{total / (sqlite['gateway_ms'] + sqlite['pg_ms']):.2f}",
            ]
        )
    return rows


def table(header: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    if markdown:
        lines = [header, ["---"] * len(header), *rows]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = [h in ("scenario", "run", "database") for h in header]
    return "\n".join(
        "  ".join(c.ljust(w) if lft else c.rjust(w) for c, w, lft in zip(r, widths, left, strict=True))
        for r in [header, *rows]
    )


SCALE_HEADER = ["scenario", "run", "req/s", "÷ limit", "÷ bare", "÷ 1 worker", "max_in_flight"]
CPU_HEADER = ["database", "req/s", "gateway CPU ms/req", "postgres CPU ms/req", "total ms/req", "÷ SQLite"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests-scale", type=float, default=1.0, help="multiplies every request count")
    parser.add_argument("--skip-scale", action="store_true", help="skip A, 1 vs 3 workers")
    parser.add_argument("--skip-cpu", action="store_true", help="skip B, CPU per request SQLite vs PostgreSQL")
    args = parser.parse_args()
    cluster = PostgresCluster().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            scale_rows = [] if args.skip_scale else scale_out(cluster, args.requests_scale, Path(tmp))
            cpu_rows = [] if args.skip_cpu else cpu_cost(cluster, args.requests_scale, Path(tmp))
    finally:
        cluster.stop()
    sections = [
        (
            "scale-out on PostgreSQL: 1 API server (--no-engine) + N workers, batch create → completed",
            SCALE_HEADER,
            scale_rows,
        ),
        ("CPU per request, one `batchgate serve` with its engine", CPU_HEADER, cpu_rows),
    ]
    for title, header, rows in sections:
        if rows:
            print(f"\n{title}\n{table(header, rows)}")
    print("\nmarkdown:\n\n" + "\n\n".join(table(h, r, markdown=True) for _, h, r in sections if r))
    if scale_rows:
        print("\n".join(["", *WARNINGS]) if WARNINGS else "\nupstream max_in_flight never exceeded max_concurrency")


if __name__ == "__main__":
    main()
