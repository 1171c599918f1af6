"""API latency with a full database: 10,000 batches and 1,000,000 request rows (SQLite), beside the
same calls on a database holding 250 batches.

The rows are written straight into the schema (`batchgate migrate` made it) so filling takes seconds,
then a server is started on that database and each call is timed 200 times with a keep-alive httpx
client: list the newest page, list a page deep in the history (`after` = the 5,000th id),
retrieve one batch, list files. The ratio full / small shows what the stored volume costs.
Run: .venv/bin/python bench/scale_store.py [--batches N] [--requests-per-batch R]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from common import ROOT, ServerProcess

CALLS = 200
SMALL_BATCHES = 250  # enough for a full page of 100 deep in the history


def fill(db: Path, batches: int, per_batch: int) -> list[str]:
    """`batches` completed batches with `per_batch` done request rows each; their ids, oldest first."""
    now = int(time.time())
    ids = [f"batch_{i:026d}" for i in range(batches)]  # sortable, like the real ULID-based ids
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany(
            "INSERT INTO files (id, filename, purpose, bytes, sha256, created_at)"
            " VALUES (?, 'in.jsonl', 'batch', 1, '', ?)",
            [(f"file-{i:026d}", now) for i in range(batches)],
        )
        conn.executemany(
            "INSERT INTO batches (id, endpoint, model, input_file_id, completion_window, status, created_at, "
            "expires_at, total, completed, failed, input_tokens, cached_tokens, output_tokens, reasoning_tokens, "
            "cancelled, dialect, sealed) VALUES (?, '/v1/chat/completions', 'fake-model', ?, '24h', 'completed', ?, ?, "
            "?, ?, 0, 0, 0, 0, 0, 0, 'openai', 1)",
            [(batch_id, f"file-{i:026d}", now, now + 86400, per_batch, per_batch) for i, batch_id in enumerate(ids)],
        )
        for start in range(0, batches, 500):
            conn.executemany(
                'INSERT INTO requests (batch_id, line_no, custom_id, "offset", length, state, attempts, '
                "next_attempt_at) VALUES (?, ?, ?, 0, 1, 'done', 1, 0)",
                [
                    (batch_id, line, f"c{line}")
                    for batch_id in ids[start : start + 500]
                    for line in range(1, per_batch + 1)
                ],
            )
    conn.close()
    return ids


def timed(client: httpx.Client, path: str) -> list[float]:
    times = []
    for _ in range(CALLS):
        start = time.perf_counter()
        response = client.get(path)
        times.append(1000 * (time.perf_counter() - start))
        assert response.status_code == 200, response.text
    return times


def measure_one(workdir: Path, batches: int, per_batch: int) -> dict[str, list[float]]:
    config = {
        "models": [{"name": "fake-model", "deployments": [{"provider": "openai", "base_url": "http://127.0.0.1:9/v1"}]}]
    }
    workdir.mkdir(parents=True)
    (workdir / "batchgate.yaml").write_text(yaml.safe_dump(config))
    subprocess.run(
        [sys.executable, "-m", "batchgate", "migrate", "--config", "batchgate.yaml"],
        cwd=workdir,
        check=True,
        capture_output=True,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    ids = fill(workdir / ".batchgate" / "batchgate.db", batches, per_batch)
    server = ServerProcess(config, workdir=workdir).start().wait_ready(60)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            timed(client, "/batches")  # warm the caches first
            return {
                "list newest 20": timed(client, "/batches"),
                "list 100 deep in history": timed(client, f"/batches?limit=100&after={ids[len(ids) // 2]}"),
                "retrieve one": timed(client, f"/batches/{ids[len(ids) // 3]}"),
                "list files (100)": timed(client, "/files?limit=100"),
            }
    finally:
        server.stop()


def measure(batches: int = 10_000, per_batch: int = 100) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        full = measure_one(Path(tmp) / "full", batches, per_batch)
        fill_s = time.perf_counter() - start
        small = measure_one(Path(tmp) / "small", SMALL_BATCHES, per_batch)
    p50 = {name: (statistics.median(full[name]), statistics.median(small[name])) for name in full}
    p95 = {
        name: (statistics.quantiles(full[name], n=20)[18], statistics.quantiles(small[name], n=20)[18]) for name in full
    }
    return {"batches": batches, "requests": batches * per_batch, "fill_s": fill_s, "p50": p50, "p95": p95}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--requests-per-batch", type=int, default=100)
    args = parser.parse_args()
    r = measure(args.batches, args.requests_per_batch)
    print(
        f"\nscale: {r['batches']:,} batches and {r['requests']:,} request rows (SQLite), {CALLS} calls each; "
        f"beside {SMALL_BATCHES} batches"
    )
    print(f"{'call':28}{'p50 ms':>9}{'p95 ms':>9}{'small p50':>11}{'full/small':>12}")
    for name, (full, small) in r["p50"].items():
        print(f"{name:28}{full:>9.2f}{r['p95'][name][0]:>9.2f}{small:>11.2f}{full / small:>12.2f}")


if __name__ == "__main__":
    main()
