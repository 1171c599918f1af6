"""Crash safety (DESIGN: "a crash at any instant loses nothing"): kill -9 the real server and restart it.

After every restart on the same directory and port the batch must complete with every custom_id
exactly once across the output and error files, all of them successes, and with counts and usage
that never count a request twice (an upstream call may repeat after a crash; a result never does).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from typing import Any

import openai
from openai.types import Batch

from tests.e2e.helpers import (
    TERMINAL,
    assert_echoed,
    result_files,
    single_model_config,
    submit,
    wait_batch,
    wait_terminal,
)
from tests.harness import (
    FakeUpstreamProcess,
    ServerProcess,
    chat_line,
    openai_client,
    poll_until,
)

FINISH_TIMEOUT = 60.0  # a run cut short by crashes, with restarts, takes longer than the usual wait


# ---------------------------------------------------------------------------- helpers
def kill_when(
    server: ServerProcess,
    client: openai.OpenAI,
    batch_id: str,
    condition: Callable[[Batch], bool],
    timeout: float = 30.0,
) -> Batch:
    """Poll the batch; SIGKILL the server the moment `condition` holds. Returns the batch that met it."""
    batch = wait_batch(client, batch_id, condition, timeout, 0.01, what="never reached the kill point")
    server.kill()
    return batch


def restart(server: ServerProcess) -> openai.OpenAI:
    server.restart()
    return openai_client(server)  # a fresh client: the old one's pooled connections died with the server


def assert_all_succeeded_exactly_once(client: openai.OpenAI, batch: Batch, rows: list[dict[str, Any]]) -> None:
    assert batch.status == "completed", batch
    assert batch.request_counts.model_dump() == {"total": len(rows), "completed": len(rows), "failed": 0}
    assert batch.error_file_id is None
    out, _ = result_files(client, batch, rows)
    by_id = {r["custom_id"]: r for r in rows}
    input_tokens = output_tokens = 0
    for custom_id, line in out.items():
        assert_echoed(line, by_id[custom_id])
        input_tokens += line["response"]["body"]["usage"]["prompt_tokens"]
        output_tokens += line["response"]["body"]["usage"]["completion_tokens"]
    # Usage is summed from results: a result stored twice would show here.
    assert batch.usage.input_tokens == input_tokens
    assert batch.usage.output_tokens == output_tokens


def start_batch(
    make_server: Any, upstream: FakeUpstreamProcess, rows: list[dict[str, Any]], max_concurrency: int
) -> tuple[ServerProcess, openai.OpenAI, Batch]:
    """A fresh server, a client on it, and a batch of `rows` submitted to it."""
    server = make_server(single_model_config(upstream.url, max_concurrency=max_concurrency))
    client = openai_client(server)
    return server, client, submit(client, rows)


# ---------------------------------------------------------------------------- tests
def test_kill9_twice_mid_run_then_every_request_exactly_once(upstream: FakeUpstreamProcess, make_server: Any) -> None:
    total = 300
    rows = [chat_line(f"req-{i:03d}", f"crash test {i} @latency:50") for i in range(total)]
    server, client, batch = start_batch(make_server, upstream, rows, max_concurrency=8)

    committed = 0
    for fraction in (0.2, 0.6):  # two crashes at different points of the run
        before = kill_when(server, client, batch.id, lambda b, f=fraction: b.request_counts.completed >= f * total)
        assert before.status == "in_progress"
        assert before.request_counts.completed <= 0.8 * total, "killed too late to mean anything"
        assert before.request_counts.completed >= committed
        committed = before.request_counts.completed
        client = restart(server)
        after = client.batches.retrieve(batch.id)
        assert after.request_counts.completed >= committed, "results the API had shown were lost in the crash"
        assert after.status in ("in_progress", "finalizing", "completed")

    final = wait_terminal(client, batch.id, FINISH_TIMEOUT)
    assert_all_succeeded_exactly_once(client, final, rows)
    stats = upstream.stats()
    # The kills cut calls short (they were re-sent after the restart), yet no result repeats above.
    assert stats["bodies_repeated"] > 0
    assert stats["requests_total"] >= total + stats["bodies_repeated"]


def test_kill9_during_validation_then_restart(upstream: FakeUpstreamProcess, make_server: Any) -> None:
    total = 5000
    pad = "p" * 300
    rows = [chat_line(f"v{i:04d}", f"validate {i} {pad}") for i in range(total)]
    server, client, batch = start_batch(make_server, upstream, rows, max_concurrency=16)

    # The API cannot show how far validation got, so peek (read-only) at the server's database
    # to time the kill: some request rows written, the batch still validating.
    db_path = server.workdir / ".batchgate" / "batchgate.db"
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)) as db:

        def midway() -> bool:
            with db:
                status = db.execute("SELECT status FROM batches WHERE id = ?", (batch.id,)).fetchone()[0]
                written = db.execute("SELECT count(*) FROM requests WHERE batch_id = ?", (batch.id,)).fetchone()[0]
            assert status == "validating", f"validation ended before the kill ({written} rows)"
            return 0 < written < total

        poll_until(midway, 30, 0.001, message="validation never got under way")
        server.kill()

    client = restart(server)
    final = wait_terminal(client, batch.id, timeout=90)
    assert_all_succeeded_exactly_once(client, final, rows)


def test_kill9_right_after_create(upstream: FakeUpstreamProcess, make_server: Any) -> None:
    rows = [chat_line(f"k{i:02d}", f"early {i} @latency:20") for i in range(50)]
    server, client, batch = start_batch(make_server, upstream, rows, max_concurrency=8)
    assert batch.status == "validating"
    server.kill()  # before the engine could have made any visible progress

    client = restart(server)
    final = wait_terminal(client, batch.id, FINISH_TIMEOUT)
    assert_all_succeeded_exactly_once(client, final, rows)


def test_kill9_repeatedly_until_done(upstream: FakeUpstreamProcess, make_server: Any) -> None:
    """Many crashes in a row, each as soon as a few more results are in: progress still adds up."""
    total = 200
    rows = [chat_line(f"r{i:03d}", f"again {i} @latency:40") for i in range(total)]
    server, client, batch = start_batch(make_server, upstream, rows, max_concurrency=8)
    committed = 0
    for _ in range(5):
        before = kill_when(
            server,
            client,
            batch.id,
            lambda b, c=committed: b.request_counts.completed >= min(total - 20, c + 25) or b.status in TERMINAL,
        )
        assert before.request_counts.completed >= committed
        committed = before.request_counts.completed
        client = restart(server)
        if client.batches.retrieve(batch.id).status in TERMINAL:
            break
    final = wait_terminal(client, batch.id, FINISH_TIMEOUT)
    assert_all_succeeded_exactly_once(client, final, rows)
