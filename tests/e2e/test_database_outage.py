"""The database goes away under a running gateway (PostgreSQL behind a TCP proxy the test cuts):
API calls answer 503 with Retry-After, liveness stays up, and everything works again once it is back."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.helpers import ENGINE, submit, wait_terminal
from tests.harness import (
    FakeUpstreamProcess,
    ServerProcess,
    chat_line,
    openai_client,
    poll_until,
    upstream_model_config,
)
from tests.postgres import PostgresCluster
from tests.tcp_proxy import TcpProxy

ADMIN = "outage-admin-key"


@pytest.fixture
def proxied_pg(postgres: PostgresCluster) -> Iterator[tuple[str, TcpProxy]]:
    url = postgres.new_database()
    parts = urlsplit(url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    try:
        yield url.replace(f"@{parts.netloc.split('@')[1]}", f"@127.0.0.1:{proxy.port}"), proxy
    finally:
        proxy.close()


def test_api_answers_503_with_retry_after_while_the_database_is_down(
    proxied_pg: tuple[str, TcpProxy], upstream: FakeUpstreamProcess, make_server
) -> None:
    url, proxy = proxied_pg
    server: ServerProcess = make_server(
        {"storage": {"database": url}, "engine": ENGINE, "models": [upstream_model_config(upstream.url)]},
        env={"BATCHGATE_ADMIN_KEY": ADMIN},
    )
    headers = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
        assert http.get("/v1/batches").status_code == 200
        proxy.cut()
        answers = [http.get(path) for path in ("/v1/batches", "/v1/files", "/v1/batches/batch_unknown")]
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "5"
            assert answer.json()["error"]["code"] == "database_unavailable"
            assert answer.json()["error"]["type"] == "server_error"
        assert http.get("/health").status_code == 200
        ready = http.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("error")
        proxy.restore()
        poll_until(
            lambda: http.get("/v1/batches").status_code == 200,
            timeout=30,
            message="the API did not recover after the database came back",
        )
    log = server.log_text()
    assert "database unreachable" in log
    assert "Traceback" not in log
    with openai_client(server, api_key=ADMIN) as client:
        rows = [chat_line(f"r{i}", f"after the outage {i}") for i in range(5)]
        batch = wait_terminal(client, submit(client, rows).id)
        assert batch.status == "completed" and batch.request_counts.completed == 5
