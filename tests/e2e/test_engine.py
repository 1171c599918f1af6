"""End to end: how the engine executes a batch, as a user sees it (statuses, counts, result files).

Retries, timeouts, unreachable upstreams, per-deployment concurrency, fairness between batches
and the exact request the upstream receives. The fake upstream takes its faults from the
message text of each line (see tests/fake_upstream.py), so one batch can mix behaviours.
"""

from __future__ import annotations

import threading
import time

import pytest
from openai.types import Batch

from tests.e2e.helpers import (
    TERMINAL,
    MakeClient,
    assert_echoed,
    assert_ended_with,
    content_of,
    gateway_config,
    jsonl,
    result_files,
    single_model_config,
    submit,
    wait_terminal,
    wait_upstream_idle,
)
from tests.fake_upstream import count_tokens
from tests.harness import FakeUpstreamProcess, chat_line, free_port, poll_until, upstream_model_config


# ---------------------------------------------------------------------------- retries
def test_transient_failures_are_retried_until_success(upstream: FakeUpstreamProcess, make_client: MakeClient) -> None:
    client = make_client(single_model_config(upstream.url, max_attempts=3))
    rows = [
        chat_line("twice-429", "a @status:429:2"),  # 429, 429, 200: three attempts
        chat_line("once-500", "b @status:500:1"),  # 500, 200
        chat_line("once-reset", "c @reset:1"),  # connection reset, 200
        chat_line("reset-then-503", "d @reset:1 @status:503:2"),  # reset, 503, 200 (counts from attempt 1)
        chat_line("clean", "e"),  # 200
    ]
    batch = wait_terminal(client, submit(client, rows).id)

    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 5, "completed": 5, "failed": 0}
    assert batch.error_file_id is None
    out, err = result_files(client, batch, rows)
    assert err == {}
    for row in rows:
        assert_echoed(out[row["custom_id"]], row)
    stats = upstream.stats()
    # Each status below comes from one line only, so this pins every line's attempts exactly.
    assert stats["by_status"] == {"429": 2, "500": 1, "reset": 2, "503": 1, "200": 5}
    assert stats["requests_total"] == 3 + 2 + 2 + 3 + 1


def test_single_line_429_twice_takes_three_attempts(upstream: FakeUpstreamProcess, make_client: MakeClient) -> None:
    client = make_client(single_model_config(upstream.url, max_attempts=3))
    rows = [chat_line("only", "hello @status:429:2")]
    batch = wait_terminal(client, submit(client, rows).id)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 1, "completed": 1, "failed": 0}
    out, _ = result_files(client, batch, rows)
    assert_echoed(out["only"], rows[0])
    stats = upstream.stats()
    assert stats["requests_total"] == 3
    assert stats["bodies_seen"] == 1 and stats["bodies_repeated"] == 1


