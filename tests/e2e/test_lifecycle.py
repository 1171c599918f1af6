"""End to end: batches that end early, by expiry of the completion window or by cancellation.

What must hold (SPEC §2): finished results are kept in the output file, every other request
gets an error line (`batch_expired` / `batch_cancelled`), every custom_id appears exactly once
across the two files, and the counts add up to the total.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import openai
import pytest
from openai.types import Batch

from tests.harness import (
    FakeUpstreamProcess,
    chat_line,
    openai_client,
    poll_until,
    read_jsonl_bytes,
    upstream_model_config,
)

TERMINAL = ("completed", "failed", "expired", "cancelled")
ENGINE = {"backoff_base_s": 0.02, "backoff_max_s": 5.0, "poll_interval_s": 0.05}


# ---------------------------------------------------------------------------- helpers
def config(upstream_url: str, **deployment: Any) -> dict[str, Any]:
    return {"models": [upstream_model_config(upstream_url, **deployment)], "engine": dict(ENGINE)}


def upload(client: openai.OpenAI, rows: list[dict[str, Any]]) -> str:
    data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows).encode()
    return client.files.create(file=("input.jsonl", data), purpose="batch").id


def create(client: openai.OpenAI, file_id: str, window: str = "24h") -> Batch:
    return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window=window)


def wait_status(client: openai.OpenAI, batch_id: str, statuses: tuple[str, ...], timeout: float = 30.0) -> Batch:
    last: list[Batch] = []

    def reached() -> Batch | None:
        batch = client.batches.retrieve(batch_id)
        last[:] = [batch]
        return batch if batch.status in statuses else None

    return poll_until(reached, timeout, 0.05, message=lambda: f"batch never {statuses}: {last[0] if last else None}")


def result_files(
    client: openai.OpenAI, batch: Batch, rows: list[dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Output and error lines by custom_id; asserts every input custom_id is in exactly one of them."""
    out = read_jsonl_bytes(client.files.content(batch.output_file_id).content) if batch.output_file_id else []
    err = read_jsonl_bytes(client.files.content(batch.error_file_id).content) if batch.error_file_id else []
    seen = Counter(line["custom_id"] for line in out + err)
    assert seen == Counter(r["custom_id"] for r in rows), "every custom_id exactly once across output+error"
    return {line["custom_id"]: line for line in out}, {line["custom_id"]: line for line in err}


def assert_echoed(line: dict[str, Any], row: dict[str, Any]) -> None:
    assert line["error"] is None
    assert line["response"]["status_code"] == 200
    content = row["body"]["messages"][-1]["content"]
    assert line["response"]["body"]["choices"][0]["message"]["content"] == "echo: " + content


def assert_ended_with(line: dict[str, Any], code: str) -> None:
    assert line["response"] is None
    assert line["error"]["code"] == code
    assert isinstance(line["error"]["message"], str) and line["error"]["message"]


# ---------------------------------------------------------------------------- expiry
def test_completion_window_expiry_keeps_finished_results(upstream: FakeUpstreamProcess, make_server: Any) -> None:
    server = make_server(config(upstream.url, max_concurrency=8))
    client = openai_client(server)
    quick = [chat_line(f"quick{i}", f"fast {i}") for i in range(4)]
    stuck = [chat_line(f"hang{i}", f"stuck {i} @hang:1000") for i in range(2)]
    slow = [chat_line(f"slow{i}", f"slow {i} @latency:30000") for i in range(2)]
    rows = quick + stuck + slow
    created = create(client, upload(client, rows), window="2s")
    assert created.expires_at == created.created_at + 2

    batch = wait_status(client, created.id, TERMINAL, timeout=20)

    assert batch.status == "expired"
    assert batch.expired_at is not None and batch.expired_at >= batch.expires_at
    assert batch.in_progress_at is not None
    assert batch.completed_at is None and batch.cancelled_at is None
    assert batch.request_counts.model_dump() == {"total": 8, "completed": 4, "failed": 4}
    out, err = result_files(client, batch, rows)
    assert set(out) == {r["custom_id"] for r in quick}
    for row in quick:
        assert_echoed(out[row["custom_id"]], row)
    for row in stuck + slow:
        assert_ended_with(err[row["custom_id"]], "batch_expired")
    # The gateway hung up on the calls it abandoned and sent nothing more.
    poll_until(lambda: upstream.stats()["in_flight"] == 0, 10, message="abandoned calls still open upstream")
    assert upstream.stats()["requests_total"] == 8


def test_expired_batch_cannot_be_cancelled(upstream: FakeUpstreamProcess, make_server: Any) -> None:
    server = make_server(config(upstream.url))
    client = openai_client(server)
    rows = [chat_line("h", "hang @hang:1000")]
    batch = wait_status(client, create(client, upload(client, rows), window="1s").id, TERMINAL, timeout=20)
    assert batch.status == "expired"
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)
    _, err = result_files(client, batch, rows)
    assert_ended_with(err["h"], "batch_expired")


