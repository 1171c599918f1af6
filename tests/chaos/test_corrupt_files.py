"""A stored input file truncated, garbled or lost on disk: its batch fails cleanly, or (when the damage
comes after validation) each request it spoils ends in the error file; nothing hangs, nothing
answers 500, and the server goes on running other batches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.chaos.helpers import blob_path
from tests.e2e.helpers import (
    assert_echoed,
    assert_ended_with,
    jsonl,
    result_files,
    single_model_config,
    unexpected_tracebacks,
    upload,
    wait_terminal,
    wait_upstream_idle,
)
from tests.harness import FakeUpstreamProcess, ServerProcess, chat_line, openai_client, poll_until

ROWS = [chat_line(f"c{i:02d}", f"corrupt test {i}") for i in range(20)]
CONTENT = jsonl(*ROWS)
HALF = CONTENT.index(b"\n", len(CONTENT) // 2) + 1  # the end of a line near the middle


def truncate_at_line(path: Path) -> None:
    path.write_bytes(CONTENT[:HALF])  # what is left is a valid, shorter batch file


def truncate_mid_line(path: Path) -> None:
    path.write_bytes(CONTENT[: HALF - 10])


def garble_keeping_json(path: Path) -> None:
    """Same size, still valid JSON: only a hash can tell (the request would run with other content)."""
    path.write_bytes(CONTENT.replace(b"corrupt test 7", b"CORRUPT TEST 7"))


def garble_with_noise(path: Path) -> None:
    data = bytearray(CONTENT)
    data[100:400] = bytes(range(256)) + bytes(44)
    path.write_bytes(bytes(data))


def delete_blob(path: Path) -> None:
    path.unlink()


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated at a line end": (truncate_at_line, "truncated"),
    "truncated mid-line": (truncate_mid_line, "truncated"),
    "garbled, still JSON": (garble_keeping_json, "content changed"),
    "garbled with noise": (garble_with_noise, "content changed"),
    "blob deleted": (delete_blob, "missing from the files storage"),
}


def run_good_batch(client: openai.OpenAI, tag: str) -> None:
    """The server still runs other batches."""
    rows = [chat_line(f"{tag}{i}", f"{tag} still served {i}") for i in range(5)]
    file = upload(client, rows)
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    final = wait_terminal(client, batch.id)
    assert final.status == "completed", final
    out, _ = result_files(client, final, rows)
    for row in rows:
        assert_echoed(out[row["custom_id"]], row)


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_input_before_validation_fails_the_batch(
    damage: str, upstream: FakeUpstreamProcess, make_server: Any
) -> None:
    spoil, says = DAMAGE[damage]
    server = make_server(single_model_config(upstream.url))
    with openai_client(server) as client:
        file = upload(client, CONTENT)
        spoil(blob_path(server, file.id))
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        final = wait_terminal(client, batch.id)

        assert final.status == "failed", final
        assert final.request_counts.model_dump() == {"total": 0, "completed": 0, "failed": 0}
        assert final.output_file_id is None and final.error_file_id is None and final.in_progress_at is None
        assert final.errors is not None
        [error] = [e.model_dump() for e in final.errors.data or []]
        assert (error["code"], error["param"], error["line"]) == ("file_corrupted", "input_file_id", None)
        assert says in error["message"] and "upload it again" in error["message"], error
        assert upstream.stats()["requests_total"] == 0, "a request of the damaged file was sent"
        run_good_batch(client, "after")
    assert not unexpected_tracebacks(server.log_text()), server.log_tail()


@pytest.mark.parametrize("damage", ["truncated at a line end", "blob deleted"])
def test_damaged_content_answers_an_error_not_a_cut_off_download(
    damage: str, upstream: FakeUpstreamProcess, make_server: Any
) -> None:
    server = make_server(single_model_config(upstream.url))
    with openai_client(server) as client:
        file = upload(client, CONTENT)
        DAMAGE[damage][0](blob_path(server, file.id))
        response = httpx.get(f"{server.base_url}/files/{file.id}/content")
        assert response.status_code == 500
        error = response.json()["error"]
        assert (error["code"], error["param"], error["type"]) == ("file_corrupted", "file_id", "server_error")
        assert file.id in error["message"] and "damaged" in error["message"]
        assert client.files.retrieve(file.id).bytes == len(CONTENT)  # the record itself is untouched


def killed_mid_run(upstream: FakeUpstreamProcess, make_server: Any, content: bytes) -> tuple[ServerProcess, str, str]:
    """A validated batch whose first line hangs upstream on the only slot, then SIGKILL: nothing has
    finished, so what the stored blob holds at the restart decides how each line ends, exactly.

    Returns the (stopped) server, the input file id and the batch id.
    """
    server = make_server(single_model_config(upstream.url, max_concurrency=1, timeout_s=60))
    with openai_client(server) as client:
        file = upload(client, content)
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        poll_until(lambda: upstream.stats()["in_flight"] == 1, 20, message="the first line never reached the upstream")
        assert client.batches.retrieve(batch.id).request_counts.completed == 0
    server.kill()
    return server, file.id, batch.id


def test_input_truncated_after_validation_ends_the_lost_lines_in_the_error_file(
    upstream: FakeUpstreamProcess, make_server: Any
) -> None:
    """Validation passed, then the blob lost its second half: those lines cannot be read back."""
    rows = [chat_line("c00", "corrupt test 0 @hang:1"), *ROWS[1:]]
    content = jsonl(*rows)
    half = content.index(b"\n", len(content) // 2) + 1
    kept = content[:half].count(b"\n")
    server, file_id, batch_id = killed_mid_run(upstream, make_server, content)
    blob_path(server, file_id).write_bytes(content[:half])
    client = restart(server)

    final = wait_terminal(client, batch_id, timeout=30)
    assert final.status == "completed", final
    assert final.request_counts.model_dump() == {"total": len(rows), "completed": kept, "failed": len(rows) - kept}
    out, err = result_files(client, final, rows)  # every custom_id exactly once
    for row in rows[:kept]:
        assert_echoed(out[row["custom_id"]], row)
    for row in rows[kept:]:
        assert_ended_with(err[row["custom_id"]], "invalid_request")
    wait_upstream_idle(upstream)
    assert upstream.stats()["bodies_seen"] == kept, "a line that could not be read was sent"
    run_good_batch(client, "later")
    client.close()


def test_input_deleted_after_validation_ends_the_batch(upstream: FakeUpstreamProcess, make_server: Any) -> None:
    rows = [chat_line("c00", "corrupt test 0 @hang:1"), *ROWS[1:]]
    server, file_id, batch_id = killed_mid_run(upstream, make_server, jsonl(*rows))
    blob_path(server, file_id).unlink()
    with restart(server) as client:
        final = wait_terminal(client, batch_id, timeout=6)
        assert final.status == "completed", final
        assert final.request_counts.model_dump() == {"total": len(rows), "completed": 0, "failed": len(rows)}
        _, err = result_files(client, final, rows)  # every custom_id exactly once, all in the error file
        for row in rows:
            assert_ended_with(err[row["custom_id"]], "input_file_missing")


def restart(server: ServerProcess) -> openai.OpenAI:
    server.start().wait_ready()
    return openai_client(server)
