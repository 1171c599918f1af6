"""domain/params.py: completion windows."""

from __future__ import annotations

from typing import Any

import pytest

from batchgate.domain.errors import InvalidRequest
from batchgate.domain.params import window_seconds


@pytest.mark.parametrize(
    ("window", "seconds"),
    [("24h", 86_400), ("1s", 1), ("3s", 3), ("90m", 5_400), ("2d", 172_800), ("366d", 366 * 86_400)],
)
def test_window_seconds_accepts_n_and_unit(window: str, seconds: int) -> None:
    assert window_seconds(window) == seconds


@pytest.mark.parametrize(
    "window", ["0s", "24", "h", "24H", "24 h", " 24h", "24h ", "-1h", "1.5h", "24hours", "1w", "367d", "", 24]
)
def test_window_seconds_rejects_the_rest(window: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        window_seconds(window)
    assert info.value.param == "completion_window"
    assert info.value.status_code == 400


def test_window_seconds_missing_is_a_missing_parameter() -> None:
    with pytest.raises(InvalidRequest) as info:
        window_seconds(None)
    assert info.value.code == "missing_required_parameter"
    assert info.value.param == "completion_window"
