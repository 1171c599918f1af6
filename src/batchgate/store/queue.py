"""Request rows and their results: insert, claim, leases, the group commit, reading results back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, text, update

from batchgate.domain.status import BatchStatus, RequestState
from batchgate.store.base import StoreBase, chunks, insert_ignore
from batchgate.store.records import (
    RESULT_PAGE_BYTES,
    RESULT_PAGE_ROWS,
    RESULTS_LOCK_KEY,
    ClaimedRequest,
    FinishedRequest,
    Row,
)
from batchgate.store.tables import batches, requests, results


class QueueQueries(StoreBase):
    _insert_results: Any  # the group commit's INSERT ... RETURNING, built once by Store.__init__

    # ---------------------------------------------------------------- request rows
    async def insert_requests(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            async with self.engine.begin() as conn:
                await conn.execute(insert(requests), rows)

    async def delete_requests(self, batch_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(requests).where(requests.c.batch_id == batch_id))
            await conn.execute(delete(results).where(results.c.batch_id == batch_id))

    async def claim(
        self, batch_id: str, owner: str, limit: int, now: float, lease_until: float
    ) -> list[ClaimedRequest]:
        """Lease up to `limit` ready rows of one batch, in line order."""
        lock = " FOR UPDATE SKIP LOCKED" if self.dialect == "postgresql" else ""
        statement = text(
            # The states as constants in the text, not parameters: the planner sees them (and may use an index).
            f"UPDATE requests SET state = '{RequestState.RUNNING}', lease_owner = :owner, lease_until = :lease_until,"
            " attempts = attempts + 1"
            " WHERE batch_id = :batch_id AND line_no IN ("
            f"  SELECT line_no FROM requests WHERE batch_id = :batch_id AND state = '{RequestState.PENDING}'"
            f"  AND next_attempt_at <= :now ORDER BY line_no LIMIT :limit{lock})"
            ' RETURNING line_no, custom_id, "offset", length, attempts, blob_key'
        )
        params = {"owner": owner, "lease_until": lease_until, "batch_id": batch_id, "now": now, "limit": limit}
        async with self.engine.begin() as conn:
            rows = (await conn.execute(statement, params)).all()
        return [ClaimedRequest(batch_id, r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    async def lease_batch(self, batch_id: str, owner: str, now: float, lease_until: float) -> bool:
        """Take a validating batch for this worker, unless another holds a live lease on it."""
        statement = (
            update(batches)
            .where(
                batches.c.id == batch_id,
                batches.c.status == BatchStatus.VALIDATING,
                or_(batches.c.lease_owner.is_(None), batches.c.lease_owner == owner, batches.c.lease_until < now),
            )
            .values(lease_owner=owner, lease_until=lease_until)
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(statement)).rowcount == 1

    async def release_rows(self, batch_id: str, line_nos: list[int], retry_at: float = 0.0) -> None:
        """Put claimed rows back in the queue, to be claimed again from `retry_at` (their bodies
        could not be read this time)."""
        async with self.engine.begin() as conn:
            for chunk in chunks(line_nos, 500):
                await conn.execute(
                    update(requests)
                    .where(
                        requests.c.batch_id == batch_id,
                        requests.c.line_no.in_(chunk),
                        requests.c.state == RequestState.RUNNING,
                    )
                    .values(state=RequestState.PENDING, lease_owner=None, lease_until=None, next_attempt_at=retry_at)
                )

    async def extend_leases(self, owner: str, lease_until: float) -> None:
        """Heartbeat: this worker still holds its running rows and the batches it validates."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(requests)
                .where(requests.c.state == RequestState.RUNNING, requests.c.lease_owner == owner)
                .values(lease_until=lease_until)
            )
            await conn.execute(
                update(batches)
                .where(batches.c.status == BatchStatus.VALIDATING, batches.c.lease_owner == owner)
                .values(lease_until=lease_until)
            )

    async def release_expired_leases(self, now: float) -> int:
        """Hand rows whose worker vanished back to the queue."""
        statement = (
            update(requests)
            .where(requests.c.state == RequestState.RUNNING, requests.c.lease_until < now)
            .values(state=RequestState.PENDING, lease_owner=None, lease_until=None)
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(statement)).rowcount

    async def release_all_leases(self, owner: str | None = None) -> int:
        """Return running rows to the queue (all of them, or one worker's on a clean shutdown)."""
        statement = update(requests).where(requests.c.state == RequestState.RUNNING)
        if owner is not None:
            statement = statement.where(requests.c.lease_owner == owner)
        statement = statement.values(state=RequestState.PENDING, lease_owner=None, lease_until=None)
        free_batches = update(batches).where(batches.c.lease_owner.is_not(None))
        if owner is not None:
            free_batches = free_batches.where(batches.c.lease_owner == owner)
        async with self.engine.begin() as conn:
            await conn.execute(free_batches.values(lease_owner=None, lease_until=None))
            return (await conn.execute(statement)).rowcount

    # ---------------------------------------------------------------- results
    async def _serialise_result_writes(self, conn: Any) -> None:
        """Result rows must commit in `seq` order, or a reader paging by seq could pass a row that
        commits later with a smaller seq. SQLite has one writer anyway; PostgreSQL takes a
        transaction-scoped advisory lock (one result transaction at a time, every ~50 ms per worker)."""
        if self.dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": RESULTS_LOCK_KEY})

    async def store_results(self, finished: Sequence[FinishedRequest]) -> int:
        """Group commit: insert results, mark their rows done and bump batch counters in one transaction.

        A result that already exists (the request ran twice after a crash) is ignored, and only
        the rows actually inserted count, so counters never double.
        """
        if not finished:
            return 0
        by_key = {(f.batch_id, f.line_no): f for f in finished}
        async with self.engine.begin() as conn:
            await self._serialise_result_writes(conn)
            # executemany + RETURNING: SQLAlchemy batches it into multi-row INSERTs from one cached
            # compilation; only rows really inserted come back.
            returned = await conn.execute(self._insert_results, [_result_row(f) for f in by_key.values()])
            inserted = [by_key[(batch_id, line_no)] for batch_id, line_no in returned.all()]
            await conn.execute(_MARK_DONE, [{"b_id": f.batch_id, "b_line": f.line_no} for f in by_key.values()])
            deltas = _counter_deltas(inserted)
            if deltas:
                await conn.execute(
                    _BUMP_COUNTERS,
                    [{"b_id": batch_id, **{f"d_{k}": v for k, v in d.items()}} for batch_id, d in deltas.items()],
                )
        return len(inserted)

    async def terminate_unfinished(
        self, batch_id: str, states: Sequence[str], error_code: str, message: str, now: float
    ) -> int:
        """Give every unfinished row of a batch an error result (expiry, cancellation)."""
        async with self.engine.begin() as conn:
            await self._serialise_result_writes(conn)
            rows = (
                await conn.execute(
                    select(requests.c.line_no, requests.c.custom_id).where(
                        requests.c.batch_id == batch_id, requests.c.state.in_(states)
                    )
                )
            ).all()
            count = 0
            for chunk in chunks(rows, 400):
                statement = (
                    insert_ignore(self.dialect, results)
                    .values(
                        [
                            {
                                "batch_id": batch_id,
                                "line_no": line_no,
                                "custom_id": custom_id,
                                "ok": False,
                                "status_code": None,
                                "upstream_request_id": None,
                                "body": None,
                                "error_code": error_code,
                                "error_message": message,
                                "finished_at": now,
                                "input_tokens": 0,
                                "output_tokens": 0,
                            }
                            for line_no, custom_id in chunk
                        ]
                    )
                    .returning(results.c.line_no)
                )
                count += len((await conn.execute(statement)).all())
            await conn.execute(
                update(requests)
                .where(requests.c.batch_id == batch_id, requests.c.state.in_(states))
                .values(state=RequestState.DONE, lease_owner=None, lease_until=None)
            )
            if count:
                cancelled = count if error_code == "batch_cancelled" else 0
                await conn.execute(
                    update(batches)
                    .where(batches.c.id == batch_id)
                    .values(failed=batches.c.failed + count, cancelled=batches.c.cancelled + cancelled)
                )
        return count

    def iter_results(
        self, batch_id: str, *, after_line: int = 0, ok: bool | None = None, max_bytes: int = RESULT_PAGE_BYTES
    ) -> AsyncIterator[Row]:
        """Every result of a batch in line order, read in pages bounded by rows and by answer bytes."""
        return self._iter_results(batch_id, results.c.line_no, after_line, None, ok, max_bytes)

    def iter_results_by_seq(
        self,
        batch_id: str,
        *,
        after_seq: int = 0,
        limit: int | None = None,
        ok: bool | None = None,
        max_bytes: int = RESULT_PAGE_BYTES,
    ) -> AsyncIterator[Row]:
        """Results in the order they were stored, each with its request's endpoint: a cursor on `seq`
        never skips or repeats one."""
        return self._iter_results(batch_id, results.c.seq, after_seq, limit, ok, max_bytes)

    async def _iter_results(
        self, batch_id: str, key: Any, after: int, limit: int | None, ok: bool | None, max_bytes: int
    ) -> AsyncIterator[Row]:
        """Sizes first (a cheap index walk), then the rows in groups of at most `max_bytes` of bodies
        (a larger body comes alone): memory is bounded by a constant, not by the answers' sizes."""
        where = [results.c.batch_id == batch_id]
        if ok is not None:
            where.append(results.c.ok == ok)
        left = limit
        while left is None or left > 0:
            page = RESULT_PAGE_ROWS if left is None else min(left, RESULT_PAGE_ROWS)
            sizes_query = (
                select(key, func.coalesce(func.length(results.c.body), 0))
                .where(*where, key > after)
                .order_by(key)
                .limit(page)
            )
            async with self.engine.connect() as conn:
                sizes = (await conn.execute(sizes_query)).all()
            if not sizes:
                return
            for first, last in _groups_by_size(sizes, max_bytes):
                query = (
                    select(results, requests.c.endpoint)
                    .join(
                        requests,
                        and_(requests.c.batch_id == results.c.batch_id, requests.c.line_no == results.c.line_no),
                        isouter=True,
                    )
                    .where(*where, key >= first, key <= last)
                    .order_by(key)
                )
                async with self.engine.connect() as conn:
                    rows = list((await conn.execute(query)).mappings())
                rows.reverse()
                while rows:  # popped, so a row the caller is done with is not held by this page
                    yield rows.pop()
            after = sizes[-1][0]
            if left is not None:
                left -= len(sizes)
            if len(sizes) < page:
                return

    async def request_page(self, batch_id: str, after_line: int, limit: int) -> list[Row]:
        """Requests in the order they were added, each with its result's outcome if it has one."""
        query = (
            select(
                requests.c.line_no,
                requests.c.custom_id,
                requests.c.state,
                requests.c.endpoint,
                requests.c.created_at,
                results.c.ok,
                results.c.error_code,
                results.c.finished_at,
            )
            .join(
                results,
                and_(results.c.batch_id == requests.c.batch_id, results.c.line_no == requests.c.line_no),
                isouter=True,
            )
            .where(requests.c.batch_id == batch_id, requests.c.line_no > after_line)
            .order_by(requests.c.line_no)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).mappings())

    async def usage_by_endpoint(self, batch_id: str) -> list[Row]:
        """Requests answered and tokens used per endpoint (null endpoint: the batch's own)."""
        query = (
            select(
                requests.c.endpoint,
                func.count().label("requests"),
                func.coalesce(func.sum(results.c.input_tokens), 0).label("input_tokens"),
                func.coalesce(func.sum(results.c.output_tokens), 0).label("output_tokens"),
            )
            .select_from(
                results.join(
                    requests, and_(requests.c.batch_id == results.c.batch_id, requests.c.line_no == results.c.line_no)
                )
            )
            .where(results.c.batch_id == batch_id, results.c.status_code.is_not(None))
            .group_by(requests.c.endpoint)
        )
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).mappings())