# ---------------------------------------------------------------------------- cancellation
def test_cancel_mid_run_keeps_finished_lines(upstream: FakeUpstreamProcess, make_server: Any) -> None:
    server = make_server(config(upstream.url, max_concurrency=2))
    client = openai_client(server)
    rows = [chat_line(f"c{i:02d}", f"slow {i} @latency:300") for i in range(20)]  # ~3 s if left alone
    batch = create(client, upload(client, rows))
    wait_status(client, batch.id, ("in_progress",), timeout=10)
    poll_until(
        lambda: client.batches.retrieve(batch.id).request_counts.completed >= 2, 15, message="no progress before cancel"
    )

    answer = client.batches.cancel(batch.id)
    assert answer.status in ("cancelling", "cancelled")
    assert answer.cancelling_at is not None

    final = wait_status(client, batch.id, TERMINAL, timeout=10)
    assert final.status == "cancelled"
    assert final.cancelled_at is not None and final.cancelled_at >= final.cancelling_at
    assert final.completed_at is None
    done = final.request_counts.completed
    assert 2 <= done < len(rows)
    assert final.request_counts.model_dump() == {"total": 20, "completed": done, "failed": 20 - done}
    out, err = result_files(client, final, rows)
    assert len(out) == done and len(err) == 20 - done
    by_id = {r["custom_id"]: r for r in rows}
    for custom_id, line in out.items():
        assert_echoed(line, by_id[custom_id])
    for line in err.values():
        assert_ended_with(line, "batch_cancelled")

    # The gateway stopped sending: at most the two calls in flight at the cancel went out unfinished.
    poll_until(lambda: upstream.stats()["in_flight"] == 0, 10, message="cancelled calls still open upstream")
    assert upstream.stats()["requests_total"] <= done + 2

    with pytest.raises(openai.ConflictError):  # already cancelled: 409
        client.batches.cancel(batch.id)


def test_cancel_while_validating(upstream: FakeUpstreamProcess, make_server: Any) -> None:
    server = make_server(config(upstream.url))
    client = openai_client(server)
    rows = [chat_line(f"v{i:05d}", f"line {i}") for i in range(20_000)]  # validation takes a while
    batch = create(client, upload(client, rows))
    answer = client.batches.cancel(batch.id)
    assert answer.status in ("cancelling", "cancelled")
    assert answer.in_progress_at is None  # it was still validating

    final = wait_status(client, batch.id, TERMINAL, timeout=20)
    assert final.status == "cancelled"
    assert final.cancelled_at is not None
    assert final.in_progress_at is None
    counts = final.request_counts
    assert counts.completed == 0
    assert counts.completed + counts.failed == counts.total
    assert upstream.stats()["requests_total"] == 0  # nothing ran
    if final.error_file_id:  # if listed at all, every line says why it did not run
        err = read_jsonl_bytes(client.files.content(final.error_file_id).content)
        for line in err:
            assert_ended_with(line, "batch_cancelled")


def test_cancel_twice_is_harmless_while_cancelling(upstream: FakeUpstreamProcess, make_server: Any) -> None:
    server = make_server(config(upstream.url, max_concurrency=1))
    client = openai_client(server)
    rows = [chat_line(f"d{i}", f"slow {i} @latency:500") for i in range(6)]
    batch = create(client, upload(client, rows))
    wait_status(client, batch.id, ("in_progress",), timeout=10)
    first = client.batches.cancel(batch.id)
    assert first.status in ("cancelling", "cancelled")
    try:
        second = client.batches.cancel(batch.id)
    except openai.ConflictError:  # it had already ended cancelled: 409 is right then
        pass
    else:
        assert second.status in ("cancelling", "cancelled")
    final = wait_status(client, batch.id, TERMINAL, timeout=10)
    assert final.status == "cancelled"
    assert final.request_counts.completed + final.request_counts.failed == 6
    out, err = result_files(client, final, rows)
    for line in err.values():
        assert_ended_with(line, "batch_cancelled")


def test_cancel_of_a_completed_batch_is_a_conflict(upstream: FakeUpstreamProcess, make_server: Any) -> None:
    server = make_server(config(upstream.url))
    client = openai_client(server)
    rows = [chat_line("x", "quick")]
    batch = wait_status(client, create(client, upload(client, rows)).id, TERMINAL)
    assert batch.status == "completed"
    with pytest.raises(openai.ConflictError) as info:
        client.batches.cancel(batch.id)
    assert info.value.status_code == 409
    assert client.batches.retrieve(batch.id).status == "completed"  # unchanged
