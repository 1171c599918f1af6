"""Slots: when a claimed request may start, and on which deployment.

A slot is a call in flight on a deployment. A request takes one only when the deployment's window,
its RPM/TPM budgets and any Retry-After pause allow it; when they do not, a timer wakes the
dispatcher the moment they will. A call that ends frees its slot, feeds the deployment's limits and
hands the slot on at once, from memory: no database round trip between two requests.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Callable

from batchgate.engine.aio import wait_for_event
from batchgate.engine.deployments import Deployment, ModelPool
from batchgate.engine.work import Ready
from batchgate.upstreams.base import UpstreamReply

POLL_SLOT_S = 0.5  # a request waiting to retry looks again at least this often


class SlotScheduler:
    def __init__(self, wake: asyncio.Event, launch: Callable[[Ready, Deployment], None]) -> None:
        self._wake = wake  # the dispatcher's loop looks again when this is set
        self._launch = launch  # runs a request's attempts on the slot it was just given
        self.ready: dict[str, deque[Ready]] = defaultdict(deque)  # per model: claimed, waiting for a slot
        self._slot_events: dict[str, asyncio.Event] = {}  # per model: set when a slot frees
        self._retry_waiters: dict[str, int] = defaultdict(int)
        self._timer: asyncio.TimerHandle | None = None
        self.stopping = False

    def demand(self, deployment: Deployment, model: str, has_work: bool) -> int:
        """Slots wanted on a deployment: all of them while its model has work (claimable rows or
        queued ones), else only those in flight or waiting to retry."""
        limit = deployment.config.max_concurrency
        if self.ready[model] or has_work:
            return limit
        return min(limit, deployment.in_flight + self._retry_waiters[model])

    def drop(self, keep: Callable[[str], bool]) -> None:
        """Forget queued requests of the batches `keep` (given a batch id) says no to."""
        for ready in self.ready.values():
            if not all(keep(item.batch.id) for item in ready):
                kept = [item for item in ready if keep(item.batch.id)]
                ready.clear()
                ready.extend(kept)

    def stop(self) -> None:
        """Start nothing more: a call that ends from now on leaves its slot empty."""
        self.stopping = True
        self.ready.clear()

    def start_ready(self, pool: ModelPool, ready: deque[Ready]) -> None:
        """Start prefetched requests on free slots: no database round trip between two requests.

        Requests waiting to retry go first: while any waits for this model, new ones stay queued.
        """
        if self._retry_waiters[pool.model.name]:
            return
        now = time.monotonic()
        waiting: list[Ready] = []  # pinned to a deployment that is busy; others may pass them
        while ready:
            item = ready.popleft()
            deployment = pool.pick(item.batch.pinned_deployment)
            if deployment is None:
                waiting.append(item)
                if (pause := pool.pause_ends_in(now)) is not None:
                    self._wake_later(pause)  # resume the moment a Retry-After pause ends
                if item.batch.pinned_deployment is None or pool.free_slots() == 0:
                    break
                continue
            delay = deployment.limits.wait_for(item.tokens, now)
            if delay > 0:  # an RPM/TPM budget or a Retry-After pause: look again when it has passed
                waiting.append(item)
                self._wake_later(delay)
                break
            self.acquire(deployment, item.tokens, now)
            self._launch(item, deployment)
        ready.extendleft(reversed(waiting))

    def _wake_later(self, delay: float) -> None:
        if self._timer is None or self._timer.when() > asyncio.get_running_loop().time() + delay:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = asyncio.get_running_loop().call_later(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._wake.set()

    def acquire(self, deployment: Deployment, tokens: int, now: float) -> None:
        deployment.in_flight += 1
        deployment.limits.start(tokens, now)
        deployment.series.in_flight.inc()

    def release(self, pool: ModelPool, deployment: Deployment, reply: UpstreamReply | None) -> None:
        """A call ended: free its slot, feed the deployment's limits, and hand the slot on."""
        deployment.in_flight -= 1
        deployment.series.in_flight.dec()
        limits, now = deployment.limits, time.monotonic()
        if reply is None or reply.error_code == "response_too_large":  # abandoned, or an answer too big to
            limits.on_neutral()  # keep: says nothing about the upstream's health
        elif reply.status_code == 429:
            limits.on_throttled(reply.retry_after_s, now)
        elif reply.answered and 200 <= (reply.status_code or 0) < 300:
            limits.on_success()
        elif not reply.answered or (reply.status_code or 0) >= 500:
            limits.on_failure(now)
            if reply.retry_after_s:
                limits.paused_until = max(limits.paused_until, now + reply.retry_after_s)
        else:
            limits.on_neutral()
        deployment.series.circuit_open.set(1 if limits.circuit.state != "closed" else 0)
        event = self._slot_events.pop(pool.model.name, None)
        if event is not None:
            event.set()  # wakes every request waiting to retry on this model
        if not self.stopping:
            self.start_ready(pool, self.ready[pool.model.name])
        self._wake.set()

    async def wait_for_slot(self, pool: ModelPool, pinned: str | None, tokens: int) -> Deployment:
        """A slot for a retry (or a fallback model's first attempt), taken ahead of queued requests."""
        name = pool.model.name
        self._retry_waiters[name] += 1
        try:
            while True:
                now = time.monotonic()
                deployment = pool.pick(pinned)
                if deployment is not None:
                    delay = deployment.limits.wait_for(tokens, now)
                else:
                    delay = min(POLL_SLOT_S, pool.pause_ends_in(now) or POLL_SLOT_S)
                if deployment is not None and delay == 0:
                    self.acquire(deployment, tokens, now)
                    return deployment
                event = self._slot_events.setdefault(name, asyncio.Event())
                await wait_for_event(event, min(delay, POLL_SLOT_S))
        finally:
            self._retry_waiters[name] -= 1
