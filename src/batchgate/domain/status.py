"""Every state a batch or a request can be in, and the sets the code asks about, in one place.

A status is stored and answered as its string value (StrEnum), so rows, JSON and SQL compare equal
to the members. The sets (tuples: SQL IN lists keep one order) say what a state means: ACTIVE work
the engine still owns, TERMINAL states nothing leaves, CANCELLABLE those a cancel moves to `cancelling`.
"""

from __future__ import annotations

from enum import StrEnum


class BatchStatus(StrEnum):
    """A batch's `status`, as OpenAI names it (every dialect maps its own view from these)."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


ACTIVE: tuple[BatchStatus, ...] = (
    BatchStatus.VALIDATING,
    BatchStatus.IN_PROGRESS,
    BatchStatus.FINALIZING,
    BatchStatus.CANCELLING,
)
TERMINAL: tuple[BatchStatus, ...] = (
    BatchStatus.COMPLETED,
    BatchStatus.FAILED,
    BatchStatus.EXPIRED,
    BatchStatus.CANCELLED,
)
CANCELLABLE: tuple[BatchStatus, ...] = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)


class RequestState(StrEnum):
    """A request row's `state`: waiting (or waiting to retry), leased by an engine, or ended with a result."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"


UNFINISHED: tuple[RequestState, ...] = (RequestState.PENDING, RequestState.RUNNING)


class RequestOutcome(StrEnum):
    """One request as xAI and the console show it: derived from its state and its result."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
