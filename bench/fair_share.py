"""Fair share between teams on one deployment (max_concurrency 8, upstream latency 50 ms, so
8 / 0.05 s = 160 requests/s in all).

(a) Starvation: team A runs a 5,000-line batch; once it is running, team B submits 100 lines.
    B's create → completed time is set beside the ideal time alone (100 / 160 s), beside the
    fair-share ideal (equal weights: half the slots, twice that) and beside 100 lines measured
    alone on the idle gateway just before (validation and finalisation included, by a third team
    so that B joins fresh); with A's progress when B finished and A's rate while B ran.
    Then, A still running, B comes back with another 100 lines once A has done 1,000 more: a
    team that was idle should rejoin level with the others, neither behind nor ahead.
(b) Weights: teams "heavy" (weight 3) and "light" (weight 1) each create a 3,000-line batch at
    the same moment; while both still run, request_counts are sampled a few times and the split
    of requests completed between the first and the last sample is set beside 0.75 / 0.25.
Batches still running at the end are cancelled, so the run is short and bounded.
Run: .venv/bin/python bench/fair_share.py [--latency-ms MS] [--concurrency C]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import httpx
import openai
from common import FakeUpstreamProcess, ServerProcess

ADMIN_KEY = "bench-admin-key"
FINAL = ("completed", "failed", "expired", "cancelled")


def write_input(path: Path, prefix: str, lines: int) -> Path:
    with open(path, "w") as fh:
        for i in range(lines):
            fh.write(
                json.dumps(
                    {
                        "custom_id": f"{prefix}-{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {
                            "model": "fake-model",
                            "max_tokens": 16,
                            "messages": [{"role": "user", "content": f"{prefix} row {i}"}],
                        },
                    }
                )
                + "\n"
            )
    return path


class Team:
    """A team created over the admin API, with its own key and SDK client."""

    def __init__(self, server: ServerProcess, name: str, weight: float) -> None:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=10) as admin:
            admin.post("/admin/teams", json={"name": name, "weight": weight}).raise_for_status()
            key = admin.post("/admin/keys", json={"team": name}).raise_for_status().json()["key"]
        self.name = name
        self.client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=2)

    def upload(self, path: Path) -> str:
        return self.client.files.create(file=path.open("rb"), purpose="batch").id

    def create(self, file_id: str):
        return self.client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )

    def retrieve(self, batch_id: str):
        return self.client.batches.retrieve(batch_id)

    def cancel(self, batch_id: str, timeout: float = 30) -> None:
        if self.retrieve(batch_id).status in FINAL:
            return
        self.client.batches.cancel(batch_id)
        wait(lambda: self.retrieve(batch_id).status in FINAL, timeout, f"{self.name}'s batch to cancel")


def wait(condition, timeout: float, what: str, interval: float = 0.02):
    """Poll until `condition()` is truthy; its value, or TimeoutError past the deadline."""
    deadline = time.perf_counter() + timeout
    while not (value := condition()):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(interval)
    return value


def done(team: Team, batch_id: str) -> int:
    counts = team.retrieve(batch_id).request_counts
    return counts.completed + counts.failed if counts else 0


def run_to_completion(team: Team, file_id: str, timeout: float) -> tuple[float, float]:
    """Create a batch and wait for it: (seconds to in_progress, seconds to completed)."""
    start = time.perf_counter()
    batch = team.create(file_id)
    wait(lambda: team.retrieve(batch.id).status != "validating", timeout, f"{team.name} to validate")
    validated = time.perf_counter() - start
    final = wait(lambda: (b := team.retrieve(batch.id)).status in FINAL and b, timeout, f"{team.name} to finish")
    assert final.status == "completed", final
    return validated, time.perf_counter() - start


def b_beside_a(team_a: Team, batch_a: str, team_b: Team, file_b: str) -> dict:
    """B's 100 lines while A runs: B's times, A's progress at the end and A's rate meanwhile."""
    a_before, t_before = done(team_a, batch_a), time.perf_counter()
    validated_s, b_seconds = run_to_completion(team_b, file_b, 120)
    a_after = done(team_a, batch_a)
    return {
        "b_s": b_seconds,
        "b_validated_s": validated_s,
        "a_done": a_after,
        "a_rps": (a_after - a_before) / (time.perf_counter() - t_before),
    }


def starvation(server: ServerProcess, tmp: Path, capacity_rps: float) -> dict:
    solo, team_a, team_b = Team(server, "solo", 1), Team(server, "A", 1), Team(server, "B", 1)
    file_a = team_a.upload(write_input(tmp / "a.jsonl", "a", 5000))
    file_b = team_b.upload(write_input(tmp / "b.jsonl", "b", 100))
    _, alone_s = run_to_completion(solo, solo.upload(tmp / "b.jsonl"), 60)  # 100 lines on an idle gateway

    batch_a = team_a.create(file_a).id
    try:
        wait(lambda: done(team_a, batch_a) >= 300, 60, "A to reach its stride")
        first = b_beside_a(team_a, batch_a, team_b, file_b)
        mark = done(team_a, batch_a)
        wait(lambda: done(team_a, batch_a) >= mark + 1000, 60, "A to run 1,000 more")
        again = b_beside_a(team_a, batch_a, team_b, file_b)
    finally:
        team_a.cancel(batch_a)
    return {"alone_s": alone_s, "ideal_s": 100 / capacity_rps, "first": first, "again": again}


def weights(server: ServerProcess, tmp: Path, samples: int, interval_s: float) -> dict:
    heavy, light = Team(server, "heavy", 3), Team(server, "light", 1)
    file_h = heavy.upload(write_input(tmp / "heavy.jsonl", "h", 3000))
    file_l = light.upload(write_input(tmp / "light.jsonl", "l", 3000))
    batch_h, batch_l = heavy.create(file_h), light.create(file_l)
    try:
        wait(lambda: done(heavy, batch_h.id) >= 50 and done(light, batch_l.id) >= 50, 60, "both to run")
        points = []
        for i in range(samples):
            if i:
                time.sleep(interval_s)
            t = time.perf_counter()
            h, lt = done(heavy, batch_h.id), done(light, batch_l.id)
            if h >= 3000 or lt >= 3000:  # one ran out of work: the shared window is over
                break
            points.append((t, h, lt))
    finally:
        heavy.cancel(batch_h.id)
        light.cancel(batch_l.id)
    (t0, h0, l0), (t1, h1, l1) = points[0], points[-1]
    steps = [(b[1] - a[1]) / max(1, (b[1] - a[1]) + (b[2] - a[2])) for a, b in zip(points, points[1:], strict=False)]
    return {
        "window_s": t1 - t0,
        "heavy": h1 - h0,
        "light": l1 - l0,
        "samples": len(points),
        "rps": (h1 - h0 + l1 - l0) / (t1 - t0),
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--interval-s", type=float, default=1.5)
    args = parser.parse_args()
    capacity = args.concurrency / (args.latency_ms / 1000)
    upstream = FakeUpstreamProcess(latency_ms=args.latency_ms).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = {
                "models": [
                    {
                        "name": "fake-model",
                        "deployments": [
                            {
                                "provider": "openai",
                                "base_url": upstream.url,
                                "api_key": "k",
                                "max_concurrency": args.concurrency,
                            }
                        ],
                    }
                ]
            }
            server = ServerProcess(config, env={"BATCHGATE_ADMIN_KEY": ADMIN_KEY}, workdir=Path(tmp) / "server")
            try:
                server.start().wait_ready()
                a = starvation(server, Path(tmp), capacity)
                b = weights(server, Path(tmp), args.samples, args.interval_s)
            finally:
                server.stop()
    finally:
        upstream.stop()

    print(
        f"\nfair share: one deployment, max_concurrency {args.concurrency}, upstream {args.latency_ms:g} ms "
        f"(capacity {capacity:g} req/s)"
    )
    print("(a) starvation: team B's 100 lines submitted while team A's 5,000 run (equal weights)")
    print(
        f"references: ideal alone (100 / capacity) {a['ideal_s']:.2f} s; fair-share ideal (half the slots) "
        f"{2 * a['ideal_s']:.2f} s; 100 lines measured alone on the idle gateway {a['alone_s']:.2f} s"
    )
    print(
        f"{'':34}{'B s':>6}{'/ideal':>8}{'/fair':>7}{'/alone':>8}{'A req/s':>9}{'A share':>9}{'A done when B done':>20}"
    )
    for label, r in (("B joins (first batch)", a["first"]), ("B returns after A ran 1,000 more", a["again"])):
        print(
            f"{label:34}{r['b_s']:>6.2f}{r['b_s'] / a['ideal_s']:>8.2f}{r['b_s'] / (2 * a['ideal_s']):>7.2f}"
            f"{r['b_s'] / a['alone_s']:>8.2f}{r['a_rps']:>9.0f}{r['a_rps'] / capacity:>9.2f}"
            f"{r['a_done']:>11} ({r['a_done'] / 50:.1f} %)"
        )
    print(
        "B s: B's create -> completed (validated in "
        + " and ".join(f"{a[k]['b_validated_s']:.2f} s" for k in ("first", "again"))
        + "); A req/s, A share: A's rate while B ran, and over capacity (fair: 0.50)"
    )
    total = b["heavy"] + b["light"]
    print(
        f"(b) weights 3 : 1, two 3,000-line batches at once; {b['samples']} samples over {b['window_s']:.1f} s, "
        f"{total} requests completed in that window ({b['rps']:.0f} req/s, {b['rps'] / capacity:.2f} of capacity)"
    )
    print(f"{'team':10}{'weight':>8}{'requests':>10}{'share':>8}{'target':>8}{'share/target':>14}")
    for team, weight, n, target in (("heavy", 3, b["heavy"], 0.75), ("light", 1, b["light"], 0.25)):
        share = n / max(1, total)
        print(f"{team:10}{weight:>8}{n:>10}{share:>8.3f}{target:>8.2f}{share / target:>14.2f}")
    print("heavy's share between consecutive samples: " + ", ".join(f"{s:.3f}" for s in b["steps"]))


if __name__ == "__main__":
    main()
