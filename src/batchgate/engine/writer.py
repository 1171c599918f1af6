"""Group commit of results: one transaction per ~50 ms or ~500 results, never one per request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

from batchgate.aio import wait_for_event
from batchgate.store.queries import FinishedRequest, Store

log = logging.getLogger(__name__)


class ResultWriter:
    def __init__(self, store: Store, interval_s: float, max_results: int,
                 on_flushed: Callable[[], None] | None = None) -> None:
        self._store = store
        self._interval_s = interval_s
        self._max_results = max_results
        self._buffer: list[FinishedRequest] = []
        self._full = asyncio.Event()
        self._on_flushed = on_flushed
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def add(self, finished: FinishedRequest) -> None:
        self._buffer.append(finished)
        if len(self._buffer) >= self._max_results:
            self._full.set()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="result-writer")

    async def _run(self) -> None:
        while not self._stopping:
            await wait_for_event(self._full, self._interval_s)
            await self.flush()

    async def flush(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        try:
            await self._store.store_results(batch)
        except Exception:
            log.exception("storing %d results failed; storing them one by one", len(batch))
            unstored = [f for f in batch if not await self._store_alone(f)]
            if unstored:
                # The database itself is failing: keep them for the next flush, since losing them
                # would make their requests run again.
                self._buffer[:0] = unstored
                await asyncio.sleep(self._interval_s)
        if self._on_flushed:
            self._on_flushed()

    async def _store_alone(self, finished: FinishedRequest) -> bool:
        """One result on its own; one that cannot be stored as it is (a poison answer) is stored as an
        error, so it never blocks the results behind it."""
        for attempt in (finished, replace(finished, ok=False, body=None, error_code="result_unstorable",
                                          error_message="the upstream's answer could not be stored",
                                          status_code=None, input_tokens=0, cached_tokens=0, output_tokens=0,
                                          reasoning_tokens=0)):
            try:
                await self._store.store_results([attempt])
                return True
            except Exception:
                log.exception("storing the result of %s line %d failed", finished.batch_id, finished.line_no,
                              extra={"batch_id": finished.batch_id, "line_no": finished.line_no})
        return False

    async def stop(self) -> None:
        self._stopping = True
        self._full.set()
        if self._task:
            await self._task
        await self.flush()
