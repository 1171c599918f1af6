"""SIGTERM drains gracefully: the server stores what finished, hands the rest back and exits 0, and
after a restart the batch completes with every custom_id exactly once."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any

from tests.chaos.helpers import REPORT, db_rows
from tests.e2e.helpers import (
    assert_echoed,
    result_files,
    single_model_config,
    submit,
    unexpected_tracebacks,
    wait_batch,
    wait_terminal,
    wait_upstream_idle,
)
from tests.harness import FakeUpstreamProcess, ServerProcess, chat_line, openai_client

EXIT_DEADLINE_S = 15.0  # uvicorn's graceful shutdown is capped at 10 s; the engine stops in well under


def sigterm_and_wait(server: ServerProcess) -> tuple[int, float]:
    """SIGTERM the server and wait for it to exit; its exit code and how long that took."""
    assert server.proc is not None
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(EXIT_DEADLINE_S)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"still running {EXIT_DEADLINE_S:g}s after SIGTERM:\n{server.log_tail()}") from exc
    took = time.monotonic() - started
    server.stop()  # closes the log; the process is gone already
    return code, took


def test_sigterm_mid_run_exits_zero_then_the_batch_completes_once(
    upstream: FakeUpstreamProcess, make_server: Any
) -> None:
    rows = [chat_line(f"t{i:03d}", f"drain {i} @latency:400") for i in range(60)]  # ~3 s at 8 at a time
    server = make_server(single_model_config(upstream.url, max_concurrency=8))
    client = openai_client(server)
    batch = submit(client, rows)
    before = wait_batch(
        client, batch.id, lambda b: b.request_counts.completed >= 8, timeout=20, what="made no progress before SIGTERM"
    )
    assert upstream.stats()["in_flight"] > 0, "nothing in flight: SIGTERM would test nothing"
    client.close()

    code, took = sigterm_and_wait(server)
    assert code == 0, f"exit code {code} after SIGTERM:\n{server.log_tail()}"
    assert not unexpected_tracebacks(server.log_text()), server.log_tail()

    # The drain: results that arrived were stored, nothing stays claimed, no call stays open upstream.
    stored = db_rows(server, "SELECT count(*) FROM results WHERE batch_id = ?", batch.id)[0][0]
    assert stored >= before.request_counts.completed
    claimed = db_rows(server, "SELECT count(*) FROM requests WHERE batch_id = ? AND state = 'running'", batch.id)
    assert claimed[0][0] == 0, "rows still claimed by the stopped server"
    wait_upstream_idle(upstream, "the stopped server left calls open upstream")
    assert stored < len(rows), "the batch had finished before SIGTERM: nothing was drained"

    server.start().wait_ready()
    with openai_client(server) as client:
        final = wait_terminal(client, batch.id, timeout=60)
        assert final.status == "completed", final
        assert final.request_counts.model_dump() == {"total": len(rows), "completed": len(rows), "failed": 0}
        out, _ = result_files(client, final, rows)  # every custom_id exactly once
        for row in rows:
            assert_echoed(out[row["custom_id"]], row)
    REPORT.append(
        f"SIGTERM drain: exit status {code} after {took:.2f}s, {stored}/{len(rows)} results stored, "
        "the rest handed back and completed after the restart"
    )


def test_sigterm_exit_status_is_zero(upstream: FakeUpstreamProcess, make_server: Any) -> None:
    server = make_server(single_model_config(upstream.url))
    code, _ = sigterm_and_wait(server)
    assert code == 0
