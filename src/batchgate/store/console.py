"""The web console's reads (console/api.py)."""

from __future__ import annotations

from sqlalchemy import and_, func, select

from batchgate.store.base import StoreBase, for_team
from batchgate.store.records import Row
from batchgate.store.tables import batches, requests, results


class ConsoleQueries(StoreBase):
    async def console_batch_page(
        self,
        *,
        team_id: str | None,
        after: str | None,
        limit: int,
        status: str | None = None,
        model: str | None = None,
        metadata_contains: str | None = None,
    ) -> list[Row]:
        """Batches newest first, filtered, after the id `after`: one walk down the id (or team, id) index
        that stops at `limit` matches, so a page costs the rows walked to fill it (a rare filter walks
        the team's whole history; measured in README). `metadata_contains` is a substring of the
        metadata JSON, matched case-sensitively (LIKE is not, on SQLite)."""
        query = for_team(select(batches), batches, team_id)
        if after:
            query = query.where(batches.c.id < after)
        if status:  # as an expression, not the bare column: walk the id order, never sort a status's rows
            query = query.where(func.coalesce(batches.c.status, "") == status)
        if model:
            query = query.where(batches.c.model == model)
        if metadata_contains:
            find = func.strpos if self.dialect == "postgresql" else func.instr
            query = query.where(find(batches.c.metadata, metadata_contains) > 0)
        query = query.order_by(batches.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).mappings())

    async def console_request_page(
        self, batch_id: str, *, after_line: int, limit: int, state: str | None = None
    ) -> list[Row]:
        """A batch's requests in line order with their attempts and, once finished, their result's outcome."""
        query = (
            select(
                requests.c.line_no,
                requests.c.custom_id,
                requests.c.state,
                requests.c.attempts,
                requests.c.next_attempt_at,
                results.c.ok,
                results.c.status_code,
                results.c.error_code,
                results.c.finished_at,
            )
            .join(
                results,
                and_(results.c.batch_id == requests.c.batch_id, results.c.line_no == requests.c.line_no),
                isouter=True,
            )
            .where(requests.c.batch_id == batch_id, requests.c.line_no > after_line)
        )
        if state:
            query = query.where(requests.c.state == state)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query.order_by(requests.c.line_no).limit(limit))).mappings())

    async def console_result(
        self, batch_id: str, *, line_no: int | None = None, custom_id: str | None = None
    ) -> Row | None:
        """One request's stored result, by line number or custom_id (None: no such request, or not finished)."""
        if custom_id is not None:  # through requests' unique (batch_id, custom_id) index
            line = select(requests.c.line_no).where(requests.c.batch_id == batch_id, requests.c.custom_id == custom_id)
            query = select(results).where(results.c.batch_id == batch_id, results.c.line_no == line.scalar_subquery())
        else:
            query = select(results).where(results.c.batch_id == batch_id, results.c.line_no == line_no)
        async with self.engine.connect() as conn:
            return (await conn.execute(query.limit(1))).mappings().first()
