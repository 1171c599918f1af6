"""End to end: the OpenAI Batch API (SPEC §2) run for real against the fake upstream, through the SDK."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.helpers import (
    API_ENGINE,
    assert_ended_with,
    assert_error,
    file_lines,
    gateway_config,
    module_server,
    result_files,
    sdk_error,
    submit,
    unexpected_tracebacks,
    upload,
    wait_batch,
    wait_terminal,
    wait_upstream_idle,
)
from tests.fake_upstream import count_tokens, fake_embedding
from tests.harness import (
    FakeUpstreamProcess,
    ServerProcess,
    chat_line,
    free_port,
    openai_client,
    poll_until,
    upstream_model_config,
)

BATCH_KEYS = {
    "id",
    "object",
    "endpoint",
    "model",
    "errors",
    "input_file_id",
    "completion_window",
    "status",
    "output_file_id",
    "error_file_id",
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "request_counts",
    "usage",
    "metadata",
}
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/moderations")


# ---------------------------------------------------------------------------- helpers
def config(upstream_url: str) -> dict[str, Any]:
    return gateway_config(
        upstream_model_config(upstream_url),
        # Nothing listens there: every request ends `upstream_unreachable` after one attempt.
        upstream_model_config(f"http://127.0.0.1:{free_port()}/v1", name="dead-model", max_attempts=1),
        # Gives up quickly: a hung request ends `request_timeout`.
        upstream_model_config(upstream_url, name="impatient-model", max_attempts=1, timeout_s=0.5),
        engine=API_ENGINE,
    )


def line(endpoint: str, custom_id: str, text: str, model: str = "fake-model", **body: Any) -> dict[str, Any]:
    """One input line for any served endpoint."""
    if endpoint == "/v1/chat/completions":
        return chat_line(custom_id, text, model=model, **body)
    key = "prompt" if endpoint == "/v1/completions" else "input"
    return {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": {"model": model, key: text, **body}}


def answer_ok(endpoint: str, body: dict[str, Any], text: str) -> None:
    """The fake upstream's answer to `text` on `endpoint` is what came back."""
    if endpoint == "/v1/chat/completions":
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == "echo: " + text
    elif endpoint == "/v1/completions":
        assert body["choices"][0]["text"] == "echo: " + text
    elif endpoint == "/v1/embeddings":
        assert body["data"][0]["embedding"] == pytest.approx(fake_embedding(text))
    elif endpoint == "/v1/responses":
        assert body["output"][0]["content"][0]["text"] == "echo: " + text
    else:
        assert len(body["results"]) == 1
        assert body["results"][0]["flagged"] is False


def assert_output_line(row: dict[str, Any], status_code: int = 200) -> None:
    assert set(row) == {"id", "custom_id", "response", "error"}, row
    assert re.fullmatch(r"batch_req_[0-9a-zA-Z]+", row["id"]), row["id"]
    assert isinstance(row["custom_id"], str)
    assert row["error"] is None
    assert set(row["response"]) == {"status_code", "request_id", "body"}, row["response"]
    assert row["response"]["status_code"] == status_code
    assert isinstance(row["response"]["request_id"], str)


server = module_server("server", config)


