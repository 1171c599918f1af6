"""What an operator sees: Prometheus series for the API, the upstream calls and the queue, and JSON
logs that carry batch and request ids."""

from __future__ import annotations

import json
import re

import httpx

from tests.e2e.helpers import ENGINE, gateway_config, result_files, submit, wait_terminal
from tests.harness import FakeUpstreamProcess, chat_line, openai_client, upstream_model_config


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one series; 0 when absent. Labels must match exactly (order-free)."""
    for line in metrics.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) == labels:
            return float(match.group(2))
    return 0.0


def test_metrics_count_api_calls_upstream_attempts_tokens_cost_and_the_queue(
    upstream: FakeUpstreamProcess, make_server
) -> None:
    model = {
        **upstream_model_config(upstream.url, max_concurrency=4, name="fast", max_attempts=3),
        "price": {"input_per_mtok": 1000.0, "output_per_mtok": 2000.0},
    }
    server = make_server(gateway_config(model))
    # One line fails twice with a 503 then succeeds; one is throttled once; the rest answer at once.
    rows = [
        chat_line("flaky", "flaky @status:503:2", model="fast"),
        chat_line("busy", "busy @status:429:1", model="fast"),
        *[chat_line(f"ok{i}", f"fine {i}", model="fast") for i in range(8)],
    ]
    with openai_client(server) as client:
        batch = wait_terminal(client, submit(client, rows).id)
        assert batch.request_counts.model_dump() == {"total": 10, "completed": 10, "failed": 0}
        out, _ = result_files(client, batch, rows)
        client.batches.retrieve(batch.id)
    metrics = httpx.get(f"{server.url}/metrics").text

    # The API: by dialect, the route template (never an id) and status.
    assert (
        sample(metrics, "batchgate_http_requests_total", dialect="openai", route="/batches/{batch_id}", status="200")
        >= 2
    )
    assert sample(metrics, "batchgate_http_requests_total", dialect="openai", route="/files", status="200") == 1
    assert batch.id not in metrics
    assert sample(metrics, "batchgate_http_request_duration_seconds_count", dialect="openai", route="/batches") == 1
    # Upstream attempts by deployment and status: 8 + 1 + 1 successes, two 503s, one 429.
    deployment = "fast/0"
    assert sample(metrics, "batchgate_upstream_replies_total", model="fast", deployment=deployment, status="200") == 10
    assert sample(metrics, "batchgate_upstream_replies_total", model="fast", deployment=deployment, status="503") == 2
    assert sample(metrics, "batchgate_upstream_throttled_total", deployment=deployment) == 1
    assert sample(metrics, "batchgate_upstream_retries_total", model="fast") == 3
    assert sample(metrics, "batchgate_upstream_latency_seconds_count", deployment=deployment) == 13
    assert sample(metrics, "batchgate_upstream_in_flight", deployment=deployment) == 0
    # Tokens and cost as the upstream reported them, at the configured price.
    input_tokens = sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in out.values())
    output_tokens = sum(line["response"]["body"]["usage"]["completion_tokens"] for line in out.values())
    assert (input_tokens, output_tokens) == (batch.usage.input_tokens, batch.usage.output_tokens)
    assert sample(metrics, "batchgate_tokens_total", model="fast", kind="input") == input_tokens
    assert sample(metrics, "batchgate_tokens_total", model="fast", kind="output") == output_tokens
    expected_cost = (input_tokens * 1000.0 + output_tokens * 2000.0) / 1e6
    assert abs(sample(metrics, "batchgate_cost_usd_total", model="fast") - expected_cost) < 1e-9
    assert sample(metrics, "batchgate_requests_finished_total", outcome="succeeded") == 10
    assert 'batchgate_requests_queued{model="fast"}' in metrics


def test_json_logs_carry_batch_and_request_ids(upstream: FakeUpstreamProcess, make_server) -> None:
    server = make_server(
        gateway_config(upstream_model_config(upstream.url), engine=ENGINE),
        env={"BATCHGATE_LOG_LEVEL": "DEBUG"},
        extra_args=["--log-format", "json"],
    )
    rows = [chat_line(f"j{i}", f"json {i}") for i in range(3)]
    with openai_client(server) as client:
        batch = wait_terminal(client, submit(client, rows).id)
        assert batch.status == "completed"
    server.stop()
    records = [
        json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")
    ]  # the harness writes its own "=== start" markers
    assert records and all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    mine = [r for r in records if r.get("batch_id") == batch.id]
    assert any(r.get("status") == "completed" and r["level"] == "info" for r in mine), mine
    per_request = {r["custom_id"]: r for r in mine if "custom_id" in r}
    assert set(per_request) == {"j0", "j1", "j2"}
    assert all(r["status"] == 200 and r["line_no"] >= 1 for r in per_request.values())
