"""Batches as every dialect creates, finds and cancels them (no HTTP here: routers call these)."""

from __future__ import annotations

import time
from dataclasses import replace

import orjson

from batchgate.domain.budgets import over_budget
from batchgate.domain.errors import Conflict, InvalidRequest, NotFound, RateLimited
from batchgate.domain.params import new_batch_row, parse_batch_params, parse_metadata
from batchgate.domain.principal import Principal
from batchgate.domain.status import CANCELLABLE, TERMINAL, BatchStatus
from batchgate.engine import transitions
from batchgate.gateway import Gateway
from batchgate.store.records import QueueFull, Quota, Row, TooManyOpenBatches


async def create_batch(
    gateway: Gateway,
    principal: Principal,
    data: dict,
    *,
    header_metadata: tuple[str, dict[str, str]] | None = None,
    job_name: str | None = None,
    pinned_deployment: str | None = None,
) -> Row:
    """Validate the create parameters and store a new `validating` batch (the engine takes it from there)."""
    params = parse_batch_params(data)
    if header_metadata:  # (header, its values), e.g. x-tfy-metadata: its keys win, the key limit applies after
        header, values = header_metadata
        params = replace(params, metadata=parse_metadata({**(params.metadata or {}), **values}, param=header))
    file, quota = await batch_input_file(gateway, principal, params.input_file_id)
    row = new_batch_row(params, team_id=principal.team_id, now=int(time.time()))
    row.update(
        job_name=job_name,
        pinned_deployment=pinned_deployment or file["provider_name"],
        create_api_key_id=principal.key_id,
        allowed_models=orjson.dumps(list(principal.models)).decode() if principal.models is not None else None,
    )
    await insert_within_quota(gateway, row, quota)
    gateway.notify()
    stored = await gateway.store.get_batch(row["id"])
    assert stored is not None
    return stored


async def batch_input_file(gateway: Gateway, principal: Principal, file_id: str) -> tuple[Row, Quota]:
    """The caller's input file for a new batch, once its purpose and budgets allow it, with the quota
    the insert must check."""
    file = await gateway.store.get_file(file_id, int(time.time()), team_id=principal.team_id)
    if file is None:
        raise NotFound(f"no such file: {file_id!r}", param="input_file_id", code="file_not_found")
    if file["purpose"] != "batch":
        raise InvalidRequest(
            f"file {file['id']} has purpose {file['purpose']!r}; a batch input needs 'batch'",
            param="input_file_id",
            code="invalid_file_purpose",
        )
    return file, await admission(gateway, principal, file["lines"] or 0)


async def admission(gateway: Gateway, principal: Principal, adding: int, *, opening: bool = False) -> Quota:
    """Refuse new work once the team or key is over budget; the caps the insert then checks atomically
    (a team's queued requests, and its open batches when `opening` one)."""
    max_open = gateway.settings.limits.max_open_batches_per_team if opening else None
    if principal.team_id is None:
        return Quota(None, adding=adding, max_open_batches=max_open)
    team = await gateway.store.team_by_id(principal.team_id)
    key = await gateway.store.get_key(principal.key_id) if principal.key_id else None
    reason = await over_budget(
        gateway.store, gateway.settings, dict(team) if team else None, dict(key) if key else None
    )
    if reason is not None:
        raise RateLimited(f"budget exceeded: {reason}; no new batches are accepted", code="budget_exceeded")
    return Quota(
        principal.team_id,
        max_queued_requests=team["max_queued_requests"] if team else None,
        adding=adding,
        max_open_batches=max_open,
    )


def quota_error(exc: QueueFull | TooManyOpenBatches, quota: Quota) -> RateLimited:
    if isinstance(exc, TooManyOpenBatches):
        return RateLimited(
            f"at most {exc.limit} open batches per team (limits.max_open_batches_per_team); "
            f"{exc.open_batches} are open: cancel one or let it expire",
            code="max_open_batches_exceeded",
        )
    return RateLimited(
        f"the team may queue {exc.limit} requests (max_queued_requests); {exc.queued} are queued and "
        f"this adds {quota.adding}",
        code="max_queued_requests_exceeded",
    )


async def insert_within_quota(gateway: Gateway, row: dict, quota: Quota) -> None:
    try:
        await gateway.store.insert_batch(row, quota)
    except (QueueFull, TooManyOpenBatches) as exc:
        raise quota_error(exc, quota) from None


async def find_batch(gateway: Gateway, principal: Principal, batch_id: str) -> Row:
    """The batch, if the caller may see it; another team's answers exactly like an unknown id."""
    row = await gateway.store.get_batch(batch_id, team_id=principal.team_id)
    if row is None:
        raise NotFound(f"no such batch: {batch_id!r}", param="batch_id", code="batch_not_found")
    return row


async def request_cancel(gateway: Gateway, row: Row) -> Row:
    """Move a batch to `cancelling` (the engine finishes the job); 409 once it has ended."""
    if row["status"] in TERMINAL or row["status"] == BatchStatus.FINALIZING:
        raise Conflict(
            f"batch {row['id']} is {row['status']} and can no longer be cancelled",
            param="batch_id",
            code="batch_not_cancellable",
        )
    if row["status"] in CANCELLABLE:
        moved = await transitions.request_cancel(gateway.store, row["id"])
        if not moved:  # it finished meanwhile
            raise Conflict(
                f"batch {row['id']} can no longer be cancelled", param="batch_id", code="batch_not_cancellable"
            )
        gateway.notify()
    fresh = await gateway.store.get_batch(row["id"])
    assert fresh is not None
    return fresh