# ---------------------------------------------------------------------------- create and run
def test_create_returns_validating_batch(client: openai.OpenAI) -> None:
    f = upload(client, [chat_line("a", "hello")])
    before = int(time.time())
    raw = client.batches.with_raw_response.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert raw.status_code == 200
    body = raw.http_response.json()
    assert set(body) >= BATCH_KEYS, BATCH_KEYS - set(body)
    assert body["id"].startswith("batch_")
    assert body["object"] == "batch"
    assert body["status"] == "validating"
    assert body["endpoint"] == "/v1/chat/completions"
    assert body["input_file_id"] == f.id
    assert body["completion_window"] == "24h"
    assert before - 1 <= body["created_at"] <= int(time.time()) + 1
    assert body["expires_at"] == body["created_at"] + 86400
    for name in (
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
        "output_file_id",
        "error_file_id",
        "errors",
    ):
        assert body[name] is None, name
    assert body["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert body["metadata"] is None
    wait_terminal(client, body["id"])


def test_batch_runs_to_completion(client: openai.OpenAI, upstream: FakeUpstreamProcess) -> None:
    texts = {f"req-{i}": f"question number {i}" for i in range(11)}
    texts["req-ünï-✓"] = "héllo wörld ✓ 🚀 — ½"  # non-ASCII survives the round trip
    metadata = {"project": "e2e", "owner": "tests", "unicode": "héllo ✓"}
    rows = [chat_line(cid, text) for cid, text in texts.items()]
    batch = submit(client, rows, metadata=metadata)
    done = wait_terminal(client, batch.id)

    assert done.status == "completed", done
    assert done.id == batch.id
    assert done.model == "fake-model"
    assert done.metadata == metadata
    assert done.request_counts is not None
    assert done.request_counts.model_dump() == {"total": len(texts), "completed": len(texts), "failed": 0}
    assert done.errors is None
    assert done.error_file_id is None
    assert done.output_file_id is not None

    # Usage is the sum of what the upstream reported.
    assert done.usage is not None
    expected_in = sum(count_tokens(t) for t in texts.values())
    expected_out = sum(count_tokens("echo: " + t) for t in texts.values())
    assert done.usage.input_tokens == expected_in > 0
    assert done.usage.output_tokens == expected_out > 0
    assert done.usage.total_tokens == expected_in + expected_out
    assert done.usage.input_tokens_details.cached_tokens == 0
    assert done.usage.output_tokens_details.reasoning_tokens == 0

    # Timestamps: set for the path taken, null for the others.
    assert done.in_progress_at is not None and done.finalizing_at is not None and done.completed_at is not None
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at <= time.time() + 1
    assert done.expires_at == done.created_at + 86400
    for name in ("failed_at", "expired_at", "cancelling_at", "cancelled_at"):
        assert getattr(done, name) is None, name

    out = client.files.retrieve(done.output_file_id)
    assert out.purpose == "batch_output"
    assert out.status == "processed"
    assert out.bytes == len(client.files.content(done.output_file_id).content)
    lines, _ = result_files(client, done, rows)  # every custom_id exactly once
    assert len({line["id"] for line in lines.values()}) == len(lines)
    for custom_id, line in lines.items():
        assert_output_line(line)
        answer_ok("/v1/chat/completions", line["response"]["body"], texts[custom_id])
    assert upstream.stats()["by_path"].get("/v1/chat/completions") == len(texts)
    # The output file is an ordinary file: listed with its purpose.
    assert done.output_file_id in [f.id for f in client.files.list(purpose="batch_output")]


def test_mixed_outcomes_every_custom_id_exactly_once(client: openai.OpenAI) -> None:
    good = {f"ok-{i}": f"fine {i}" for i in range(5)}
    bad400 = {f"bad-{i}": f"rejected {i} @status:400:*" for i in range(3)}
    bad500 = {"flaky-forever": "always broken @status:500:*"}
    recovers = {"recovers": "broken twice @status:503:2"}
    rows = [chat_line(c, t) for c, t in {**good, **bad400, **bad500, **recovers}.items()]
    done = wait_terminal(client, submit(client, rows).id)

    # A batch with failed requests still ends `completed`; the counts tell the story.
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert done.request_counts.model_dump() == {"total": 10, "completed": 6, "failed": 4}
    assert done.output_file_id and done.error_file_id
    assert client.files.retrieve(done.error_file_id).purpose == "batch_output"

    out, err = result_files(client, done, rows)  # each custom_id exactly once
    assert len({r["id"] for r in [*out.values(), *err.values()]}) == len(rows)  # request ids unique across both
    assert set(out) == {*good, *recovers}
    for row in out.values():
        assert_output_line(row)
    for cid in bad400:
        assert_output_line(err[cid], status_code=400)  # an HTTP error keeps its response
        assert err[cid]["response"]["body"]["error"]["code"] == "invalid_request"
    assert_output_line(err["flaky-forever"], status_code=500)


def test_unanswered_requests_get_an_error_object(client: openai.OpenAI) -> None:
    dead = wait_terminal(
        client, submit(client, [chat_line("d1", "x", model="dead-model"), chat_line("d2", "y", model="dead-model")]).id
    )
    assert dead.status == "completed"
    assert dead.request_counts is not None
    assert dead.request_counts.model_dump() == {"total": 2, "completed": 0, "failed": 2}
    assert dead.output_file_id is None
    rows = file_lines(client, dead.error_file_id)
    assert sorted(r["custom_id"] for r in rows) == ["d1", "d2"]
    for row in rows:
        assert set(row) == {"id", "custom_id", "response", "error"}
        assert row["response"] is None
        assert set(row["error"]) == {"code", "message"}
        assert row["error"]["code"] == "upstream_unreachable"

    slow = wait_terminal(
        client,
        submit(
            client,
            [
                chat_line("h1", "wait @hang:1", model="impatient-model"),
                chat_line("h2", "quick", model="impatient-model"),
            ],
        ).id,
    )
    assert slow.request_counts is not None
    assert slow.request_counts.model_dump() == {"total": 2, "completed": 1, "failed": 1}
    (timed_out,) = file_lines(client, slow.error_file_id)
    assert timed_out["custom_id"] == "h1"
    assert timed_out["response"] is None
    assert timed_out["error"]["code"] == "request_timeout"
    assert [r["custom_id"] for r in file_lines(client, slow.output_file_id)] == ["h2"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_every_served_endpoint_runs(client: openai.OpenAI, upstream: FakeUpstreamProcess, endpoint: str) -> None:
    texts = {f"{endpoint}-{i}": f"text {i} for {endpoint}" for i in range(3)}
    batch = submit(client, [line(endpoint, cid, t) for cid, t in texts.items()], endpoint=endpoint)
    assert batch.endpoint == endpoint
    done = wait_terminal(client, batch.id)
    assert done.status == "completed", done
    assert done.endpoint == endpoint
    assert done.request_counts is not None
    assert done.request_counts.model_dump() == {"total": 3, "completed": 3, "failed": 0}
    rows = file_lines(client, done.output_file_id)
    assert sorted(r["custom_id"] for r in rows) == sorted(texts)
    for row in rows:
        assert_output_line(row)
        answer_ok(endpoint, row["response"]["body"], texts[row["custom_id"]])
    assert upstream.stats()["by_path"] == {endpoint: 3}
    assert done.usage is not None
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    if endpoint != "/v1/moderations":  # the fake reports no usage for moderations
        assert done.usage.input_tokens > 0


# ---------------------------------------------------------------------------- create parameters
@pytest.fixture(scope="module")
def input_file(server: ServerProcess) -> str:
    with openai_client(server) as c:
        return upload(c, [chat_line("one", "the only line")]).id


@pytest.mark.parametrize("endpoint", ["/v1/images/generations", "/v1/images/edits", "/v1/videos"])
def test_image_and_video_endpoints_are_not_served(client: openai.OpenAI, input_file: str, endpoint: str) -> None:
    sdk_error(
        lambda: client.batches.create(
            input_file_id=input_file,
            endpoint=endpoint,  # type: ignore[arg-type]
            completion_window="24h",
        ),
        400,
        "endpoint",
    )


@pytest.mark.parametrize("endpoint", ["/v1/foo", "/v1/chat/completions/", "v1/embeddings", "", "/v1/files"])
def test_unknown_endpoint_is_400(client: openai.OpenAI, input_file: str, endpoint: str) -> None:
    sdk_error(
        lambda: client.batches.create(
            input_file_id=input_file,
            endpoint=endpoint,  # type: ignore[arg-type]
            completion_window="24h",
        ),
        400,
        "endpoint",
    )


@pytest.mark.parametrize("window", ["25x", "0h", "h", "24", "-1h", "1.5h", "24 h", "", "24h\n", " 24h", "24h "])
def test_bad_completion_window_is_400(client: openai.OpenAI, input_file: str, window: str) -> None:
    sdk_error(
        lambda: client.batches.create(
            input_file_id=input_file, endpoint="/v1/chat/completions", completion_window=window
        ),  # type: ignore[arg-type]
        400,
        "completion_window",
    )


@pytest.mark.parametrize(("window", "seconds"), [("2h", 7200), ("90s", 90), ("30m", 1800), ("1d", 86400)])
def test_completion_window_extension_is_accepted(
    client: openai.OpenAI, input_file: str, window: str, seconds: int
) -> None:
    b = client.batches.create(input_file_id=input_file, endpoint="/v1/chat/completions", completion_window=window)  # type: ignore[arg-type]
    assert b.completion_window == window
    assert b.expires_at == b.created_at + seconds
    assert wait_terminal(client, b.id).status == "completed"


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"key": "v" * 513},
        {"key": 5},
        ["not", "an", "object"],
        "a string",
    ],
)
def test_bad_metadata_is_400(client: openai.OpenAI, input_file: str, metadata: Any) -> None:
    sdk_error(
        lambda: client.batches.create(
            input_file_id=input_file, endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata
        ),
        400,
        "metadata",
    )


