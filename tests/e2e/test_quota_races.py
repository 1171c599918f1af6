"""Team caps hold under concurrent calls: the check and the insert are one atomic step, on SQLite and
PostgreSQL (12 concurrent 100-line creates against a cap of 100 used to let 2–3 through)."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import ENGINE
from tests.harness import FakeUpstreamProcess, ServerProcess, chat_line, upstream_model_config
from tests.postgres import PostgresCluster

ADMIN = "quota-admin-key-0123456789"
CHAT = "/v1/chat/completions"
CONCURRENT = 12


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, upstream: FakeUpstreamProcess, make_server) -> ServerProcess:
    # One slot and slow answers: the queued requests stay queued while the test runs.
    config: dict[str, Any] = {
        "engine": ENGINE,
        "limits": {"max_open_batches_per_team": 3},
        "models": [upstream_model_config(upstream.url, max_concurrency=1)],
    }
    if request.param == "postgresql":
        postgres: PostgresCluster = request.getfixturevalue("postgres")
        config["storage"] = {"database": postgres.new_database()}
    return make_server(config, env={"BATCHGATE_ADMIN_KEY": ADMIN})


def team_key(server: ServerProcess, **team: Any) -> str:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        name = f"t{threading.get_ident()}{id(team)}"
        assert http.post("/admin/teams", json={"name": name, **team}).status_code == 200
        r = http.post("/admin/keys", json={"team": name})
        assert r.status_code == 200, r.text
        return str(r.json()["key"])


def at_once(calls: list[Callable[[], httpx.Response]]) -> list[int]:
    """Run the calls together (released by one barrier) and return their status codes."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], httpx.Response]) -> int:
        barrier.wait()
        return call().status_code

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def slow_lines(prefix: str, n: int) -> bytes:
    return b"".join(
        json.dumps(chat_line(f"{prefix}{i}", f"{prefix} {i} @latency:20000")).encode() + b"\n" for i in range(n)
    )


def test_concurrent_creates_never_pass_the_queue_cap(server: ServerProcess) -> None:
    key = team_key(server, max_queued_requests=100)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        file_ids = []
        for n in range(CONCURRENT):
            r = http.post(
                "/v1/files",
                data={"purpose": "batch"},
                files={"file": (f"f{n}.jsonl", io.BytesIO(slow_lines(f"f{n}-", 100)))},
            )
            assert r.status_code == 200, r.text
            file_ids.append(r.json()["id"])
        codes = at_once(
            [
                lambda f=f: http.post(
                    "/v1/batches", json={"input_file_id": f, "endpoint": CHAT, "completion_window": "24h"}
                )
                for f in file_ids
            ]
        )
        assert sorted(codes) == [200] + [429] * (CONCURRENT - 1), codes
        assert len(http.get("/v1/batches").json()["data"]) == 1


def test_concurrent_xai_adds_never_pass_the_queue_cap(server: ServerProcess) -> None:
    key = team_key(server, max_queued_requests=100)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        batch_id = http.post("/xai/v1/batches", json={"name": "adds"}).json()["batch_id"]

        def add(n: int) -> httpx.Response:
            items = [
                {
                    "batch_request_id": f"a{n}-{i}",
                    "batch_request": {
                        "chat_get_completion": {
                            "model": "fake-model",
                            "messages": [{"role": "user", "content": "x @latency:20000"}],
                        }
                    },
                }
                for i in range(100)
            ]
            return http.post(f"/xai/v1/batches/{batch_id}/requests", json={"batch_requests": items})

        codes = at_once([lambda n=n: add(n) for n in range(CONCURRENT)])
        assert sorted(codes) == [200] + [429] * (CONCURRENT - 1), codes
        assert http.get(f"/xai/v1/batches/{batch_id}").json()["state"]["num_requests"] == 100


def test_open_xai_batches_are_capped_per_team_with_a_429_naming_the_limit(server: ServerProcess) -> None:
    key, other = team_key(server), team_key(server)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        codes = at_once(
            [lambda n=n: http.post("/xai/v1/batches", json={"name": f"open {n}"}) for n in range(CONCURRENT)]
        )
        assert sorted(codes) == [200] * 3 + [429] * (CONCURRENT - 3), codes
        refused = http.post("/xai/v1/batches", json={"name": "one more"})
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "max_open_batches_exceeded"
        assert "3" in error["message"] and "max_open_batches_per_team" in error["message"]
        # Cancelling one makes room; another team was never limited by this one's batches.
        first = http.get("/xai/v1/batches").json()["batches"][0]["batch_id"]
        assert http.post(f"/xai/v1/batches/{first}:cancel").status_code == 200
        assert http.post("/xai/v1/batches", json={"name": "after cancel"}).status_code == 200
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {other}"}, timeout=60) as http:
        assert http.post("/xai/v1/batches", json={"name": "other team"}).status_code == 200
