"""Global deployment limits across workers (scale-out on PostgreSQL).

Each worker holds a lease on part of every deployment's `max_concurrency` and of its rpm/tpm rate,
in the `capacity_leases` table, renewed every `engine.capacity_interval_s`. Workers with work
split the slots max-min fairly. A worker only grows into slots no other live lease holds, and
applies a shrink before storing it, so the leases never sum past the limit; a vanished worker's
lease expires after `engine.capacity_lease_s` and its part goes to the others. One node (SQLite)
needs none of this: its process holds everything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from batchgate.config import EngineConfig
from batchgate.engine.aio import wait_for_event
from batchgate.engine.deployments import Deployment, ModelPool
from batchgate.observability import metrics
from batchgate.store.outage import describe
from batchgate.store.records import CapacityLease
from batchgate.store.store import Store

log = logging.getLogger(__name__)


def max_min_fair(total: int, demands: Mapping[str, int]) -> dict[str, int]:
    """Split `total` whole slots: nobody gets more than it asks, the rest is shared equally
    (remainders to the first owners by name, so every worker computes the same split)."""
    allocation: dict[str, int] = {}
    remaining = total
    pending = sorted(demands.items(), key=lambda item: (item[1], item[0]))
    while pending:
        equal = remaining // len(pending)
        owner, demand = pending[0]
        if demand <= equal:
            allocation[owner] = demand
            remaining -= demand
            pending.pop(0)
            continue
        extra = remaining - equal * len(pending)
        for index, (name, _) in enumerate(sorted(pending)):
            allocation[name] = equal + (1 if index < extra else 0)
        break
    return allocation


def decide_lease(
    deployment: str, owner: str, limit: int, in_flight: int, demand: int, others: list[CapacityLease]
) -> tuple[CapacityLease, int]:
    """This worker's next lease on one deployment, given the other workers' live leases, and the
    slots it may fill from now on (its target).

    Target: its max-min fair part, but never more than the others leave free. The stored lease
    holds the target, or the calls in flight if more (they are on the wire): a busy worker over its
    target starts nothing until it has drained below it, and the slots it gives back show at its next
    renewal, for the others to grow into.
    Rate: an equal part among the workers with calls to start (demand beyond what is in flight),
    within what the others leave.
    """
    fair = max_min_fair(limit, {**{o.owner: o.demand for o in others}, owner: demand})[owner]
    target = min(fair, limit - sum(o.slots for o in others))
    wants_rate = demand > in_flight
    wanting = sum(1 for o in others if o.wants_rate) + (1 if wants_rate else 0)
    share = 1.0 / wanting if wants_rate else 0.0
    share = max(0.0, min(share, 1.0 - sum(o.rate_share for o in others)))
    return CapacityLease(deployment, owner, max(in_flight, target), share, demand, wants_rate), target


class CapacityCoordinator:
    """Renews this worker's leases on every deployment and applies them to the local limits."""

    def __init__(
        self,
        store: Store,
        pools: dict[str, ModelPool],
        config: EngineConfig,
        owner: str,
        demand: Callable[[Deployment], int],
        on_change: Callable[[], None],
    ) -> None:
        self._store = store
        self._deployments = {d.name: d for pool in pools.values() for d in pool.deployments}
        self._config = config
        self._owner = owner
        self._demand = demand
        self._on_change = on_change
        self._wake = asyncio.Event()
        self._stopping = False
        for deployment in self._deployments.values():  # nothing may start before the first lease
            deployment.limits.grant(0, 0.0, time.monotonic() + config.capacity_lease_s, time.monotonic())

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            try:
                await self.renew()
            except Exception as exc:  # the grants lapse on their own if this keeps failing
                self._store.outage.report(exc, "renewing capacity leases", log)
            await wait_for_event(self._wake, self._config.capacity_interval_s)

    async def renew(self) -> None:
        started_wall, started = time.time(), time.monotonic()
        # Valid locally a little less long than in the table: a worker stops before others may start.
        valid_until = started + self._config.capacity_lease_s - self._config.capacity_interval_s

        targets: dict[str, int] = {}

        def decide(others: dict[str, list[CapacityLease]]) -> list[CapacityLease]:
            leases = []
            for name, deployment in self._deployments.items():
                lease, targets[name] = decide_lease(
                    name,
                    self._owner,
                    deployment.config.max_concurrency,
                    deployment.in_flight,
                    self._demand(deployment),
                    others[name],
                )
                deployment.limits.shrink(targets[name], lease.rate_share, time.monotonic())
                leases.append(lease)
            return leases

        leases = await self._store.renew_capacity(
            self._owner, started_wall, started_wall + self._config.capacity_lease_s, list(self._deployments), decide
        )
        changed = False
        for lease in leases:
            limits, target = self._deployments[lease.deployment].limits, targets[lease.deployment]
            changed |= limits.granted_slots != target
            limits.grant(target, lease.rate_share, valid_until, time.monotonic())
            metrics.CAPACITY_GRANTED.labels(lease.deployment).set(target)
        if changed:
            self._on_change()

    async def release(self) -> None:
        """After the dispatcher and this loop stopped: hand this worker's leases to the others at once."""
        self._stopping = True
        try:
            await self._store.release_capacity(self._owner)
        except Exception as exc:
            log.warning(
                "releasing capacity leases failed (%s); they expire in %gs",
                describe(exc),
                self._config.capacity_lease_s,
            )
