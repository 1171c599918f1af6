"""Opening everything a gateway process needs, in one place: database, blob store, engine."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from batchgate.blobs import BlobStore, LocalBlobStore
from batchgate.config import ConfigError, S3Settings, Settings
from batchgate.domain.keys import RateLimiter
from batchgate.engine.core import Engine
from batchgate.store.database import create_engine, is_sqlite
from batchgate.store.migrate import upgrade_to_head
from batchgate.store.store import Store

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    settings: Settings
    store: Store
    blobs: BlobStore
    engine: Engine | None
    token_secret: bytes = b""  # seals pagination tokens (api/sealed_tokens.py); shared through the database
    rate_limiter: RateLimiter = field(default_factory=RateLimiter)
    denied_until: dict[str, float] = field(default_factory=dict)  # key id → monotonic time (shared buckets)

    def notify(self, urgent: bool = True) -> None:
        if self.engine is not None:
            self.engine.notify(urgent)

    async def take_key_token(self, key_id: str, rpm: int) -> float:
        """A key's `rpm` limit: 0 if this request may go ahead, else the seconds until one may.
        Held across every API server on a shared database; in memory on one node (SQLite)."""
        if self.store.dialect != "postgresql":
            return self.rate_limiter.try_acquire(key_id, rpm)
        now = time.monotonic()
        until = self.denied_until.get(key_id, 0.0)
        if now < until:  # no token can appear before then: a client retrying in a loop costs no writes
            return until - now
        wait = await self.store.take_key_token(key_id, rpm)
        if wait > 0:
            self.denied_until[key_id] = now + wait
        return wait


def open_blobs(url: str, s3: S3Settings | None = None) -> BlobStore:
    if url.startswith("s3://"):
        from batchgate.blobs.s3 import S3BlobStore

        try:
            return S3BlobStore(url, s3 or S3Settings())
        except Exception as exc:  # obstore reports bad URLs and settings as plain exceptions
            raise ConfigError(f"storage.files: cannot use {url!r}: {exc}") from exc
    if "://" in url and not url.startswith("file://"):
        raise ConfigError(f"storage.files: unsupported URL {url!r}; use a directory path")
    store = LocalBlobStore(url.removeprefix("file://"))
    store.remove_stale_parts()
    return store


@asynccontextmanager
async def open_gateway(
    settings: Settings, *, run_engine: bool = True, on_batch_done: Callable[[str], None] | None = None
) -> AsyncIterator[Gateway]:
    database = create_engine(settings.storage.database)
    store = Store(database)
    try:
        await upgrade_to_head(database)
        blobs = open_blobs(settings.storage.files, settings.storage.s3)
        engine = (
            Engine(
                settings, store, blobs, single_node=is_sqlite(settings.storage.database), on_batch_done=on_batch_done
            )
            if run_engine
            else None
        )
        gateway = Gateway(settings, store, blobs, engine, token_secret=await store.gateway_secret("pagination"))
        if engine is not None:
            await engine.start()
        try:
            yield gateway
        finally:
            if engine is not None:
                await _stop_within(engine, settings.engine.stop_timeout_s)
    finally:
        await store.close()


async def _stop_within(engine: Engine, timeout_s: float) -> None:
    """Stop the engine, but never hang the exit on it (results that cannot be stored while the database
    is away would hold it forever): what was not stored runs again once its lease expires."""
    try:
        async with asyncio.timeout(timeout_s):
            await engine.stop()
    except TimeoutError:
        log.error(
            "the engine did not stop within %gs (engine.stop_timeout_s); exiting anyway: requests it "
            "still held run again when their leases expire",
            timeout_s,
        )