def test_metadata_at_the_limits_is_accepted(client: openai.OpenAI, input_file: str) -> None:
    for metadata in ({f"k{i}": "v" for i in range(16)}, {"k" * 64: "v" * 512}):
        b = client.batches.create(
            input_file_id=input_file, endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata
        )
        assert b.metadata == metadata
        assert client.batches.retrieve(b.id).metadata == metadata
        wait_terminal(client, b.id)


def test_unknown_input_file_is_404(client: openai.OpenAI) -> None:
    sdk_error(
        lambda: client.batches.create(
            input_file_id="file-doesnotexist", endpoint="/v1/chat/completions", completion_window="24h"
        ),
        404,
    )


def test_input_file_with_wrong_purpose_is_400(client: openai.OpenAI) -> None:
    f = upload(client, [chat_line("a", "b")], purpose="assistants")
    sdk_error(
        lambda: client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"),
        400,
        "input_file_id",
    )


def test_batch_output_file_cannot_be_an_input(client: openai.OpenAI, input_file: str) -> None:
    done = wait_terminal(
        client,
        client.batches.create(input_file_id=input_file, endpoint="/v1/chat/completions", completion_window="24h").id,
    )
    assert done.output_file_id is not None
    sdk_error(
        lambda: client.batches.create(
            input_file_id=done.output_file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
        400,
        "input_file_id",
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"endpoint": "/v1/chat/completions", "completion_window": "24h"}, "input_file_id"),
        ({"input_file_id": "INPUT", "completion_window": "24h"}, "endpoint"),
        ({"input_file_id": "INPUT", "endpoint": "/v1/chat/completions"}, "completion_window"),
    ],
)
def test_missing_create_parameter_is_400(
    server: ServerProcess, input_file: str, body: dict[str, Any], param: str
) -> None:
    body = {k: input_file if v == "INPUT" else v for k, v in body.items()}
    assert_error(httpx.post(f"{server.base_url}/batches", json=body), 400, param)


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b"", b'"a string"'])
def test_malformed_create_body_is_400(server: ServerProcess, raw: bytes) -> None:
    response = httpx.post(f"{server.base_url}/batches", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400)