def _groups_by_size(sizes: Sequence[Any], max_bytes: int) -> Iterable[tuple[int, int]]:
    """(first, last) key ranges of consecutive rows whose bodies add up to at most `max_bytes`."""
    start, total = sizes[0][0], 0
    previous = start
    for position, size in sizes:
        if total and total + size > max_bytes:
            yield start, previous
            start, total = position, 0
        total += size
        previous = position
    yield start, previous


def _result_row(f: FinishedRequest) -> dict[str, Any]:
    return {
        "batch_id": f.batch_id,
        "line_no": f.line_no,
        "custom_id": f.custom_id,
        "ok": f.ok,
        "status_code": f.status_code,
        "upstream_request_id": f.upstream_request_id,
        "body": f.body,
        "error_code": f.error_code,
        "error_message": f.error_message,
        "finished_at": f.finished_at,
        "input_tokens": f.input_tokens,
        "output_tokens": f.output_tokens,
    }


# The group commit's statements, built once: constructing Core expressions on every flush (one per
# batch with results in it) cost more than running them.
_COUNTERS = ("completed", "failed", "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")
_MARK_DONE = (
    update(requests)
    .where(requests.c.batch_id == bindparam("b_id"), requests.c.line_no == bindparam("b_line"))
    .values(state=RequestState.DONE, lease_owner=None, lease_until=None)
)
_BUMP_COUNTERS = (
    update(batches)
    .where(batches.c.id == bindparam("b_id"))
    .values({getattr(batches.c, k): getattr(batches.c, k) + bindparam(f"d_{k}") for k in _COUNTERS})
)


def _counter_deltas(inserted: Iterable[FinishedRequest]) -> dict[str, dict[str, int]]:
    """Per batch, what the inserted results add to its counters (every counter, zeros included,
    so all rows of the executemany have the same parameters)."""
    deltas: dict[str, dict[str, int]] = {}
    for f in inserted:
        d = deltas.setdefault(f.batch_id, dict.fromkeys(_COUNTERS, 0))
        d["completed" if f.ok else "failed"] += 1
        d["input_tokens"] += f.input_tokens
        d["cached_tokens"] += f.cached_tokens
        d["output_tokens"] += f.output_tokens
        d["reasoning_tokens"] += f.reasoning_tokens
    return deltas
