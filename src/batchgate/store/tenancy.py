"""Teams, API keys, the keys' shared rate buckets (scale-out), and usage per team, key and model."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, func, insert, select, text, update

from batchgate.store.base import StoreBase
from batchgate.store.records import Row
from batchgate.store.tables import api_keys, batches, teams


class TenancyQueries(StoreBase):
    # ---------------------------------------------------------------- teams and keys
    async def insert_team(self, row: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(teams).values(**row))

    async def team_by_name(self, name: str) -> Row | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(teams).where(teams.c.name == name))).mappings().first()

    async def team_by_id(self, team_id: str) -> Row | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(teams).where(teams.c.id == team_id))).mappings().first()

    async def list_teams(self) -> list[Row]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(select(teams).order_by(teams.c.name))).mappings())

    async def insert_key(self, row: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(api_keys).values(**row))

    async def key_by_hash(self, key_hash: str) -> Row | None:
        """A live (not revoked) key and its team's name; looked up on every request, so revocation is instant."""
        query = (
            select(api_keys, teams.c.name.label("team_name"))
            .join(teams, teams.c.id == api_keys.c.team_id)
            .where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
        )
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).mappings().first()

    async def list_keys(self, team_id: str | None = None) -> list[Row]:
        query = select(api_keys, teams.c.name.label("team_name")).join(teams, teams.c.id == api_keys.c.team_id)
        if team_id is not None:
            query = query.where(api_keys.c.team_id == team_id)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query.order_by(api_keys.c.id))).mappings())

    async def revoke_key(self, key_id: str, now: int) -> bool:
        statement = (
            update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=now)
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(statement)).rowcount == 1

    async def get_key(self, key_id: str) -> Row | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).mappings().first()

    async def usage(
        self, *, team_id: str | None, key_id: str | None, since: int | None, batch_id: str | None = None
    ) -> list[Row]:
        """Requests and tokens per team, key and model, from the batches' live counters."""
        query = (
            select(
                batches.c.team_id,
                teams.c.name.label("team"),
                batches.c.create_api_key_id.label("key_id"),
                batches.c.model,
                func.count().label("batches"),
                # PostgreSQL sums BIGINTs as NUMERIC (Decimal); cast back so prices multiply as numbers
                func.sum(batches.c.completed).cast(BigInteger).label("completed"),
                func.sum(batches.c.failed).cast(BigInteger).label("failed"),
                func.sum(batches.c.input_tokens).cast(BigInteger).label("input_tokens"),
                func.sum(batches.c.output_tokens).cast(BigInteger).label("output_tokens"),
            )
            .select_from(batches.outerjoin(teams, teams.c.id == batches.c.team_id))
            .group_by(batches.c.team_id, teams.c.name, batches.c.create_api_key_id, batches.c.model)
            .order_by(teams.c.name, batches.c.create_api_key_id, batches.c.model)
        )
        if team_id is not None:
            query = query.where(batches.c.team_id == team_id)
        if key_id is not None:
            query = query.where(batches.c.create_api_key_id == key_id)
        if since is not None:
            query = query.where(batches.c.created_at >= since)
        if batch_id is not None:
            query = query.where(batches.c.id == batch_id)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).mappings())

    async def take_key_token(self, key_id: str, rpm: int) -> float:
        """Scale-out: one request from a key's shared `rpm` bucket (PostgreSQL). 0 if it may go ahead,
        else the seconds until it may. One atomic upsert; the database's clock, so servers' clocks
        need not agree."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(_TAKE_KEY_TOKEN, {"key_id": key_id, "rpm": float(rpm), "rate": rpm / 60.0})).one()
        granted, tokens = row
        return 0.0 if granted else (1 - tokens) / (rpm / 60.0)


# The bucket refilled to `now` (capped at rpm), then a token taken if one is whole. In an UPDATE every
# SET expression sees the row as it was, so `refilled` is written out where it is needed.
# `greatest`: a take that read the clock first may commit second; time never runs backwards here.
_REFILLED = "least(CAST(:rpm AS float8), b.tokens + greatest(excluded.updated - b.updated, 0) * CAST(:rate AS float8))"
_TAKE_KEY_TOKEN = text(f"""
    INSERT INTO key_rate_buckets AS b (key_id, tokens, updated, granted)
    VALUES (:key_id, CAST(:rpm AS float8) - 1, extract(epoch from clock_timestamp())::float8, true)
    ON CONFLICT (key_id) DO UPDATE SET
        tokens = CASE WHEN {_REFILLED} >= 1 THEN {_REFILLED} - 1 ELSE {_REFILLED} END,
        granted = {_REFILLED} >= 1,
        updated = greatest(b.updated, excluded.updated)
    RETURNING granted, tokens
""")
