"""Throughput: a 5,000-request batch against a 50 ms upstream with max_concurrency 32.

Printed side by side, measured in one run:
  - the theoretical limit, 32 / 0.05 s = 640 requests/s;
  - a bare aiohttp loop at concurrency 32 against the same upstream (what Python on this machine
    can do at all, since the fake upstream itself competes for the two cores);
  - batchgate, from batch creation to `completed` (validation and finalisation included),
    plus the gateway's CPU seconds per request.
Run: .venv/bin/python bench/throughput.py [--requests N] [--latency-ms MS] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

import aiohttp
import openai
from common import FakeUpstreamProcess, ServerProcess, cpu_seconds, peak_rss_mb, wait_status


def request_line(i: int, jitter_ms: tuple[float, float] | None = None) -> dict:
    """One chat request; with `jitter_ms` (mean, spread) its own upstream latency, drawn from a
    seeded RNG so the bare loop and the gateway see the very same latencies."""
    content = f"classify row {i}"
    if jitter_ms is not None:
        mean, spread = jitter_ms
        content += f" @latency:{random.Random(i).uniform(mean - spread, mean + spread):.0f}"
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "fake-model", "messages": [{"role": "user", "content": content}], "max_tokens": 16},
    }


async def bare_loop(
    url: str, requests: int, concurrency: int, jitter_ms: tuple[float, float] | None = None
) -> tuple[float, float]:
    """(requests/s, CPU ms per request) of a plain aiohttp client doing the same calls, no gateway."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                body = request_line(i, jitter_ms)["body"]
                async with session.post(url + "/chat/completions", json=body) as response:
                    await response.read()

        cpu, start = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        return requests / elapsed, 1000 * cpu / requests


def gateway_run(
    upstream_url: str, requests: int, concurrency: int, workdir: Path, jitter_ms: tuple[float, float] | None = None
) -> dict:
    config = {
        "models": [
            {
                "name": "fake-model",
                "deployments": [
                    {"provider": "openai", "base_url": upstream_url, "api_key": "k", "max_concurrency": concurrency}
                ],
            }
        ],
    }
    input_path = workdir / "input.jsonl"
    with open(input_path, "w") as fh:
        for i in range(requests):
            fh.write(json.dumps(request_line(i, jitter_ms)) + "\n")
    server = ServerProcess(config, workdir=workdir / "server").start().wait_ready()
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        file = client.files.create(file=input_path.open("rb"), purpose="batch")
        cpu_before = cpu_seconds(server.pid)
        start = time.perf_counter()
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        _, validating_s = wait_status(client, batch.id, ("in_progress", "finalizing", "completed"), 120)
        # Running alone: from in_progress to the first sight of finalizing (validation and the
        # writing of the result files left out), to within the 0.1 s polling interval.
        batch, running_s = wait_status(
            client, batch.id, ("finalizing", "completed", "failed", "expired", "cancelled"), 600
        )
        batch, _ = wait_status(client, batch.id, ("completed", "failed", "expired", "cancelled"), 600)
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(server.pid) - cpu_before
        assert batch.status == "completed" and batch.request_counts.completed == requests, batch
        return {
            "seconds": elapsed,
            "validating_s": validating_s,
            "rps": requests / elapsed,
            "running_rps": requests / running_s,
            "cpu_per_request_ms": 1000 * cpu / requests,
            "rss_mb": peak_rss_mb(server.pid),
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    limit = args.concurrency / (args.latency_ms / 1000) if args.latency_ms else float("inf")
    upstream = FakeUpstreamProcess(latency_ms=args.latency_ms).start()
    try:
        bare, _ = asyncio.run(bare_loop(upstream.url, args.requests, args.concurrency))
        with tempfile.TemporaryDirectory() as tmp:
            gateway = gateway_run(upstream.url, args.requests, args.concurrency, Path(tmp))
    finally:
        upstream.stop()
    print(
        f"\nthroughput: {args.requests} requests, upstream latency {args.latency_ms:g} ms, "
        f"max_concurrency {args.concurrency}"
    )
    print(f"{'':32}{'req/s':>10}{'vs limit':>10}{'vs bare':>10}")
    print(f"{'theoretical limit':32}{limit:>10.1f}{1:>10.2f}{limit / bare:>10.2f}")
    print(f"{'bare aiohttp loop':32}{bare:>10.1f}{bare / limit:>10.2f}{1:>10.2f}")
    print(
        f"{'batchgate (create→completed)':32}{gateway['rps']:>10.1f}{gateway['rps'] / limit:>10.2f}"
        f"{gateway['rps'] / bare:>10.2f}"
    )
    print(
        f"gateway CPU per request: {gateway['cpu_per_request_ms']:.2f} ms; "
        f"validation {gateway['validating_s']:.2f} s; server peak RSS {gateway['rss_mb']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
