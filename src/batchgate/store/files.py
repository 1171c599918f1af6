"""File rows, and the blobs rows point at (for the sweeps that delete the others)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, or_, select

from batchgate.domain.status import ACTIVE
from batchgate.store.base import StoreBase, for_team
from batchgate.store.records import Row
from batchgate.store.tables import batches, files, requests


class FileQueries(StoreBase):
    async def insert_file(self, row: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(files).values(**row))

    async def get_file(self, file_id: str, now: int, team_id: str | None = None) -> Row | None:
        query = select(files).where(files.c.id == file_id, _not_expired(now))
        query = for_team(query, files, team_id)
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).mappings().first()

    async def list_files(
        self, *, now: int, after: str | None, limit: int, order: str, purpose: str | None, team_id: str | None = None
    ) -> list[Row]:
        query = select(files).where(_not_expired(now))
        query = for_team(query, files, team_id)
        if purpose:
            query = query.where(files.c.purpose == purpose)
        if after:
            query = query.where(files.c.id < after if order == "desc" else files.c.id > after)
        query = query.order_by(files.c.id.desc() if order == "desc" else files.c.id.asc()).limit(limit)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).mappings())

    async def delete_file(self, file_id: str) -> bool:
        async with self.engine.begin() as conn:
            return (await conn.execute(delete(files).where(files.c.id == file_id))).rowcount > 0

    async def expired_file_ids(self, now: int, limit: int = 500) -> list[str]:
        """Expired files no unfinished batch still reads."""
        in_use = select(batches.c.input_file_id).where(
            batches.c.status.in_(ACTIVE), batches.c.input_file_id.is_not(None)
        )
        query = select(files.c.id).where(files.c.expires_at <= now, files.c.id.not_in(in_use)).limit(limit)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).scalars())

    async def referenced_blob_keys(self) -> set[str]:
        """Blobs something points at: file rows and the segments of requests added to open batches."""
        async with self.engine.connect() as conn:
            keys = set((await conn.execute(select(files.c.id))).scalars())
            keys |= set(
                (
                    await conn.execute(select(requests.c.blob_key).where(requests.c.blob_key.is_not(None)).distinct())
                ).scalars()
            )
        return keys

    async def segment_keys(self, batch_id: str) -> list[str]:
        """Blobs holding requests added to an open batch (not its input file)."""
        query = (
            select(requests.c.blob_key)
            .where(requests.c.batch_id == batch_id, requests.c.blob_key.is_not(None))
            .distinct()
        )
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).scalars())


def _not_expired(now: int) -> Any:
    return or_(files.c.expires_at.is_(None), files.c.expires_at > now)
