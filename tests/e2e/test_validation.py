"""End to end: input-file validation (SPEC §2). A bad file fails the batch with `errors.data[]`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest
from openai.types import Batch

from tests.e2e.helpers import (
    API_ENGINE,
    CHAT,
    file_lines,
    gateway_config,
    jsonl,
    module_server,
    submit,
    unexpected_tracebacks,
    wait_terminal,
)
from tests.harness import FakeUpstreamProcess, ServerProcess, chat_line, openai_client, upstream_model_config


# ---------------------------------------------------------------------------- helpers
def config(upstream_url: str, **limits: int) -> dict[str, Any]:
    return gateway_config(
        upstream_model_config(upstream_url),
        upstream_model_config(upstream_url, name="other-model"),
        engine=API_ENGINE,
        **limits,
    )


def run(client: openai.OpenAI, content: bytes, endpoint: str = CHAT) -> Batch:
    batch = submit(client, content, endpoint)
    assert batch.status == "validating"
    return wait_terminal(client, batch.id)


def errors_of(batch: Batch) -> list[dict[str, Any]]:
    """The batch failed validation the way SPEC §2 says; returns its `errors.data` as dicts."""
    assert batch.status == "failed", batch
    assert batch.failed_at is not None and batch.failed_at >= batch.created_at
    for name in (
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
        "output_file_id",
        "error_file_id",
    ):
        assert getattr(batch, name) is None, name
    assert batch.request_counts is not None
    assert batch.request_counts.model_dump() == {"total": 0, "completed": 0, "failed": 0}
    assert batch.errors is not None
    data = [e.model_dump() for e in batch.errors.data or []]
    assert data, batch.errors
    for entry in data:
        assert set(entry) == {"code", "message", "param", "line"}, entry
        assert isinstance(entry["message"], str) and entry["message"]
        assert entry["line"] is None or (isinstance(entry["line"], int) and entry["line"] >= 1)
    return data


def summary(data: list[dict[str, Any]]) -> list[tuple[str, int | None, str | None]]:
    return [(e["code"], e["line"], e["param"]) for e in data]


def fails_with(
    client: openai.OpenAI, content: bytes, expected: list[tuple[str, int | None, str | None]], endpoint: str = CHAT
) -> list[dict[str, Any]]:
    data = errors_of(run(client, content, endpoint))
    assert summary(data) == expected, data
    return data


server = module_server("server", config)


def good(n: int) -> dict[str, Any]:
    return chat_line(f"req-{n}", f"hello {n}")


# ---------------------------------------------------------------------------- one code each
def test_invalid_json_line(client: openai.OpenAI, upstream: FakeUpstreamProcess) -> None:
    fails_with(
        client, jsonl(good(1), b'{"custom_id": "req-2", "method": "POST",', good(3)), [("invalid_json_line", 2, None)]
    )
    assert upstream.stats()["requests_total"] == 0  # nothing of a bad file runs


def test_json_array_line_is_invalid(client: openai.OpenAI) -> None:
    fails_with(client, jsonl(good(1), [good(2)]), [("invalid_json_line", 2, None)])


@pytest.mark.parametrize("raw", [b'"just a string"', b"42", b"null", b"true"])
def test_json_scalar_line_is_invalid(client: openai.OpenAI, raw: bytes) -> None:
    fails_with(client, jsonl(raw, good(2)), [("invalid_json_line", 1, None)])


def test_non_utf8_line_is_invalid_json(client: openai.OpenAI) -> None:
    fails_with(
        client,
        jsonl(good(1), good(2), b'{"custom_id": "\xff\xfe", "method": "POST"}'),
        [("invalid_json_line", 3, None)],
    )


def test_missing_custom_id(client: openai.OpenAI) -> None:
    row = good(2)
    del row["custom_id"]
    fails_with(client, jsonl(good(1), row), [("missing_required_parameter", 2, "custom_id")])


def test_missing_body(client: openai.OpenAI) -> None:
    row = good(1)
    del row["body"]
    fails_with(client, jsonl(row, good(2)), [("missing_required_parameter", 1, "body")])


def test_missing_body_model(client: openai.OpenAI) -> None:
    row = good(3)
    del row["body"]["model"]
    fails_with(client, jsonl(good(1), good(2), row), [("missing_required_parameter", 3, "body.model")])


@pytest.mark.parametrize("field", ["method", "url"])
def test_missing_method_or_url(client: openai.OpenAI, field: str) -> None:
    row = good(2)
    del row[field]
    fails_with(client, jsonl(good(1), row), [("missing_required_parameter", 2, field)])


@pytest.mark.parametrize("body", [[1, 2], "text", 7])
def test_body_that_is_not_an_object(client: openai.OpenAI, body: Any) -> None:
    row = good(1)
    row["body"] = body
    data = errors_of(run(client, jsonl(row, good(2))))
    assert [(e["line"], e["param"]) for e in data] == [(1, "body")]


@pytest.mark.parametrize("custom_id", ["", 17, None, ["a"]])
def test_custom_id_that_is_not_a_non_empty_string(client: openai.OpenAI, custom_id: Any) -> None:
    row = good(1)
    row["custom_id"] = custom_id
    data = errors_of(run(client, jsonl(good(0), row)))
    assert [(e["line"], e["param"]) for e in data] == [(2, "custom_id")]


def test_invalid_url(client: openai.OpenAI) -> None:
    row = good(2)
    row["url"] = "/v1/completions"
    fails_with(client, jsonl(good(1), row), [("invalid_url", 2, "url")])


def test_invalid_method(client: openai.OpenAI) -> None:
    row = good(1)
    row["method"] = "GET"
    fails_with(client, jsonl(row, good(2)), [("invalid_method", 1, "method")])


def test_duplicate_custom_id_reports_the_repeat(client: openai.OpenAI) -> None:
    fails_with(client, jsonl(good(1), good(2), good(1), good(4)), [("duplicate_custom_id", 3, "custom_id")])


def test_mismatched_model(client: openai.OpenAI) -> None:
    fails_with(
        client,
        jsonl(good(1), chat_line("req-2", "x", model="other-model"), good(3)),
        [("mismatched_model", 2, "body.model")],
    )


def test_model_not_found(client: openai.OpenAI) -> None:
    rows = [chat_line(f"req-{i}", "x", model="no-such-model") for i in range(3)]
    data = fails_with(client, jsonl(*rows), [("model_not_found", 1, "body.model")])  # reported once, not per line
    assert "no-such-model" in data[0]["message"]


def test_streaming_unsupported(client: openai.OpenAI) -> None:
    fails_with(
        client, jsonl(good(1), chat_line("req-2", "x", stream=True)), [("streaming_unsupported", 2, "body.stream")]
    )


def test_stream_false_is_fine(client: openai.OpenAI) -> None:
    done = run(client, jsonl(chat_line("a", "x", stream=False), good(2)))
    assert done.status == "completed", done


def test_empty_file(client: openai.OpenAI) -> None:
    data = errors_of(run(client, b""))
    assert [e["code"] for e in data] == ["empty_file"]
    assert data[0]["line"] is None


def test_file_of_blank_lines_is_empty(client: openai.OpenAI) -> None:
    data = errors_of(run(client, b"\n\n   \n\r\n\t\n"))
    assert [e["code"] for e in data] == ["empty_file"]


def test_several_errors_in_one_file_are_all_reported(client: openai.OpenAI) -> None:
    no_id = good(2)
    del no_id["custom_id"]
    get = good(4)
    get["method"] = "GET"
    data = fails_with(
        client,
        jsonl(good(1), no_id, b"{oops", get, good(1)),
        [
            ("missing_required_parameter", 2, "custom_id"),
            ("invalid_json_line", 3, None),
            ("invalid_method", 4, "method"),
            ("duplicate_custom_id", 5, "custom_id"),
        ],
    )
    assert len(data) == 4


def test_line_numbers_count_blank_lines(client: openai.OpenAI) -> None:
    # Blank lines are not requests, but they are lines: a 1-based line number points at the file.
    fails_with(client, jsonl(good(1), b"", b"   ", b"not json"), [("invalid_json_line", 4, None)])


def test_more_than_100_errors_are_capped_with_a_total(client: openai.OpenAI) -> None:
    content = jsonl(*[b"{broken" for _ in range(150)])
    batch = run(client, content)
    data = errors_of(batch)
    assert len(data) == 100
    assert [e["line"] for e in data] == list(range(1, 101))
    assert {e["code"] for e in data} == {"invalid_json_line"}
    raw = client.batches.with_raw_response.retrieve(batch.id).http_response.json()
    assert raw["errors"]["object"] == "list"
    assert raw["errors"]["total"] == 150  # batchgate's extension: the real count


def test_exactly_100_errors_are_all_listed(client: openai.OpenAI) -> None:
    batch = run(client, jsonl(*[b"[]" for _ in range(100)]))
    assert len(errors_of(batch)) == 100
    raw = client.batches.with_raw_response.retrieve(batch.id).http_response.json()
    assert raw["errors"]["total"] == 100


def test_error_entries_survive_the_sdk(client: openai.OpenAI) -> None:
    batch = run(client, jsonl(good(1), b"{"))
    assert batch.errors is not None and batch.errors.data
    (entry,) = batch.errors.data
    assert entry.code == "invalid_json_line"
    assert entry.line == 2


# ---------------------------------------------------------------------------- limits (own servers)
def test_too_many_requests(make_server: Callable[..., ServerProcess], upstream: FakeUpstreamProcess) -> None:
    srv = make_server(config(upstream.url, max_requests_per_batch=3))
    with openai_client(srv) as c:
        data = errors_of(run(c, jsonl(good(1), good(2), good(3), good(4))))
        assert [(e["code"], e["line"]) for e in data] == [("too_many_requests", 4)]
        # At the limit is fine.
        assert run(c, jsonl(good(1), good(2), good(3))).status == "completed"
    assert upstream.stats()["requests_total"] == 3


def test_file_too_large(make_server: Callable[..., ServerProcess], upstream: FakeUpstreamProcess) -> None:
    srv = make_server(config(upstream.url, max_file_bytes=100))
    with openai_client(srv) as c:
        content = jsonl(good(1), good(2))
        assert len(content) > 100
        data = errors_of(run(c, content))
        assert [e["code"] for e in data] == ["file_too_large"]
        # Exactly at the limit is fine: one compact request padded with JSON whitespace to 100 bytes.
        small = json.dumps(
            {"custom_id": "a", "method": "POST", "url": CHAT, "body": {"model": "fake-model"}}, separators=(",", ":")
        ).encode()
        small = small[:-1] + b" " * (99 - len(small)) + b"}\n"
        assert len(small) == 100
        assert run(c, small).status == "completed"


# ---------------------------------------------------------------------------- what is valid
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_line_endings_are_accepted(client: openai.OpenAI, newline: str) -> None:
    content = jsonl(good(1), good(2), good(3), sep=newline)
    done = run(client, content)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert done.request_counts.model_dump() == {"total": 3, "completed": 3, "failed": 0}
    assert done.output_file_id is not None
    rows = file_lines(client, done.output_file_id)
    assert sorted(r["custom_id"] for r in rows) == ["req-1", "req-2", "req-3"]
    for row in rows:
        assert row["response"]["body"]["choices"][0]["message"]["content"] == "echo: hello " + row["custom_id"][4:]


def test_no_trailing_newline_and_blank_lines_are_fine(client: openai.OpenAI) -> None:
    content = jsonl(good(1)) + b"\n   \n" + jsonl(good(2)) + json.dumps(good(3)).encode()
    done = run(client, content)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert done.request_counts.total == 3 and done.request_counts.completed == 3


def test_other_endpoint_lines_validate_against_their_endpoint(client: openai.OpenAI) -> None:
    row = {"custom_id": "e1", "method": "POST", "url": "/v1/embeddings", "body": {"model": "fake-model", "input": "x"}}
    assert run(client, jsonl(row), endpoint="/v1/embeddings").status == "completed"
    fails_with(client, jsonl(row), [("invalid_url", 1, "url")], endpoint=CHAT)


def test_no_unhandled_errors_in_server_log(server: ServerProcess) -> None:
    assert unexpected_tracebacks(server.log_text()) == []
