"""Weighted fair sharing between teams: proportions, no banked credit, refunds."""

from __future__ import annotations

from batchgate.engine.fairness import FairShare


def test_equal_weights_split_evenly_over_many_rounds() -> None:
    fair = FairShare()
    totals = {"a": 0, "b": 0}
    for _ in range(100):
        for team, units in fair.allocate({"a": 1.0, "b": 1.0}, 3).items():
            totals[team] += units
    assert totals == {"a": 150, "b": 150}


def test_weights_set_the_proportions_even_one_slot_at_a_time() -> None:
    fair = FairShare()
    totals = {"a": 0, "b": 0}
    for _ in range(400):
        for team, units in fair.allocate({"a": 3.0, "b": 1.0}, 1).items():
            totals[team] += units
    assert totals == {"a": 300, "b": 100}


def test_an_idle_team_does_not_bank_credit() -> None:
    fair = FairShare()
    for _ in range(50):
        fair.allocate({"a": 1.0}, 4)  # b is idle meanwhile
    first = fair.allocate({"a": 1.0, "b": 1.0}, 10)
    assert first == {"a": 5, "b": 5}


def test_refunded_slots_come_back_to_the_team() -> None:
    fair = FairShare()
    assert fair.allocate({"a": 1.0, "b": 1.0}, 4) == {"a": 2, "b": 2}
    fair.refund("a", 2, 1.0)  # a had no work for its two slots
    assert fair.allocate({"a": 1.0, "b": 1.0}, 2) == {"a": 2, "b": 0}


def test_no_teams_or_no_units_allocate_nothing() -> None:
    fair = FairShare()
    assert fair.allocate({}, 5) == {}
    assert fair.allocate({"a": 1.0}, 0) == {}
