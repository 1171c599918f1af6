"""End to end: batches that end early, by expiry of the completion window or by cancellation.

What must hold (SPEC §2): finished results are kept in the output file, every other request
gets an error line (`batch_expired` / `batch_cancelled`), every custom_id appears exactly once
across the two files, and the counts add up to the total.
"""

from __future__ import annotations

import openai
import pytest

from tests.e2e.helpers import (
    MakeClient,
    assert_echoed,
    assert_ended_with,
    file_lines,
    result_files,
    single_model_config,
    submit,
    wait_batch,
    wait_for_status,
    wait_terminal,
    wait_upstream_idle,
)
from tests.harness import FakeUpstreamProcess, chat_line


# ---------------------------------------------------------------------------- expiry
def test_completion_window_expiry_keeps_finished_results(
    upstream: FakeUpstreamProcess, make_client: MakeClient
) -> None:
    client = make_client(single_model_config(upstream.url, max_concurrency=8))
    quick = [chat_line(f"quick{i}", f"fast {i}") for i in range(4)]
    stuck = [chat_line(f"hang{i}", f"stuck {i} @hang:1000") for i in range(2)]
    slow = [chat_line(f"slow{i}", f"slow {i} @latency:30000") for i in range(2)]
    rows = quick + stuck + slow
    created = submit(client, rows, completion_window="2s")
    assert created.expires_at == created.created_at + 2

    batch = wait_terminal(client, created.id, timeout=20)

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
    wait_upstream_idle(upstream, "abandoned calls still open upstream")
    assert upstream.stats()["requests_total"] == 8


def test_expired_batch_cannot_be_cancelled(upstream: FakeUpstreamProcess, make_client: MakeClient) -> None:
    client = make_client(single_model_config(upstream.url))
    rows = [chat_line("h", "hang @hang:1000")]
    batch = wait_terminal(client, submit(client, rows, completion_window="1s").id, timeout=20)
    assert batch.status == "expired"
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)
    _, err = result_files(client, batch, rows)
    assert_ended_with(err["h"], "batch_expired")


# ---------------------------------------------------------------------------- cancellation
def test_cancel_mid_run_keeps_finished_lines(upstream: FakeUpstreamProcess, make_client: MakeClient) -> None:
    client = make_client(single_model_config(upstream.url, max_concurrency=2))
    rows = [chat_line(f"c{i:02d}", f"slow {i} @latency:300") for i in range(20)]  # ~3 s if left alone
    batch = submit(client, rows)
    wait_for_status(client, batch.id, ("in_progress",), timeout=10)
    wait_batch(client, batch.id, lambda b: b.request_counts.completed >= 2, 15, what="made no progress before cancel")

    answer = client.batches.cancel(batch.id)
    assert answer.status in ("cancelling", "cancelled")
    assert answer.cancelling_at is not None

    final = wait_terminal(client, batch.id, timeout=10)
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
    wait_upstream_idle(upstream, "cancelled calls still open upstream")
    assert upstream.stats()["requests_total"] <= done + 2

    with pytest.raises(openai.ConflictError):  # already cancelled: 409
        client.batches.cancel(batch.id)


def test_cancel_while_validating(upstream: FakeUpstreamProcess, make_client: MakeClient) -> None:
    client = make_client(single_model_config(upstream.url))
    rows = [chat_line(f"v{i:05d}", f"line {i}") for i in range(20_000)]  # validation takes a while
    batch = submit(client, rows)
    answer = client.batches.cancel(batch.id)
    assert answer.status in ("cancelling", "cancelled")
    assert answer.in_progress_at is None  # it was still validating

    final = wait_terminal(client, batch.id, timeout=20)
    assert final.status == "cancelled"
    assert final.cancelled_at is not None
    assert final.in_progress_at is None
    counts = final.request_counts
    assert counts.completed == 0
    assert counts.completed + counts.failed == counts.total
    assert upstream.stats()["requests_total"] == 0  # nothing ran
    for line in file_lines(client, final.error_file_id):  # if listed at all, every line says why it did not run
        assert_ended_with(line, "batch_cancelled")


def test_cancel_twice_is_harmless_while_cancelling(upstream: FakeUpstreamProcess, make_client: MakeClient) -> None:
    client = make_client(single_model_config(upstream.url, max_concurrency=1))
    rows = [chat_line(f"d{i}", f"slow {i} @latency:500") for i in range(6)]
    batch = submit(client, rows)
    wait_for_status(client, batch.id, ("in_progress",), timeout=10)
    first = client.batches.cancel(batch.id)
    assert first.status in ("cancelling", "cancelled")
    try:
        second = client.batches.cancel(batch.id)
    except openai.ConflictError:  # it had already ended cancelled: 409 is right then
        pass
    else:
        assert second.status in ("cancelling", "cancelled")
    final = wait_terminal(client, batch.id, timeout=10)
    assert final.status == "cancelled"
    assert final.request_counts.completed + final.request_counts.failed == 6
    out, err = result_files(client, final, rows)
    for line in err.values():
        assert_ended_with(line, "batch_cancelled")


def test_cancel_of_a_completed_batch_is_a_conflict(upstream: FakeUpstreamProcess, make_client: MakeClient) -> None:
    client = make_client(single_model_config(upstream.url))
    rows = [chat_line("x", "quick")]
    batch = wait_terminal(client, submit(client, rows).id)
    assert batch.status == "completed"
    with pytest.raises(openai.ConflictError) as info:
        client.batches.cancel(batch.id)
    assert info.value.status_code == 409
    assert client.batches.retrieve(batch.id).status == "completed"  # unchanged
