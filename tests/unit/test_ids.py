"""domain/ids.py: time-sortable ids with OpenAI's prefixes."""

from __future__ import annotations

import types

import pytest

from batchgate.domain import ids


def _decode_ms(ulid: str) -> int:
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    value = 0
    for char in ulid[:10]:
        value = value * 32 + alphabet.index(char)
    return value


def test_ids_have_openai_prefixes_and_shape() -> None:
    for make, prefix in ((ids.file_id, "file-"), (ids.batch_id, "batch_"), (ids.batch_request_id, "batch_req_")):
        value = make()
        assert value.startswith(prefix)
        body = value[len(prefix) :]
        assert len(body) == 26
        assert set(body) <= set("0123456789abcdefghjkmnpqrstvwxyz")


def test_ids_are_unique_and_sort_in_creation_order() -> None:
    made = [ids.batch_id() for _ in range(20_000)]  # many share a millisecond
    assert len(set(made)) == len(made)
    assert sorted(made) == made


def test_ids_stay_monotonic_within_one_millisecond_and_when_the_clock_steps_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1_800_000_000.123]
    monkeypatch.setattr(ids, "time", types.SimpleNamespace(time=lambda: now[0]))
    made = [ids.new_ulid() for _ in range(1000)]  # a frozen clock
    now[0] -= 5.0  # NTP steps the clock back
    made += [ids.new_ulid() for _ in range(10)]
    assert len(set(made)) == len(made)
    assert sorted(made) == made


def test_ids_encode_their_creation_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [2_000_000_000.0]
    monkeypatch.setattr(ids, "time", types.SimpleNamespace(time=lambda: now[0]))
    first = ids.new_ulid()
    assert _decode_ms(first) == 2_000_000_000_000
    now[0] += 0.001
    second = ids.new_ulid()
    assert _decode_ms(second) == 2_000_000_000_001
    assert first < second
    now[0] += 86_400 * 365  # a year later still sorts after
    assert ids.new_ulid() > second
