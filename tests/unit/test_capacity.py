"""Global deployment limits shared by workers: the fair split, one worker's lease decision, and
several coordinators renewing against one real database (SQLite here; PostgreSQL in e2e)."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchgate.config import DeploymentConfig, EngineConfig, ModelConfig
from batchgate.engine.capacity import CapacityCoordinator, decide_lease, max_min_fair
from batchgate.engine.deployments import Deployment, ModelPool
from batchgate.engine.limits import DeploymentLimits
from batchgate.store.records import CapacityLease
from batchgate.store.store import Store
from batchgate.upstreams.base import UpstreamReply


# ============================================================================ max_min_fair
def test_equal_demands_split_equally_with_remainders_by_name() -> None:
    assert max_min_fair(30, {"a": 30, "b": 30, "c": 30}) == {"a": 10, "b": 10, "c": 10}
    assert max_min_fair(10, {"c": 10, "a": 10, "b": 10}) == {"a": 4, "b": 3, "c": 3}


def test_a_small_demand_is_met_and_the_rest_shared() -> None:
    assert max_min_fair(30, {"a": 2, "b": 30, "c": 30}) == {"a": 2, "b": 14, "c": 14}
    assert max_min_fair(30, {"a": 0, "b": 5}) == {"a": 0, "b": 5}


@given(
    st.integers(0, 200),
    st.dictionaries(st.text("abcdef", min_size=1, max_size=3), st.integers(0, 300), min_size=1, max_size=8),
)
def test_fair_split_never_exceeds_total_or_demand(total: int, demands: dict[str, int]) -> None:
    split = max_min_fair(total, demands)
    assert set(split) == set(demands)
    assert sum(split.values()) == min(total, sum(demands.values()))
    assert all(0 <= split[o] <= demands[o] for o in demands)


# ============================================================================ decide_lease
def lease(owner: str, slots: int, share: float, demand: int, wants_rate: bool | None = None) -> CapacityLease:
    return CapacityLease("d", owner, slots, share, demand, demand > 0 if wants_rate is None else wants_rate)


def test_a_lone_worker_takes_everything() -> None:
    assert decide_lease("d", "me", 30, 0, 30, []) == (lease("me", 30, 1.0, 30), 30)


def test_a_newcomer_gets_only_what_the_others_left_free() -> None:
    holder = lease("a", 30, 1.0, 30)
    assert decide_lease("d", "b", 30, 0, 30, [holder]) == (lease("b", 0, 0.0, 30), 0)
    # The holder sees the newcomer's demand: it may fill only its fair part from now on, while its
    # lease still counts the 22 calls on the wire…
    assert decide_lease("d", "a", 30, 22, 30, [lease("b", 0, 0.0, 30)]) == (lease("a", 22, 0.5, 30), 15)
    # …until they drained below that part.
    assert decide_lease("d", "a", 30, 15, 30, [lease("b", 0, 0.0, 30)]) == (lease("a", 15, 0.5, 30), 15)
    assert decide_lease("d", "a", 30, 3, 30, [lease("b", 0, 0.0, 30)]) == (lease("a", 15, 0.5, 30), 15)
    # …after which the newcomer grows into what is free.
    assert decide_lease("d", "b", 30, 0, 30, [lease("a", 15, 0.5, 30)]) == (lease("b", 15, 0.5, 30), 15)


def test_an_idle_worker_keeps_only_its_calls_in_flight() -> None:
    assert decide_lease("d", "a", 30, 4, 4, [lease("b", 10, 0.5, 30)]) == (lease("a", 4, 0.0, 4, wants_rate=False), 4)


@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=6),
    st.integers(1, 40),
    st.randoms(),
)
def test_renewals_in_any_order_never_sum_past_the_limit(workers: list[tuple[int, int]], limit: int, rnd) -> None:  # type: ignore[no-untyped-def]
    """Workers renew one after another (serialised, as the advisory lock makes them), in a random
    order, with random demands; each keeps its calls in flight within its own lease."""
    held = {f"w{i}": lease(f"w{i}", 0, 0.0, 0) for i in range(len(workers))}
    for _ in range(4 * len(workers)):
        owner = rnd.choice(sorted(held))
        index = int(owner[1:])
        in_flight = min(workers[index][0], held[owner].slots)
        demand = workers[index][1]
        others = [held[o] for o in held if o != owner]
        held[owner], target = decide_lease("d", owner, limit, in_flight, demand, others)
        assert target <= held[owner].slots
        assert sum(x.slots for x in held.values()) <= limit
        assert sum(x.rate_share for x in held.values()) <= 1.0 + 1e-9


# ============================================================================ DeploymentLimits with a grant
def config(**overrides: object) -> DeploymentConfig:
    return DeploymentConfig(provider="openai", base_url="http://127.0.0.1:9/v1", name="d", model="m", **overrides)


def test_a_grant_caps_concurrency_and_scales_the_rate() -> None:
    limits = DeploymentLimits(config(max_concurrency=30, rpm=600))
    assert limits.concurrency == 30 and limits.capacity == 30
    limits.grant(10, 0.5, valid_until=math.inf, now=0.0)
    assert limits.concurrency == 10 and limits.capacity == 10
    limits.start(1, 0.0)  # the bucket held 0.5 of a request's burst: now it owes
    # 600 rpm × 0.98 × 0.5 share = 4.9 a second: the next request waits about 1/4.9 s.
    assert limits.wait_for(1, 0.0) == pytest.approx(1 / 4.9, rel=0.01)
    limits.grant(0, 0.0, valid_until=math.inf, now=0.0)
    assert limits.concurrency == 0 and limits.wait_for(1, 10.0) > 0


def test_a_lapsed_grant_makes_the_deployment_unavailable() -> None:
    limits = DeploymentLimits(config(max_concurrency=8))
    limits.grant(8, 1.0, valid_until=100.0, now=0.0)
    assert limits.available(99.0) and not limits.available(100.0)


def test_shrink_applies_decreases_only() -> None:
    limits = DeploymentLimits(config(max_concurrency=30))
    limits.grant(10, 0.5, valid_until=math.inf, now=0.0)
    limits.shrink(20, 1.0, now=0.0)
    assert limits.granted_slots == 10
    limits.shrink(4, 0.25, now=0.0)
    assert limits.granted_slots == 4


# ============================================================================ coordinators on one database
class _NoUpstream:
    async def send(self, endpoint: str, body: dict, timeout_s: float) -> UpstreamReply:
        raise AssertionError("not called")

    async def close(self) -> None:
        pass


def _pool(max_concurrency: int) -> dict[str, ModelPool]:
    deployment_config = config(max_concurrency=max_concurrency, rpm=1200)
    model = ModelConfig(name="m", deployments=[deployment_config])
    return {"m": ModelPool(model, [Deployment(deployment_config, _NoUpstream())])}


@pytest.fixture
def store(sqlite_store: Store) -> Store:
    return sqlite_store


async def test_three_coordinators_converge_to_equal_parts_and_release_on_stop(store: Store) -> None:
    engine_config = EngineConfig(capacity_interval_s=0.1, capacity_lease_s=5.0)
    pools = [_pool(30) for _ in range(3)]
    coordinators = [
        CapacityCoordinator(store, pool, engine_config, f"w{i}", lambda d: d.config.max_concurrency, lambda: None)
        for i, pool in enumerate(pools)
    ]
    for _ in range(3):  # a few rounds: early holders shrink, late comers grow into the freed slots
        for coordinator in coordinators:
            await coordinator.renew()
            rows = await store.list_capacity_leases()
            assert sum(r["slots"] for r in rows) <= 30
    assert sorted((r["owner"], r["slots"]) for r in await store.list_capacity_leases()) == [
        ("w0", 10),
        ("w1", 10),
        ("w2", 10),
    ]
    assert [p["m"].deployments[0].limits.concurrency for p in pools] == [10, 10, 10]
    await coordinators[0].release()
    for coordinator in coordinators[1:]:
        await coordinator.renew()
    await coordinators[1].renew()  # the first renewal after the release could only grow into free slots
    assert sorted((r["owner"], r["slots"]) for r in await store.list_capacity_leases()) == [("w1", 15), ("w2", 15)]


async def test_busy_workers_hand_slots_to_newcomers(store: Store) -> None:
    """Each worker refills every slot it may the moment a call ends (a busy upstream, calls shorter
    than a renewal): the first one's calls must still drain to its part, or the others wait forever."""
    engine_config = EngineConfig(capacity_interval_s=0.1, capacity_lease_s=5.0)
    pools = [_pool(30) for _ in range(3)]
    deployments = [pool["m"].deployments[0] for pool in pools]
    coordinators = [
        CapacityCoordinator(store, pool, engine_config, f"w{i}", lambda d: d.config.max_concurrency, lambda: None)
        for i, pool in enumerate(pools)
    ]
    await coordinators[0].renew()
    assert deployments[0].limits.concurrency == 30  # alone: everything
    for _ in range(3):
        for deployment, coordinator in zip(deployments, coordinators, strict=True):
            deployment.in_flight = deployment.limits.concurrency  # every slot it may fill is busy
            await coordinator.renew()
            assert sum(r["slots"] for r in await store.list_capacity_leases()) <= 30
    assert [d.limits.concurrency for d in deployments] == [10, 10, 10]
    assert sorted((r["owner"], r["slots"]) for r in await store.list_capacity_leases()) == [
        ("w0", 10),
        ("w1", 10),
        ("w2", 10),
    ]


