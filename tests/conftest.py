"""Shared fixtures: one fake upstream per session, real batchgate servers per test."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from batchgate.store.database import create_engine
from batchgate.store.migrate import upgrade_to_head
from batchgate.store.store import Store
from tests.harness import (
    FakeUpstreamProcess,
    ServerProcess,
    base_config,
    upstream_model_config,
)
from tests.postgres import PostgresCluster
from tests.s3 import MotoS3Process

__all__ = ["base_config", "upstream_model_config"]  # re-exported for convenience

MakeServer = Callable[..., ServerProcess]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The browser tests last: `make test` installs chromium in the background meanwhile.
    items.sort(key=lambda item: "browser" in item.path.parts)  # stable: the rest keep their order


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Remember each phase's outcome so fixtures can print server logs only for failed tests.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstreamProcess]:
    """The fake OpenAI-compatible upstream, one process for the whole session."""
    upstream = FakeUpstreamProcess(latency_ms=0).start()
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[MotoS3Process]:
    """moto's S3 server on loopback with an empty test bucket, for the whole session."""
    server = MotoS3Process().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """The local PostgreSQL cluster, started for the session (and stopped if we started it)."""
    try:
        cluster = PostgresCluster().start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("CI"):
            raise  # CI installs PostgreSQL (make test → scripts/ensure-postgres.sh): a skip would hide a gap
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    """A Store on a fresh SQLite database in tmp_path, migrated to head."""
    database = create_engine(f"sqlite:///{tmp_path / 'batchgate.db'}")
    await upgrade_to_head(database)
    store = Store(database)
    yield store
    await store.close()


@pytest.fixture
async def pg_store(postgres: PostgresCluster) -> AsyncIterator[Store]:
    """A Store on a fresh PostgreSQL database, migrated to head."""
    database = create_engine(postgres.new_database())
    await upgrade_to_head(database)
    store = Store(database)
    yield store
    await store.close()


@pytest.fixture
def upstream(fake_upstream: FakeUpstreamProcess) -> FakeUpstreamProcess:
    """The session's fake upstream with clean stats, attempt counters and controls."""
    fake_upstream.reset()
    return fake_upstream


@pytest.fixture
def make_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeServer]:
    """Factory: ``make_server(config, env=None, workdir=None, **kw)`` → a ready ServerProcess.

    Each server gets its own directory under ``tmp_path`` unless ``workdir`` is given (pass
    another server's ``workdir`` to share its storage). All are stopped at teardown; when the
    test failed, their log tails are printed so the failure report shows them.
    """
    servers: list[ServerProcess] = []

    def _make(
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | Path | None = None,
        ready_timeout: float = 30.0,
        **kwargs: Any,
    ) -> ServerProcess:
        if workdir is None:
            workdir = tmp_path / f"server{len(servers)}"
        server = ServerProcess(config, env=env, workdir=workdir, **kwargs)
        servers.append(server)
        return server.start().wait_ready(ready_timeout)

    yield _make

    call_report = getattr(request.node, "rep_call", None)
    failed = call_report is not None and call_report.failed
    for server in servers:
        server.stop()
        if failed:
            print(f"\n----- {server!r} log tail -----\n{server.log_tail(200)}")