def test_output_expires_after_sets_output_expiry(client: openai.OpenAI) -> None:
    rows = [chat_line("ok", "fine"), chat_line("bad", "no @status:400:*")]
    done = wait_terminal(
        client, submit(client, rows, output_expires_after={"anchor": "created_at", "seconds": 3600}).id
    )
    assert done.output_file_id and done.error_file_id
    for file_id in (done.output_file_id, done.error_file_id):
        f = client.files.retrieve(file_id)
        assert f.expires_at == f.created_at + 3600


@pytest.mark.parametrize(
    "value",
    [
        {"anchor": "created_at", "seconds": 10},
        {"anchor": "created_at", "seconds": 2_592_001},
        {"anchor": "elsewhere", "seconds": 3600},
    ],
)
def test_bad_output_expires_after_is_400(client: openai.OpenAI, input_file: str, value: dict[str, Any]) -> None:
    err = sdk_error(
        lambda: client.batches.create(
            input_file_id=input_file,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            output_expires_after=value,
        ),  # type: ignore[arg-type]
        400,
    )
    assert isinstance(err["param"], str) and err["param"].startswith("output_expires_after"), err


# ---------------------------------------------------------------------------- retrieve, list, cancel
def test_retrieve_and_cancel_unknown_batch_are_404(client: openai.OpenAI) -> None:
    for batch_id in ("batch_doesnotexist", "nope", "batch_01m84qjfjwbcr7ymyvfykd2rpb"):
        sdk_error(lambda b=batch_id: client.batches.retrieve(b), 404)
        sdk_error(lambda b=batch_id: client.batches.cancel(b), 404)


