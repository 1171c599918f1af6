"""Fixtures of the end-to-end suites (the session-wide ones are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import openai
import pytest

from tests.e2e.helpers import SERVER_FIXTURES, MakeClient
from tests.harness import FakeUpstreamProcess, ServerProcess, openai_client


@pytest.fixture(autouse=True)
def _log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """When a test fails, print the log tail of every module-scoped server (``module_server``) it used."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    for name in request.fixturenames:
        if name in SERVER_FIXTURES:
            srv = request.getfixturevalue(name)
            if isinstance(srv, ServerProcess):
                print(f"\n----- {name} {srv!r} log tail -----\n{srv.log_tail(100)}")


@pytest.fixture
def client(server: ServerProcess, upstream: FakeUpstreamProcess) -> Iterator[openai.OpenAI]:
    """The SDK on the module's ``server``, with the fake upstream's stats and controls reset for the test."""
    with openai_client(server) as c:
        yield c


@pytest.fixture
def make_client(make_server: Callable[..., ServerProcess]) -> Iterator[MakeClient]:
    """Factory: ``make_client(config, **client_kwargs)`` → the SDK on a fresh ``make_server(config)``.

    The clients are closed at teardown, before their servers stop (and show their logs if the test failed).
    """
    clients: list[openai.OpenAI] = []

    def _make(config: Mapping[str, Any] | None, **client_kwargs: Any) -> openai.OpenAI:
        clients.append(openai_client(make_server(config), **client_kwargs))
        return clients[-1]

    yield _make
    for c in clients:
        c.close()
