"""The engine as one object: a dispatcher, a result writer and the lifecycle loop, started together.

Each loop catches what goes wrong inside one round (a database outage, a bad row), so a loop that
ends anyway is a bug the engine cannot recover from: a process whose writer died would answer the
API and never store another result. So the engine watches its loops, and when one ends while the
engine is not stopping it logs why and resolves `failed`; the process then exits non-zero (`serve`
and `worker` do this) so systemd or Kubernetes restarts it, and leases hand its work to the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

from batchgate.blobs import BlobStore, LocalBlobStore
from batchgate.config import Settings
from batchgate.domain import ids
from batchgate.engine import activity
from batchgate.engine.capacity import CapacityCoordinator
from batchgate.engine.deployments import build_pools, close_pools
from batchgate.engine.dispatcher import Dispatcher
from batchgate.engine.guardrails import Guardrails
from batchgate.engine.lifecycle import Lifecycle
from batchgate.engine.writer import ResultWriter
from batchgate.store.outage import describe, is_transient
from batchgate.store.store import Store

log = logging.getLogger(__name__)
ACTIVITY_PUBLISH_S = 5.0  # how stale another worker's figures on the console may be


class Engine:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        blobs: BlobStore,
        *,
        single_node: bool,
        on_batch_done: Callable[[str], None] | None = None,
    ) -> None:
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{ids.new_ulid()[-6:]}"
        self._store = store
        self._blobs = blobs
        self._single_node = single_node
        self._lease_s = settings.engine.lease_s
        self.pools = build_pools(settings)
        self.writer = ResultWriter(
            store,
            settings.engine.flush_interval_s,
            settings.engine.flush_max_results,
            on_flushed=self._on_flushed,
            outage=store.outage,
        )
        self.dispatcher = Dispatcher(
            store, blobs, self.pools, self.writer, settings.engine, self.owner, Guardrails(settings.guardrails)
        )
        self.lifecycle = Lifecycle(
            settings, store, blobs, self.dispatcher, self.writer, self.owner, on_batch_done=on_batch_done
        )
        # Several processes share the deployments' limits only on a shared database.
        self.capacity = (
            None
            if single_node
            else CapacityCoordinator(
                store, self.pools, settings.engine, self.owner, self.dispatcher.demand, self.dispatcher.wake
            )
        )
        if self.capacity is not None:
            self.dispatcher.on_new_work = self.capacity.wake
        self._capacity_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.failed: asyncio.Future[str] | None = None  # resolves with the reason when a loop dies

    def _on_flushed(self) -> None:
        self.lifecycle.wake()  # counters moved: a batch may be ready to finalise

    def notify(self, urgent: bool = True) -> None:
        """Something changed through the API (new batch, cancel): look now, not at the next poll.

        Not `urgent` (xAI add-calls, which a client may send many a second): the next tick keeps its
        gap, so a stream of adds costs at most 4 ticks a second."""
        self.lifecycle.wake(urgent=urgent)

    async def start(self) -> None:
        if self._single_node:
            # SQLite means one process owns the database: whatever was running when it last
            # stopped (even by kill -9) belongs to nobody now and can start again at once.
            released = await self._store.release_all_leases()
            if released:
                log.warning("re-queued %d requests that were in flight when the last run stopped", released)
            await self._sweep_orphan_blobs()
        self.failed = asyncio.get_running_loop().create_future()
        self._supervise(self.writer.start())
        self._tasks = [
            self._supervise(asyncio.create_task(self.dispatcher.run(), name="dispatcher")),
            self._supervise(asyncio.create_task(self.lifecycle.run(), name="lifecycle")),
        ]
        if self.capacity is not None:
            self._capacity_task = self._supervise(asyncio.create_task(self.capacity.run(), name="capacity"))
            self._tasks.append(self._capacity_task)
            self._tasks.append(self._supervise(asyncio.create_task(self._publish_activity_loop(), name="activity")))

    def _supervise(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        task.add_done_callback(self._loop_ended)
        return task

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if self._stopping:
            return
        exc = None if task.cancelled() else task.exception()
        why = "it was cancelled" if task.cancelled() else f"{type(exc).__name__}: {exc}" if exc else "it returned"
        log.critical(
            "engine loop %r stopped (%s); the engine cannot go on without it, so the process stops",
            task.get_name(),
            why,
            exc_info=exc,
        )
        if self.failed is not None and not self.failed.done():
            self.failed.set_result(f"engine loop {task.get_name()!r} stopped: {why}")

    async def _publish_activity_loop(self) -> None:
        """Scale-out: every few seconds, this engine's last two minutes per deployment go to the
        database, so the console of any API server shows every worker's activity."""
        while True:
            await asyncio.sleep(ACTIVITY_PUBLISH_S)
            try:
                await self.publish_activity()
            except Exception as exc:  # a console figure: never worth more than a warning
                if is_transient(exc):
                    self._store.outage.failed(exc, "publishing deployment activity")
                else:
                    log.warning("publishing deployment activity failed: %s: %s", type(exc).__name__, exc)

    async def publish_activity(self) -> None:
        minute = int(time.time()) // 60
        await self._store.publish_activity(
            self.owner, activity.recent_rows(minute - 1), keep_from_minute=minute - activity.MINUTES
        )

    async def _sweep_orphan_blobs(self) -> None:
        """Blobs a crash left without a row (between a blob's commit and its row's insert, or files
        written by a finalisation that never committed). Only on one node: nothing else writes now."""
        if not isinstance(self._blobs, LocalBlobStore):
            return
        referenced = await self._store.referenced_blob_keys()
        orphans = [key for key in self._blobs.committed_keys() if key not in referenced]
        for key in orphans:
            await self._blobs.delete(key)
        if orphans:
            log.warning("deleted %d blobs left behind by an earlier crash", len(orphans))

    async def stop(self) -> None:
        """Stop claiming, abandon in-flight calls, store what finished and hand the rest back."""
        self._stopping = True
        await self.lifecycle.stop()
        await self.dispatcher.stop()
        if self.capacity is not None and self._capacity_task is not None:
            self._capacity_task.cancel()  # no renewal may race the release below
            await asyncio.gather(self._capacity_task, return_exceptions=True)
            await self.capacity.release()
        await self.writer.stop()
        for task in self._tasks:
            task.cancel()
        if self.capacity is not None:
            with contextlib.suppress(Exception):  # the last seconds' activity, best effort
                await self.publish_activity()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._store.release_all_leases(self.owner)
        except Exception as exc:  # the database is down: the leases expire and others take the rows then
            log.warning(
                "handing back this worker's requests failed (%s); their leases expire in %gs",
                describe(exc),
                self._lease_s,
            )
        await close_pools(self.pools)