def test_list_batches_newest_first_with_pagination(
    make_server: Callable[..., ServerProcess], upstream: FakeUpstreamProcess
) -> None:
    srv = make_server(config(upstream.url))
    with openai_client(srv) as c:
        assert c.batches.list().data == []
        f = upload(c, [chat_line("x", "y")])
        created = [
            c.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"n": str(i)}
            ).id
            for i in range(5)
        ]
        newest_first = list(reversed(created))
        assert [b.id for b in c.batches.list().data] == newest_first  # default limit 20

        seen: list[str] = []
        after: str | None = None
        expected_pages = [newest_first[0:2], newest_first[2:4], newest_first[4:5]]
        for n, expected in enumerate(expected_pages):
            params: dict[str, Any] = {"limit": 2} if after is None else {"limit": 2, "after": after}
            page = c.batches.with_raw_response.list(**params).http_response.json()
            assert page["object"] == "list"
            assert [b["id"] for b in page["data"]] == expected
            assert page["first_id"] == expected[0]
            assert page["last_id"] == expected[-1]
            assert page["has_more"] is (n < len(expected_pages) - 1)
            seen += expected
            after = page["last_id"]
        assert seen == newest_first
        assert [b.id for b in c.batches.list(limit=2)] == newest_first  # SDK auto-pagination
        exact = c.batches.list(limit=5)
        assert [b.id for b in exact.data] == newest_first and exact.has_more is False
        empty = c.batches.with_raw_response.list(after=created[0]).http_response.json()
        assert empty["data"] == [] and empty["has_more"] is False
        # The default page is 20.
        created += [
            c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id
            for _ in range(17)
        ]
        default = c.batches.list()
        assert [b.id for b in default.data] == list(reversed(created))[:20]
        assert default.has_more is True
        assert [b.id for b in c.batches.list()] == list(reversed(created))  # auto-pagination: all 22
        for batch_id in created:
            wait_terminal(c, batch_id)


@pytest.mark.parametrize("limit", [0, 101, -5, "abc"])
def test_list_batches_invalid_limit_is_400(client: openai.OpenAI, limit: Any) -> None:
    sdk_error(lambda: client.batches.list(limit=limit), 400, "limit")


def test_list_batches_limit_100_is_accepted(client: openai.OpenAI) -> None:
    assert client.batches.list(limit=100).data is not None


def test_cancel_of_completed_batch_is_409_and_changes_nothing(client: openai.OpenAI) -> None:
    done = wait_terminal(client, submit(client, [chat_line("a", "b")]).id)
    assert done.status == "completed"
    sdk_error(lambda: client.batches.cancel(done.id), 409)
    assert client.batches.retrieve(done.id).model_dump() == done.model_dump()


def test_cancel_of_failed_batch_is_409(client: openai.OpenAI) -> None:
    f = client.files.create(file=("broken.jsonl", b"{broken\n"), purpose="batch")
    failed = wait_terminal(
        client, client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id
    )
    assert failed.status == "failed"
    sdk_error(lambda: client.batches.cancel(failed.id), 409)
    assert client.batches.retrieve(failed.id).model_dump() == failed.model_dump()


