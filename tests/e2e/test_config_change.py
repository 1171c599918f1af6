"""A batch created under one config and resumed under another that no longer serves its model
ends cleanly (cancelled, saying why) instead of waiting for its window to pass."""

from __future__ import annotations

from tests.e2e.helpers import ENGINE, result_files, submit, wait_terminal
from tests.harness import FakeUpstreamProcess, chat_line, openai_client, poll_until, upstream_model_config


def test_a_batch_whose_model_left_the_config_is_cancelled_with_model_not_found(
    upstream: FakeUpstreamProcess, make_server
) -> None:
    old = {"models": [upstream_model_config(upstream.url, name="retired", max_concurrency=1)], "engine": dict(ENGINE)}
    server = make_server(old)
    rows = [chat_line(f"r{i}", f"slow {i} @latency:300", model="retired") for i in range(20)]
    with openai_client(server) as client:
        batch = submit(client, rows)
        poll_until(
            lambda: client.batches.retrieve(batch.id).request_counts.completed >= 1,
            timeout=20,
            message="the batch never made progress",
        )
    server.kill()

    new = {"models": [upstream_model_config(upstream.url, name="current")], "engine": dict(ENGINE)}
    resumed = make_server(new, workdir=server.workdir, port=server.port)
    with openai_client(resumed) as client:
        done = wait_terminal(client, batch.id, timeout=20)
        assert done.status == "cancelled"
        counts = done.request_counts
        assert counts.total == 20 and counts.completed >= 1 and counts.completed + counts.failed == 20
        out, err = result_files(client, done, rows)
        assert len(out) == counts.completed
        assert {line["error"]["code"] for line in err.values()} == {"model_not_found"}
        assert all("no longer configured" in line["error"]["message"] for line in err.values())


def test_restart_sweeps_blobs_a_crash_left_without_a_row(upstream: FakeUpstreamProcess, make_server) -> None:
    config = {"models": [upstream_model_config(upstream.url)], "engine": dict(ENGINE)}
    server = make_server(config)
    with openai_client(server) as client:
        kept = client.files.create(file=("kept.jsonl", b'{"a": 1}\n'), purpose="batch")
    files_dir = server.workdir / ".batchgate" / "files"
    (files_dir / "file-orphan-from-a-crash").write_bytes(b"half an upload")
    server.kill()
    resumed = make_server(config, workdir=server.workdir, port=server.port)
    assert sorted(p.name for p in files_dir.iterdir()) == [kept.id]
    with openai_client(resumed) as client:
        assert client.files.content(kept.id).content == b'{"a": 1}\n'
