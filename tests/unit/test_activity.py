"""The per-deployment minute rings behind the console's deployment charts."""

import pytest

from batchgate.engine import activity
from batchgate.engine.activity import MINUTES, MinuteRing, recent_rows, record, snapshot


def test_a_minute_counts_attempts_tokens_429s_errors_and_the_peak() -> None:
    ring = MinuteRing()
    minute = 29_000_000
    for status in (200, 200, 429, 500, None, 404):
        ring.add(minute, status, 10, 3 if status == 500 else 1, circuit_open=status is None)
    series = ring.series(minute)
    assert all(len(v) == MINUTES for v in series.values())
    assert {name: values[-1] for name, values in series.items()} == {
        "requests": 6,
        "tokens": 60,
        "throttled": 1,
        "errors": 3,
        "peak_in_flight": 3,
        "circuit_open": 1,
    }
    assert sum(series["requests"][:-1]) == 0


def test_an_hour_later_the_bucket_starts_again_and_old_minutes_drop_out() -> None:
    ring = MinuteRing()
    ring.add(100, 200, 5, 1, False)
    ring.add(101, 200, 5, 1, False)
    assert ring.series(101)["requests"][-2:] == [1, 1]
    ring.add(100 + MINUTES, 429, 0, 1, False)  # reuses minute 100's bucket
    later = ring.series(100 + MINUTES)
    assert later["requests"][-1] == 1 and later["throttled"][-1] == 1 and later["tokens"][-1] == 0
    assert later["requests"][0] == 1  # minute 101, the oldest still in the hour
    assert sum(ring.series(101 + 2 * MINUTES)["requests"]) == 0  # all of it an hour old


def test_other_workers_minutes_and_peaks_add_up_and_an_open_circuit_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    now_minute = 29_000_100
    monkeypatch.setattr(activity.time, "time", lambda: now_minute * 60 + 30)
    record("merge/0", 200, 7, 2, False)  # this process: one call in the current minute
    mine = [row for row in recent_rows(now_minute - 1) if row["deployment"] == "merge/0"]
    assert [(r["minute"], r["requests"], r["tokens"]) for r in mine] == [(now_minute, 1, 7)]

    others = [
        {
            "deployment": "merge/0",
            "minute": now_minute,
            "requests": 3,
            "tokens": 30,
            "throttled": 1,
            "errors": 0,
            "peak_in_flight": 5,
            "circuit_open": 0,
        },
        {
            "deployment": "merge/0",
            "minute": now_minute - 2,
            "requests": 4,
            "tokens": 8,
            "throttled": 0,
            "errors": 2,
            "peak_in_flight": 1,
            "circuit_open": 1,
        },
        {
            "deployment": "elsewhere/0",
            "minute": now_minute,
            "requests": 50,
            "tokens": 0,
            "throttled": 0,
            "errors": 0,
            "peak_in_flight": 9,
            "circuit_open": 0,
        },
        {
            "deployment": "merge/0",
            "minute": now_minute - MINUTES,
            "requests": 99,
            "tokens": 0,
            "throttled": 0,
            "errors": 0,
            "peak_in_flight": 0,
            "circuit_open": 0,
        },  # an hour old: outside the window
    ]
    series = snapshot("merge/0", now=now_minute * 60 + 30, others=others)["series"]
    assert series["requests"][-1] == 4 and series["tokens"][-1] == 37 and series["throttled"][-1] == 1
    assert series["peak_in_flight"][-1] == 7  # 2 here + 5 there: the deployment's peak, at most
    assert (series["requests"][-3], series["errors"][-3], series["circuit_open"][-3]) == (4, 2, 1)
    assert sum(series["requests"]) == 8