def test_cancel_running_batch_keeps_finished_results(client: openai.OpenAI, upstream: FakeUpstreamProcess) -> None:
    quick = {f"quick-{i}": f"fast {i}" for i in range(3)}
    stuck = {f"stuck-{i}": f"never answered {i} @hang:1" for i in range(4)}
    rows = [chat_line(c, t) for c, t in {**quick, **stuck}.items()]
    batch = submit(client, rows)
    wait_batch(
        client,
        batch.id,
        lambda b: b.status == "in_progress" and b.request_counts is not None and b.request_counts.completed == 3,
        timeout=10,
        what="the quick requests never finished",
    )
    poll_until(lambda: upstream.stats()["in_flight"] >= 4, timeout=10, message="the stuck requests never started")
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at is not None

    done = wait_terminal(client, batch.id)
    assert done.status == "cancelled", done
    assert done.cancelled_at is not None and done.cancelling_at is not None
    assert done.cancelling_at <= done.cancelled_at
    assert done.completed_at is None and done.failed_at is None and done.expired_at is None
    assert done.request_counts is not None
    assert done.request_counts.model_dump() == {"total": 7, "completed": 3, "failed": 4}
    out, err = result_files(client, done, rows)
    assert set(out) == set(quick)
    assert set(err) == set(stuck)
    for row in err.values():
        assert_ended_with(row, "batch_cancelled")
    # Cancelling again is a conflict: it is already over.
    sdk_error(lambda: client.batches.cancel(batch.id), 409)
    wait_upstream_idle(upstream, "hung upstream calls not closed")


def test_cancel_while_validating(client: openai.OpenAI, upstream: FakeUpstreamProcess) -> None:
    rows = [chat_line(f"v-{i}", f"line {i} @hang:1") for i in range(3000)]
    batch = submit(client, rows)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling", cancelling
    done = wait_terminal(client, batch.id)
    assert done.status == "cancelled", done
    assert done.cancelled_at is not None and done.completed_at is None and done.failed_at is None
    assert done.request_counts is not None
    counts = done.request_counts
    if done.in_progress_at is None:  # cut off before anything ran: nothing to report
        assert counts.model_dump() == {"total": 0, "completed": 0, "failed": 0}
        assert done.output_file_id is None and done.error_file_id is None
    else:  # validation won the race: every request is accounted for exactly once
        assert counts.total == 3000 and counts.completed + counts.failed == 3000
        result_files(client, done, rows)
    wait_upstream_idle(upstream, "hung upstream calls not closed")


def test_window_passing_expires_the_batch(client: openai.OpenAI, upstream: FakeUpstreamProcess) -> None:
    quick = {f"quick-{i}": f"fast {i}" for i in range(2)}
    stuck = {f"stuck-{i}": f"never answered {i} @hang:1" for i in range(3)}
    rows = [chat_line(c, t) for c, t in {**quick, **stuck}.items()]
    batch = submit(client, rows, completion_window="2s")
    assert batch.expires_at == batch.created_at + 2
    done = wait_terminal(client, batch.id, timeout=15)
    assert done.status == "expired", done
    assert done.expired_at is not None and done.expired_at >= batch.expires_at
    assert done.completed_at is None and done.cancelled_at is None and done.failed_at is None
    assert done.request_counts is not None
    assert done.request_counts.model_dump() == {"total": 5, "completed": 2, "failed": 3}
    out, err = result_files(client, done, rows)
    assert set(out) == set(quick)
    assert set(err) == set(stuck)
    for row in err.values():
        assert_ended_with(row, "batch_expired")
    sdk_error(lambda: client.batches.cancel(batch.id), 409)
    wait_upstream_idle(upstream, "hung upstream calls not closed")


def test_no_unhandled_errors_in_server_log(server: ServerProcess) -> None:
    assert unexpected_tracebacks(server.log_text()) == []
