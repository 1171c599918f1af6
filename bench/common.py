"""Shared pieces of the benchmarks: processes to start, and measuring them."""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import FakeUpstreamProcess, ServerProcess, free_port  # noqa: E402

__all__ = ["FakeUpstreamProcess", "ServerProcess", "free_port", "peak_rss_mb", "cpu_seconds", "wait_status"]


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def wait_status(client, batch_id: str, statuses: tuple[str, ...], timeout: float, interval: float = 0.1):
    """Poll a batch until it reaches one of `statuses`; returns (batch, seconds waited)."""
    start = time.perf_counter()
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch, time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{batch_id} still {batch.status} after {timeout} s")
        time.sleep(interval)
