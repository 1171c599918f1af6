"""`make bench`: every headline benchmark in one run, one table of figures against their targets,
also written to bench/RESULTS.md.

Each part starts its own fake upstream process (tests/fake_upstream.py) and a fresh batchgate
server, and sets the gateway beside what can be reached at all on this machine (the theoretical
limit, and a bare aiohttp loop making the same calls to the same upstream) in the same run:
  latency-bound  10,000 requests, upstream 100 ms ± 20 ms, max_concurrency 64: achieved / limit
  CPU-bound      5,000 requests, upstream with no latency: gateway CPU per request ÷ the bare loop's
  RPM-bound      upstream enforcing 3,000 RPM with 429s, `rpm: 3000` configured: RPM / limit, 429 share
  ingestion      50,000 lines / ~200 MB: upload + validation seconds, server peak RSS
  fairness       20 batches of mixed sizes from 4 teams (weights 1:2:3:4) at once: share / weight
  scale          list / retrieve latency with 10,000 batches and 1,000,000 request rows stored
Run: .venv/bin/python bench/suite.py [--quick]   (--quick: every size divided by 10, a smoke run)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import fair_teams
import large_file
import rate_limits
import scale_store
import throughput
from common import ROOT, FakeUpstreamProcess

RESULTS = ROOT / "bench" / "RESULTS.md"


@dataclass
class Figure:
    benchmark: str
    measured: str
    target: str
    met: bool | None  # None: no target, a figure to read


def latency_bound(scale: float) -> list[Figure]:
    requests, concurrency, jitter = int(10_000 * scale), 64, (100.0, 20.0)
    limit = concurrency / (jitter[0] / 1000)
    upstream = FakeUpstreamProcess(latency_ms=jitter[0]).start()
    try:
        bare_rps, _ = asyncio.run(throughput.bare_loop(upstream.url, requests, concurrency, jitter))
        with tempfile.TemporaryDirectory() as tmp:
            gateway = throughput.gateway_run(upstream.url, requests, concurrency, Path(tmp), jitter)
    finally:
        upstream.stop()
    return [
        Figure(
            "latency-bound: achieved (create → completed) / limit",
            f"{gateway['rps']:.0f} req/s = {gateway['rps'] / limit:.2f} of {limit:.0f}",
            "≥ 0.95",
            gateway["rps"] / limit >= 0.95,
        ),
        Figure(
            "latency-bound: while running (in_progress → finalizing) / limit",
            f"{gateway['running_rps']:.0f} req/s = {gateway['running_rps'] / limit:.2f}",
            "",
            None,
        ),
        Figure(
            "latency-bound: bare aiohttp loop / limit (the machine's ceiling)",
            f"{bare_rps:.0f} req/s = {bare_rps / limit:.2f}",
            "",
            None,
        ),
        Figure("latency-bound: gateway / bare loop", f"{gateway['rps'] / bare_rps:.2f}", "", None),
    ]


def cpu_bound(scale: float) -> list[Figure]:
    requests, concurrency = int(5_000 * scale), 32
    upstream = FakeUpstreamProcess(latency_ms=0).start()
    try:
        bare_rps, bare_cpu_ms = asyncio.run(throughput.bare_loop(upstream.url, requests, concurrency))
        with tempfile.TemporaryDirectory() as tmp:
            gateway = throughput.gateway_run(upstream.url, requests, concurrency, Path(tmp))
    finally:
        upstream.stop()
    ratio = gateway["cpu_per_request_ms"] / bare_cpu_ms
    return [
        Figure(
            "CPU-bound: gateway CPU per request ÷ bare loop's",
            f"{gateway['cpu_per_request_ms']:.2f} ms ÷ {bare_cpu_ms:.2f} ms = {ratio:.1f}×",
            "≤ 1.5×",
            ratio <= 1.5,
        ),
        Figure(
            "CPU-bound: throughput, gateway / bare loop",
            f"{gateway['rps']:.0f} / {bare_rps:.0f} req/s = {gateway['rps'] / bare_rps:.2f}",
            "",
            None,
        ),
    ]


def rpm_bound(scale: float) -> list[Figure]:
    rpm = 3000
    args = argparse.Namespace(rpm=rpm, requests=max(100, int(rpm / 2 * scale)), latency_ms=30, concurrency=32)
    with tempfile.TemporaryDirectory() as tmp:
        r = rate_limits.run_once(args, window_s=1.0, gateway_rpm=rpm, workdir=Path(tmp))
    return [
        Figure(
            "RPM-bound (3,000 RPM, 1 s window): achieved / limit",
            f"{r['achieved_rpm']:.0f} RPM = {r['vs_limit']:.2f}",
            "≥ 0.95",
            r["vs_limit"] >= 0.95,
        ),
        Figure(
            "RPM-bound: share of calls answered 429",
            f"{100 * r['throttled_share']:.2f} % ({r['throttled']} of {r['calls']})",
            "≤ 1 %",
            r["throttled_share"] <= 0.01,
        ),
    ]


def ingestion(scale: float) -> list[Figure]:
    r = large_file.measure(int(50_000 * scale), 4.0)
    return [
        Figure(
            f"ingestion: {r['lines']:,} lines / {r['mb']:.0f} MB, upload + validation",
            f"{r['upload_s']:.1f} s + {r['validate_s']:.1f} s",
            "",
            None,
        ),
        Figure(
            "ingestion: server peak RSS",
            f"{r['rss_peak_mb']:.0f} MiB (idle {r['rss_idle_mb']:.0f})",
            "≤ 300 MiB",
            r["rss_peak_mb"] <= 300,
        ),
    ]


def fairness(scale: float) -> list[Figure]:
    r = fair_teams.measure()
    total = sum(r["delta"].values())
    weights = sum(fair_teams.WEIGHTS.values())
    ratios = {name: (r["delta"][name] / total) / (w / weights) for name, w in fair_teams.WEIGHTS.items()}
    worst = max(abs(1 - x) for x in ratios.values())
    return [
        Figure(
            "fairness: each team's share / its weight's share (4 teams, 20 batches)",
            ", ".join(f"{x:.2f}" for x in ratios.values()),
            "each 1.00 ± 0.05",
            worst <= 0.05,
        ),
        Figure("fairness: throughput meanwhile / capacity", f"{r['rps'] / r['capacity']:.2f}", "", None),
    ]


def scale_figures(scale: float) -> list[Figure]:
    r = scale_store.measure(int(10_000 * scale), 100)
    figures = []
    for name, (full, small) in r["p50"].items():
        figures.append(
            Figure(
                f"scale ({r['batches']:,} batches, {r['requests']:,} rows): {name} p50 / p95",
                f"{full:.1f} / {r['p95'][name][0]:.1f} ms ({full / small:.2f}× a small database)",
                "",
                None,
            )
        )
    return figures


PARTS = {
    "latency": latency_bound,
    "cpu": cpu_bound,
    "rpm": rpm_bound,
    "ingestion": ingestion,
    "fairness": fairness,
    "scale": scale_figures,
}


def table(figures: list[Figure]) -> str:
    lines = ["| Benchmark | Measured | Target | |", "|---|---|---|---|"]
    for f in figures:
        verdict = "" if f.met is None else ("met" if f.met else "**missed**")
        lines.append(f"| {f.benchmark} | {f.measured} | {f.target} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every size divided by 10 (not written to RESULTS.md)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    figures: list[Figure] = []
    started = time.perf_counter()
    for name in args.only.split(","):
        print(f"running {name} ...", flush=True)
        figures += PARTS[name.strip()](scale)
    text = table(figures)
    print("\n" + text)
    if not args.quick and args.only == ",".join(PARTS):
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        RESULTS.write_text(
            f"# Benchmark results\n\n`make bench` on {stamp}: {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}; the fake upstream, the server and the load generator share "
            f"the cores. {time.perf_counter() - started:.0f} s in all.\n\n{text}\n"
        )
        print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
