"""Every batch status change, one named function each: the only callers of the store's conditional
updates (`Store.transition`, `Store.finish_batch`).

Each moves a batch only out of the statuses it names, so a step repeated after a crash, or raced
by another worker or an API server, happens once (the loser gets False and does nothing more).
Each stamps its own time column, and the ones that end a batch count it and log it, once.
What differs by dialect comes in as data (domain/dialects.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from batchgate.domain.dialects import DialectRules
from batchgate.domain.status import CANCELLABLE, BatchStatus
from batchgate.observability import metrics
from batchgate.store.records import Row
from batchgate.store.store import Store

log = logging.getLogger(__name__)
Files = dict[str, dict[str, Any]]  # the new file rows by role ("output", "error"): engine/finalize.py


async def start(store: Store, batch_id: str, *, model: str, total: int) -> bool:
    """validating → in_progress: the input is valid and its requests are queued."""
    return await store.transition(
        batch_id,
        [BatchStatus.VALIDATING],
        BatchStatus.IN_PROGRESS,
        model=model,
        total=total,
        in_progress_at=int(time.time()),
    )


async def fail_validation(store: Store, batch: Row, rules: DialectRules, errors: str, why: str) -> bool:
    """validating → failed (or cancelled, where the dialect has no failed batch, saying `why`):
    `errors` is the errors object as JSON."""
    now = int(time.time())
    if rules.invalid_input_cancels:
        to_status = BatchStatus.CANCELLED
        moved = await store.transition(
            batch["id"],
            [BatchStatus.VALIDATING],
            to_status,
            errors=errors,
            cancelled_at=now,
            cancel_message=f"invalid input file: {why}",
        )
    else:
        to_status = BatchStatus.FAILED
        moved = await store.transition(batch["id"], [BatchStatus.VALIDATING], to_status, errors=errors, failed_at=now)
    if moved:
        metrics.BATCHES_FINISHED.labels(to_status).inc()
        log.info(
            "batch %s failed validation: %s", batch["id"], why, extra={"batch_id": batch["id"], "status": to_status}
        )
    return moved


async def request_cancel(store: Store, batch_id: str, from_statuses: Sequence[BatchStatus] = CANCELLABLE) -> bool:
    """→ cancelling: a client asked (from validating or in_progress), or the gateway stops a running
    batch (budget, config: from in_progress only, so no add-call slips a request in). The engine
    finishes the job (finish_cancel)."""
    return await store.transition(batch_id, from_statuses, BatchStatus.CANCELLING, cancelling_at=int(time.time()))


async def finalise(store: Store, batch_id: str) -> bool:
    """in_progress → finalizing: every request has its result; the files are written next (complete)."""
    return await store.transition(
        batch_id, [BatchStatus.IN_PROGRESS], BatchStatus.FINALIZING, finalizing_at=int(time.time())
    )


async def complete(store: Store, batch: Row, new_files: Files) -> bool:
    """finalizing → completed, with its output and error files."""
    return await _end(store, batch, BatchStatus.FINALIZING, BatchStatus.COMPLETED, new_files, completed_at=None)


async def expire(store: Store, batch: Row, new_files: Files) -> bool:
    """in_progress → expired (the completion window ended), with what finished in its files."""
    return await _end(store, batch, BatchStatus.IN_PROGRESS, BatchStatus.EXPIRED, new_files, expired_at=None)


async def finish_cancel(store: Store, batch: Row, new_files: Files, message: str | None = None) -> bool:
    """cancelling → cancelled, with what finished in its files (none if nothing ran); `message` says why
    when the gateway, not a client, stopped it."""
    extra: dict[str, Any] = {"cancel_message": message} if message is not None else {}
    return await _end(
        store, batch, BatchStatus.CANCELLING, BatchStatus.CANCELLED, new_files, cancelled_at=None, **extra
    )


async def _end(
    store: Store, batch: Row, from_status: BatchStatus, to_status: BatchStatus, new_files: Files, **values: Any
) -> bool:
    """A final status, its time stamp (the column given as None) and its file rows, in one transaction."""
    now = int(time.time())
    values = {name: now if value is None else value for name, value in values.items()}
    output, error = new_files.get("output"), new_files.get("error")
    finished = await store.finish_batch(
        batch["id"],
        [from_status],
        to_status,
        list(new_files.values()),
        output_file_id=output["id"] if output else None,
        error_file_id=error["id"] if error else None,
        **values,
    )
    if finished:
        metrics.BATCHES_FINISHED.labels(to_status).inc()
        log.info(
            "batch %s %s: %d completed, %d failed",
            batch["id"],
            to_status,
            batch["completed"],
            batch["failed"],
            extra={"batch_id": batch["id"], "status": to_status},
        )
    return finished
