"""End to end: the xAI Batch dialect (SPEC §4, issue 4) under `/xai/v1/`, driven with plain httpx.

Open batches fed by add-calls while earlier requests still run, results and request metadata paged
while the batch runs, costs priced from the config, cancellation, the all-or-nothing add-call and its
errors, sealed batches from a file, the OpenAI view of the same batch, and a kill -9 between two adds.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import (
    ENGINE,
    assert_error,
    gateway_config,
    module_server,
    upload,
    wait_upstream_idle,
)
from tests.fake_upstream import count_tokens
from tests.harness import (
    FakeUpstreamProcess,
    ServerProcess,
    chat_line,
    openai_client,
    poll_until,
    upstream_model_config,
)

MODEL = "grok-fake"
NARROW = "grok-narrow"  # max_concurrency 2
PRICE = {"input_per_mtok": 2.0, "output_per_mtok": 8.0}
TICKS_PER_USD = 10**10
MAX_ADD_REQUESTS = 5
MAX_ADD_BYTES = 4096
BATCH_KEYS = {
    "batch_id",
    "name",
    "input_file_id",
    "create_time",
    "create_api_key_id",
    "expire_time",
    "cancel_time",
    "cancel_by_xai_message",
    "state",
    "cost_breakdown",
}
STATE_KEYS = {"num_requests", "num_pending", "num_success", "num_error", "num_cancelled"}


def config(upstream_url: str) -> dict[str, Any]:
    return gateway_config(
        upstream_model_config(upstream_url, name=MODEL, price=PRICE),
        upstream_model_config(upstream_url, name=NARROW, max_concurrency=2),
        engine=ENGINE,
        max_add_requests=MAX_ADD_REQUESTS,
        max_add_bytes=MAX_ADD_BYTES,
    )


xai_server = module_server("xai_server", config)


@pytest.fixture
def xai(xai_server: ServerProcess, upstream: FakeUpstreamProcess) -> Iterator[httpx.Client]:
    """httpx on /xai/v1 of the module's server; the fake upstream idle and its stats reset."""
    wait_upstream_idle(upstream)
    upstream.reset()
    with httpx.Client(base_url=xai_server.url + "/xai/v1", timeout=10.0) as c:
        yield c


# ---------------------------------------------------------------------------- helpers
def chat(rid: str | None, text: str, model: str = MODEL, **body: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "batch_request": {
            "chat_get_completion": {"model": model, "messages": [{"role": "user", "content": text}], **body}
        }
    }
    if rid is not None:
        item["batch_request_id"] = rid
    return item


def responses(rid: str | None, text: str, model: str = MODEL) -> dict[str, Any]:
    item: dict[str, Any] = {"batch_request": {"responses": {"model": model, "input": text}}}
    if rid is not None:
        item["batch_request_id"] = rid
    return item


def text_of(item: dict[str, Any]) -> str:
    ((kind, body),) = item["batch_request"].items()
    return body["messages"][-1]["content"] if kind == "chat_get_completion" else body["input"]


def expected_ticks(text: str) -> tuple[int, int, int]:
    """(input tokens, output tokens, cost in ticks) of the fake upstream's answer to one user text."""
    p, c = count_tokens(text), count_tokens("echo: " + text)
    usd = (p * PRICE["input_per_mtok"] + c * PRICE["output_per_mtok"]) / 1e6
    return p, c, round(usd * TICKS_PER_USD)


def rfc3339(value: Any) -> datetime:
    assert isinstance(value, str) and "T" in value, value
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, value
    return parsed


