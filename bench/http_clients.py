"""aiohttp vs httpx as the upstream client: requests/s and client CPU per request, side by side.

Both clients send the same chat completion at concurrency 32 to the fake upstream (a separate
process, 50 ms latency), pooled connections, one shared session each. The one with the lower
CPU per request is the better fit: the gateway shares its cores with everything else.
Run: .venv/bin/python bench/http_clients.py [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time

import aiohttp
import httpx
import orjson
from common import FakeUpstreamProcess

BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "classify this row"}], "max_tokens": 8})
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer k"}


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_aiohttp(url: str, requests: int, concurrency: int) -> None:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                orjson.loads(await response.read())

        await _drive(one, requests, concurrency)


async def run_httpx(url: str, requests: int, concurrency: int) -> None:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def one() -> None:
            response = await client.post(url, content=BODY, headers=HEADERS)
            orjson.loads(response.content)

        await _drive(one, requests, concurrency)


async def _drive(one, requests: int, concurrency: int) -> None:  # type: ignore[no-untyped-def]
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def measure(name: str, fn, url: str, requests: int, concurrency: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    asyncio.run(fn(url, 200, concurrency))  # warm up: connections, imports
    cpu, start = cpu_now(), time.perf_counter()
    asyncio.run(fn(url, requests, concurrency))
    elapsed, cpu = time.perf_counter() - start, cpu_now() - cpu
    return requests / elapsed, 1000 * cpu / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=50)
    args = parser.parse_args()
    upstream = FakeUpstreamProcess(latency_ms=args.latency_ms).start()
    try:
        url = upstream.url + "/chat/completions"
        results = {
            name: measure(name, fn, url, args.requests, args.concurrency)
            for name, fn in (("aiohttp", run_aiohttp), ("httpx", run_httpx))
        }
    finally:
        upstream.stop()
    base_rps, base_cpu = results["aiohttp"]
    print(
        f"\nupstream client, {args.requests} requests at concurrency {args.concurrency}, "
        f"{args.latency_ms:g} ms upstream"
    )
    print(f"{'client':10}{'req/s':>10}{'CPU ms/req':>12}{'CPU vs aiohttp':>16}")
    for name, (rps, cpu) in results.items():
        print(f"{name:10}{rps:>10.1f}{cpu:>12.3f}{cpu / base_cpu:>16.2f}")


if __name__ == "__main__":
    main()
