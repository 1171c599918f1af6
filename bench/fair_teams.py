"""Fairness across many batches: 20 batches of mixed sizes from 4 teams (weights 1 : 2 : 3 : 4),
created at the same moment on one deployment (max_concurrency 16, upstream 50 ms: 320 req/s).

While every team still has work, request_counts are sampled about once a second; each team's
share of the requests finished between the first and the last sample is set beside its weight's
share (w / 10). The smallest batches of every team finish early; a team's share is over all of its
batches together, which is what stride scheduling between teams promises.
Run: .venv/bin/python bench/fair_teams.py [--latency-ms MS] [--concurrency C]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import FakeUpstreamProcess, ServerProcess
from fair_share import ADMIN_KEY, Team, done, wait, write_input

WEIGHTS = {"w1": 1, "w2": 2, "w3": 3, "w4": 4}
SIZES = (40, 120, 250, 500, 1100)  # 2,010 lines a team, 8,040 in all


def measure(latency_ms: float = 50, concurrency: int = 16, interval_s: float = 1.0) -> dict:
    capacity = concurrency / (latency_ms / 1000)
    upstream = FakeUpstreamProcess(latency_ms=latency_ms).start()
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
                                "max_concurrency": concurrency,
                            }
                        ],
                    }
                ]
            }
            server = ServerProcess(config, env={"BATCHGATE_ADMIN_KEY": ADMIN_KEY}, workdir=Path(tmp) / "server")
            try:
                server.start().wait_ready()
                return {**_run(server, Path(tmp), interval_s), "capacity": capacity}
            finally:
                server.stop()
    finally:
        upstream.stop()


def _run(server: ServerProcess, tmp: Path, interval_s: float) -> dict:
    teams = {name: Team(server, name, weight) for name, weight in WEIGHTS.items()}
    files = {
        (name, size): team.upload(write_input(tmp / f"{name}-{size}.jsonl", f"{name}-{size}", size))
        for name, team in teams.items()
        for size in SIZES
    }
    batches = {name: [team.create(files[(name, size)]).id for size in SIZES] for name, team in teams.items()}
    totals = {name: sum(SIZES) for name in teams}

    def finished(name: str) -> int:
        return sum(done(teams[name], batch_id) for batch_id in batches[name])

    try:
        wait(lambda: all(finished(n) >= 20 for n in teams), 60, "every team to start")
        points: list[tuple[float, dict[str, int]]] = []
        while True:
            now, counts = time.perf_counter(), {name: finished(name) for name in teams}
            if any(counts[n] >= totals[n] for n in teams):  # a team ran out of work: the shared window ends
                break
            points.append((now, counts))
            time.sleep(interval_s)
    finally:
        for name, team in teams.items():
            for batch_id in batches[name]:
                team.cancel(batch_id)
    (t0, first), (t1, last) = points[0], points[-1]
    delta = {name: last[name] - first[name] for name in teams}
    return {"window_s": t1 - t0, "samples": len(points), "delta": delta, "rps": sum(delta.values()) / (t1 - t0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    r = measure(args.latency_ms, args.concurrency)
    total = sum(r["delta"].values())
    print(
        f"\nfairness: 4 teams x 5 batches {SIZES}, weights {list(WEIGHTS.values())}; {r['samples']} samples over "
        f"{r['window_s']:.1f} s, {total} requests ({r['rps']:.0f} req/s = "
        f"{r['rps'] / r['capacity']:.2f} of capacity)"
    )
    print(f"{'team':6}{'weight':>8}{'requests':>10}{'share':>8}{'target':>8}{'share/target':>14}")
    for name, weight in WEIGHTS.items():
        share, target = r["delta"][name] / max(1, total), weight / sum(WEIGHTS.values())
        print(f"{name:6}{weight:>8}{r['delta'][name]:>10}{share:>8.3f}{target:>8.2f}{share / target:>14.2f}")


if __name__ == "__main__":
    main()
