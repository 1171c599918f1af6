"""What every query mixin of the Store shares: the engine it runs on, and small statement helpers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import and_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine


class StoreBase:
    """The attributes `Store.__init__` sets that the query mixins use."""

    engine: AsyncEngine
    dialect: str  # the engine's dialect name: "postgresql" or "sqlite"


def insert_ignore(dialect: str, table: Any) -> Any:
    if dialect == "postgresql":
        return pg_insert(table).on_conflict_do_nothing()
    return sqlite_insert(table).on_conflict_do_nothing()


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def for_team(query: Any, table: Any, team_id: str | None) -> Any:
    """Scope a query to one team; None means the admin, who sees everything."""
    return query if team_id is None else query.where(and_(table.c.team_id == team_id))
