"""The files directory read-only or full (a real tmpfs mounted over it).

What must hold: uploads answer a clear storage error in the OpenAI envelope (503 / 507, never a 500),
nothing half-written stays behind or gets listed, /ready says 503 and why, and a batch whose result
files cannot be written stays `finalizing` (never `completed` without its files) until the storage
is back, then completes with every custom_id exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import Batch

from tests.chaos.helpers import Tmpfs, tmpfs
from tests.e2e.helpers import (
    assert_echoed,
    assert_error,
    jsonl,
    result_files,
    single_model_config,
    unexpected_tracebacks,
    upload,
    wait_terminal,
)
from tests.harness import FakeUpstreamProcess, ServerProcess, chat_line, openai_client, poll_until

FINALIZE_FAILED = "cannot write the result files of batch"


@pytest.fixture
def files_fs(tmp_path: Path) -> Iterator[Tmpfs]:
    """A 4 MB tmpfs on the files directory of the server that `server_on` starts in tmp_path/server."""
    with tmpfs(tmp_path / "server" / ".batchgate" / "files") as fs:
        yield fs


def server_on(make_server: Any, upstream: FakeUpstreamProcess, tmp_path: Path) -> ServerProcess:
    return make_server(single_model_config(upstream.url, max_concurrency=8), workdir=tmp_path / "server")


def raw_upload(server: ServerProcess, content: bytes) -> httpx.Response:
    """An upload through plain HTTP, so the test sees the status and body the server answered."""
    files = {"file": ("input.jsonl", content, "application/jsonl")}
    return httpx.post(f"{server.base_url}/files", data={"purpose": "batch"}, files=files, timeout=30)


def ready(server: ServerProcess) -> httpx.Response:
    return httpx.get(f"{server.url}/ready", timeout=10)


def listed_ids(client: openai.OpenAI) -> set[str]:
    return {f.id for f in client.files.list()}


def stuck_in_finalizing(client: openai.OpenAI, server: ServerProcess, batch_id: str, total: int) -> Batch:
    """Every request answered, the result files refused by the storage: the batch waits in `finalizing`."""
    poll_until(
        lambda: FINALIZE_FAILED in server.log_text(),
        30,
        message=lambda: f"no failed finalisation logged:\n{server.log_tail()}",
    )
    batch = client.batches.retrieve(batch_id)
    assert batch.status == "finalizing", batch
    assert batch.request_counts.model_dump() == {"total": total, "completed": total, "failed": 0}
    assert batch.output_file_id is None and batch.error_file_id is None and batch.completed_at is None
    return batch


def submit_on(client: openai.OpenAI, file_id: str) -> Batch:
    return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")


def completes_with_all_results(client: openai.OpenAI, batch_id: str, rows: list[dict[str, Any]]) -> Batch:
    final = wait_terminal(client, batch_id, timeout=30)
    assert final.status == "completed", final
    out, _ = result_files(client, final, rows)
    for row in rows:
        assert_echoed(out[row["custom_id"]], row)
    return final


def test_read_only_files_directory(
    upstream: FakeUpstreamProcess, files_fs: Tmpfs, make_server: Any, tmp_path: Path
) -> None:
    server = server_on(make_server, upstream, tmp_path)
    client = openai_client(server)
    rows = [chat_line(f"ro{i}", f"read-only {i}") for i in range(10)]
    input_file = upload(client, rows)
    assert ready(server).status_code == 200

    files_fs.read_only()
    answer = ready(server)
    assert answer.status_code == 503, answer.text
    assert answer.json()["checks"]["database"] == "ok"
    assert "read-only" in answer.json()["checks"]["files"]
    err = assert_error(raw_upload(server, jsonl(*rows)), 503, code="storage_unavailable")
    assert "Read-only file system" in err["message"] and err["type"] == "server_error"
    assert listed_ids(client) == {input_file.id}

    # Validation and the upstream calls only read: the batch runs, and waits for its result files.
    batch = submit_on(client, input_file.id)
    stuck_in_finalizing(client, server, batch.id, len(rows))
    assert listed_ids(client) == {input_file.id}
    assert files_fs.names() == {input_file.id}

    files_fs.read_write()
    final = completes_with_all_results(client, batch.id, rows)
    assert poll_until(lambda: ready(server).status_code == 200, 10)
    again = raw_upload(server, jsonl(*rows))
    assert again.status_code == 200, again.text
    assert listed_ids(client) == {input_file.id, final.output_file_id, again.json()["id"]}
    assert not unexpected_tracebacks(server.log_text()), server.log_tail()
    client.close()


def test_full_files_directory(upstream: FakeUpstreamProcess, files_fs: Tmpfs, make_server: Any, tmp_path: Path) -> None:
    server = server_on(make_server, upstream, tmp_path)
    client = openai_client(server)
    rows = [chat_line(f"full{i}", f"no space {i}") for i in range(10)]
    input_file = upload(client, rows)

    files_fs.fill()
    answer = ready(server)
    assert answer.status_code == 503, answer.text
    assert "full" in answer.json()["checks"]["files"]
    for size in (200, 300_000):  # refused at the commit's flush, and in the middle of the stream
        content = jsonl(*rows) + b"\n" * (size - len(jsonl(*rows)))
        err = assert_error(raw_upload(server, content), 507, code="storage_full")
        assert "No space left on device" in err["message"] and err["type"] == "server_error"
    assert listed_ids(client) == {input_file.id}
    assert files_fs.names() == {input_file.id}, "a refused upload left a part behind"

    batch = submit_on(client, input_file.id)
    stuck_in_finalizing(client, server, batch.id, len(rows))
    # The lifecycle retries the finalisation every tick, so a retry's part can exist for a moment;
    # a part that a failed attempt leaves behind never goes away.
    poll_until(
        lambda: files_fs.names() == {input_file.id},
        10,
        message=lambda: f"a failed finalisation left a part behind: {files_fs.names()}",
    )

    files_fs.unfill()
    final = completes_with_all_results(client, batch.id, rows)
    assert poll_until(lambda: ready(server).status_code == 200, 10)
    assert listed_ids(client) == {input_file.id, final.output_file_id}
    assert files_fs.names() == {input_file.id, final.output_file_id}
    assert not unexpected_tracebacks(server.log_text()), server.log_tail()
    client.close()
