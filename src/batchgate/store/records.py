"""What the store's queries take and give back: row types, the errors they raise, their constants."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Row = Mapping[Any, Any]  # a row as read (a RowMapping), or one being built (a dict)

RESULT_PAGE_ROWS = 1000
RESULT_PAGE_BYTES = 8 * 1024 * 1024  # answer bytes read at once when streaming results out
RESULTS_LOCK_KEY = 0x62617463  # "batc": the advisory lock serialising result writes on PostgreSQL
CAPACITY_LOCK_KEY = 0x63617061  # "capa": serialises the workers' capacity lease renewals


@dataclass(slots=True)
class ClaimedRequest:
    batch_id: str
    line_no: int
    custom_id: str
    offset: int
    length: int
    attempts: int
    blob_key: str | None  # None: the batch's input file


class BatchClosed(Exception):
    """Requests cannot be added: the batch is sealed, finished, cancelled or expired."""

    def __init__(self, status: str, sealed: bool) -> None:
        super().__init__(status)
        self.status = status
        self.sealed = sealed


class DuplicateRequestIds(Exception):
    def __init__(self, ids: list[str]) -> None:
        super().__init__(", ".join(ids))
        self.ids = ids


class MismatchedModel(Exception):
    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model


class BatchFull(Exception):
    def __init__(self, total: int) -> None:
        super().__init__(str(total))
        self.total = total


@dataclass(frozen=True, slots=True)
class Quota:
    """What a team may hold, checked in the same transaction that adds to it (never check-then-insert)."""

    team_id: str | None  # None: the admin's own objects
    max_queued_requests: int | None = None  # requests without a result yet, across its batches
    adding: int = 0  # requests the statement adds
    max_open_batches: int | None = None  # open (xAI) batches; checked only when one is created


class QueueFull(Exception):
    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(f"{queued} queued, limit {limit}")
        self.queued, self.limit = queued, limit


class TooManyOpenBatches(Exception):
    def __init__(self, open_batches: int, limit: int) -> None:
        super().__init__(f"{open_batches} open, limit {limit}")
        self.open_batches, self.limit = open_batches, limit


@dataclass(frozen=True, slots=True)
class CapacityLease:
    """One worker's share of one deployment's global limits."""

    deployment: str
    owner: str
    slots: int
    rate_share: float
    demand: int
    wants_rate: bool


@dataclass(slots=True)
class FinishedRequest:
    """A request's final outcome, as the engine hands it to the group-commit writer."""

    batch_id: str
    line_no: int
    custom_id: str
    ok: bool
    status_code: int | None
    upstream_request_id: str | None
    body: str | None
    error_code: str | None
    error_message: str | None
    finished_at: float
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
