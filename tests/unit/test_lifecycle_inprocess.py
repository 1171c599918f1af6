"""The engine's lifecycle in-process: a real Engine on a migrated SQLite store and a local blob
directory in tmp_path, its loops not started; each test calls `tick()` and looks at what a client
would see (status, counts, errors, the output and error files).

No request reaches an upstream here (the dispatcher's loop never runs): results are stored
through the engine's own writer, as the dispatcher would store them.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchgate.blobs import LocalBlobStore
from batchgate.config import Settings
from batchgate.domain import ids
from batchgate.domain.params import BatchParams, new_batch_row
from batchgate.domain.status import BatchStatus
from batchgate.engine import transitions
from batchgate.engine.core import Engine
from batchgate.store.records import FinishedRequest, Row
from batchgate.store.store import Store

MODEL = "m"
SETTINGS = Settings.model_validate(
    {"models": [{"name": MODEL, "deployments": [{"provider": "openai", "base_url": "http://127.0.0.1:9/v1"}]}]}
)


class World:
    def __init__(self, store: Store, blobs: LocalBlobStore, engine: Engine) -> None:
        self.store, self.blobs, self.engine = store, blobs, engine

    async def upload(self, lines: list[dict[str, Any]] | bytes) -> str:
        data = lines if isinstance(lines, bytes) else b"".join(orjson.dumps(line) + b"\n" for line in lines)
        key = ids.file_id()
        writer = await self.blobs.writer(key)
        await writer.write(data)
        sha = await writer.commit()
        assert sha == hashlib.sha256(data).hexdigest()
        await self.store.insert_file(
            {
                "id": key,
                "team_id": None,
                "filename": "in.jsonl",
                "purpose": "batch",
                "bytes": len(data),
                "sha256": sha,
                "created_at": int(time.time()),
                "expires_at": None,
                "provider_name": None,
                "lines": data.count(b"\n"),
            }
        )
        return key

    async def create(self, file_id: str, *, dialect: str = "openai", window_s: int = 86400) -> str:
        params = BatchParams(file_id, "/v1/chat/completions", "24h", window_s, None, None)
        row = {**new_batch_row(params, team_id=None, now=int(time.time())), "dialect": dialect}
        await self.store.insert_batch(row)
        return str(row["id"])

    async def batch(self, batch_id: str) -> Row:
        row = await self.store.get_batch(batch_id)
        assert row is not None
        return row

    async def tick_until(self, batch_id: str, done: Callable[[Row], bool], timeout: float = 10.0) -> Row:
        """Tick (validations run as tasks of their own) until the batch looks as `done` wants."""
        deadline = time.monotonic() + timeout
        while True:
            await self.engine.lifecycle.tick()
            row = await self.batch(batch_id)
            if done(row):
                return row
            assert time.monotonic() < deadline, f"batch never got there: {dict(row)}"
            await asyncio.sleep(0.01)  # let the validation task run (a yield, not a wait for time)

    async def file_lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        data = b"".join([chunk async for chunk in self.blobs.iter_chunks(file_id)])
        return [orjson.loads(line) for line in data.splitlines()]

    async def answer(self, batch_id: str, line_no: int, custom_id: str, status: int = 200) -> None:
        body = orjson.dumps({"id": f"cmpl-{line_no}", "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
        self.engine.writer.add(
            FinishedRequest(
                batch_id=batch_id,
                line_no=line_no,
                custom_id=custom_id,
                ok=status == 200,
                status_code=status,
                body=body.decode(),
                upstream_request_id=None,
                error_code=None,
                error_message=None,
                finished_at=time.time(),
                input_tokens=3,
                output_tokens=2,
            )
        )
        await self.engine.writer.flush()


def chat(custom_id: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": custom_id}]},
    }


@pytest.fixture
async def world(sqlite_store: Store, tmp_path: Path) -> AsyncIterator[World]:
    blobs = LocalBlobStore(str(tmp_path / "files"))
    engine = Engine(SETTINGS, sqlite_store, blobs, single_node=True)
    try:
        yield World(sqlite_store, blobs, engine)
    finally:
        await engine.dispatcher.stop()


def settled(row: Row) -> bool:
    return row["status"] != BatchStatus.VALIDATING


async def test_a_valid_input_starts_the_batch_with_its_requests_queued(world: World) -> None:
    batch_id = await world.create(await world.upload([chat("a"), chat("b"), chat("c")]))
    row = await world.tick_until(batch_id, settled)
    assert (row["status"], row["model"], row["total"]) == (BatchStatus.IN_PROGRESS, MODEL, 3)
    assert row["in_progress_at"] is not None


async def test_an_invalid_input_fails_an_openai_batch_and_cancels_an_xai_one(world: World) -> None:
    bad = await world.upload(b'{"custom_id": "a", "method": "POST"\nnot json\n')
    openai_id, xai_id = await world.create(bad), await world.create(bad, dialect="xai")
    failed = await world.tick_until(openai_id, settled)
    cancelled = await world.tick_until(xai_id, settled)
    assert failed["status"] == BatchStatus.FAILED
    codes = [e["code"] for e in orjson.loads(failed["errors"])["data"]]
    assert codes == ["invalid_json_line", "invalid_json_line"]
    assert cancelled["status"] == BatchStatus.CANCELLED
    assert cancelled["cancel_message"].startswith("invalid input file: line 1: invalid_json_line")
    assert failed["output_file_id"] is None and cancelled["output_file_id"] is None


async def test_a_batch_whose_every_request_answered_is_finalised_with_its_files(world: World) -> None:
    batch_id = await world.create(await world.upload([chat("a"), chat("b")]))
    await world.tick_until(batch_id, settled)
    await world.answer(batch_id, 1, "a")
    await world.answer(batch_id, 2, "b", status=400)
    row = await world.tick_until(batch_id, lambda r: r["status"] == BatchStatus.COMPLETED)
    assert (row["completed"], row["failed"]) == (1, 1)
    output, errors = await world.file_lines(row["output_file_id"]), await world.file_lines(row["error_file_id"])
    assert [(line["custom_id"], line["response"]["status_code"]) for line in output] == [("a", 200)]
    assert [(line["custom_id"], line["response"]["status_code"]) for line in errors] == [("b", 400)]
    assert output[0]["response"]["body"]["id"] == "cmpl-1"


async def test_a_cancelled_batch_keeps_what_finished_and_ends_the_rest(world: World) -> None:
    batch_id = await world.create(await world.upload([chat("a"), chat("b"), chat("c")]))
    await world.tick_until(batch_id, settled)
    await world.answer(batch_id, 2, "b")
    assert await transitions.request_cancel(world.store, batch_id)
    row = await world.tick_until(batch_id, lambda r: r["status"] == BatchStatus.CANCELLED)
    assert (row["completed"], row["failed"], row["cancel_message"]) == (1, 2, None)
    output, errors = await world.file_lines(row["output_file_id"]), await world.file_lines(row["error_file_id"])
    assert [line["custom_id"] for line in output] == ["b"]
    assert sorted((line["custom_id"], line["error"]["code"]) for line in errors) == [
        ("a", "batch_cancelled"),
        ("c", "batch_cancelled"),
    ]


async def test_a_batch_past_its_window_expires_with_the_unfinished_requests_as_errors(world: World) -> None:
    batch_id = await world.create(await world.upload([chat("a"), chat("b")]))
    await world.tick_until(batch_id, settled)
    await world.answer(batch_id, 1, "a")
    await world.store.transition(
        batch_id, [BatchStatus.IN_PROGRESS], BatchStatus.IN_PROGRESS, expires_at=int(time.time()) - 1
    )  # the window ends now (a test's shortcut)
    row = await world.tick_until(batch_id, lambda r: r["status"] == BatchStatus.EXPIRED)
    assert (row["completed"], row["failed"]) == (1, 1)
    errors = await world.file_lines(row["error_file_id"])
    assert [(line["custom_id"], line["error"]["code"]) for line in errors] == [("b", "batch_expired")]


async def test_a_cancel_before_validation_ends_without_files(world: World) -> None:
    batch_id = await world.create(await world.upload([chat("a")]))
    assert await transitions.request_cancel(world.store, batch_id)
    row = await world.tick_until(batch_id, lambda r: r["status"] == BatchStatus.CANCELLED)
    assert (row["output_file_id"], row["error_file_id"], row["total"]) == (None, None, 0)
