"""Crash safety (DESIGN: "a crash at any instant loses nothing"): kill -9 the real server and restart it.

After every restart on the same directory and port the batch must complete with every custom_id
exactly once across the output and error files, all of them successes, and with counts and usage
that never count a request twice (an upstream call may repeat after a crash; a result never does).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from typing import Any

import openai
from openai.types import Batch

from tests.harness import (
    FakeUpstreamProcess,
    ServerProcess,
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


def submit(client: openai.OpenAI, rows: list[dict[str, Any]]) -> Batch:
    data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows).encode()
    file = client.files.create(file=("input.jsonl", data), purpose="batch")
    return client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")


def kill_when(
    server: ServerProcess,
    client: openai.OpenAI,
    batch_id: str,
    condition: Callable[[Batch], bool],
    timeout: float = 30.0,
) -> Batch:
    """Poll the batch; SIGKILL the server the moment `condition` holds. Returns the last batch seen."""
    seen: list[Batch] = []

    def check() -> bool:
        batch = client.batches.retrieve(batch_id)
        seen[:] = [batch]
        return condition(batch)

    poll_until(check, timeout, 0.01, message=lambda: f"kill point never reached: {seen[0] if seen else None}")
    server.kill()
    return seen[0]


def restart(server: ServerProcess) -> openai.OpenAI:
    server.restart()
    return openai_client(server)  # a fresh client: the old one's pooled connections died with the server


def wait_terminal(client: openai.OpenAI, batch_id: str, timeout: float = 60.0) -> Batch:
    last: list[Batch] = []

    def done() -> Batch | None:
        batch = client.batches.retrieve(batch_id)
        last[:] = [batch]
        return batch if batch.status in TERMINAL else None

    return poll_until(done, timeout, 0.05, message=lambda: f"batch not finished: {last[0] if last else None}")


def assert_all_succeeded_exactly_once(client: openai.OpenAI, batch: Batch, rows: list[dict[str, Any]]) -> None:
    assert batch.status == "completed", batch
    assert batch.request_counts.model_dump() == {"total": len(rows), "completed": len(rows), "failed": 0}
    assert batch.error_file_id is None
    out = read_jsonl_bytes(client.files.content(batch.output_file_id).content)
    assert Counter(line["custom_id"] for line in out) == Counter(r["custom_id"] for r in rows)
    by_id = {r["custom_id"]: r for r in rows}
    input_tokens = output_tokens = 0
    for line in out:
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        expected = "echo: " + by_id[line["custom_id"]]["body"]["messages"][-1]["content"]
        assert body["choices"][0]["message"]["content"] == expected
        input_tokens += body["usage"]["prompt_tokens"]
        output_tokens += body["usage"]["completion_tokens"]
    # Usage is summed from results: a result stored twice would show here.
    assert batch.usage.input_tokens == input_tokens
    assert batch.usage.output_tokens == output_tokens


# ---------------------------------------------------------------------------- tests
def test_kill9_twice_mid_run_then_every_request_exactly_once(upstream: FakeUpstreamProcess, make_server: Any) -> None:
    total = 300
    rows = [chat_line(f"req-{i:03d}", f"crash test {i} @latency:50") for i in range(total)]
    server = make_server(config(upstream.url, max_concurrency=8))
    client = openai_client(server)
    batch = submit(client, rows)

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

    final = wait_terminal(client, batch.id)
    assert_all_succeeded_exactly_once(client, final, rows)
    stats = upstream.stats()
    # The kills cut calls short (they were re-sent after the restart), yet no result repeats above.
    assert stats["bodies_repeated"] > 0
    assert stats["requests_total"] >= total + stats["bodies_repeated"]


def test_kill9_during_validation_then_restart(upstream: FakeUpstreamProcess, make_server: Any) -> None:
    total = 5000
    pad = "p" * 300
    rows = [chat_line(f"v{i:04d}", f"validate {i} {pad}") for i in range(total)]
    server = make_server(config(upstream.url, max_concurrency=16))
    client = openai_client(server)
    batch = submit(client, rows)

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
    server = make_server(config(upstream.url, max_concurrency=8))
    client = openai_client(server)
    batch = submit(client, rows)
    assert batch.status == "validating"
    server.kill()  # before the engine could have made any visible progress

    client = restart(server)
    final = wait_terminal(client, batch.id)
    assert_all_succeeded_exactly_once(client, final, rows)


def test_kill9_repeatedly_until_done(upstream: FakeUpstreamProcess, make_server: Any) -> None:
    """Many crashes in a row, each as soon as a few more results are in: progress still adds up."""
    total = 200
    rows = [chat_line(f"r{i:03d}", f"again {i} @latency:40") for i in range(total)]
    server = make_server(config(upstream.url, max_concurrency=8))
    client = openai_client(server)
    batch = submit(client, rows)
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
    final = wait_terminal(client, batch.id)
    assert_all_succeeded_exactly_once(client, final, rows)
