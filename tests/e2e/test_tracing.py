"""OpenTelemetry traces: with `OTEL_TRACES_EXPORTER=console` the server prints its spans (API
requests, validation, each upstream attempt, finalisation) with the batch and request ids; without
it, none."""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.helpers import single_model_config, submit, wait_terminal
from tests.harness import FakeUpstreamProcess, ServerProcess, chat_line, openai_client, poll_until

TRACING = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": "bg-test"}
SPAN_START = '{\n    "name": '


def printed_spans(server: ServerProcess) -> list[dict[str, Any]]:
    """The spans the console exporter wrote into the server's log (pretty-printed JSON objects)."""
    text, decoder, spans, at = server.log_text(), json.JSONDecoder(), [], 0
    while (at := text.find(SPAN_START, at)) >= 0:
        span, end = decoder.raw_decode(text, at)
        spans.append(span)
        at = end
    return spans


def named(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name]


def run_batch(server: ServerProcess) -> tuple[str, list[dict[str, Any]]]:
    rows = [chat_line("ok", "hello"), chat_line("flaky", "once more @status:500:1")]
    with openai_client(server) as client:
        batch = wait_terminal(client, submit(client, rows).id)
        assert batch.status == "completed" and batch.request_counts.completed == 2, batch
    return batch.id, rows


def test_spans_cover_the_api_the_validation_every_attempt_and_the_finalisation(
    make_server: Any, upstream: FakeUpstreamProcess
) -> None:
    server = make_server(single_model_config(upstream.url, max_attempts=3), env=TRACING)
    batch_id, _ = run_batch(server)
    spans = poll_until(
        lambda: (s := printed_spans(server)) and named(s, "batch finalize") and s,
        15,
        message=lambda: f"no finalize span printed:\n{server.log_tail()}",
    )

    assert {s["resource"]["attributes"]["service.name"] for s in spans} == {"bg-test"}
    create = named(spans, "POST /batches")
    assert [s["attributes"]["http.response.status_code"] for s in create] == [200]
    assert create[0]["attributes"]["batchgate.dialect"] == "openai"
    assert create[0]["attributes"]["url.path"] == "/v1/batches"

    (validate,) = named(spans, "batch validate")
    assert validate["attributes"] == {"batchgate.batch_id": batch_id}

    attempts = named(spans, "upstream /v1/chat/completions")
    by_request = {
        (s["attributes"]["batchgate.custom_id"], s["attributes"]["batchgate.attempt"]): s["attributes"]
        for s in attempts
    }
    assert sorted(by_request) == [("flaky", 1), ("flaky", 2), ("ok", 1)]
    assert by_request[("flaky", 1)]["http.response.status_code"] == 500
    assert by_request[("flaky", 1)]["error.type"] == "500"
    assert by_request[("flaky", 2)]["http.response.status_code"] == 200 and "error.type" not in by_request[("flaky", 2)]
    for attributes in by_request.values():
        assert attributes["batchgate.batch_id"] == batch_id
        assert attributes["batchgate.model"] == "fake-model"
        assert attributes["batchgate.upstream_request_id"].startswith("req_")

    (finalize,) = named(spans, "batch finalize")
    assert finalize["attributes"] == {
        "batchgate.batch_id": batch_id,
        "batchgate.status": "completed",
        "batchgate.requests": 2,
    }


def test_no_spans_without_the_environment(make_server: Any, upstream: FakeUpstreamProcess) -> None:
    server = make_server(single_model_config(upstream.url))
    run_batch(server)
    assert printed_spans(server) == []
    assert "OpenTelemetry" not in server.log_text()