def test_permanent_failures_land_in_the_error_file(upstream: FakeUpstreamProcess, make_client: MakeClient) -> None:
    """429 forever exhausts max_attempts; a 400 is not retried at all. Both keep the upstream's answer."""
    client = make_client(single_model_config(upstream.url, max_attempts=3))
    rows = [
        chat_line("always-429", "x @status:429:*"),
        chat_line("bad-request", "y @status:400:*"),
        chat_line("fine", "z"),
    ]
    batch = wait_terminal(client, submit(client, rows).id)

    assert batch.status == "completed"  # a batch with failed requests still completes
    assert batch.request_counts.model_dump() == {"total": 3, "completed": 1, "failed": 2}
    out, err = result_files(client, batch, rows)
    assert set(out) == {"fine"} and set(err) == {"always-429", "bad-request"}
    assert_echoed(out["fine"], rows[2])

    limited = err["always-429"]
    assert limited["error"] is None
    assert limited["response"]["status_code"] == 429
    assert limited["response"]["request_id"].startswith("req_")
    assert limited["response"]["body"] == {
        "error": {
            "message": "injected status 429 (attempt 3)",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    bad = err["bad-request"]
    assert bad["error"] is None
    assert bad["response"]["status_code"] == 400
    assert bad["response"]["body"] == {
        "error": {
            "message": "injected status 400 (attempt 1)",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_request",
        }
    }
    stats = upstream.stats()
    assert stats["by_status"] == {"429": 3, "400": 1, "200": 1}  # exactly max_attempts, and one for the 400


def test_retry_after_is_honoured(upstream: FakeUpstreamProcess, make_client: MakeClient) -> None:
    client = make_client(single_model_config(upstream.url, max_attempts=3))
    rows = [chat_line("slow-down", "wait for me @status:429:1 @retry_after:1")]

    # Watch the upstream's request counter from a thread and note when each attempt arrived.
    arrivals: dict[int, float] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            total = upstream.stats()["requests_total"]
            now = time.monotonic()
            for n in range(1, total + 1):
                arrivals.setdefault(n, now)
            stop.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        batch = wait_terminal(client, submit(client, rows).id)
    finally:
        stop.set()
        sampler.join(5)

    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 1, "completed": 1, "failed": 0}
    out, _ = result_files(client, batch, rows)
    assert_echoed(out["slow-down"], rows[0])
    assert upstream.stats()["by_status"] == {"429": 1, "200": 1}
    gap = arrivals[2] - arrivals[1]
    # The backoff alone would be ~0.02 s; Retry-After: 1 makes it at least 1 s (minus sampling jitter).
    assert 0.9 <= gap < 5.0, f"retry came {gap:.3f} s after the 429"


def test_hung_upstream_times_out(upstream: FakeUpstreamProcess, make_client: MakeClient) -> None:
    client = make_client(single_model_config(upstream.url, timeout_s=0.5, max_attempts=2))
    rows = [chat_line("hangs", "never answered @hang:1000"), chat_line("answers", "fine")]
    started = time.monotonic()
    batch = wait_terminal(client, submit(client, rows).id)
    elapsed = time.monotonic() - started

    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 2, "completed": 1, "failed": 1}
    out, err = result_files(client, batch, rows)
    assert_echoed(out["answers"], rows[1])
    assert_ended_with(err["hangs"], "request_timeout")
    assert upstream.stats()["by_status"] == {"hang": 2, "200": 1}  # max_attempts attempts
    assert elapsed >= 2 * 0.5  # two timeouts of 0.5 s each
    wait_upstream_idle(upstream)  # the gateway hung up on the hanging calls


def test_unreachable_upstream(upstream: FakeUpstreamProcess, make_client: MakeClient) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    client = make_client(single_model_config(dead, max_attempts=2))
    rows = [chat_line(f"r{i}", f"nobody home {i}") for i in range(3)]
    batch = wait_terminal(client, submit(client, rows).id)

    assert batch.status == "completed"  # all failed, still completed: the counts tell the story
    assert batch.request_counts.model_dump() == {"total": 3, "completed": 0, "failed": 3}
    assert batch.usage.total_tokens == 0
    out, err = result_files(client, batch, rows)
    assert out == {}
    for row in rows:
        line = err[row["custom_id"]]
        assert line["response"] is None
        assert line["error"]["code"] == "upstream_unreachable"
        assert line["error"]["message"]
    assert upstream.stats()["requests_total"] == 0


# ---------------------------------------------------------------------------- scheduling
def test_max_concurrency_bounds_upstream_in_flight(upstream: FakeUpstreamProcess, make_client: MakeClient) -> None:
    wait_upstream_idle(upstream)
    upstream.reset()
    client = make_client(single_model_config(upstream.url, max_concurrency=4))
    rows = [chat_line(f"c{i:02d}", f"slow {i} @latency:100") for i in range(40)]
    batch = wait_terminal(client, submit(client, rows).id)

    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 40, "completed": 40, "failed": 0}
    out, _ = result_files(client, batch, rows)
    for row in rows:
        assert_echoed(out[row["custom_id"]], row)
    stats = upstream.stats()
    assert stats["requests_total"] == 40
    assert stats["max_in_flight"] == 4  # never more than the deployment allows, and it is used fully


