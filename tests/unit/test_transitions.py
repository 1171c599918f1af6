"""engine/transitions.py in-process, on a migrated SQLite store: each status change moves a batch only
out of the statuses it names, once, with its time stamp; the dialect's rules decide a failed validation."""

from __future__ import annotations

import time

import pytest

from batchgate.domain.dialects import rules_for
from batchgate.domain.params import BatchParams, new_batch_row
from batchgate.domain.status import BatchStatus
from batchgate.engine import transitions
from batchgate.store.records import Row
from batchgate.store.store import Store

PARAMS = BatchParams(
    input_file_id="file-input",
    endpoint="/v1/chat/completions",
    completion_window="24h",
    window_s=86400,
    metadata=None,
    output_expires_after=None,
)


@pytest.fixture
def store(sqlite_store: Store) -> Store:
    return sqlite_store


async def new_batch(store: Store, status: BatchStatus = BatchStatus.VALIDATING, dialect: str = "openai") -> Row:
    row = {**new_batch_row(PARAMS, team_id=None, now=int(time.time())), "status": status, "dialect": dialect}
    await store.insert_batch(row)
    batch = await store.get_batch(row["id"])
    assert batch is not None
    return batch


async def status_of(store: Store, batch: Row) -> Row:
    fresh = await store.get_batch(batch["id"])
    assert fresh is not None
    return fresh


async def test_start_moves_a_validating_batch_once(store: Store) -> None:
    batch = await new_batch(store)
    assert await transitions.start(store, batch["id"], model="m", total=3)
    assert not await transitions.start(store, batch["id"], model="m", total=3)  # repeated: nothing happens
    fresh = await status_of(store, batch)
    assert (fresh["status"], fresh["model"], fresh["total"]) == (BatchStatus.IN_PROGRESS, "m", 3)
    assert fresh["in_progress_at"] >= batch["created_at"]


async def test_a_failed_validation_fails_an_openai_batch_and_cancels_an_xai_one(store: Store) -> None:
    openai_batch, xai_batch = await new_batch(store), await new_batch(store, dialect="xai")
    errors = '{"object": "list", "data": []}'
    assert await transitions.fail_validation(store, openai_batch, rules_for("openai"), errors, "line 1: bad")
    assert await transitions.fail_validation(store, xai_batch, rules_for("xai"), errors, "line 1: bad")
    failed, cancelled = await status_of(store, openai_batch), await status_of(store, xai_batch)
    assert (failed["status"], failed["errors"], failed["cancel_message"]) == (BatchStatus.FAILED, errors, None)
    assert failed["failed_at"] is not None
    assert (cancelled["status"], cancelled["cancel_message"]) == (
        BatchStatus.CANCELLED,
        "invalid input file: line 1: bad",
    )
    assert cancelled["cancelled_at"] is not None
    assert not await transitions.fail_validation(store, openai_batch, rules_for("openai"), errors, "again")


@pytest.mark.parametrize("status", [BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS])
async def test_a_cancel_request_moves_validating_and_in_progress_batches(store: Store, status: BatchStatus) -> None:
    batch = await new_batch(store, status)
    assert await transitions.request_cancel(store, batch["id"])
    assert (await status_of(store, batch))["status"] == BatchStatus.CANCELLING
    assert not await transitions.request_cancel(store, batch["id"])


@pytest.mark.parametrize(
    "status",
    [
        BatchStatus.FINALIZING,
        BatchStatus.COMPLETED,
        BatchStatus.FAILED,
        BatchStatus.EXPIRED,
        BatchStatus.CANCELLED,
        BatchStatus.CANCELLING,
    ],
)
async def test_a_cancel_request_leaves_every_other_status_alone(store: Store, status: BatchStatus) -> None:
    batch = await new_batch(store, status)
    assert not await transitions.request_cancel(store, batch["id"])
    assert (await status_of(store, batch))["status"] == status


async def test_the_gateway_stops_only_a_running_batch(store: Store) -> None:
    validating = await new_batch(store)
    assert not await transitions.request_cancel(store, validating["id"], (BatchStatus.IN_PROGRESS,))
    assert (await status_of(store, validating))["status"] == BatchStatus.VALIDATING


async def test_finalise_then_complete_records_the_files_with_the_status(store: Store) -> None:
    batch = await new_batch(store, BatchStatus.IN_PROGRESS)
    assert not await transitions.complete(store, batch, {})  # not finalizing yet
    assert await transitions.finalise(store, batch["id"])
    now = int(time.time())
    output = {
        "id": "file-out",
        "team_id": None,
        "purpose": "batch_output",
        "filename": "o.jsonl",
        "bytes": 1,
        "sha256": "0" * 64,
        "created_at": now,
        "expires_at": None,
        "provider_name": None,
    }
    assert await transitions.complete(store, await status_of(store, batch), {"output": output})
    assert not await transitions.complete(store, batch, {"output": {**output, "id": "file-again"}})
    fresh = await status_of(store, batch)
    assert (fresh["status"], fresh["output_file_id"], fresh["error_file_id"]) == (
        BatchStatus.COMPLETED,
        "file-out",
        None,
    )
    assert fresh["completed_at"] is not None and fresh["finalizing_at"] is not None
    assert await store.get_file("file-out", now) is not None
    assert await store.get_file("file-again", now) is None  # the loser's rows are rolled back


async def test_expire_and_finish_cancel_end_only_their_own_statuses(store: Store) -> None:
    running, cancelling = (
        await new_batch(store, BatchStatus.IN_PROGRESS),
        await new_batch(store, BatchStatus.CANCELLING),
    )
    assert not await transitions.finish_cancel(store, running, {})
    assert not await transitions.expire(store, cancelling, {})
    assert await transitions.expire(store, running, {})
    assert await transitions.finish_cancel(store, cancelling, {}, message="budget exceeded")
    expired, cancelled = await status_of(store, running), await status_of(store, cancelling)
    assert (expired["status"], expired["cancel_message"]) == (BatchStatus.EXPIRED, None)
    assert expired["expired_at"] is not None
    assert (cancelled["status"], cancelled["cancel_message"]) == (BatchStatus.CANCELLED, "budget exceeded")
    assert cancelled["cancelled_at"] is not None
