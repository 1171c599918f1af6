"""The coordinator: claims exactly as many rows as there are free slots, fairly, and runs them.

One per process. It knows the free slots of every deployment and leases rows on demand (the
Oban / Solid Queue / pg-boss pattern): free slots plus a small prefetch, never a chunk that waits
for its slowest member.
Batches of one model share its slots round robin, visited in earliest-deadline-first order.

The work is done by four parts, each given its collaborators here:
- claims.py (ClaimPlanner): what to claim and from which batches, reading and guarding the lines;
- scheduler.py (SlotScheduler): the queue of claimed requests, their slots and the timers;
- attempts.py (AttemptRunner): one request's calls, retries and fallback models;
- outcomes.py (OutcomeRecorder): results to the writer, metrics, usage.
This module keeps the active batches and the tasks of the calls in flight, which it cancels.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from functools import partial

from batchgate.blobs import BlobStore
from batchgate.config import EngineConfig
from batchgate.engine.aio import wait_for_event
from batchgate.engine.attempts import AttemptRunner
from batchgate.engine.claims import ClaimPlanner
from batchgate.engine.deployments import Deployment, ModelPool
from batchgate.engine.guardrails import Guardrails
from batchgate.engine.outcomes import OutcomeRecorder
from batchgate.engine.scheduler import SlotScheduler
from batchgate.engine.work import ActiveBatch, Ready, log
from batchgate.engine.writer import ResultWriter
from batchgate.store.store import Store

__all__ = ["ActiveBatch", "Dispatcher"]


class Dispatcher:
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        pools: dict[str, ModelPool],
        writer: ResultWriter,
        engine_config: EngineConfig,
        owner: str,
        guardrails: Guardrails | None = None,
    ) -> None:
        guardrails = guardrails or Guardrails([])
        self._store = store
        self._config = engine_config
        self._wake = asyncio.Event()
        self._active: list[ActiveBatch] = []
        self._tasks: dict[str, set[asyncio.Task[None]]] = defaultdict(set)
        self._pool_of = {d.name: pool for pool in pools.values() for d in pool.deployments}
        self._stopping = False
        self._outcomes = OutcomeRecorder(writer, guardrails)
        self._scheduler = SlotScheduler(self._wake, self._launch)
        self._attempts = AttemptRunner(pools, self._scheduler, self._outcomes, engine_config)
        self._claims = ClaimPlanner(
            store, blobs, pools, engine_config, owner, guardrails, self._scheduler, self._outcomes
        )
        # Called when a batch joins the active set: this process's demand may have grown (scale-out:
        # the capacity coordinator renews at once instead of at its next interval).
        self.on_new_work: Callable[[], None] = lambda: None

    # ------------------------------------------------------------ control from the lifecycle loop
    def set_active(self, batches: list[ActiveBatch]) -> None:
        """The batches allowed to dispatch, in earliest-deadline-first order."""
        known = {b.id for b in self._active}
        self._active = batches
        live = {b.id for b in batches}
        if not live <= known:
            for batch in batches:  # its model has rows again, whatever its last claim found
                if batch.id not in known:
                    self._claims.exhausted[batch.model] = False
            self.on_new_work()
        for batch_id in [b for b in self._tasks if b not in live]:
            self.cancel_batch(batch_id)
        self._scheduler.drop(live.__contains__)
        self.wake()

    def cancel_batch(self, batch_id: str) -> int:
        """Stop this process's in-flight and prefetched requests of a batch; their rows get a result elsewhere."""
        self._scheduler.drop(batch_id.__ne__)
        tasks = self._tasks.pop(batch_id, set())
        for task in tasks:
            task.cancel()
        return len(tasks)

    def wake(self) -> None:
        self._wake.set()

    def demand(self, deployment: Deployment) -> int:
        """Slots this process could use on a deployment now (scale-out: its claim on the global limit).

        All of them while its model has work here; once the queue ran dry, only what is in flight or
        waiting to retry, so the other workers get the rest."""
        model = self._pool_of[deployment.name].model.name
        has_work = any(batch.model == model for batch in self._active) and not self._claims.exhausted.get(model, False)
        return self._scheduler.demand(deployment, model, has_work)

    # ------------------------------------------------------------ the loop
    async def run(self) -> None:
        while not self._stopping:
            await wait_for_event(self._wake, self._config.poll_interval_s)
            if self._stopping:
                break
            try:
                await self._claims.claim_round(self._active)
            except Exception as exc:
                self._store.outage.report(exc, "a claim round", log)
                await asyncio.sleep(self._config.poll_interval_s)

    async def stop(self) -> None:
        """Stop claiming and abandon in-flight calls; their leases are released by the caller."""
        self._stopping = True
        self._wake.set()
        self._scheduler.stop()
        tasks = [t for group in self._tasks.values() for t in group]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------ the calls in flight
    def _launch(self, item: Ready, deployment: Deployment) -> None:
        """Run a request's attempts on the slot the scheduler just gave it, as a task of its batch:
        cancel_batch, set_active and stop cancel these."""
        task = asyncio.create_task(self._attempts.execute(item, deployment))
        self._tasks[item.batch.id].add(task)
        task.add_done_callback(partial(self._done, item.batch))

    def _done(self, batch: ActiveBatch, task: asyncio.Task[None]) -> None:
        group = self._tasks.get(batch.id)
        if group is not None:
            group.discard(task)
            if not group:
                del self._tasks[batch.id]
        self._wake.set()