def test_two_batches_share_one_model_fairly(upstream: FakeUpstreamProcess, make_client: MakeClient) -> None:
    client = make_client(single_model_config(upstream.url, max_concurrency=2))
    first_rows = [chat_line(f"a{i:02d}", f"first {i} @latency:150") for i in range(24)]
    second_rows = [chat_line(f"b{i}", f"second {i} @latency:150") for i in range(4)]
    first = submit(client, first_rows)
    second = submit(client, second_rows)

    observations: list[tuple[Batch, Batch]] = []

    def both_done() -> bool:
        a, b = client.batches.retrieve(first.id), client.batches.retrieve(second.id)
        observations.append((a, b))
        return a.status in TERMINAL and b.status in TERMINAL

    poll_until(both_done, 30, 0.03, message="batches did not finish")
    overtaken = [
        (a, b)
        for a, b in observations
        if b.request_counts.completed > 0 and a.request_counts.completed + a.request_counts.failed < len(first_rows)
    ]
    assert overtaken, "the second batch made no progress until the first had finished"
    # Stronger: the small batch finished while the big one was still running.
    assert any(b.status == "completed" and a.status == "in_progress" for a, b in observations)

    for batch_id, rows in ((first.id, first_rows), (second.id, second_rows)):
        batch = client.batches.retrieve(batch_id)
        assert batch.status == "completed"
        assert batch.request_counts.model_dump() == {"total": len(rows), "completed": len(rows), "failed": 0}
        out, _ = result_files(client, batch, rows)
        for row in rows:
            assert_echoed(out[row["custom_id"]], row)
    assert upstream.stats()["max_in_flight"] <= 2


# ---------------------------------------------------------------------------- what the upstream receives
def test_upstream_gets_the_deployments_model_and_key(upstream: FakeUpstreamProcess, make_client: MakeClient) -> None:
    model = upstream_model_config(upstream.url, name="fake-model", model="upstream-name", api_key="sk-deploy-7")
    client = make_client(gateway_config(model), api_key="client-key-never-forwarded")
    rows = [chat_line(f"s{i}", f"shape {i} " + "w" * (i * 13)) for i in range(3)]
    batch = wait_terminal(client, submit(client, rows).id)

    assert batch.status == "completed"
    assert batch.model == "fake-model"  # the user's name for it
    assert batch.request_counts.model_dump() == {"total": 3, "completed": 3, "failed": 0}
    stats = upstream.stats()
    assert stats["models_seen"] == {"upstream-name": 3}
    assert stats["auth_headers"] == ["Bearer sk-deploy-7"]
    assert stats["by_path"] == {"/v1/chat/completions": 3}

    out, _ = result_files(client, batch, rows)
    prompt_tokens = completion_tokens = 0
    for row in rows:
        line = out[row["custom_id"]]
        assert_echoed(line, row)
        body = line["response"]["body"]
        assert body["model"] == "upstream-name"  # what the upstream answered, verbatim
        assert body["object"] == "chat.completion" and body["system_fingerprint"] == "fp_fake"
        assert body["usage"]["prompt_tokens"] == count_tokens(content_of(row))
        prompt_tokens += body["usage"]["prompt_tokens"]
        completion_tokens += body["usage"]["completion_tokens"]
    # The batch's usage is the sum of its lines' usage.
    assert batch.usage.input_tokens == prompt_tokens
    assert batch.usage.output_tokens == completion_tokens
    assert batch.usage.total_tokens == prompt_tokens + completion_tokens


def test_crlf_input_without_trailing_newline_runs_every_line(
    upstream: FakeUpstreamProcess, make_client: MakeClient
) -> None:
    client = make_client(single_model_config(upstream.url))
    rows = [chat_line(f"w{i}", f"windows line {i}") for i in range(5)]
    batch = wait_terminal(client, submit(client, jsonl(*rows, sep="\r\n", trailing=False)).id)
    assert batch.status == "completed", batch.errors
    assert batch.request_counts.model_dump() == {"total": 5, "completed": 5, "failed": 0}
    out, _ = result_files(client, batch, rows)
    for row in rows:
        assert_echoed(out[row["custom_id"]], row)


@pytest.mark.parametrize("attempts", [1, 2])
def test_max_attempts_counts_every_call(upstream: FakeUpstreamProcess, make_client: MakeClient, attempts: int) -> None:
    client = make_client(single_model_config(upstream.url, max_attempts=attempts))
    rows = [chat_line("flaky", "f @status:500:1")]
    batch = wait_terminal(client, submit(client, rows).id)
    out, err = result_files(client, batch, rows)
    if attempts == 1:  # no retry allowed: the 500 is the answer
        assert batch.request_counts.model_dump() == {"total": 1, "completed": 0, "failed": 1}
        assert err["flaky"]["response"]["status_code"] == 500
        assert upstream.stats()["by_status"] == {"500": 1}
    else:
        assert batch.request_counts.model_dump() == {"total": 1, "completed": 1, "failed": 0}
        assert_echoed(out["flaky"], rows[0])
        assert upstream.stats()["by_status"] == {"500": 1, "200": 1}
