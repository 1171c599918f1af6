"""The per-deployment minute rings behind the console's deployment charts."""

from batchgate.activity import MINUTES, MinuteRing


def test_a_minute_counts_attempts_tokens_429s_errors_and_the_peak() -> None:
    ring = MinuteRing()
    minute = 29_000_000
    for status in (200, 200, 429, 500, None, 404):
        ring.add(minute, status, 10, 3 if status == 500 else 1, circuit_open=status is None)
    series = ring.series(minute)
    assert all(len(v) == MINUTES for v in series.values())
    assert {name: values[-1] for name, values in series.items()} == {
        "requests": 6, "tokens": 60, "throttled": 1, "errors": 3, "peak_in_flight": 3, "circuit_open": 1}
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
