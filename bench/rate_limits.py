"""Rate limits: how close batchgate runs to an upstream's RPM limit, and how often it hits it.

The fake upstream enforces R requests a minute (default 1,200, i.e. 20/s) with HTTP 429 and
Retry-After, 30 ms latency; batchgate's deployment has max_concurrency 16 (16 / 0.03 s = 533
req/s, far above the limit, so the limit is what binds). One batch of about R/2 requests (≈30 s at
the limit) runs in each of these set-ups, each with a fresh upstream and server:

  - batchgate configured with the deployment's `rpm: R` (a token bucket paces the calls), and
    with no `rpm` at all (it learns only from the 429s: AIMD window + Retry-After pauses);
  - the upstream counting over a sliding 60 s window (the literal RPM), and over a sliding 1 s
    window holding R/60 calls (the same rate, enforced as providers that quantise their limits do).
    A batch of R/2 fits in one 60 s window whatever the pace, so only the 1 s window makes an
    unpaced gateway meet its 429s within the batch.

Figures, from the upstream's own clock (first call received to last answer sent):
  - achieved requests/minute (calls answered 200) / R: target >= 0.95, and above 1 only when the
    upstream's window lets a burst through;
  - 429 share of all upstream calls: target <= 1 %.
Run: .venv/bin/python bench/rate_limits.py [--rpm R] [--requests N] [--latency-ms MS]
         [--concurrency C] [--windows 60,1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import openai
from common import FakeUpstreamProcess, ServerProcess

FINAL = ("completed", "failed", "expired", "cancelled")


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


def run_once(args: argparse.Namespace, window_s: float, gateway_rpm: int | None, workdir: Path) -> dict:
    """One batch through a fresh upstream and server; figures from the upstream's stats."""
    input_path = workdir / "input.jsonl"
    with open(input_path, "w") as fh:
        for i in range(args.requests):
            fh.write(json.dumps(request_line(i)) + "\n")
    deployment = {"provider": "openai", "base_url": "", "api_key": "k", "max_concurrency": args.concurrency}
    if gateway_rpm is not None:
        deployment["rpm"] = gateway_rpm
    # Bounded however the gateway behaves: 4x the time at the limit, at least a minute.
    deadline_s = max(60.0, 4 * args.requests / (args.rpm / 60))
    upstream = FakeUpstreamProcess(latency_ms=args.latency_ms, rpm=args.rpm, rpm_window_s=window_s).start()
    server = None
    try:
        deployment["base_url"] = upstream.url
        config = {"models": [{"name": "fake-model", "deployments": [deployment]}]}
        server = ServerProcess(config, workdir=workdir / "server").start().wait_ready()
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=2)
        file = client.files.create(file=input_path.open("rb"), purpose="batch")
        start = time.perf_counter()
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        timed_out = False
        while batch.status not in FINAL:
            if time.perf_counter() - start > deadline_s:
                timed_out = True
                client.batches.cancel(batch.id)
                cancel_deadline = time.perf_counter() + 30
                while batch.status not in FINAL and time.perf_counter() < cancel_deadline:
                    time.sleep(0.2)
                    batch = client.batches.retrieve(batch.id)
                break
            time.sleep(0.2)
            batch = client.batches.retrieve(batch.id)
        wall = time.perf_counter() - start
        stats = upstream.stats()
    finally:
        if server is not None:
            server.stop()
        upstream.stop()
    ok = stats["by_status"].get("200", 0)
    throttled = stats["by_status"].get("429", 0)
    span = (stats["last_answer_at"] or 0) - (stats["first_request_at"] or 0)
    achieved = 60 * ok / span if span > 0 else 0.0
    counts = batch.request_counts
    return {
        "window_s": window_s,
        "gateway_rpm": gateway_rpm,
        "span_s": span,
        "wall_s": wall,
        "achieved_rpm": achieved,
        "vs_limit": achieved / args.rpm,
        "calls": stats["requests_total"],
        "throttled": throttled,
        "throttled_share": throttled / max(1, stats["requests_total"]),
        "completed": counts.completed if counts else 0,
        "failed": counts.failed if counts else 0,
        "max_in_flight": stats["max_in_flight"],
        "status": batch.status,
        "timed_out": timed_out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpm", type=int, default=1200)
    parser.add_argument("--requests", type=int, default=None, help="default: rpm / 2 (about 30 s at the limit)")
    parser.add_argument("--latency-ms", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--windows", default="60,1", help="upstream sliding windows to run, in seconds")
    args = parser.parse_args()
    args.requests = args.requests or args.rpm // 2
    windows = [float(w) for w in args.windows.split(",") if w.strip()]
    results = []
    for window_s in windows:
        for gateway_rpm in (args.rpm, None):
            label = f"window {window_s:g} s, batchgate rpm {gateway_rpm or 'none'}"
            print(f"running: {label} ...", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                results.append(run_once(args, window_s, gateway_rpm, Path(tmp)))
            r = results[-1]
            print(
                f"  {r['status']} in {r['wall_s']:.1f} s; {r['calls']} upstream calls, {r['throttled']} 429s",
                flush=True,
            )

    print(
        f"\nrate limits: upstream limit R = {args.rpm} requests/min ({args.rpm / 60:g}/s) answered 429 + "
        f"Retry-After above it, latency {args.latency_ms:g} ms; batch of {args.requests} requests; "
        f"batchgate max_concurrency {args.concurrency}"
    )
    print(
        f"{'upstream window':>16}{'batchgate rpm':>15}{'run s':>8}{'req/min':>9}{'/ R':>7}{'  (>=0.95)':<11}"
        f"{'calls':>7}{'429s':>6}{'429 share':>10}{'  (<=1%)':<9}{'failed':>7}{'max in flight':>15}"
    )
    for r in results:
        rate_ok = "BURST" if r["vs_limit"] > 1.05 else "ok" if r["vs_limit"] >= 0.95 else "SHORT"
        share_ok = "ok" if r["throttled_share"] <= 0.01 else "OVER"
        print(
            f"{r['window_s']:>14g} s{(r['gateway_rpm'] or 'none'):>15}{r['span_s']:>8.1f}"
            f"{r['achieved_rpm']:>9.0f}{r['vs_limit']:>7.2f}  {rate_ok:<9}{r['calls']:>7}{r['throttled']:>6}"
            f"{100 * r['throttled_share']:>9.1f}%  {share_ok:<7}{r['failed']:>7}{r['max_in_flight']:>15}"
            + ("  (deadline: cancelled)" if r["timed_out"] else "")
        )
    print(
        "run s: first upstream call received to last answer sent; req/min: calls answered 200 over that "
        "span; failed: requests that ended in the error file (max_attempts 5 exhausted)."
    )
    if any(r["window_s"] >= 60 and r["vs_limit"] > 1.05 for r in results):
        print(
            f"A {args.requests}-request batch fits in one 60 s window, so over it an unpaced gateway bursts "
            f"past R/min without a single 429: legal for that upstream, not a rate it could sustain."
        )


if __name__ == "__main__":
    main()
