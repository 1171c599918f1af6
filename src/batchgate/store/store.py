"""Every query batchgate runs, named, in this package: the only code that talks to the database.

`Store` is the front every caller holds; its queries live by table group in the mixins it is made of
(batches.py, queue.py, files.py, tenancy.py, cluster.py, console.py), their types in records.py."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from batchgate.store.base import insert_ignore
from batchgate.store.batches import BatchQueries
from batchgate.store.cluster import ClusterQueries
from batchgate.store.console import ConsoleQueries
from batchgate.store.files import FileQueries
from batchgate.store.outage import OutageLog
from batchgate.store.queue import QueueQueries
from batchgate.store.tables import results
from batchgate.store.tenancy import TenancyQueries


class Store(BatchQueries, QueueQueries, FileQueries, TenancyQueries, ClusterQueries, ConsoleQueries):
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.outage = OutageLog()  # every loop of this process reports database trouble here, once
        self._insert_results = insert_ignore(self.dialect, results).returning(results.c.batch_id, results.c.line_no)

    async def close(self) -> None:
        await self.engine.dispose()

    async def reset_connections(self) -> None:
        """Drop pooled connections so the next query opens a fresh one (after repeated failures)."""
        await self.engine.dispose()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
