"""A key's `rpm` bucket in PostgreSQL, shared by every API server: the refill and Retry-After math,
and concurrent takes that never hand out more tokens than the bucket holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from batchgate.store.database import create_engine
from batchgate.store.migrate import upgrade_to_head
from batchgate.store.queries import Store
from tests.postgres import PostgresCluster


@pytest.fixture
async def store(postgres: PostgresCluster) -> AsyncIterator[Store]:
    database = create_engine(postgres.new_database())
    await upgrade_to_head(database)
    store = Store(database)
    yield store
    await store.close()


async def test_a_full_bucket_gives_rpm_tokens_then_says_when_the_next_is_due(store: Store) -> None:
    assert [await store.take_key_token("key_a", 2) for _ in range(2)] == [0.0, 0.0]
    wait = await store.take_key_token("key_a", 2)
    assert 29.0 < wait <= 30.0  # 2 a minute: a whole token every 30 s
    assert await store.take_key_token("key_b", 2) == 0.0  # another key, another bucket


async def test_concurrent_takes_never_exceed_the_bucket(store: Store) -> None:
    waits = await asyncio.gather(*(store.take_key_token("key_c", 10) for _ in range(25)))
    assert sum(1 for wait in waits if wait == 0.0) == 10
    assert all(0 < wait <= 6.0 for wait in waits if wait)