async def test_a_vanished_workers_lease_expires_and_its_part_is_reused(store: Store) -> None:
    engine_config = EngineConfig(capacity_interval_s=0.1, capacity_lease_s=0.3)
    alive, vanished = _pool(8), _pool(8)
    survivor = CapacityCoordinator(store, alive, engine_config, "alive", lambda d: 8, lambda: None)
    ghost = CapacityCoordinator(store, vanished, engine_config, "ghost", lambda d: 8, lambda: None)
    await ghost.renew()  # takes all 8 while alone
    await survivor.renew()
    assert alive["m"].deployments[0].limits.granted_slots == 0
    deadline = time.monotonic() + 5
    while alive["m"].deployments[0].limits.granted_slots != 8:  # the ghost never renews again
        assert time.monotonic() < deadline, "the vanished worker's lease never expired"
        await survivor.renew()
    # Its own grant lapses locally before the table's lease does: no overlap with a successor.
    assert not vanished["m"].deployments[0].limits.available(time.monotonic())


def test_a_capacity_lease_shorter_than_two_renewals_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity_lease_s must be at least twice capacity_interval_s"):
        EngineConfig(capacity_interval_s=1.0, capacity_lease_s=1.5)
    assert EngineConfig(capacity_interval_s=1.0, capacity_lease_s=2.0).capacity_lease_s == 2.0
