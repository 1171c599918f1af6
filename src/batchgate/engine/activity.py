"""What each deployment did over the last hour, minute by minute, as this process's engine saw it.

The engine records every upstream attempt here (`record`); the web console reads it
(`snapshot`). One ring of 60 one-minute buckets per deployment: the hot path is an index
computation and a few integer increments, with no lock (one event loop) and no allocation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

MINUTES = 60
SERIES = ("requests", "tokens", "throttled", "errors", "peak_in_flight", "circuit_open")
REQUESTS, TOKENS, THROTTLED, ERRORS, PEAK_IN_FLIGHT, CIRCUIT_OPEN = range(len(SERIES))


class MinuteRing:
    """Per-minute counters of one deployment: `counts[series][i]` belongs to minute `stamps[i]` (Unix minutes)."""

    __slots__ = ("counts", "stamps")

    def __init__(self) -> None:
        self.stamps = [-1] * MINUTES
        self.counts = [[0] * MINUTES for _ in SERIES]

    def add(self, minute: int, status: int | None, tokens: int, in_flight: int, circuit_open: bool) -> None:
        i, counts = minute % MINUTES, self.counts
        if self.stamps[i] != minute:  # a new minute: the bucket's hour-old counts go
            self.stamps[i] = minute
            for column in counts:
                column[i] = 0
        counts[REQUESTS][i] += 1
        counts[TOKENS][i] += tokens
        if status == 429:
            counts[THROTTLED][i] += 1
        elif status is None or not 200 <= status < 300:
            counts[ERRORS][i] += 1
        if in_flight > counts[PEAK_IN_FLIGHT][i]:
            counts[PEAK_IN_FLIGHT][i] = in_flight
        if circuit_open:
            counts[CIRCUIT_OPEN][i] = 1

    def series(self, now_minute: int) -> dict[str, list[int]]:
        """The last hour, oldest minute first; minutes without an attempt are zeros."""
        minutes = range(now_minute - MINUTES + 1, now_minute + 1)
        return {
            name: [self.counts[s][m % MINUTES] if self.stamps[m % MINUTES] == m else 0 for m in minutes]
            for s, name in enumerate(SERIES)
        }

    def rows(self, from_minute: int) -> list[dict[str, int]]:
        """This ring's minutes since `from_minute` as rows (scale-out: published for other processes)."""
        return [
            {"minute": stamp, **{name: self.counts[s][i] for s, name in enumerate(SERIES)}}
            for i, stamp in enumerate(self.stamps)
            if stamp >= from_minute
        ]


_rings: dict[str, MinuteRing] = {}


def record(deployment: str, status: int | None, tokens: int, in_flight: int, circuit_open: bool) -> None:
    """One upstream attempt ended (`status` None: no HTTP answer). `tokens` is the request's estimate,
    the figure the deployment's `tpm` limit counts; `in_flight` the calls open as it ended, itself
    included (its freed slot may be refilled already, so the engine caps it at the window)."""
    found = _rings.get(deployment)
    if found is None:
        found = _rings[deployment] = MinuteRing()
    found.add(int(time.time()) // 60, status, tokens, in_flight, circuit_open)


def recent_rows(from_minute: int) -> list[dict[str, Any]]:
    """Every deployment's minutes since `from_minute`, one row each, with the deployment's name."""
    return [{"deployment": name, **row} for name, ring in _rings.items() for row in ring.rows(from_minute)]


# Summed across processes (the in-flight peaks too: workers' peaks in one minute add up to an upper
# bound of the deployment's); an open circuit anywhere shows as open.
_SUMMED = {"requests", "tokens", "throttled", "errors", "peak_in_flight"}


def snapshot(deployment: str, now: float | None = None, others: Sequence[Any] = ()) -> dict[str, Any]:
    """A deployment's last hour: `first_minute` (Unix seconds) and one list of 60 values per series.

    `others`: minute rows other processes published (scale-out), folded into this process's own."""
    minute = int(time.time() if now is None else now) // 60
    found = _rings.get(deployment)
    series = found.series(minute) if found else {name: [0] * MINUTES for name in SERIES}
    first = minute - MINUTES + 1
    for row in others:
        i = row["minute"] - first
        if row["deployment"] != deployment or not 0 <= i < MINUTES:
            continue
        for name in SERIES:
            values = series[name]
            values[i] = values[i] + row[name] if name in _SUMMED else max(values[i], row[name])
    return {"first_minute": first * 60, "series": series}
