"""A key's `rpm` bucket in PostgreSQL, shared by every API server: the refill and Retry-After math,
and concurrent takes that never hand out more tokens than the bucket holds."""

from __future__ import annotations

import asyncio

from batchgate.store.store import Store


async def test_a_full_bucket_gives_rpm_tokens_then_says_when_the_next_is_due(pg_store: Store) -> None:
    assert [await pg_store.take_key_token("key_a", 2) for _ in range(2)] == [0.0, 0.0]
    wait = await pg_store.take_key_token("key_a", 2)
    assert 29.0 < wait <= 30.0  # 2 a minute: a whole token every 30 s
    assert await pg_store.take_key_token("key_b", 2) == 0.0  # another key, another bucket


async def test_concurrent_takes_never_exceed_the_bucket(pg_store: Store) -> None:
    waits = await asyncio.gather(*(pg_store.take_key_token("key_c", 10) for _ in range(25)))
    assert sum(1 for wait in waits if wait == 0.0) == 10
    assert all(0 < wait <= 6.0 for wait in waits if wait)
