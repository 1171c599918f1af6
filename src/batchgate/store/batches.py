"""Batch rows: insert, read, list, the conditional updates behind every status change, requests
appended to an open batch, and the team quotas checked in the same transactions."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select, text, update

from batchgate.domain.status import ACTIVE, BatchStatus
from batchgate.store.base import StoreBase, chunks, for_team
from batchgate.store.records import (
    BatchClosed,
    BatchFull,
    DuplicateRequestIds,
    MismatchedModel,
    QueueFull,
    Quota,
    Row,
    TooManyOpenBatches,
)
from batchgate.store.tables import batches, files, requests


class BatchQueries(StoreBase):
    # ---------------------------------------------------------------- batches
    async def insert_batch(self, row: dict[str, Any], quota: Quota | None = None) -> None:
        async with self.engine.begin() as conn:
            if quota is not None:
                await self._check_quota(conn, quota)
            await conn.execute(insert(batches).values(**row))

    async def get_batch(self, batch_id: str, team_id: str | None = None) -> Row | None:
        query = for_team(select(batches).where(batches.c.id == batch_id), batches, team_id)
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).mappings().first()

    async def list_batches(self, *, after: str | None, limit: int, team_id: str | None = None) -> list[Row]:
        query = for_team(select(batches), batches, team_id)
        if after:
            query = query.where(batches.c.id < after)
        query = query.order_by(batches.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).mappings())

    async def batches_with_status(self, statuses: Sequence[str]) -> list[Row]:
        query = select(batches).where(batches.c.status.in_(statuses)).order_by(batches.c.expires_at, batches.c.id)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).mappings())

    async def input_files_in_use(self) -> set[str]:
        query = select(batches.c.input_file_id).where(batches.c.status.in_(ACTIVE)).distinct()
        async with self.engine.connect() as conn:
            return set((await conn.execute(query)).scalars())

    async def transition(self, batch_id: str, from_statuses: Sequence[str], to_status: str, **values: Any) -> bool:
        """Move a batch between statuses atomically; False if it was no longer in `from_statuses`.
        Called only by engine/transitions.py, which names every change."""
        statement = (
            update(batches)
            .where(batches.c.id == batch_id, batches.c.status.in_(from_statuses))
            .values(status=to_status, **values)
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(statement)).rowcount == 1

    async def finish_batch(
        self,
        batch_id: str,
        from_statuses: Sequence[str],
        to_status: str,
        new_files: list[dict[str, Any]],
        **values: Any,
    ) -> bool:
        """Record output/error files and the final status in one transaction, exactly once."""
        async with self.engine.begin() as conn:
            moved = await conn.execute(
                update(batches)
                .where(batches.c.id == batch_id, batches.c.status.in_(from_statuses))
                .values(status=to_status, **values)
            )
            if moved.rowcount != 1:
                await conn.rollback()
                return False
            for row in new_files:
                await conn.execute(insert(files).values(**row))
        return True

    async def append_requests(
        self, batch_id: str, rows: list[dict[str, Any]], model: str, max_total: int, quota: Quota | None = None
    ) -> int:
        """Add requests to an open batch, all or nothing; returns the new total.

        Line numbers continue from the batch's total, taken under the batch row's lock, so
        concurrent add-calls never collide.
        """
        lock = self.dialect == "postgresql"
        async with self.engine.begin() as conn:
            if quota is not None:  # the team's lock first, then the batch's: the order every writer takes
                await self._check_quota(conn, quota)
            query = select(
                batches.c.status, batches.c.sealed, batches.c.total, batches.c.model, batches.c.expires_at
            ).where(batches.c.id == batch_id)
            batch = (await conn.execute(query.with_for_update() if lock else query)).first()
            running = batch is not None and batch.status == BatchStatus.IN_PROGRESS
            if batch is None or batch.sealed or not running or batch.expires_at <= time.time():
                status = BatchStatus.EXPIRED if running else None
                raise BatchClosed(status or (batch.status if batch else "missing"), bool(batch and batch.sealed))
            if batch.model is not None and batch.model != model:
                raise MismatchedModel(batch.model)
            if batch.total + len(rows) > max_total:
                raise BatchFull(batch.total)
            ids = [r["custom_id"] for r in rows]
            taken: list[str] = []
            for chunk in chunks(ids, 500):
                taken += (
                    (
                        await conn.execute(
                            select(requests.c.custom_id).where(
                                requests.c.batch_id == batch_id, requests.c.custom_id.in_(chunk)
                            )
                        )
                    )
                    .scalars()
                    .all()
                )
            if taken:
                raise DuplicateRequestIds(taken)
            numbered = [{**row, "batch_id": batch_id, "line_no": batch.total + i + 1} for i, row in enumerate(rows)]
            await conn.execute(insert(requests), numbered)
            total = batch.total + len(rows)
            await conn.execute(update(batches).where(batches.c.id == batch_id).values(total=total, model=model))
        return total

    # ---------------------------------------------------------------- quotas
    async def queued_requests(self, team_id: str) -> int:
        async with self.engine.connect() as conn:
            return await _queued_requests(conn, team_id)

    async def _check_quota(self, conn: Any, quota: Quota) -> None:
        """Under a per-team lock held to the end of the caller's transaction: refuse what would pass
        the team's caps. SQLite has one connection for the process, so its transactions are serial."""
        if self.dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _team_lock_key(quota.team_id)})
        if quota.max_queued_requests is not None and quota.team_id is not None:
            queued = await _queued_requests(conn, quota.team_id)
            if queued + quota.adding > quota.max_queued_requests:
                raise QueueFull(queued, quota.max_queued_requests)
        if quota.max_open_batches is not None:
            owner = batches.c.team_id.is_(None) if quota.team_id is None else batches.c.team_id == quota.team_id
            open_batches = (
                await conn.execute(
                    select(func.count()).where(
                        owner, batches.c.status == BatchStatus.IN_PROGRESS, batches.c.sealed.is_(False)
                    )
                )
            ).scalar_one()
            if open_batches >= quota.max_open_batches:
                raise TooManyOpenBatches(open_batches, quota.max_open_batches)


async def _queued_requests(conn: Any, team_id: str) -> int:
    """Requests of a team's unfinished batches that have no result yet (plus files still validating)."""
    query = select(func.coalesce(func.sum(batches.c.total - batches.c.completed - batches.c.failed), 0)).where(
        batches.c.team_id == team_id, batches.c.status.in_(ACTIVE)
    )
    validating = (
        select(func.coalesce(func.sum(files.c.lines), 0))
        .select_from(batches.join(files, files.c.id == batches.c.input_file_id))
        .where(batches.c.team_id == team_id, batches.c.status == BatchStatus.VALIDATING)
    )
    return int((await conn.execute(query)).scalar_one()) + int((await conn.execute(validating)).scalar_one())


def _team_lock_key(team_id: str | None) -> int:
    """A stable 63-bit advisory lock key per team ("" for the admin)."""
    digest = hashlib.blake2b(f"team-quota:{team_id or ''}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1