def create(xai: httpx.Client, name: str, **extra: Any) -> dict[str, Any]:
    r = xai.post("/batches", json={"name": name, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def add(xai: httpx.Client, batch_id: str, items: list[dict[str, Any]]) -> None:
    r = xai.post(f"/batches/{batch_id}/requests", json={"batch_requests": items})
    assert r.status_code == 200, r.text
    assert r.json() == {}


def get(xai: httpx.Client, batch_id: str) -> dict[str, Any]:
    r = xai.get(f"/batches/{batch_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_state(
    xai: httpx.Client,
    batch_id: str,
    cond: Callable[[dict[str, Any]], bool],
    timeout: float = 20.0,
    what: str = "never reached the state",
) -> dict[str, Any]:
    last: list[dict[str, Any]] = []

    def check() -> dict[str, Any] | None:
        batch = get(xai, batch_id)
        last[:] = [batch]
        return batch if cond(batch) else None

    return poll_until(check, timeout, 0.03, message=lambda: f"batch {batch_id} {what}: {last[0] if last else None}")


def page_all(
    xai: httpx.Client,
    path: str,
    key: str,
    limit: int,
    timeout: float = 30.0,
    on_page: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Follow pagination_token from the first page until it is null; an empty page with a token is
    polled again (results may still be coming) until `timeout`."""
    items: list[dict[str, Any]] = []
    token: str | None = None
    deadline = time.monotonic() + timeout
    while True:
        params: dict[str, Any] = {"limit": limit}
        if token is not None:
            params["pagination_token"] = token
        r = xai.get(path, params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {key, "pagination_token"}, body
        page = body[key]
        assert len(page) <= limit
        if on_page is not None:
            on_page(page)
        items += page
        if body["pagination_token"] is None:
            return items
        token = body["pagination_token"]
        if not page:
            if time.monotonic() > deadline:
                raise AssertionError(f"{path}: paging did not reach the end within {timeout}s ({len(items)} items)")
            time.sleep(0.03)  # polling for results still to come, bounded by the deadline


def results(xai: httpx.Client, batch_id: str, limit: int = 100) -> dict[str, dict[str, Any]]:
    """Every result of the batch by id; asserts no id appears twice."""
    items = page_all(xai, f"/batches/{batch_id}/results", "results", limit)
    ids = Counter(r["batch_request_id"] for r in items)
    assert [i for i, n in ids.items() if n > 1] == [], "a result appeared twice"
    return {r["batch_request_id"]: r for r in items}


def request_meta(xai: httpx.Client, batch_id: str, limit: int = 100) -> list[dict[str, Any]]:
    return page_all(xai, f"/batches/{batch_id}/requests", "batch_request_metadata", limit)


def assert_success(result: dict[str, Any], item: dict[str, Any]) -> int:
    """A result answering `item`, with usage and its cost as the config prices it; returns the cost."""
    ((kind, _),) = item["batch_request"].items()
    assert set(result) == {"batch_request_id", "batch_result"}, result
    body = result["batch_result"]["response"][kind]
    text = text_of(item)
    p, c, ticks = expected_ticks(text)
    if kind == "chat_get_completion":
        assert body["choices"][0]["message"]["content"] == "echo: " + text
        assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (p, c)
    else:
        assert body["output"][0]["content"][0]["text"] == "echo: " + text
        assert (body["usage"]["input_tokens"], body["usage"]["output_tokens"]) == (p, c)
    assert body["usage"]["cost_in_usd_ticks"] == ticks
    return ticks


def state(batch: dict[str, Any]) -> dict[str, int]:
    return batch["state"]


# ---------------------------------------------------------------------------- create and list
def test_create_empty_batch_shape(xai: httpx.Client) -> None:
    before = time.time()
    batch = create(xai, "empty one")
    assert set(batch) == BATCH_KEYS, set(batch) ^ BATCH_KEYS
    assert batch["batch_id"].startswith("batch_")
    assert batch["name"] == "empty one"
    assert batch["input_file_id"] is None
    created = rfc3339(batch["create_time"]).timestamp()
    assert before - 2 <= created <= time.time() + 1
    assert rfc3339(batch["expire_time"]).timestamp() > created
    assert batch["cancel_time"] is None and batch["cancel_by_xai_message"] is None
    assert batch["state"] == {"num_requests": 0, "num_pending": 0, "num_success": 0, "num_error": 0, "num_cancelled": 0}
    cost = batch["cost_breakdown"]
    assert set(cost) == {"total_cost_usd_ticks", "endpoint_costs", "calculation_time"}
    assert cost["total_cost_usd_ticks"] == 0 and cost["endpoint_costs"] == []
    rfc3339(cost["calculation_time"])

    again = get(xai, batch["batch_id"])
    assert {k: v for k, v in again.items() if k != "cost_breakdown"} == {
        k: v for k, v in batch.items() if k != "cost_breakdown"
    }
    assert request_meta(xai, batch["batch_id"]) == []
    assert results(xai, batch["batch_id"]) == {}


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": 7}], ids=["missing", "empty", "number"])
def test_create_needs_a_name(xai: httpx.Client, body: dict[str, Any]) -> None:
    assert_error(xai.post("/batches", json=body), 400, param="name")


def test_unknown_batch_is_404_everywhere(xai: httpx.Client) -> None:
    missing = "batch_doesnotexist"
    for response in (
        xai.get(f"/batches/{missing}"),
        xai.get(f"/batches/{missing}/results"),
        xai.get(f"/batches/{missing}/requests"),
        xai.post(f"/batches/{missing}/requests", json={"batch_requests": [chat("a", "x")]}),
        xai.post(f"/batches/{missing}:cancel"),
    ):
        assert_error(response, 404)


def test_bad_pagination_token_or_limit_is_400(xai: httpx.Client) -> None:
    batch_id = create(xai, "tokens")["batch_id"]
    for path in ("/batches", f"/batches/{batch_id}/results", f"/batches/{batch_id}/requests"):
        for token in ("garbage!!", "bm90LWpzb24", "eyJhZnRlciI6IHRydWV9"):  # junk, base64 non-JSON, {"after": true}
            assert_error(xai.get(path, params={"pagination_token": token}), 400, param="pagination_token")
        for limit in (0, 1001, "many"):
            assert_error(xai.get(path, params={"limit": limit}), 400, param="limit")


def test_results_tokens_are_sealed_to_their_batch(xai: httpx.Client) -> None:
    """A results token must not carry the gateway-wide result position (one team could watch every
    team's volume) and must not open on another batch."""
    first, second = create(xai, "sealed a")["batch_id"], create(xai, "sealed b")["batch_id"]
    for batch_id in (first, second):
        add(xai, batch_id, [chat(f"{batch_id}-{i}", f"token {i}") for i in range(3)])
        wait_state(xai, batch_id, lambda b: b["state"]["num_success"] == 3)
    page = xai.get(f"/batches/{first}/results", params={"limit": 1}).json()
    token = page["pagination_token"]
    assert token is not None and len(page["results"]) == 1
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    with pytest.raises(ValueError):  # not the old {"after": <seq>}: sealed bytes that decode to nothing
        json.loads(raw)
    # The same position asked for twice gives two different tokens (a nonce): none can be compared.
    assert xai.get(f"/batches/{first}/results", params={"limit": 1}).json()["pagination_token"] != token
    assert_error(
        xai.get(f"/batches/{second}/results", params={"pagination_token": token}), 400, param="pagination_token"
    )
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    assert_error(
        xai.get(f"/batches/{first}/results", params={"pagination_token": tampered}), 400, param="pagination_token"
    )
    rest = xai.get(f"/batches/{first}/results", params={"pagination_token": token}).json()
    ids = [r["batch_request_id"] for r in page["results"] + rest["results"]]
    assert sorted(ids) == [f"{first}-{i}" for i in range(3)]


def test_list_batches_pages_with_limit_and_token(xai: httpx.Client) -> None:
    mine = [create(xai, f"listed {i}")["batch_id"] for i in range(3)]
    seen: list[str] = []
    pages = 0

    def on_page(page: list[dict[str, Any]]) -> None:
        nonlocal pages
        pages += 1
        for b in page:
            assert set(b) == BATCH_KEYS
            seen.append(b["batch_id"])

    page_all(xai, "/batches", "batches", 2, on_page=on_page)
    assert len(seen) == len(set(seen)), "a batch listed twice"
    assert set(mine) <= set(seen)
    assert pages >= 2
    first = xai.get("/batches", params={"limit": 2}).json()
    assert len(first["batches"]) == 2 and first["pagination_token"] is not None


# ---------------------------------------------------------------------------- the main flow
def test_chunks_added_while_running_results_paged_and_costs(xai: httpx.Client, upstream: FakeUpstreamProcess) -> None:
    batch_id = create(xai, "three chunks")["batch_id"]
    slow = "@latency:1500"
    chunk1 = [chat(f"c1-{i}", f"one {i}" + (f" {slow}" if i >= 3 else "")) for i in range(5)]
    chunk2 = [chat(f"c2-{i}", f"two {i}" + (f" {slow}" if i >= 3 else "")) for i in range(5)]
    chunk3 = [
        responses("c3-0", "three 0"),
        responses(None, "three no id"),
        chat(None, "three also no id"),
        chat("c3-3", f"three 3 {slow}"),
        chat("c3-4", "three 4"),
    ]

    add(xai, batch_id, chunk1)
    b = wait_state(xai, batch_id, lambda b: state(b)["num_success"] == 3, what="never finished chunk 1's fast ones")
    assert state(b) == {"num_requests": 5, "num_pending": 2, "num_success": 3, "num_error": 0, "num_cancelled": 0}
    add(xai, batch_id, chunk2)  # chunk 1's slow requests still run
    b = wait_state(xai, batch_id, lambda b: state(b)["num_success"] >= 6, what="never finished chunk 2's fast ones")
    assert state(b)["num_pending"] > 0
    add(xai, batch_id, chunk3)
    assert state(get(xai, batch_id))["num_requests"] == 15

    # Page the results (3 at a time) while the batch still runs, following the tokens to the end.
    read_while_running = 0

    def on_page(page: list[dict[str, Any]]) -> None:
        nonlocal read_while_running
        if page and state(get(xai, batch_id))["num_pending"] > 0:
            read_while_running += 1

    items = page_all(xai, f"/batches/{batch_id}/results", "results", 3, on_page=on_page)
    assert read_while_running > 0, "every result was already there: the paging did not overlap the run"
    ids = Counter(r["batch_request_id"] for r in items)
    named = {item["batch_request_id"] for item in chunk1 + chunk2 + chunk3 if "batch_request_id" in item}
    generated = set(ids) - named
    assert len(items) == 15 and set(ids.values()) == {1}, ids  # each exactly once
    assert named <= set(ids)
    assert len(generated) == 2
    for rid in generated:
        assert str(uuid.UUID(rid)) == rid.lower()

    final = get(xai, batch_id)
    assert state(final) == {"num_requests": 15, "num_pending": 0, "num_success": 15, "num_error": 0, "num_cancelled": 0}

    # Each result answers its own request, with usage and its cost; generated ids matched by text.
    by_text = {text_of(item): item for item in chunk1 + chunk2 + chunk3}
    total = 0
    per_kind: Counter[str] = Counter()
    for result in items:
        ((kind, body),) = result["batch_result"]["response"].items()
        text = (
            body["choices"][0]["message"]["content"]
            if kind == "chat_get_completion"
            else body["output"][0]["content"][0]["text"]
        ).removeprefix("echo: ")
        item = by_text[text]
        if "batch_request_id" in item:
            assert result["batch_request_id"] == item["batch_request_id"]
        total += assert_success(result, item)
        per_kind[kind] += 1
    assert per_kind == {"chat_get_completion": 13, "responses": 2}

    cost = final["cost_breakdown"]
    assert cost["total_cost_usd_ticks"] == total > 0
    assert sum(e["cost_usd_ticks"] for e in cost["endpoint_costs"]) == total
    assert sum(e["request_count"] for e in cost["endpoint_costs"]) == 15
    assert sorted(e["request_count"] for e in cost["endpoint_costs"]) == [2, 13]
    rfc3339(cost["calculation_time"])

    # Request metadata: in the order added, paged 4 at a time, every one succeeded.
    meta = request_meta(xai, batch_id, limit=4)
    assert [m["batch_request_id"] for m in meta][:10] == [i["batch_request_id"] for i in chunk1 + chunk2]
    assert {m["batch_request_id"] for m in meta} == set(ids)
    for m in meta:
        assert set(m) == {"batch_request_id", "endpoint", "model", "state", "create_time", "finish_time"}, m
        assert m["state"] == "succeeded" and m["model"] == MODEL
        assert rfc3339(m["finish_time"]) >= rfc3339(m["create_time"])
    assert upstream.stats()["by_status"] == {"200": 15}


def test_cancel_mid_run_keeps_finished_and_refuses_adds(
    xai: httpx.Client, xai_server: ServerProcess, upstream: FakeUpstreamProcess
) -> None:
    batch_id = create(xai, "to cancel")["batch_id"]
    items = [
        chat("ok-0", "fine 0"),
        chat("ok-1", "fine 1"),
        chat("bad", "no @status:400:*"),
        chat("slow-0", "slow 0 @latency:30000"),
        chat("slow-1", "slow 1 @latency:30000"),
    ]
    add(xai, batch_id, items)
    b = wait_state(
        xai,
        batch_id,
        lambda b: state(b)["num_success"] == 2 and state(b)["num_error"] == 1,
        what="never finished the quick ones",
    )
    assert state(b) == {"num_requests": 5, "num_pending": 2, "num_success": 2, "num_error": 1, "num_cancelled": 0}

    # Request metadata shows all three states so far, paged two at a time.
    states = {m["batch_request_id"]: m for m in request_meta(xai, batch_id, limit=2)}
    assert {k: m["state"] for k, m in states.items()} == {
        "ok-0": "succeeded",
        "ok-1": "succeeded",
        "bad": "failed",
        "slow-0": "pending",
        "slow-1": "pending",
    }
    assert states["slow-0"]["finish_time"] is None and states["ok-0"]["finish_time"] is not None

    r = xai.post(f"/batches/{batch_id}:cancel")
    assert r.status_code == 200, r.text
    assert set(r.json()) == BATCH_KEYS and r.json()["batch_id"] == batch_id
    done = wait_state(
        xai,
        batch_id,
        lambda b: state(b)["num_pending"] == 0 and b["cancel_time"] is not None,
        what="never finished cancelling",
    )
    assert state(done) == {"num_requests": 5, "num_pending": 0, "num_success": 2, "num_error": 1, "num_cancelled": 2}
    rfc3339(done["cancel_time"])

    states = {m["batch_request_id"]: m["state"] for m in request_meta(xai, batch_id)}
    assert states == {
        "ok-0": "succeeded",
        "ok-1": "succeeded",
        "bad": "failed",
        "slow-0": "cancelled",
        "slow-1": "cancelled",
    }
    got = results(xai, batch_id, limit=2)
    assert set(got) == {i["batch_request_id"] for i in items}
    for i in items[:2]:
        assert_success(got[i["batch_request_id"]], i)
    for rid in ("bad", "slow-0", "slow-1"):
        res = got[rid]
        assert set(res) == {"batch_request_id", "batch_result", "error_message"}, res
        assert set(res["batch_result"]) == {"error"}
        assert set(res["batch_result"]["error"]) == {"code", "message"}
        assert res["error_message"] == res["batch_result"]["error"]["message"] != ""
    assert "injected status 400" in got["bad"]["error_message"]
    assert got["slow-0"]["batch_result"]["error"]["code"] == "batch_cancelled"

    # The OpenAI view of the same batch agrees.
    with openai_client(xai_server) as oai:
        ob = oai.batches.retrieve(batch_id)
    assert ob.status == "cancelled"
    assert ob.request_counts.model_dump() == {"total": 5, "completed": 2, "failed": 3}

    assert_error(xai.post(f"/batches/{batch_id}/requests", json={"batch_requests": [chat("late", "x")]}), 409)
    assert_error(xai.post(f"/batches/{batch_id}:cancel"), 409)
    assert state(get(xai, batch_id))["num_requests"] == 5
    wait_upstream_idle(upstream, "the cancelled requests' upstream calls were not abandoned")


# ---------------------------------------------------------------------------- add-call errors
@pytest.fixture(scope="module")
def err_batch(xai_server: ServerProcess) -> str:
    """One open batch holding two requests, `seed` and `seed-b`, shared by the add-error cases."""
    with httpx.Client(base_url=xai_server.url + "/xai/v1", timeout=10.0) as c:
        batch_id = create(c, "errors")["batch_id"]
        add(c, batch_id, [chat("seed", "seed"), chat("seed-b", "seed b")])
    return batch_id


P = "batch_requests"
CHAT_P = ".batch_request.chat_get_completion"
ADD_ERRORS: dict[str, tuple[Any, str, str]] = {
    # case: (body, param, a phrase of the message)
    "duplicate-in-call": ({P: [chat("n1", "a"), chat("n2", "b"), chat("n2", "c")]}, f"{P}[2].batch_request_id", "n2"),
    "duplicate-of-existing": ({P: [chat("n1", "a"), chat("seed", "b")]}, f"{P}[1].batch_request_id", "seed"),
    # Two clashes: the first in the call is named, whatever order the batch holds them in.
    "duplicates-of-existing": (
        {P: [chat("n1", "a"), chat("seed-b", "b"), chat("seed", "c")]},
        f"{P}[1].batch_request_id",
        "seed-b",
    ),
    "missing-model": (
        {
            P: [
                chat("n1", "a"),
                {
                    "batch_request_id": "n2",
                    "batch_request": {"chat_get_completion": {"messages": [{"role": "user", "content": "b"}]}},
                },
            ]
        },
        f"{P}[1]{CHAT_P}.model",
        "model",
    ),
    "unknown-model": ({P: [chat("n1", "a"), chat("n2", "b", model="grok-nope")]}, f"{P}[1]{CHAT_P}.model", "grok-nope"),
    "image-kind": (
        {
            P: [
                chat("n1", "a"),
                {"batch_request_id": "n2", "batch_request": {"image_generation": {"model": MODEL, "prompt": "a cat"}}},
            ]
        },
        f"{P}[1].batch_request.image_generation",
        "not served",
    ),
    "video-kind": (
        {P: [{"batch_request": {"video_generation": {"model": MODEL, "prompt": "a cat"}}}]},
        f"{P}[0].batch_request.video_generation",
        "not served",
    ),
    "unknown-kind": (
        {P: [chat("n1", "a"), chat("n2", "b"), {"batch_request": {"tea_brewing": {"model": MODEL}}}]},
        f"{P}[2].batch_request.tea_brewing",
        "tea_brewing",
    ),
    "stream-true": ({P: [chat("n1", "a", stream=True)]}, f"{P}[0]{CHAT_P}.stream", "stream"),
    "empty-list": ({P: []}, P, P),
    "missing-list": ({}, P, P),
    "over-per-call-cap": ({P: [chat(f"n{i}", "a") for i in range(MAX_ADD_REQUESTS + 1)]}, P, str(MAX_ADD_REQUESTS)),
}


@pytest.mark.parametrize("case", list(ADD_ERRORS))
def test_add_errors_name_first_bad_item_and_store_nothing(xai: httpx.Client, err_batch: str, case: str) -> None:
    body, param, phrase = ADD_ERRORS[case]
    before = [m["batch_request_id"] for m in request_meta(xai, err_batch)]
    assert "seed" in before
    err = assert_error(xai.post(f"/batches/{err_batch}/requests", json=body), 400, param=param)
    assert phrase in err["message"], err
    if param != P:  # the message names the item as the param does
        assert param.split(".")[0] in err["message"], err
    # All or nothing: not even the good items of the refused call were stored.
    assert state(get(xai, err_batch))["num_requests"] == len(before)
    assert [m["batch_request_id"] for m in request_meta(xai, err_batch)] == before


def test_add_body_over_byte_limit_is_refused(xai: httpx.Client, err_batch: str) -> None:
    big = [chat(f"big{i}", "x" * 1000) for i in range(5)]
    assert len(json.dumps({P: big})) > MAX_ADD_BYTES
    before = state(get(xai, err_batch))["num_requests"]
    r = xai.post(f"/batches/{err_batch}/requests", json={P: big})
    assert r.status_code in (400, 413), r.text  # too big: a 400 or a 413, in the error envelope either way
    assert_error(r, r.status_code)
    assert state(get(xai, err_batch))["num_requests"] == before


def test_after_refused_call_same_ids_can_be_added(xai: httpx.Client, err_batch: str) -> None:
    # n1/n2 were in refused calls above (or in none, if this runs alone): either way they are free now.
    before = state(get(xai, err_batch))["num_requests"]
    r = xai.post(f"/batches/{err_batch}/requests", json={P: [chat("n1", "a"), chat("n2", "b")]})
    assert r.status_code == 200, r.text
    done = wait_state(xai, err_batch, lambda b: state(b)["num_pending"] == 0)
    assert state(done) == {
        "num_requests": before + 2,
        "num_pending": 0,
        "num_success": before + 2,
        "num_error": 0,
        "num_cancelled": 0,
    }
    assert {"seed", "n1", "n2"} <= set(results(xai, err_batch))


# ---------------------------------------------------------------------------- sealed batches
def test_sealed_batch_runs_file_and_refuses_adds(xai: httpx.Client, xai_server: ServerProcess) -> None:
    lines = [chat_line(f"f{i}", f"from file {i}", model=MODEL) for i in range(3)]
    with openai_client(xai_server) as oai:
        file_id = upload(oai, lines).id
        batch = create(xai, "sealed", input_file_id=file_id)
        assert batch["input_file_id"] == file_id
        done = wait_state(
            xai,
            batch["batch_id"],
            lambda b: b["state"]["num_requests"] == 3 and b["state"]["num_pending"] == 0,
            what="never ran its file",
        )
        assert state(done) == {
            "num_requests": 3,
            "num_pending": 0,
            "num_success": 3,
            "num_error": 0,
            "num_cancelled": 0,
        }
        assert done["cancel_time"] is None and done["cancel_by_xai_message"] is None
        got = results(xai, batch["batch_id"])
        assert set(got) == {"f0", "f1", "f2"}
        for row in lines:
            assert_success(got[row["custom_id"]], chat(row["custom_id"], row["body"]["messages"][0]["content"]))
        assert done["cost_breakdown"]["total_cost_usd_ticks"] == sum(
            expected_ticks(r["body"]["messages"][0]["content"])[2] for r in lines
        )

        err = assert_error(xai.post(f"/batches/{batch['batch_id']}/requests", json={P: [chat("more", "x")]}), 400)
        assert err["param"] == "batch_id"
        assert state(get(xai, batch["batch_id"]))["num_requests"] == 3
        # One engine: the OpenAI view shows it completed.
        poll_until(lambda: oai.batches.retrieve(batch["batch_id"]).status == "completed", 10)


def test_sealed_batch_with_bad_line_is_cancelled_with_reason(xai: httpx.Client, xai_server: ServerProcess) -> None:
    good = json.dumps(chat_line("g1", "fine", model=MODEL)).encode()
    content = good + b"\n" + b"{this is not json\n" + json.dumps(chat_line("g3", "fine", model=MODEL)).encode() + b"\n"
    with openai_client(xai_server) as oai:
        file_id = upload(oai, content).id
    batch_id = create(xai, "sealed bad", input_file_id=file_id)["batch_id"]
    done = wait_state(xai, batch_id, lambda b: b["cancel_time"] is not None, what="was never cancelled")
    message = done["cancel_by_xai_message"]
    assert isinstance(message, str) and "line 2" in message, message
    assert state(done)["num_success"] == 0 and state(done)["num_pending"] == 0


def test_sealed_batch_unknown_file_is_404(xai: httpx.Client) -> None:
    assert_error(
        xai.post("/batches", json={"name": "x", "input_file_id": "file-doesnotexist"}), 404, param="input_file_id"
    )


# ---------------------------------------------------------------------------- one engine, two views
def test_openai_view_and_deployment_concurrency(
    xai: httpx.Client, xai_server: ServerProcess, upstream: FakeUpstreamProcess
) -> None:
    batch_id = create(xai, "narrow")["batch_id"]
    texts = [f"narrow {i} @latency:150" for i in range(10)]
    add(xai, batch_id, [chat(f"n{i}", t, model=NARROW) for i, t in enumerate(texts[:5])])
    add(xai, batch_id, [chat(f"n{i}", t, model=NARROW) for i, t in enumerate(texts[5:], start=5)])
    with openai_client(xai_server) as oai:
        mid = oai.batches.retrieve(batch_id)
        assert mid.status == "in_progress" and mid.request_counts.total == 10
        assert mid.model == NARROW and mid.endpoint == "/v1/chat/completions"
        done = wait_state(xai, batch_id, lambda b: state(b)["num_pending"] == 0)
        ob = oai.batches.retrieve(batch_id)
        assert ob.id in [b.id for b in oai.batches.list(limit=100)]
    assert state(done) == {"num_requests": 10, "num_pending": 0, "num_success": 10, "num_error": 0, "num_cancelled": 0}
    assert ob.request_counts.model_dump() == {"total": 10, "completed": 10, "failed": 0}
    assert ob.usage is not None
    assert ob.usage.input_tokens == sum(count_tokens(t) for t in texts)
    assert ob.usage.output_tokens == sum(count_tokens("echo: " + t) for t in texts)
    assert done["cost_breakdown"]["total_cost_usd_ticks"] == 0  # no price configured for this model
    assert upstream.stats()["max_in_flight"] == 2  # the deployment's max_concurrency, used fully


# ---------------------------------------------------------------------------- crash between two adds
def test_kill_between_adds_loses_and_repeats_nothing(
    make_server: Callable[..., ServerProcess], upstream: FakeUpstreamProcess
) -> None:
    wait_upstream_idle(upstream)
    server = make_server(config(upstream.url))
    chunk1 = [chat(f"k1-{i}", f"first {i}" + (" @latency:2000" if i >= 2 else "")) for i in range(5)]
    chunk2 = [chat(f"k2-{i}", f"second {i}") for i in range(5)]
    with httpx.Client(base_url=server.url + "/xai/v1", timeout=10.0) as c:
        batch_id = create(c, "crash")["batch_id"]
        add(c, batch_id, chunk1)
        b = wait_state(c, batch_id, lambda b: state(b)["num_success"] >= 1, what="no result before the kill")
        assert state(b)["num_pending"] > 0
    server.kill()
    server.restart()
    with httpx.Client(base_url=server.url + "/xai/v1", timeout=10.0) as c:
        add(c, batch_id, chunk2)
        done = wait_state(
            c, batch_id, lambda b: state(b)["num_pending"] == 0, timeout=30, what="never finished after the restart"
        )
        assert state(done) == {
            "num_requests": 10,
            "num_pending": 0,
            "num_success": 10,
            "num_error": 0,
            "num_cancelled": 0,
        }
        items = page_all(c, f"/batches/{batch_id}/results", "results", 3)
        ids = Counter(r["batch_request_id"] for r in items)
        assert ids == Counter(i["batch_request_id"] for i in chunk1 + chunk2), ids
        by_id = {i["batch_request_id"]: i for i in chunk1 + chunk2}
        total = sum(assert_success(r, by_id[r["batch_request_id"]]) for r in items)
        assert done["cost_breakdown"]["total_cost_usd_ticks"] == total  # no result counted twice
        assert {m["state"] for m in request_meta(c, batch_id, limit=4)} == {"succeeded"}
