"""Large input: a 50,000-line, ~200 MB batch file through upload and validation.

Measures upload seconds (openai SDK files.create), validation seconds (create → in_progress) and
the server's peak RSS (VmHWM) across both, to show memory stays flat however big the file.
Run: .venv/bin/python bench/large_file.py [--lines N] [--line-kb K]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import openai
from common import ServerProcess, peak_rss_mb, wait_status


def write_input(path: Path, lines: int, line_bytes: int) -> int:
    filler = "lorem ipsum dolor sit amet " * (line_bytes // 27 + 1)
    with open(path, "w") as fh:
        for i in range(lines):
            row = {
                "custom_id": f"row-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "fake-model",
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": filler[: line_bytes - 160]}],
                },
            }
            fh.write(json.dumps(row) + "\n")
    return path.stat().st_size


def measure(lines: int, line_kb: float) -> dict:
    """Upload + validation of one big input on a fresh server: seconds, MB and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.jsonl"
        size = write_input(path, lines, int(line_kb * 1000))
        # The upstream is never reached: the batch is cancelled as soon as it is validated.
        config = {
            "models": [
                {
                    "name": "fake-model",
                    "deployments": [
                        {
                            "provider": "openai",
                            "base_url": "http://127.0.0.1:9/v1",
                            "max_concurrency": 1,
                            "timeout_s": 1,
                        }
                    ],
                }
            ],
            "limits": {"max_file_bytes": size + 1},
        }
        server = ServerProcess(config, workdir=Path(tmp) / "server").start().wait_ready()
        try:
            rss_idle = peak_rss_mb(server.pid)
            client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=600)
            start = time.perf_counter()
            file = client.files.create(file=path.open("rb"), purpose="batch")
            upload_s = time.perf_counter() - start
            batch = client.batches.create(
                input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            batch, validate_s = wait_status(client, batch.id, ("in_progress", "failed", "completed"), 600, 0.05)
            client.batches.cancel(batch.id)
            rss_peak = peak_rss_mb(server.pid)
            assert batch.status != "failed", batch.errors
            assert batch.request_counts.total == lines, batch.request_counts
        finally:
            server.stop()
    return {
        "lines": lines,
        "mb": size / 1e6,
        "upload_s": upload_s,
        "validate_s": validate_s,
        "rss_idle_mb": rss_idle,
        "rss_peak_mb": rss_peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--line-kb", type=float, default=4.0)
    args = parser.parse_args()
    r = measure(args.lines, args.line_kb)
    print(f"\nlarge file: {r['lines']} lines, {r['mb']:.0f} MB")
    print(
        f"upload {r['upload_s']:.2f} s ({r['mb'] / r['upload_s']:.0f} MB/s); validation {r['validate_s']:.2f} s "
        f"({r['lines'] / r['validate_s']:,.0f} lines/s)"
    )
    print(
        f"server peak RSS {r['rss_peak_mb']:.0f} MiB (idle {r['rss_idle_mb']:.0f} MiB); target ≤ 300 MiB → "
        f"{r['rss_peak_mb'] / 300:.2f} of the target"
    )


if __name__ == "__main__":
    main()
