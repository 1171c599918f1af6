"""Scale-out on PostgreSQL + S3: API-only servers and engine-only workers sharing one database and
one bucket, with a deployment's max_concurrency held across all workers together."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import ENGINE, assert_echoed, assert_error, result_files, submit, wait_batch, wait_terminal
from tests.harness import (
    FakeUpstreamProcess,
    ServerProcess,
    WorkerProcess,
    chat_line,
    free_port,
    openai_client,
    poll_until,
    upstream_model_config,
)
from tests.postgres import PostgresCluster
from tests.s3 import BUCKET, MotoS3Process

ADMIN = "scale-admin"
MAX_CONCURRENCY = 30


def cluster_config(
    postgres: PostgresCluster, s3: MotoS3Process, upstream: FakeUpstreamProcess, **deployment: Any
) -> dict[str, Any]:
    return {
        "storage": {"database": postgres.new_database(), "files": f"s3://{BUCKET}/{secrets.token_hex(4)}"},
        "models": [upstream_model_config(upstream.url, **deployment)],
        # Short leases so a killed worker's rows and slots come back within the test's time.
        "engine": {**ENGINE, "lease_s": 3.0, "capacity_interval_s": 0.2, "capacity_lease_s": 2.0},
    }


@pytest.fixture
def processes(request: pytest.FixtureRequest) -> Iterator[list[ServerProcess]]:
    """Every process a test starts; all stopped at the end, their logs shown when it failed."""
    started: list[ServerProcess] = []
    yield started
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for process in started:
        process.stop()
        if failed:
            print(f"\n----- {process!r} log tail -----\n{process.log_tail(80)}")


def succeeded_calls(metrics_port: int) -> float:
    """A worker's `batchgate_requests_finished_total{outcome="succeeded"}`, from its /metrics."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    found = re.search(r'^batchgate_requests_finished_total\{outcome="succeeded"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_two_api_servers_and_three_workers_hold_the_global_limit_through_a_kill_and_a_restart(
    postgres: PostgresCluster,
    s3: MotoS3Process,
    upstream: FakeUpstreamProcess,
    tmp_path: Path,
    processes: list[ServerProcess],
) -> None:
    config = cluster_config(postgres, s3, upstream, max_concurrency=MAX_CONCURRENCY)
    env = {**s3.env, "BATCHGATE_ADMIN_KEY": ADMIN}
    apis = [ServerProcess(config, env, workdir=tmp_path / f"api{i}", extra_args=["--no-engine"]) for i in range(2)]
    metrics_ports = [free_port() for _ in range(3)]
    workers = [
        WorkerProcess(config, env, workdir=tmp_path / f"worker{i}", extra_args=["--metrics-port", str(port)])
        for i, port in enumerate(metrics_ports)
    ]
    processes.extend(apis + workers)
    for process in apis + workers:
        process.start()
    for process in apis + workers:
        process.wait_ready(60)

    rows = [chat_line(f"r{i}", f"row {i} @latency:80") for i in range(2000)]
    with openai_client(apis[0], api_key=ADMIN) as first, openai_client(apis[1], api_key=ADMIN) as second:
        batch = submit(first, rows)
        assert second.batches.retrieve(batch.id).id == batch.id  # one database behind both servers
        wait_batch(
            second,
            batch.id,
            lambda b: b.request_counts.completed >= 300,
            timeout=60,
            what="the workers never got going",
        )
        # The slots are shared: the worker that leased all 30 first drains to its part and the
        # others grow into it (it used to refill them forever while the others waited: 0, 0, 371).
        poll_until(
            lambda: all(succeeded_calls(port) >= 50 for port in metrics_ports),
            30,
            message=lambda: f"not every worker ran calls: {[succeeded_calls(p) for p in metrics_ports]}",
        )
        workers[0].kill()  # SIGKILL mid-run: its rows and slots come back when their leases expire
        wait_batch(
            second,
            batch.id,
            lambda b: b.request_counts.completed >= 900,
            timeout=60,
            what="the batch stalled after a worker was killed",
        )
        assert workers[1].stop() == 0  # SIGTERM: stops claiming, hands its rows back, exits cleanly
        workers[1].start().wait_ready(60)

        done = wait_terminal(first, batch.id, timeout=120)
        assert done.status == "completed"
        assert done.request_counts.model_dump() == {"total": 2000, "completed": 2000, "failed": 0}
        out, err = result_files(second, done, rows)  # every custom_id exactly once
        assert err == {}
        for row in rows:
            assert_echoed(out[row["custom_id"]], row)

    stats = upstream.stats()
    assert 0 < stats["max_in_flight"] <= MAX_CONCURRENCY, stats
    assert stats["requests_total"] >= 2000 and stats["bodies_seen"] == 2000


def test_an_api_only_server_leaves_batches_to_the_workers(
    postgres: PostgresCluster,
    s3: MotoS3Process,
    upstream: FakeUpstreamProcess,
    tmp_path: Path,
    processes: list[ServerProcess],
) -> None:
    config = cluster_config(postgres, s3, upstream, max_concurrency=4)
    api = ServerProcess(config, s3.env, workdir=tmp_path / "api", extra_args=["--no-engine"])
    processes.append(api)
    api.start().wait_ready(60)
    rows = [chat_line(f"q{i}", f"question {i}") for i in range(20)]
    with openai_client(api) as client:
        batch = submit(client, rows)
        # Nothing validates it while no engine runs: it is still waiting after a full status round trip.
        assert client.batches.retrieve(batch.id).status == "validating"
        metrics_port = free_port()
        worker = WorkerProcess(
            config, s3.env, workdir=tmp_path / "worker", extra_args=["--metrics-port", str(metrics_port)]
        )
        processes.append(worker)
        worker.start().wait_ready(60)
        done = wait_terminal(client, batch.id, timeout=60)
        assert done.request_counts.model_dump() == {"total": 20, "completed": 20, "failed": 0}
        out, _ = result_files(client, done, rows)
        assert_echoed(out["q7"], rows[7])
        # The API server runs no engine, yet its console shows the worker's calls (published to the database).
        headers = {"Authorization": f"Bearer {client.api_key}"}

        def console_view() -> dict[str, Any] | None:
            page = httpx.get(f"{api.url}/ui/api/deployments", headers=headers, timeout=10).json()
            (deployment,) = page["data"]
            return page if sum(deployment["series"]["requests"]) == 20 else None

        page = poll_until(console_view, 20, message="the worker's 20 calls never reached the API server's console")
        assert page["engine"] is False and page["shared"] is True
        assert max(page["data"][0]["series"]["peak_in_flight"]) <= 4
    # The worker's own metrics: requests it finished, and its share of the deployment's slots.
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert 'batchgate_requests_finished_total{outcome="succeeded"} 20.0' in metrics
    assert 'batchgate_capacity_granted_slots{deployment="fake-model/0"}' in metrics


def test_three_workers_share_one_rpm_budget(
    postgres: PostgresCluster,
    s3: MotoS3Process,
    upstream: FakeUpstreamProcess,
    tmp_path: Path,
    processes: list[ServerProcess],
) -> None:
    """rpm 1200 configured and enforced by the upstream (60 calls in any 3 s): three workers pace
    themselves on their shares of the one budget, so the upstream never has to refuse a call."""
    upstream.control(rpm=1200, rpm_window_s=3.0)
    config = cluster_config(postgres, s3, upstream, max_concurrency=16, rpm=1200)
    api = ServerProcess(config, s3.env, workdir=tmp_path / "api", extra_args=["--no-engine"])
    workers = [WorkerProcess(config, s3.env, workdir=tmp_path / f"worker{i}") for i in range(3)]
    processes.extend([api, *workers])
    for process in (api, *workers):
        process.start()
    for process in (api, *workers):
        process.wait_ready(60)
    rows = [chat_line(f"p{i}", f"paced {i}") for i in range(150)]
    with openai_client(api) as client:
        done = wait_terminal(client, submit(client, rows).id, timeout=60)
        assert done.request_counts.model_dump() == {"total": 150, "completed": 150, "failed": 0}
        result_files(client, done, rows)
    stats = upstream.stats()
    assert stats["by_status"] == {"200": 150}, stats  # not one 429


def test_a_keys_rpm_holds_across_api_servers(
    postgres: PostgresCluster,
    s3: MotoS3Process,
    upstream: FakeUpstreamProcess,
    tmp_path: Path,
    processes: list[ServerProcess],
) -> None:
    """Two API servers behind a load balancer: a key's `rpm` counts its requests on both together
    (it used to be counted per process: N servers let N × rpm through)."""
    config = cluster_config(postgres, s3, upstream)
    env = {**s3.env, "BATCHGATE_ADMIN_KEY": ADMIN}
    apis = [ServerProcess(config, env, workdir=tmp_path / f"api{i}", extra_args=["--no-engine"]) for i in range(2)]
    processes.extend(apis)
    for api in apis:
        api.start()
    for api in apis:
        api.wait_ready(60)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert httpx.post(f"{apis[0].url}/admin/teams", json={"name": "metered"}, headers=admin).status_code == 200
    made = httpx.post(f"{apis[1].url}/admin/keys", json={"team": "metered", "rpm": 4}, headers=admin)
    assert made.status_code == 200, made.text
    key = {"Authorization": f"Bearer {made.json()['key']}"}

    # Alternating servers, as a round-robin balancer would: 4 a minute in all, not 4 on each.
    answers = [httpx.get(f"{apis[i % 2].url}/v1/batches", headers=key, timeout=10) for i in range(6)]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 429, 429]
    for refused in answers[4:]:
        assert_error(refused, 429, code="rate_limit_exceeded")
        assert int(refused.headers["retry-after"]) >= 1
    # The admin key is never metered, and another key of the team has its own bucket.
    other = httpx.post(f"{apis[0].url}/admin/keys", json={"team": "metered", "rpm": 4}, headers=admin).json()["key"]
    assert httpx.get(f"{apis[1].url}/v1/batches", headers={"Authorization": f"Bearer {other}"}).status_code == 200
    assert httpx.get(f"{apis[0].url}/v1/batches", headers=admin).status_code == 200
