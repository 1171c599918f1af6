"""What one tick of the engine decides for every active batch: validate it, hand it to the
dispatcher, expire it, stop it (budget, config), cancel it, finalise it.

The status changes themselves are engine/transitions.py, one named function each; this module
does the work around them (stopping the dispatcher, storing what finished, writing the files).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import orjson

from batchgate.blobs import BlobMismatch, BlobStore, VerifyingBlobStore
from batchgate.config import Settings
from batchgate.domain.budgets import over_budget
from batchgate.domain.dialects import rules_for
from batchgate.domain.status import ACTIVE, UNFINISHED, BatchStatus, RequestState
from batchgate.engine import transitions
from batchgate.engine.aio import wait_for_event
from batchgate.engine.deployments import deployment_names
from batchgate.engine.dispatcher import ActiveBatch, Dispatcher
from batchgate.engine.finalize import write_result_files
from batchgate.engine.validate import ValidationReport, validate_input
from batchgate.engine.writer import ResultWriter
from batchgate.observability import metrics, tracing
from batchgate.store.records import Row
from batchgate.store.store import Store

log = logging.getLogger(__name__)
Finish = Callable[[Store, Row, transitions.Files], Awaitable[bool]]  # one of the transitions that end a batch

MAX_PARALLEL_VALIDATIONS = 2
HOUSEKEEPING_EVERY_S = 10.0
MIN_TICK_GAP_S = 0.25
BUDGET_CHECK_EVERY_S = 1.0  # spend is summed in SQL; once a second bounds the overshoot and the cost
STORAGE_WARNING_EVERY_S = 30.0  # a step retried every tick against broken storage logs this often, not each time


def _unreadable_input(exc: Exception) -> ValidationReport:
    """The stored input is gone or no longer the bytes uploaded: fail the batch saying so, never run part of it."""
    report = ValidationReport()
    if isinstance(exc, FileNotFoundError):
        message = "the input file's content is missing from the files storage; upload it again"
    else:
        message = f"the stored input file is corrupt ({exc}); upload it again"
    report.add("file_corrupted", message, None, "input_file_id")
    return report


def _allowed_models(settings: Settings, batch: Row) -> list[str]:
    """Configured models, narrowed to those the creating API key may use."""
    configured = [m.name for m in settings.models]
    if batch["allowed_models"] is None:
        return configured
    allowed = set(orjson.loads(batch["allowed_models"]))
    return [m for m in configured if m in allowed]


class _BudgetCheck:
    """Within one tick: which running batches must stop because their team or key is over budget."""

    def __init__(self, store: Store, settings: Settings, teams: dict[str, dict], enabled: bool) -> None:
        self._store, self._settings, self._teams, self.enabled = store, settings, teams, enabled
        self._verdicts: dict[tuple[str | None, str | None], str | None] = {}

    async def stop_reason(self, batch: Row) -> str | None:
        if not self.enabled:
            return None
        team = self._teams.get(batch["team_id"]) if batch["team_id"] else None
        key_id = batch["create_api_key_id"]
        if (team is None or team["budget_usd"] is None) and key_id is None:
            return None
        cache_key = (batch["team_id"], key_id)
        if cache_key not in self._verdicts:
            key = await self._store.get_key(key_id) if key_id else None
            self._verdicts[cache_key] = await over_budget(self._store, self._settings, team, dict(key) if key else None)
        return self._verdicts[cache_key]


class Lifecycle:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        blobs: BlobStore,
        dispatcher: Dispatcher,
        writer: ResultWriter,
        owner: str,
        on_batch_done: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._blobs = blobs
        self._dispatcher = dispatcher
        self._writer = writer
        self._owner = owner
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()  # set: the next tick may not wait out MIN_TICK_GAP_S
        self._validations: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self._last_housekeeping = 0.0
        self._on_batch_done = on_batch_done
        self._deployment_models = deployment_names(settings)
        self._last_budget_check = 0.0
        self._warned_at: dict[str, float] = {}  # storage warnings by what failed, for rate limiting

    def wake(self, urgent: bool = False) -> None:
        """Tick soon; `urgent` (a new batch, a cancel, a validation done) skips the gap between ticks."""
        if urgent:
            self._urgent.set()
        self._wake.set()

    async def run(self) -> None:
        failures = 0
        # Every group commit wakes this loop (a batch may be done); ticking 20 times a second costs
        # more than it tells, so ticks are spaced at least this far apart.
        min_gap_s = min(MIN_TICK_GAP_S, self._settings.engine.poll_interval_s)
        while not self._stopping:
            started = time.monotonic()
            try:
                await self.tick()
                failures = 0
                self._store.outage.recovered()
            except Exception as exc:
                failures += 1
                self._store.outage.report(exc, f"a lifecycle tick ({failures} in a row)", log)
                if failures % 3 == 0:  # a connection left broken must not wedge the engine for good
                    await self._store.reset_connections()
            await wait_for_event(self._wake, self._settings.engine.poll_interval_s)
            rest = min_gap_s - (time.monotonic() - started)
            if rest > 0 and not self._stopping and not self._urgent.is_set():
                await wait_for_event(self._urgent, rest)
            self._urgent.clear()

    async def stop(self) -> None:
        self._stopping = True
        self.wake(urgent=True)
        for task in self._validations.values():
            task.cancel()
        await asyncio.gather(*self._validations.values(), return_exceptions=True)

    async def tick(self) -> None:
        now = time.time()
        active: list[ActiveBatch] = []
        teams = {team["id"]: dict(team) for team in await self._store.list_teams()}
        weights = {team_id: team["weight"] for team_id, team in teams.items()}
        budget_check = _BudgetCheck(
            self._store, self._settings, teams, enabled=now - self._last_budget_check >= BUDGET_CHECK_EVERY_S
        )
        if budget_check.enabled:
            self._last_budget_check = now
        active_rows = await self._store.batches_with_status(ACTIVE)
        for batch in active_rows:
            status = batch["status"]
            if status == BatchStatus.VALIDATING:
                self._start_validation(batch)
            elif status == BatchStatus.IN_PROGRESS:
                if now >= batch["expires_at"]:
                    await self._stop_early(
                        batch,
                        BatchStatus.IN_PROGRESS,
                        BatchStatus.EXPIRED,
                        transitions.expire,
                        "batch_expired",
                        "the batch's completion window ended before this request ran",
                    )
                elif batch["sealed"] and batch["completed"] + batch["failed"] >= batch["total"]:
                    await self._complete(batch)  # an open (xAI) batch runs until cancelled or expired
                elif reason := await budget_check.stop_reason(batch):
                    await self._stop_by_gateway(
                        batch, "budget_exceeded", f"budget exceeded before this request ran: {reason}"
                    )
                elif reason := self._unservable(batch):
                    await self._stop_by_gateway(batch, "model_not_found", reason)
                elif batch["total"] > batch["completed"] + batch["failed"]:
                    active.append(
                        ActiveBatch(
                            batch["id"],
                            batch["model_override"] or batch["model"],
                            batch["endpoint"],
                            batch["input_file_id"],
                            batch["expires_at"],
                            batch["pinned_deployment"],
                            batch["team_id"] or "",
                            weights.get(batch["team_id"], 1.0),
                            batch["create_api_key_id"],
                        )
                    )
            elif status == BatchStatus.FINALIZING:
                await self._complete(batch)
            elif status == BatchStatus.CANCELLING:
                await self._cancel(batch)
        self._dispatcher.set_active(active)
        self._report_queue(active_rows)
        if now - self._last_housekeeping >= min(HOUSEKEEPING_EVERY_S, self._settings.engine.lease_s / 3):
            self._last_housekeeping = now
            await self._housekeeping(now)

    def _report_queue(self, batches: list[Row]) -> None:
        """Requests of running batches still to finish, per model: the gateway's queue depth."""
        queued = {model.name: 0 for model in self._settings.models}
        for batch in batches:
            model = batch["model_override"] or batch["model"]
            if batch["status"] == BatchStatus.IN_PROGRESS and model in queued:
                queued[model] += max(0, batch["total"] - batch["completed"] - batch["failed"])
        for model, count in queued.items():
            metrics.REQUESTS_QUEUED.labels(model).set(count)

    # ------------------------------------------------------------------ validation
    def _start_validation(self, batch: Row) -> None:
        if batch["id"] in self._validations or len(self._validations) >= MAX_PARALLEL_VALIDATIONS:
            return
        batch_id = batch["id"]
        task = asyncio.create_task(self._validate(batch), name=f"validate-{batch_id}")
        self._validations[batch_id] = task
        task.add_done_callback(lambda _task: self._validation_done(batch_id))

    def _validation_done(self, batch_id: str) -> None:
        self._validations.pop(batch_id, None)
        self.wake(urgent=True)  # a batch just went in_progress: hand it to the dispatcher now

    async def _validate(self, batch: Row) -> None:
        try:
            with tracing.span("batch validate", **{"batchgate.batch_id": batch["id"]}):
                await self._validate_once(batch)
            self._warned_at.pop(f"validate:{batch['id']}", None)
        except (FileNotFoundError, BlobMismatch) as exc:
            log.warning(
                "batch %s: its input file %s cannot be used: %s",
                batch["id"],
                batch["input_file_id"],
                exc,
                extra={"batch_id": batch["id"]},
            )
            await self._store.delete_requests(batch["id"])
            await self._fail(batch, _unreadable_input(exc))
        except Exception as exc:  # storage or database trouble: the next tick validates again
            self._warn(
                f"validate:{batch['id']}",
                "validation of batch %s failed, retrying: %s: %s",
                batch["id"],
                type(exc).__name__,
                exc,
            )

    async def _validate_once(self, batch: Row) -> None:
        batch_id = batch["id"]
        current = await self._store.get_batch(batch_id)
        if current is None or current["status"] != BatchStatus.VALIDATING:
            return  # the tick's snapshot was stale: validated (or cancelled) meanwhile
        now = time.time()
        if not await self._store.lease_batch(batch_id, self._owner, now, now + self._settings.engine.lease_s):
            return  # another worker sharing the database validates it
        await self._store.delete_requests(batch_id)  # a validation cut short by a crash starts over
        file = await self._store.get_file(batch["input_file_id"], int(time.time()))
        if file is None:
            gone = ValidationReport()
            gone.add("missing_required_parameter", "the input file no longer exists", None, "input_file_id")
            await self._fail(batch, gone)
            return

        async def write_rows(rows: list[dict[str, Any]]) -> None:
            await self._store.insert_requests(
                [
                    {**r, "batch_id": batch_id, "state": RequestState.PENDING, "attempts": 0, "next_attempt_at": 0.0}
                    for r in rows
                ]
            )

        async def cancelled() -> bool:
            current = await self._store.get_batch(batch_id)
            return current is None or current["status"] != BatchStatus.VALIDATING

        # Reading through the recorded size and sha256 turns a truncated or garbled stored copy into
        # a failed batch, instead of a batch that quietly runs whatever lines are left.
        verified = VerifyingBlobStore(self._blobs, {file["id"]: (file["bytes"], file["sha256"])})
        report = await validate_input(
            verified,
            file["id"],
            file["bytes"],
            batch["endpoint"],
            self._settings.limits,
            _allowed_models(self._settings, batch),
            batch["model_override"],
            write_rows,
            cancelled,
        )
        if report is None:
            return
        pinned = batch["pinned_deployment"]
        if report.ok and pinned and self._deployment_models.get(pinned) != report.model:
            report.add(
                "model_not_found",
                f"deployment {pinned!r} (x-tfy-provider-name) does not serve model {report.model!r}",
                None,
                "body.model",
            )
        if not report.ok:
            await self._store.delete_requests(batch_id)
            await self._fail(batch, report)
            return
        assert report.model is not None
        if await transitions.start(self._store, batch_id, model=report.model, total=report.total):
            log.info(
                "batch %s validated: %d requests for %s",
                batch_id,
                report.total,
                report.model,
                extra={"batch_id": batch_id, "model": report.model},
            )

    async def _fail(self, batch: Row, report: ValidationReport) -> None:
        """A bad input file: the batch fails (or, where the dialect says so, is cancelled saying why)."""
        first = report.errors[0]
        where = f"line {first['line']}: " if first.get("line") else ""
        why = f"{where}{first['code']}: {first['message']}"
        if await transitions.fail_validation(
            self._store, batch, rules_for(batch["dialect"]), orjson.dumps(report.as_errors_object()).decode(), why
        ):
            self._done(batch["id"])

    # ------------------------------------------------------------------ ending a batch
    async def _complete(self, batch: Row) -> None:
        if batch["status"] == BatchStatus.IN_PROGRESS and not await transitions.finalise(self._store, batch["id"]):
            return
        await self._write_files_and_finish(batch, BatchStatus.FINALIZING, BatchStatus.COMPLETED, transitions.complete)

    async def _cancel(self, batch: Row) -> None:
        if batch["id"] in self._validations:
            return  # the validation sees the cancel at its next chunk and stops; finish after it
        if batch["in_progress_at"] is None:  # cancelled before validation finished: nothing ran
            await self._store.delete_requests(batch["id"])
            if await transitions.finish_cancel(self._store, batch, {}):
                self._done(batch["id"])
            return
        await self._stop_early(
            batch,
            BatchStatus.CANCELLING,
            BatchStatus.CANCELLED,
            transitions.finish_cancel,
            "batch_cancelled",
            "the batch was cancelled before this request finished",
        )

    def _unservable(self, batch: Row) -> str | None:
        """Why the current config can no longer run this batch (it was created under another one)."""
        model = batch["model_override"] or batch["model"]
        if model is not None and self._settings.model(model) is None:
            return f"model {model!r} is no longer configured on this gateway"
        pinned = batch["pinned_deployment"]
        if pinned and pinned not in self._deployment_models:
            return f"deployment {pinned!r} (x-tfy-provider-name) is no longer configured on this gateway"
        return None

    async def _stop_by_gateway(self, batch: Row, code: str, message: str) -> None:
        """The gateway ends a running batch (budget, config): finished results kept, the rest `code`,
        and the batch says why."""
        # Leave in_progress first: from then on no add-call can slip a request in.
        if await transitions.request_cancel(self._store, batch["id"], (BatchStatus.IN_PROGRESS,)):
            await self._stop_early(
                batch,
                BatchStatus.CANCELLING,
                BatchStatus.CANCELLED,
                partial(transitions.finish_cancel, message=message),
                code,
                message,
            )

    async def _stop_early(
        self, batch: Row, from_status: BatchStatus, to_status: BatchStatus, finish: Finish, code: str, message: str
    ) -> None:
        """Expiry and cancellation: keep every finished result, end the rest with `code`."""
        self._dispatcher.cancel_batch(batch["id"])
        await self._writer.flush()  # results that arrived before the cut still count as answers
        await self._store.terminate_unfinished(batch["id"], UNFINISHED, code, message, time.time())
        await self._write_files_and_finish(batch, from_status, to_status, finish)

    async def _write_files_and_finish(
        self, batch: Row, from_status: BatchStatus, to_status: BatchStatus, finish: Finish
    ) -> None:
        """Write the result files, then `finish` (the transition to `to_status` that records them)."""
        now = int(time.time())
        fresh = await self._store.get_batch(batch["id"])
        if fresh is None or fresh["status"] != from_status:
            return
        try:
            with tracing.span(
                "batch finalize",
                **{
                    "batchgate.batch_id": batch["id"],
                    "batchgate.status": to_status,
                    "batchgate.requests": fresh["total"],
                },
            ):
                new_files = await write_result_files(self._store, self._blobs, fresh, now)
        except OSError as exc:  # a full or read-only files storage: stay in from_status, retry next tick
            self._warn(
                f"finalize:{batch['id']}",
                "cannot write the result files of batch %s (%s); it stays %s and finalisation is retried",
                batch["id"],
                exc,
                from_status,
            )
            return
        if not await finish(self._store, fresh, new_files):  # someone else finished it first: surplus copies
            for row in new_files.values():
                await self._blobs.delete(row["id"])
            return
        self._warned_at.pop(f"finalize:{batch['id']}", None)
        # Requests added to an open batch lived in segment blobs; the result files now hold their outcome.
        for key in await self._store.segment_keys(batch["id"]):
            try:
                await self._blobs.delete(key)
            except OSError as exc:  # the batch is finished either way; a start-up sweep removes orphans
                self._warn(f"segment:{key}", "cannot delete segment %s of batch %s: %s", key, batch["id"], exc)
        self._done(batch["id"])

    def _done(self, batch_id: str) -> None:
        if self._on_batch_done:
            self._on_batch_done(batch_id)

    # ------------------------------------------------------------------ housekeeping
    async def _housekeeping(self, now: float) -> None:
        await self._store.extend_leases(self._owner, now + self._settings.engine.lease_s)
        released = await self._store.release_expired_leases(now)
        if released:
            log.warning("re-queued %d requests whose worker stopped renewing its lease", released)
            self._dispatcher.wake()
        for file_id in await self._store.expired_file_ids(int(now)):
            try:
                await self._blobs.delete(file_id)
            except OSError as exc:  # keep the row, so the next housekeeping tries again
                self._warn("expire", "cannot delete expired file %s: %s", file_id, exc)
                continue
            await self._store.delete_file(file_id)

    def _warn(self, what: str, message: str, *args: Any) -> None:
        """A warning for a step retried every tick, at most once per STORAGE_WARNING_EVERY_S for each `what`."""
        now = time.monotonic()
        if now - self._warned_at.get(what, -STORAGE_WARNING_EVERY_S) >= STORAGE_WARNING_EVERY_S:
            self._warned_at[what] = now
            log.warning(message, *args)
