"""End to end: the TrueFoundry gateway dialect (SPEC §3, issue 4) on the real server and the fake upstream.

The OpenAI Files + Batches surface under both TrueFoundry prefixes through the unchanged official SDK,
`job_name`, the `x-tfy-metadata` and `x-tfy-provider-name` headers, and the partial-results `/output` route.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.helpers import (
    ENGINE,
    assert_echoed,
    assert_ended_with,
    assert_error,
    file_lines,
    gateway_config,
    module_server,
    result_files,
    sdk_error,
    submit,
    upload,
    wait_batch,
    wait_terminal,
    wait_upstream_idle,
)
from tests.harness import (
    FakeUpstreamProcess,
    ServerProcess,
    chat_line,
    openai_client,
    poll_until,
    upstream_model_config,
)

PREFIXES = ("/api/llm", "/api/llm/api/inference/openai")
META = "x-tfy-metadata"
PROVIDER = "x-tfy-provider-name"
PINNED_MODEL = "pinned-model"  # two deployments, told apart at the upstream by their own model names


def config(upstream_url: str) -> dict[str, Any]:
    pinned = {
        "name": PINNED_MODEL,
        "deployments": [
            {"provider": "openai", "base_url": upstream_url, "name": "dep-a", "model": "up-a"},
            {"provider": "openai", "base_url": upstream_url, "name": "dep-b", "model": "up-b"},
        ],
    }
    # fake-model's one deployment keeps the default name "fake-model/0".
    return gateway_config(upstream_model_config(upstream_url), pinned, engine=ENGINE)


tfy_server = module_server("tfy_server", config)


@pytest.fixture
def tfy(tfy_server: ServerProcess, upstream: FakeUpstreamProcess) -> Iterator[dict[str, openai.OpenAI]]:
    """The SDK on each TrueFoundry prefix and on /v1, keyed by prefix; the upstream is idle and reset."""
    wait_upstream_idle(upstream)
    upstream.reset()
    clients = {p: openai_client(tfy_server.url + p) for p in (*PREFIXES, "/v1")}
    yield clients
    for c in clients.values():
        c.close()


@pytest.fixture
def http(tfy_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tfy_server.url, timeout=10.0) as c:
        yield c


def rows(n: int, prefix: str = "r", model: str = "fake-model", directive: str = "") -> list[dict[str, Any]]:
    return [chat_line(f"{prefix}{i}", f"hello {prefix}{i} {directive}".rstrip(), model=model) for i in range(n)]


def raw_create(client: openai.OpenAI, file_id: str, **kwargs: Any) -> httpx.Response:
    """Create a batch through the SDK and return the raw HTTP response (whatever its status)."""
    try:
        raw = client.batches.with_raw_response.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", **kwargs
        )
    except openai.APIStatusError as exc:
        return exc.response
    return raw.http_response


# ---------------------------------------------------------------------------- the whole surface per prefix
@pytest.mark.parametrize("prefix", PREFIXES)
def test_sdk_works_unchanged_under_prefix(tfy: dict[str, openai.OpenAI], prefix: str) -> None:
    c = tfy[prefix]
    assert "fake-model" in [m.id for m in c.models.list()]
    data = rows(4, "s")
    content = b"".join(json.dumps(r).encode() + b"\n" for r in data)
    f = upload(c, content)
    assert f.id.startswith("file-") and f.purpose == "batch" and f.bytes == len(content)
    assert c.files.retrieve(f.id).id == f.id
    assert f.id in [x.id for x in c.files.list(purpose="batch")]
    assert c.files.content(f.id).content == content

    raw = raw_create(c, f.id, extra_body={"job_name": f"job {prefix}"})
    assert raw.status_code == 200, raw.text
    created = raw.json()
    assert created["object"] == "batch" and created["status"] == "validating"
    assert created["job_name"] == f"job {prefix}"
    assert c.batches.retrieve(created["id"]).id == created["id"]
    assert created["id"] in [b.id for b in c.batches.list(limit=100)]

    done = wait_terminal(c, created["id"])
    assert done.status == "completed"
    assert done.request_counts.model_dump() == {"total": 4, "completed": 4, "failed": 0}
    out, err = result_files(c, done, data)  # output file read through the prefix too
    assert err == {}
    for r in data:
        assert_echoed(out[r["custom_id"]], r)
    # One engine: the same batch is visible on /v1 and on the other prefix.
    assert tfy["/v1"].batches.retrieve(done.id).status == "completed"
    other = next(p for p in PREFIXES if p != prefix)
    assert tfy[other].batches.retrieve(done.id).request_counts.completed == 4

    assert c.files.delete(f.id).deleted is True
    sdk_error(lambda: c.files.retrieve(f.id), 404)
    sdk_error(lambda: c.batches.retrieve("batch_doesnotexist"), 404, code="batch_not_found")
    sdk_error(lambda: c.batches.cancel(done.id), 409)


# ---------------------------------------------------------------------------- job_name and x-tfy-metadata
def test_job_name_kept_and_header_metadata_merged(tfy: dict[str, openai.OpenAI]) -> None:
    c = tfy["/api/llm"]
    f = upload(c, rows(1, "j"))
    raw = raw_create(
        c,
        f.id,
        metadata={"team": "body", "shared": "from-body"},
        extra_body={"job_name": "nightly-eval"},
        extra_headers={META: json.dumps({"shared": "from-header", "owner": "alice"})},
    )
    assert raw.status_code == 200, raw.text
    expected = {"team": "body", "shared": "from-header", "owner": "alice"}  # header keys win
    body = raw.json()
    assert body["job_name"] == "nightly-eval"
    assert body["metadata"] == expected
    for view in (c, tfy["/api/llm/api/inference/openai"], tfy["/v1"]):
        got = view.batches.with_raw_response.retrieve(body["id"]).http_response.json()
        assert got["job_name"] == "nightly-eval"
        assert got["metadata"] == expected
    listed = c.batches.with_raw_response.list(limit=100).http_response.json()["data"]
    assert [b["job_name"] for b in listed if b["id"] == body["id"]] == ["nightly-eval"]
    wait_terminal(c, body["id"])

    # Header alone (no body metadata) becomes the metadata.
    raw = raw_create(c, f.id, extra_headers={META: '{"only": "header"}'})
    assert raw.status_code == 200, raw.text
    assert raw.json()["metadata"] == {"only": "header"}
    assert "job_name" not in raw.json() or raw.json()["job_name"] is None
    wait_terminal(c, raw.json()["id"])


@pytest.mark.parametrize("job_name", ["", 42, "x" * 257])
def test_bad_job_name_is_400(tfy: dict[str, openai.OpenAI], job_name: Any) -> None:
    c = tfy["/api/llm"]
    f = upload(c, rows(1, "bj"))
    assert_error(raw_create(c, f.id, extra_body={"job_name": job_name}), 400, param="job_name")


@pytest.mark.parametrize(
    "header",
    [
        "not json",
        "[]",
        '"a string"',
        '{"k": 1}',
        '{"k": null}',
        '{"k": {"nested": "x"}}',
        json.dumps({"k": "v" * 129}),
    ],
    ids=["not-json", "array", "string", "number-value", "null-value", "object-value", "value-129-chars"],
)
def test_bad_metadata_header_is_400_naming_header(tfy: dict[str, openai.OpenAI], header: str) -> None:
    c = tfy["/api/llm/api/inference/openai"]
    f = upload(c, rows(1, "bh"))
    before = [b.id for b in c.batches.list(limit=100)]
    assert_error(raw_create(c, f.id, extra_headers={META: header}), 400, param=META)
    assert [b.id for b in c.batches.list(limit=100)] == before  # nothing was created


def test_metadata_header_limits_after_merge(tfy: dict[str, openai.OpenAI]) -> None:
    c = tfy["/api/llm"]
    f = upload(c, rows(1, "ml"))
    body10 = {f"k{i}": "b" for i in range(10)}
    made: list[str] = []

    # A value of exactly 128 characters is fine; 10 body keys + 6 new header keys = 16 keys: fine.
    header6 = {f"h{i}": "v" * 128 for i in range(6)}
    ok = raw_create(c, f.id, metadata=body10, extra_headers={META: json.dumps(header6)})
    assert ok.status_code == 200, ok.text
    assert ok.json()["metadata"] == {**body10, **header6}
    made.append(ok.json()["id"])

    # 16 body keys + a header overriding one of them is still 16 keys: fine, and the header wins.
    body16 = {f"k{i}": "b" for i in range(16)}
    ok = raw_create(c, f.id, metadata=body16, extra_headers={META: '{"k3": "header"}'})
    assert ok.status_code == 200, ok.text
    assert ok.json()["metadata"] == {**body16, "k3": "header"}
    made.append(ok.json()["id"])

    # 10 body keys + 7 new header keys = 17 after the merge: refused, naming the header that pushed it over
    # (the body's metadata is valid on its own). The same for a header of 17 keys and no body metadata.
    header7 = {f"h{i}": "v" for i in range(7)}
    err = assert_error(raw_create(c, f.id, metadata=body10, extra_headers={META: json.dumps(header7)}), 400, param=META)
    assert "16" in err["message"], err
    header17 = {f"h{i}": "v" for i in range(17)}
    err = assert_error(raw_create(c, f.id, extra_headers={META: json.dumps(header17)}), 400, param=META)
    assert "16" in err["message"], err
    for batch_id in made:
        wait_terminal(c, batch_id)


# ---------------------------------------------------------------------------- x-tfy-provider-name
def test_provider_header_pins_batch_to_one_deployment(
    tfy: dict[str, openai.OpenAI], upstream: FakeUpstreamProcess
) -> None:
    c = tfy["/api/llm"]
    data = rows(12, "p", model=PINNED_MODEL, directive="@latency:100")

    # Control: unpinned, the batch spreads over both deployments.
    done = wait_terminal(c, submit(c, data).id)
    assert done.request_counts.completed == 12
    seen = upstream.stats()["models_seen"]
    assert seen.get("up-a", 0) > 0 and seen.get("up-b", 0) > 0, seen
    assert seen.get("up-a", 0) + seen.get("up-b", 0) == 12, seen
    upstream.reset()

    # Pinned on upload: every request reaches dep-b (upstream model "up-b") and none dep-a.
    f = c.files.create(
        file=("in.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in data)),
        purpose="batch",
        extra_headers={PROVIDER: "dep-b"},
    )
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_terminal(c, b.id)
    assert done.status == "completed"
    assert done.request_counts.model_dump() == {"total": 12, "completed": 12, "failed": 0}
    assert upstream.stats()["models_seen"] == {"up-b": 12}
    upstream.reset()

    # Pinned on create (the file carries no pin): only dep-a.
    f = upload(c, data)
    b = c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", extra_headers={PROVIDER: "dep-a"}
    )
    done = wait_terminal(c, b.id)
    assert done.request_counts.model_dump() == {"total": 12, "completed": 12, "failed": 0}
    assert upstream.stats()["models_seen"] == {"up-a": 12}
    out, _ = result_files(c, done, data)
    for r in data:
        assert_echoed(out[r["custom_id"]], r)


def test_default_deployment_name_is_model_slash_index(
    tfy: dict[str, openai.OpenAI], upstream: FakeUpstreamProcess
) -> None:
    c = tfy["/api/llm/api/inference/openai"]
    data = rows(3, "d")
    f = c.files.create(
        file=("in.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in data)),
        purpose="batch",
        extra_headers={PROVIDER: "fake-model/0"},
    )
    done = wait_terminal(
        c, c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id
    )
    assert done.status == "completed" and done.request_counts.completed == 3
    assert upstream.stats()["models_seen"] == {"fake-model": 3}


def test_unknown_provider_name_is_400(tfy: dict[str, openai.OpenAI]) -> None:
    c = tfy["/api/llm"]
    files_before = [x.id for x in c.files.list()]
    err = sdk_error(
        lambda: c.files.create(
            file=("in.jsonl", b"{}\n"), purpose="batch", extra_headers={PROVIDER: "no-such-deployment"}
        ),
        400,
        param=PROVIDER,
    )
    assert "no-such-deployment" in err["message"]
    assert [x.id for x in c.files.list()] == files_before  # nothing stored

    f = upload(c, rows(1, "u"))
    err = assert_error(raw_create(c, f.id, extra_headers={PROVIDER: "dep-z"}), 400, param=PROVIDER)
    assert "dep-z" in err["message"]


@pytest.mark.parametrize(("pin", "model"), [("dep-a", "fake-model"), ("fake-model/0", PINNED_MODEL)])
def test_pinned_deployment_not_serving_model_fails_validation(
    tfy: dict[str, openai.OpenAI], upstream: FakeUpstreamProcess, pin: str, model: str
) -> None:
    c = tfy["/api/llm"]
    data = rows(2, "w", model=model)
    f = c.files.create(
        file=("in.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in data)),
        purpose="batch",
        extra_headers={PROVIDER: pin},
    )
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_terminal(c, b.id)
    assert done.status == "failed", done
    assert done.errors is not None and done.errors.data
    assert done.errors.data[0].code == "model_not_found"
    assert pin in (done.errors.data[0].message or "")
    assert upstream.stats()["requests_total"] == 0


# ---------------------------------------------------------------------------- /output and cancel
def output(http: httpx.Client, prefix: str, batch_id: str) -> list[dict[str, Any]]:
    r = http.get(f"{prefix}/batches/{batch_id}/output")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body, list), body
    return body


def assert_output_shape(line: dict[str, Any]) -> None:
    assert set(line) == {"id", "custom_id", "response", "error"}, line
    assert line["id"].startswith("batch_req_")
    assert line["error"] is None
    assert set(line["response"]) == {"status_code", "request_id", "body"}
    assert line["response"]["status_code"] == 200


def test_output_returns_finished_lines_while_running(tfy: dict[str, openai.OpenAI], http: httpx.Client) -> None:
    c = tfy["/api/llm"]
    fast = rows(6, "fast")
    failing = [chat_line("bad", "no @status:400:*")]
    slow = rows(3, "slow", directive="@latency:2500")
    data = fast + failing + slow
    batch = submit(c, data)

    # Mid-run: exactly the six fast successes (not the failure, not the slow ones), on both prefixes.
    mid = poll_until(
        lambda: (o := output(http, "/api/llm", batch.id)) and len(o) == 6 and o,
        10,
        message="the fast results never showed up in /output",
    )
    running = c.batches.retrieve(batch.id)
    assert running.status == "in_progress", running
    assert 0 < len(mid) < len(data)
    assert {line["custom_id"] for line in mid} == {r["custom_id"] for r in fast}
    by_id = {r["custom_id"]: r for r in data}
    for line in mid:
        assert_output_shape(line)
        assert_echoed(line, by_id[line["custom_id"]])
    other = output(http, "/api/llm/api/inference/openai", batch.id)
    assert 6 <= len(other) < len(data)

    done = wait_terminal(c, batch.id)
    assert done.status == "completed"
    assert done.request_counts.model_dump() == {"total": 10, "completed": 9, "failed": 1}
    final = output(http, "/api/llm/api/inference/openai", batch.id)
    assert len(final) == done.request_counts.completed
    assert sorted(final, key=lambda x: x["custom_id"]) == sorted(
        file_lines(c, done.output_file_id), key=lambda x: x["custom_id"]
    )
    assert_error(http.get("/api/llm/batches/batch_doesnotexist/output"), 404)


def test_output_of_batch_with_nothing_finished_is_empty_array(
    tfy: dict[str, openai.OpenAI], http: httpx.Client
) -> None:
    c = tfy["/api/llm/api/inference/openai"]
    batch = submit(c, rows(2, "e", directive="@latency:20000"))
    wait_batch(c, batch.id, lambda b: b.status == "in_progress", what="never started")
    assert output(http, "/api/llm/api/inference/openai", batch.id) == []
    c.batches.cancel(batch.id)
    assert wait_terminal(c, batch.id).status == "cancelled"


def test_cancel_under_prefix_keeps_finished_results(
    tfy: dict[str, openai.OpenAI], http: httpx.Client, upstream: FakeUpstreamProcess
) -> None:
    c = tfy["/api/llm/api/inference/openai"]
    fast = rows(2, "cf")
    slow = rows(3, "cs", directive="@latency:30000")
    batch = submit(c, fast + slow)
    wait_batch(c, batch.id, lambda b: b.request_counts.completed == 2, what="never finished the fast requests")

    r = http.post(f"/api/llm/api/inference/openai/batches/{batch.id}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == batch.id and r.json()["status"] in ("cancelling", "cancelled")
    done = wait_terminal(c, batch.id)
    assert done.status == "cancelled"
    assert done.cancelled_at is not None
    assert done.request_counts.model_dump() == {"total": 5, "completed": 2, "failed": 3}
    out, err = result_files(c, done, fast + slow)
    assert set(out) == {"cf0", "cf1"}
    for line in err.values():
        assert_ended_with(line, "batch_cancelled")
    assert {line["custom_id"] for line in output(http, "/api/llm", batch.id)} == {"cf0", "cf1"}
    assert_error(http.post(f"/api/llm/batches/{batch.id}/cancel"), 409)
    wait_upstream_idle(upstream, "the cancelled batch's upstream calls were not abandoned")
