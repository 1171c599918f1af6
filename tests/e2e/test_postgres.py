"""The same gateway on PostgreSQL (Debian's cluster on loopback): the main flows of every dialect,
team isolation, and a kill -9 whose leases expire and are claimed again."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.helpers import ENGINE, assert_echoed, result_files, submit, wait_batch, wait_terminal
from tests.harness import (
    FakeUpstreamProcess,
    ServerProcess,
    chat_line,
    openai_client,
    poll_until,
    python_env,
    upstream_model_config,
)
from tests.postgres import PostgresCluster

ADMIN = "pg-admin"


def pg_config(postgres: PostgresCluster, upstream_url: str, **deployment: Any) -> dict[str, Any]:
    return {
        "storage": {"database": postgres.new_database()},
        "models": [upstream_model_config(upstream_url, **deployment)],
        "engine": {**ENGINE, "lease_s": 2.0},
    }


@pytest.fixture
def pg_server(postgres: PostgresCluster, upstream: FakeUpstreamProcess, make_server) -> ServerProcess:
    return make_server(pg_config(postgres, upstream.url, max_concurrency=4), env={"BATCHGATE_ADMIN_KEY": ADMIN})


def test_a_batch_runs_to_completion_with_exact_counts(pg_server: ServerProcess) -> None:
    rows = [chat_line(f"r{i}", f"hello {i}") for i in range(40)] + [
        chat_line("bad", "no @status:400:*"),
        chat_line("long-id", "@request_id_len:1000"),
    ]
    with openai_client(pg_server, api_key=ADMIN) as client:
        batch = wait_terminal(client, submit(client, rows).id)
        assert batch.status == "completed"
        assert batch.request_counts.model_dump() == {"total": 42, "completed": 41, "failed": 1}
        assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens > 0
        out, err = result_files(client, batch, rows)
        for row in rows[:-2]:
            assert_echoed(out[row["custom_id"]], row)
        assert err["bad"]["response"]["status_code"] == 400
        # a proxy's 1,000-char x-request-id is kept cut to the column's 256, not a failed insert
        long_id = out["long-id"]["response"]["request_id"]
        assert len(long_id) == 256 and long_id.startswith("req_") and long_id.endswith("x")
        page = client.batches.list(limit=1)
        assert [b.id for b in page.data] == [batch.id]


def test_cancel_and_expiry(pg_server: ServerProcess) -> None:
    slow = [chat_line(f"s{i}", f"slow {i} @latency:300") for i in range(30)]
    with openai_client(pg_server, api_key=ADMIN) as client:
        running = submit(client, slow)
        wait_batch(client, running.id, lambda b: b.request_counts.completed >= 1, what="never made progress")
        assert client.batches.cancel(running.id).status in ("cancelling", "cancelled")
        cancelled = wait_terminal(client, running.id)
        assert cancelled.status == "cancelled"
        out, err = result_files(client, cancelled, slow)
        assert len(out) >= 1 and {line["error"]["code"] for line in err.values()} == {"batch_cancelled"}

        expiring = submit(
            client, [chat_line(f"e{i}", f"slow {i} @latency:400") for i in range(30)], completion_window="2s"
        )
        expired = wait_terminal(client, expiring.id)
        assert expired.status == "expired" and expired.request_counts.failed > 0
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(expired.id)


def test_xai_results_page_while_requests_arrive(pg_server: ServerProcess) -> None:
    api = httpx.Client(base_url=f"{pg_server.url}/xai/v1", headers={"Authorization": f"Bearer {ADMIN}"})
    batch_id = api.post("/batches", json={"name": "pg"}).json()["batch_id"]
    seen: list[str] = []
    token: str | None = None
    for chunk in range(3):
        items = [
            {
                "batch_request_id": f"c{chunk}-{i}",
                "batch_request": {
                    "chat_get_completion": {
                        "model": "fake-model",
                        "messages": [{"role": "user", "content": f"x {chunk} {i} @latency:50"}],
                    }
                },
            }
            for i in range(10)
        ]
        assert api.post(f"/batches/{batch_id}/requests", json={"batch_requests": items}).json() == {}
        page = api.get(
            f"/batches/{batch_id}/results", params={"limit": 7, **({"pagination_token": token} if token else {})}
        ).json()
        seen += [r["batch_request_id"] for r in page["results"]]
        token = page["pagination_token"] or token

    def drained() -> bool:
        nonlocal token
        page = api.get(
            f"/batches/{batch_id}/results", params={"limit": 7, **({"pagination_token": token} if token else {})}
        ).json()
        seen.extend(r["batch_request_id"] for r in page["results"])
        token = page["pagination_token"] or token
        return page["pagination_token"] is None

    poll_until(drained, timeout=20, message="results never drained")
    assert sorted(seen) == sorted(f"c{c}-{i}" for c in range(3) for i in range(10))  # each exactly once
    state = api.get(f"/batches/{batch_id}").json()["state"]
    assert state == {"num_requests": 30, "num_pending": 0, "num_success": 30, "num_error": 0, "num_cancelled": 0}


def test_teams_are_isolated(pg_server: ServerProcess) -> None:
    admin = httpx.Client(base_url=f"{pg_server.url}/admin", headers={"Authorization": f"Bearer {ADMIN}"})
    keys = {}
    for team in ("red", "blue"):
        assert admin.post("/teams", json={"name": team}).status_code == 200
        keys[team] = admin.post("/keys", json={"team": team}).json()["key"]
    with openai_client(pg_server, api_key=keys["red"]) as red, openai_client(pg_server, api_key=keys["blue"]) as blue:
        batch = wait_terminal(red, submit(red, [chat_line("only", "red's")]).id)
        assert batch.status == "completed"
        for call in (
            lambda: blue.batches.retrieve(batch.id),
            lambda: blue.files.retrieve(batch.input_file_id),
            lambda: blue.files.content(batch.output_file_id),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        assert blue.batches.list().data == [] and [b.id for b in red.batches.list().data] == [batch.id]


def test_kill_9_mid_batch_leases_expire_and_the_batch_completes_exactly_once(
    postgres: PostgresCluster, upstream: FakeUpstreamProcess, make_server
) -> None:
    config = pg_config(postgres, upstream.url, max_concurrency=8)
    server = make_server(config)
    rows = [chat_line(f"k{i}", f"kill {i} @latency:50") for i in range(150)]
    with openai_client(server) as client:
        batch = submit(client, rows)
        wait_batch(client, batch.id, lambda b: b.request_counts.completed >= 30, what="never reached 30")
    server.kill()
    resumed = make_server(config, workdir=server.workdir, port=server.port)
    with openai_client(resumed) as client:
        done = wait_terminal(client, batch.id, timeout=60)
        assert done.status == "completed"
        assert done.request_counts.model_dump() == {"total": 150, "completed": 150, "failed": 0}
        out, _ = result_files(client, done, rows)
        for row in rows:
            assert_echoed(out[row["custom_id"]], row)


def test_a_server_and_a_worker_share_one_database_and_every_request_runs_once(
    postgres: PostgresCluster, upstream: FakeUpstreamProcess, make_server
) -> None:
    """Two engines on one PostgreSQL (and one files directory): the batch is validated by one of them,
    its requests are claimed by both (SKIP LOCKED), and every custom_id ends exactly once."""
    server = make_server(pg_config(postgres, upstream.url, max_concurrency=4))
    worker = subprocess.Popen(
        [sys.executable, "-m", "batchgate", "worker", "--config", "batchgate.yaml"],
        cwd=server.workdir,
        env=python_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        rows = [chat_line(f"w{i}", f"both {i} @latency:20") for i in range(3000)]
        with openai_client(server) as client:
            done = wait_terminal(client, submit(client, rows).id, timeout=90)
            assert done.status == "completed"
            assert done.request_counts.model_dump() == {"total": 3000, "completed": 3000, "failed": 0}
            out, _ = result_files(client, done, rows)
            assert len(out) == 3000
        assert worker.poll() is None  # the worker stayed up the whole time
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            assert worker.wait(15) == 0  # graceful: stops claiming, releases what it held
        finally:
            if worker.poll() is None:
                worker.kill()
