"""What the chaos tests share: the suite's size, seeded fault plans, a tiny tmpfs for the files
directory, peeks at a stopped server's database, and the report printed at the end of the run.

Faults come from the fake upstream's per-line directives (tests/fake_upstream.py). Each faulty line
fails only its first attempt (``@status:500:1``, ``@reset:1``, ``@hang:1``, ``@status:429:1``), as
a flaky upstream does, so a retry succeeds and every request must end with the echo of its own
input: nothing may end failed, which keeps "every custom_id exactly once" and "no line belongs to
another request" strict.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ServerProcess, chat_line

SCALE_ENV = "BATCHGATE_CHAOS_SCALE"
FAULT_RATES = {"500": 0.05, "reset": 0.02, "hang": 0.01, "429": 0.02}  # of the batch's requests
DIRECTIVES = {"500": "@status:500:1", "reset": "@reset:1", "hang": "@hang:1", "429": "@status:429:1"}
REPORT: list[str] = []  # lines for the terminal summary (tests/chaos/conftest.py prints them)


@dataclass(frozen=True)
class Scale:
    name: str
    requests: int
    kills: int
    deadline_s: float  # for the whole batch, restarts included


SCALES = {
    "short": Scale("short", requests=800, kills=3, deadline_s=120.0),  # CI: `make test`
    "full": Scale("full", requests=5000, kills=10, deadline_s=600.0),  # `make chaos`
}


def scale() -> Scale:
    """The size asked for by BATCHGATE_CHAOS_SCALE: `short` (the default) or `full`."""
    name = os.environ.get(SCALE_ENV, "short") or "short"
    if name not in SCALES:
        raise pytest.UsageError(f"{SCALE_ENV}={name!r}: expected one of {', '.join(SCALES)}")
    return SCALES[name]


# ---------------------------------------------------------------------------- fault plans
@dataclass
class FaultPlan:
    """Which line gets which fault (exact counts, seeded), and the rows that carry them."""

    rows: list[dict[str, Any]]
    faults: dict[str, list[int]]  # kind -> 0-based line indexes

    @property
    def fault_attempts(self) -> int:
        """Upstream attempts the faults cost when nothing else goes wrong: one per faulty line."""
        return sum(len(lines) for lines in self.faults.values())


def fault_plan(total: int, seed: int, prefix: str = "chaos") -> FaultPlan:
    """`total` chat lines; exactly round(rate * total) of them get each fault, no line two."""
    rng = random.Random(seed)
    counts = {kind: round(rate * total) for kind, rate in FAULT_RATES.items()}
    chosen = rng.sample(range(total), sum(counts.values()))
    faults: dict[str, list[int]] = {}
    for kind, count in counts.items():
        faults[kind], chosen = sorted(chosen[:count]), chosen[count:]
    directive_of = {i: DIRECTIVES[kind] for kind, lines in faults.items() for i in lines}
    rows = []
    for i in range(total):
        # The content names the line, so an answer can only match its own request.
        text = f"{prefix} line {i} of {total} {directive_of.get(i, '')}".rstrip()
        rows.append(chat_line(f"{prefix}-{i:05d}", text))
    return FaultPlan(rows, faults)


# ---------------------------------------------------------------------------- the server's own state
def blob_path(server: ServerProcess, file_id: str) -> Path:
    """Where the default local blob store keeps a file's bytes."""
    return server.workdir / ".batchgate" / "files" / file_id


def db_rows(server: ServerProcess, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """A read-only query on the server's SQLite database (for state the API does not show)."""
    db_path = server.workdir / ".batchgate" / "batchgate.db"
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)) as db:
        return db.execute(sql, params).fetchall()


# ---------------------------------------------------------------------------- a tiny file system
class Tmpfs:
    """A small tmpfs mounted on a directory: made full by a filler file, or remounted read-only.

    Tests run as root, which permission bits do not stop, so a real file system is the honest way to
    get ENOSPC and EROFS.
    """

    def __init__(self, path: Path, size: str = "4m") -> None:
        self.path = path
        self.filler = path / "filler"  # no leading dot: not mistaken for an upload part
        path.mkdir(parents=True, exist_ok=True)
        _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))

    def fill(self) -> None:
        """Write until the file system has no block left."""
        with open(self.filler, "ab", buffering=0) as f:
            for chunk in (1 << 20, 1 << 12, 1):
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * chunk)
        assert os.statvfs(self.path).f_bavail == 0

    def unfill(self) -> None:
        self.filler.unlink(missing_ok=True)

    def read_only(self) -> None:
        _run("mount", "-o", "remount,ro", str(self.path))

    def read_write(self) -> None:
        _run("mount", "-o", "remount,rw", str(self.path))

    def names(self) -> set[str]:
        return {p.name for p in self.path.iterdir()} - {self.filler.name}

    def unmount(self) -> None:
        # Lazy: a server killed by the test may still hold a descriptor for a moment.
        subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)


def _run(*cmd: str) -> None:
    done = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(errno.EPERM, f"{' '.join(cmd)} failed: {done.stderr.strip()}")


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "4m") -> Iterator[Tmpfs]:
    """A mounted Tmpfs, unmounted afterwards; skips the test where mounting is not allowed (not in CI)."""
    try:
        fs = Tmpfs(path, size)
    except OSError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {exc}")
    try:
        yield fs
    finally:
        fs.unmount()
