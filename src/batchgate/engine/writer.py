"""Group commit of results: one transaction per ~50 ms or ~500 results, never one per request.

A result is an answer somebody paid for: it is never dropped. While the database is unreachable the
results stay buffered and the flush is retried with backoff until it answers. Only a result the
database refuses as data (its size, its encoding) is stored as an error line instead, so one poison
answer cannot block the results behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from batchgate.engine.aio import wait_for_event
from batchgate.store.outage import OutageLog, describe, is_data_error, is_transient
from batchgate.store.records import FinishedRequest
from batchgate.store.store import Store

log = logging.getLogger(__name__)

MAX_TRANSACTION_BYTES = 16 * 1024 * 1024  # answer bytes in one group commit (a few 25 MB answers: one each)
MAX_BACKOFF_S = 2.0  # retry a failing database at least this often: the outage may be seconds long
UNKNOWN_FAILURES_BEFORE_ERROR = 5  # an unclassified failure of one result alone, this many flushes in a row


def _size(finished: FinishedRequest) -> int:
    return len(finished.body) if finished.body else 0


def _by_bytes(results: Sequence[FinishedRequest], max_bytes: int) -> Iterator[list[FinishedRequest]]:
    """Consecutive groups of at most `max_bytes` of answers (a larger answer travels alone)."""
    group: list[FinishedRequest] = []
    size = 0
    for finished in results:
        if group and size + _size(finished) > max_bytes:
            yield group
            group, size = [], 0
        group.append(finished)
        size += _size(finished)
    if group:
        yield group


def _unstorable(finished: FinishedRequest) -> FinishedRequest:
    return replace(
        finished,
        ok=False,
        body=None,
        error_code="result_unstorable",
        error_message="the upstream's answer could not be stored",
        status_code=None,
        input_tokens=0,
        cached_tokens=0,
        output_tokens=0,
        reasoning_tokens=0,
    )


class ResultWriter:
    def __init__(
        self,
        store: Store,
        interval_s: float,
        max_results: int,
        on_flushed: Callable[[], None] | None = None,
        max_bytes: int = MAX_TRANSACTION_BYTES,
        outage: OutageLog | None = None,
    ) -> None:
        self._store = store
        self._interval_s = interval_s
        self._max_results = max_results
        self._max_bytes = max_bytes
        self._buffer: list[FinishedRequest] = []
        self._buffered_bytes = 0
        self._full = asyncio.Event()
        self._on_flushed = on_flushed
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._outage = outage or OutageLog(log)
        self._failed_flushes = 0  # in a row, for the backoff
        self._unknown_failures: dict[tuple[str, int], int] = {}

    def add(self, finished: FinishedRequest) -> None:
        self._buffer.append(finished)
        self._buffered_bytes += _size(finished)
        if len(self._buffer) >= self._max_results or self._buffered_bytes >= self._max_bytes:
            self._full.set()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name="result-writer")
        return self._task

    async def _run(self) -> None:
        while not self._stopping:
            await wait_for_event(self._full, self._interval_s)
            await self.flush()

    async def flush(self) -> None:
        """Store what is buffered; whatever could not be stored goes back to the front of the buffer."""
        if not self._buffer:
            return
        pending, self._buffer, self._buffered_bytes = self._buffer, [], 0
        groups = list(_by_bytes(pending, self._max_bytes))
        kept: list[FinishedRequest] = []
        for index, group in enumerate(groups):
            kept = await self._store_group(group)
            if kept:  # the database is failing: don't hammer it, keep the later groups too
                kept += [f for later in groups[index + 1 :] for f in later]
                break
        if kept:
            self._buffer[:0] = kept
            self._buffered_bytes += sum(_size(f) for f in kept)
            self._failed_flushes += 1
            await asyncio.sleep(min(MAX_BACKOFF_S, self._interval_s * 2 ** min(self._failed_flushes, 6)))
        else:
            self._failed_flushes = 0
            self._outage.recovered()
        if self._on_flushed:
            self._on_flushed()

    async def _store_group(self, group: list[FinishedRequest]) -> list[FinishedRequest]:
        """Store a group in one transaction; the results that must be kept for a later try."""
        try:
            await self._store.store_results(group)
            return []
        except Exception as exc:
            if is_transient(exc):
                self._outage.failed(exc, f"storing {len(group)} results")
                return group
            log.warning("storing %d results failed (%s); storing them one by one", len(group), describe(exc))
        for position, finished in enumerate(group):
            if not await self._store_alone(finished):
                return group[position:]  # the database itself is failing: keep this one and the rest
        return []

    async def _store_alone(self, finished: FinishedRequest) -> bool:
        """One result on its own. False: the database is failing, keep it. A result the database
        refuses as data is stored as an error line instead (it would block the others forever)."""
        key = (finished.batch_id, finished.line_no)
        try:
            await self._store.store_results([finished])
            self._unknown_failures.pop(key, None)
            return True
        except Exception as exc:
            if is_transient(exc):
                self._outage.failed(exc, "storing a result")
                return False
            strikes = self._unknown_failures.get(key, 0) + 1
            if not is_data_error(exc) and strikes < UNKNOWN_FAILURES_BEFORE_ERROR:
                self._unknown_failures[key] = strikes  # not clearly the value's fault: try again later
                log.warning(
                    "storing the result of %s line %d failed (%s); retried",
                    finished.batch_id,
                    finished.line_no,
                    describe(exc),
                    extra={"batch_id": finished.batch_id},
                )
                return False
            log.error(
                "the result of %s line %d cannot be stored (%s); it is recorded as result_unstorable",
                finished.batch_id,
                finished.line_no,
                describe(exc),
                extra={"batch_id": finished.batch_id, "line_no": finished.line_no},
            )
        try:
            await self._store.store_results([_unstorable(finished)])
        except Exception as exc:
            if is_transient(exc):
                self._outage.failed(exc, "storing a result")
            else:
                log.exception("storing the error line of %s line %d failed", finished.batch_id, finished.line_no)
            return False  # keep the real answer: the next flush tries it again
        self._unknown_failures.pop(key, None)
        return True

    async def stop(self) -> None:
        self._stopping = True
        self._full.set()
        if self._task:
            await self._task
        await self.flush()
