"""Pagination under hypothesis, on a real server: list cursors (`after`, xAI `pagination_token`, `limit`)
given any string answer a page or a 400 envelope, never a 500; and paging through N objects with
random page sizes yields each object exactly once, in order.

Each paging example runs as a fresh team, so its listings hold exactly the objects it made.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.helpers import jsonl
from tests.fuzz.helpers import ADMIN_KEY, envelope_problem, examples, fuzz_config
from tests.harness import FakeUpstreamProcess, ServerProcess, chat_line, poll_until, running_server
from tests.postgres import PostgresCluster

PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
OPEN_BATCH = "{open}"  # stands for the module's open xAI batch in a route
CURSORS = [  # (route, cursor parameter, page size limit)
    ("/v1/files", "after", 10_000),
    ("/api/llm/files", "after", 10_000),
    ("/v1/batches", "after", 100),
    ("/api/llm/api/inference/openai/batches", "after", 100),
    ("/xai/v1/batches", "pagination_token", 1000),
    (f"/xai/v1/batches/{OPEN_BATCH}/requests", "pagination_token", 1000),
    (f"/xai/v1/batches/{OPEN_BATCH}/results", "pagination_token", 1000),
]


# ---------------------------------------------------------------------------- the server
class Api:
    """An httpx client on the server, speaking as the admin unless given another key."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=30)
        self.open_batch = ""

    def call(self, method: str, path: str, key: str = ADMIN_KEY, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kwargs)

    def ok(self, method: str, path: str, key: str = ADMIN_KEY, **kwargs: Any) -> Any:
        response = self.call(method, path, key, **kwargs)
        assert response.status_code == 200, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def new_team_key(self) -> str:
        name = f"t-{uuid.uuid4().hex}"
        self.ok("POST", "/admin/teams", json={"name": name})
        return self.ok("POST", "/admin/keys", json={"team": name})["key"]

    def upload(self, key: str, rows: int = 1) -> str:
        data = jsonl(*(chat_line(f"r{i}", f"hi {i}") for i in range(rows)))
        return self.ok("POST", "/v1/files", key, files={"file": ("in.jsonl", data)}, data={"purpose": "batch"})["id"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(
    request: pytest.FixtureRequest, fake_upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    config = fuzz_config(fake_upstream.url)
    if request.param == "postgresql":  # PostgreSQL refuses what SQLite takes (NUL, INTEGER overflow)
        postgres: PostgresCluster = request.getfixturevalue("postgres")
        config["storage"] = {"database": postgres.new_database()}
    with running_server(
        config, workdir=tmp_path_factory.mktemp(f"paging-{request.param}"), env={"BATCHGATE_ADMIN_KEY": ADMIN_KEY}
    ) as server:
        client = Api(server)
        client.open_batch = client.ok("POST", "/xai/v1/batches", json={"name": "cursor-target"})["batch_id"]
        client.ok(
            "POST",
            f"/xai/v1/batches/{client.open_batch}/requests",
            json={
                "batch_requests": [
                    {
                        "batch_request_id": f"q{i}",
                        "batch_request": {
                            "chat_get_completion": {
                                "model": "fake-model",
                                "messages": [{"role": "user", "content": "hi"}],
                            }
                        },
                    }
                    for i in range(3)
                ]
            },
        )
        yield client
        client.http.close()


# ---------------------------------------------------------------------------- any cursor
def _token(position: Any) -> str:
    """A pagination token in the server's own encoding (base64url JSON), carrying any position
    (json, not orjson: it writes integers past 64 bits too)."""
    return base64.urlsafe_b64encode(json.dumps({"after": position}).encode()).decode().rstrip("=")


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
cursors = st.one_of(
    st.text(),  # anything, NUL and lone surrogates included
    st.text(alphabet="0123456789", min_size=1, max_size=40),
    json_scalars.map(_token),  # well-formed tokens with positions of every type and size
    st.integers(min_value=2**31 - 2, max_value=2**63 + 2).map(_token),  # around the INTEGER and BIGINT limits
    st.binary(max_size=64).map(lambda b: base64.urlsafe_b64encode(b).decode()),
)
raw_escapes = st.lists(
    st.sampled_from(["%ff", "%00", "%zz", "%", "+", "&", "=", "%c3", "%ed%a0%80", "a", "#x"]), max_size=8
).map("".join)  # sent as they are, not re-encoded


def _assert_page_or_400(response: httpx.Response, param: str, sent: str) -> None:
    assert response.status_code in (200, 400), f"{param}={sent!r}: {response.status_code} {response.text[:300]}"
    body = response.json()
    if response.status_code == 400:
        assert envelope_problem(400, body) is None, envelope_problem(400, body)
    else:
        assert isinstance(
            body.get("data", body.get("batches", body.get("results", body.get("batch_request_metadata")))), list
        ), body


@settings(PROPERTY, max_examples=examples(60))
@given(route=st.sampled_from(CURSORS), cursor=cursors, limit=st.none() | st.text(max_size=12) | st.integers())
def test_any_cursor_and_limit_give_a_page_or_a_400(
    api: Api, route: tuple[str, str, int], cursor: str, limit: str | int | None
) -> None:
    path, param, _ = route
    params: dict[str, Any] = {param: cursor} if limit is None else {param: cursor, "limit": limit}
    response = api.call("GET", path.replace(OPEN_BATCH, api.open_batch), params=params)
    _assert_page_or_400(response, param, cursor)


@settings(PROPERTY, max_examples=examples(30))
@given(route=st.sampled_from(CURSORS), raw=raw_escapes)
def test_malformed_query_escapes_give_a_page_or_a_400(api: Api, route: tuple[str, str, int], raw: str) -> None:
    path, param, _ = route
    url = httpx.URL(api.server.url + path.replace(OPEN_BATCH, api.open_batch) + f"?{param}={raw}&limit={raw}")
    response = api.http.get(url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    _assert_page_or_400(response, param, raw)


# ---------------------------------------------------------------------------- every object exactly once
def _page_through(
    api: Api,
    key: str,
    path: str,
    param: str,
    items: str,
    sizes: st.DataObject,
    most: int,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Follow the cursor to the end with page sizes drawn as it goes; every object seen, in order."""
    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = dict(extra or {})
    for _ in range(most + 2):  # each page holds at least one object, or ends the listing
        params["limit"] = sizes.draw(st.integers(min_value=1, max_value=most + 1), label="limit")
        page = api.ok("GET", path, key, params=params)
        seen += page[items]
        if param == "after":
            if not page["has_more"]:
                return seen
            assert page["last_id"] == page[items][-1]["id"]
            params["after"] = page["last_id"]
        else:
            if page["pagination_token"] is None:
                return seen
            params["pagination_token"] = page["pagination_token"]
    raise AssertionError(f"{path}: still more pages after {len(seen)} objects")


@settings(PROPERTY, max_examples=examples(8))
@given(
    count=st.integers(min_value=0, max_value=7),
    order=st.sampled_from(["asc", "desc"]),
    prefix=st.sampled_from(["/v1", "/api/llm"]),
    sizes=st.data(),
)
def test_paging_files_yields_each_exactly_once(
    api: Api, count: int, order: str, prefix: str, sizes: st.DataObject
) -> None:
    key = api.new_team_key()
    made = [api.upload(key) for _ in range(count)]
    seen = [
        f["id"] for f in _page_through(api, key, f"{prefix}/files", "after", "data", sizes, count, {"order": order})
    ]
    assert seen == sorted(made, reverse=order == "desc")


@settings(PROPERTY, max_examples=examples(6))
@given(count=st.integers(min_value=0, max_value=6), sizes=st.data())
def test_paging_batches_yields_each_exactly_once(api: Api, count: int, sizes: st.DataObject) -> None:
    key = api.new_team_key()
    file_id = api.upload(key)
    made = [
        api.ok(
            "POST",
            "/v1/batches",
            key,
            json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        )["id"]
        for _ in range(count)
    ]
    seen = [b["id"] for b in _page_through(api, key, "/v1/batches", "after", "data", sizes, count)]
    assert seen == sorted(made, reverse=True)  # newest first
    xai = [
        b["batch_id"] for b in _page_through(api, key, "/xai/v1/batches", "pagination_token", "batches", sizes, count)
    ]
    assert xai == seen  # the xAI view pages the same batches


def _add(api: Api, key: str, batch_id: str, ids: list[str]) -> None:
    api.ok(
        "POST",
        f"/xai/v1/batches/{batch_id}/requests",
        key,
        json={
            "batch_requests": [
                {
                    "batch_request_id": rid,
                    "batch_request": {
                        "chat_get_completion": {"model": "fake-model", "messages": [{"role": "user", "content": rid}]}
                    },
                }
                for rid in ids
            ]
        },
    )


@settings(PROPERTY, max_examples=examples(6))
@given(calls=st.lists(st.integers(min_value=1, max_value=6), max_size=4), sizes=st.data())
def test_paging_xai_requests_and_results_yields_each_exactly_once(
    api: Api, calls: list[int], sizes: st.DataObject
) -> None:
    key = api.new_team_key()
    batch_id = api.ok("POST", "/xai/v1/batches", key, json={"name": "paged"})["batch_id"]
    added: list[str] = []
    for n in calls:  # several add-calls: line numbers continue across them
        ids = [f"req-{len(added) + i}" for i in range(n)]
        _add(api, key, batch_id, ids)
        added += ids
    base = f"/xai/v1/batches/{batch_id}"
    requests = _page_through(
        api, key, f"{base}/requests", "pagination_token", "batch_request_metadata", sizes, len(added)
    )
    assert [r["batch_request_id"] for r in requests] == added  # in the order they were added
    poll_until(
        lambda: api.ok("GET", base, key)["state"]["num_pending"] == 0,
        20,
        message=f"{batch_id} never finished its requests",
    )
    results = _page_through(api, key, f"{base}/results", "pagination_token", "results", sizes, len(added))
    assert sorted(r["batch_request_id"] for r in results) == sorted(added)
